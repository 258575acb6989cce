"""The options of a run, validated once, before anything runs."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from labkit._checks import check, is_int, is_real
from labkit.adaptive import AutoConcurrency
from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.events import EventBus, TaskEvent, Watcher
from labkit.guard import Cost, HostProbe, ResourceLimits, cost_of
from labkit.policies import RateLimit, Retry

__all__ = ("MAX_BATCH_DELAY_S", "MAX_CONCURRENCY", "Priority", "RunOptions")

MAX_CONCURRENCY = 1_000_000
"""The most tasks one runner may run at once: more is a typo, not a plan."""
MAX_BATCH_DELAY_S = 86_400.0
"""The longest pause between batches, in seconds (one day)."""

Priority = Callable[[Any], float] | Sequence[float]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """Every option of a run; see :func:`run_parallel` for their meaning.

    Raises:
        ConfigError: If an option is out of range (the message names it).
    """

    max_concurrency: int | str | AutoConcurrency = 8
    timeout: float | None = None
    retry: Retry | None = None
    rate_limit: RateLimit | None = None
    batch_size: int | None = None
    batch_delay: float = 0.0
    priority: Priority | None = None
    executor: Any = "async"
    on_event: Watcher | Callable[[TaskEvent], object] | EventBus | None = None
    clock: Clock = SYSTEM_CLOCK
    rng: random.Random | None = None
    limits: ResourceLimits | None = None
    cost: Cost | None = None
    probe: HostProbe | None = None
    keep_items: bool | Literal["failed"] = True

    def __post_init__(self) -> None:
        for option, accepts, allowed in _RULES:
            value = getattr(self, option)
            check(accepts(value), option, value, allowed)
        if isinstance(self.cost, Mapping):
            cost_of(self.cost, None)  # validates the keys now

    @property
    def auto(self) -> AutoConcurrency | None:
        """The adaptive policy, when ``max_concurrency`` is ``"auto"`` or one."""
        if isinstance(self.max_concurrency, AutoConcurrency):
            return self.max_concurrency
        return AutoConcurrency() if self.max_concurrency == "auto" else None

    @property
    def worker_cap(self) -> int:
        """The most tasks that may ever run at once."""
        auto = self.auto
        return auto.max if auto is not None else int(self.max_concurrency)  # type: ignore[arg-type]


def _concurrency(value: Any) -> bool:
    if value == "auto" or isinstance(value, AutoConcurrency):
        return True
    return is_int(value) and 1 <= value <= MAX_CONCURRENCY


def _priority(value: Any) -> bool:
    if value is None or callable(value):
        return True
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str | bytes)
        and all(is_real(key) for key in value)
    )


# Each option: what it accepts, and what the refusal says is allowed.
_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    (
        "max_concurrency",
        _concurrency,
        f"an integer from 1 to {MAX_CONCURRENCY:,}, 'auto', or a labkit.AutoConcurrency",
    ),
    (
        "timeout",
        lambda v: v is None or (is_real(v) and v > 0),
        "None (no limit) or a finite number of seconds > 0",
    ),
    ("retry", lambda v: v is None or isinstance(v, Retry), "None or a labkit.Retry instance"),
    (
        "rate_limit",
        lambda v: v is None or isinstance(v, RateLimit),
        "None or a labkit.RateLimit instance",
    ),
    (
        "batch_size",
        lambda v: v is None or (is_int(v) and 1 <= v <= sys.maxsize),
        f"None or an integer from 1 to {sys.maxsize:,}",
    ),
    (
        "batch_delay",
        lambda v: is_real(v) and 0 <= v <= MAX_BATCH_DELAY_S,
        f"a finite number of seconds from 0 to {MAX_BATCH_DELAY_S:,.0f}",
    ),
    ("priority", _priority, "None, a callable item -> number, or one finite number per item"),
    (
        "on_event",
        lambda v: v is None or callable(v) or isinstance(v, (EventBus, Watcher)),
        "None, a labkit.events.Watcher, a callable taking an event, or a labkit.EventBus",
    ),
    (
        "clock",
        lambda v: isinstance(v, Clock) and not isinstance(v, type),
        "a labkit.Clock instance",
    ),
    ("rng", lambda v: v is None or isinstance(v, random.Random), "None or a random.Random"),
    (
        "limits",
        lambda v: v is None or isinstance(v, ResourceLimits),
        "None or a labkit.ResourceLimits",
    ),
    (
        "cost",
        lambda v: v is None or callable(v) or isinstance(v, Mapping),
        "None, a mapping like {'memory_mb': 2048}, or a callable item -> mapping",
    ),
    (
        "keep_items",
        lambda v: v is True or v is False or v == "failed",
        "True (every result keeps its item), False (none does) or 'failed' "
        "(only failed results do)",
    ),
)
