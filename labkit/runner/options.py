"""The options of a run, validated once, before anything runs."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from labkit.adaptive import AutoConcurrency
from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import check, is_int, is_real
from labkit.events import EventBus, TaskEvent
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
    on_event: Callable[[TaskEvent], object] | EventBus | None = None
    clock: Clock = SYSTEM_CLOCK
    rng: random.Random | None = None
    limits: ResourceLimits | None = None
    cost: Cost | None = None
    probe: HostProbe | None = None
    keep_items: bool | Literal["failed"] = True

    def __post_init__(self) -> None:
        auto = self.max_concurrency == "auto" or isinstance(self.max_concurrency, AutoConcurrency)
        check(
            auto
            or (
                is_int(self.max_concurrency) and 1 <= self.max_concurrency <= MAX_CONCURRENCY  # type: ignore[operator]
            ),
            "max_concurrency",
            self.max_concurrency,
            f"an integer from 1 to {MAX_CONCURRENCY:,}, 'auto', or a labkit.AutoConcurrency",
        )
        check(
            self.timeout is None or (is_real(self.timeout) and self.timeout > 0),
            "timeout",
            self.timeout,
            "None (no limit) or a finite number of seconds > 0",
        )
        check(
            self.retry is None or isinstance(self.retry, Retry),
            "retry",
            self.retry,
            "None or a labkit.Retry instance",
        )
        check(
            self.rate_limit is None or isinstance(self.rate_limit, RateLimit),
            "rate_limit",
            self.rate_limit,
            "None or a labkit.RateLimit instance",
        )
        check(
            self.batch_size is None
            or (is_int(self.batch_size) and 1 <= self.batch_size <= sys.maxsize),
            "batch_size",
            self.batch_size,
            f"None or an integer from 1 to {sys.maxsize:,}",
        )
        check(
            is_real(self.batch_delay) and 0 <= self.batch_delay <= MAX_BATCH_DELAY_S,
            "batch_delay",
            self.batch_delay,
            f"a finite number of seconds from 0 to {MAX_BATCH_DELAY_S:,.0f}",
        )
        check(
            self.priority is None
            or callable(self.priority)
            or (
                isinstance(self.priority, Sequence)
                and not isinstance(self.priority, str | bytes)
                and all(is_real(value) for value in self.priority)
            ),
            "priority",
            self.priority,
            "None, a callable item -> number, or one finite number per item",
        )
        check(
            self.on_event is None or callable(self.on_event) or isinstance(self.on_event, EventBus),
            "on_event",
            self.on_event,
            "None, a callable taking an event, or a labkit.EventBus",
        )
        check(
            isinstance(self.clock, Clock) and not isinstance(self.clock, type),
            "clock",
            self.clock,
            "a labkit.Clock instance",
        )
        check(
            self.rng is None or isinstance(self.rng, random.Random),
            "rng",
            self.rng,
            "None or a random.Random",
        )
        check(
            self.limits is None or isinstance(self.limits, ResourceLimits),
            "limits",
            self.limits,
            "None or a labkit.ResourceLimits",
        )
        check(
            self.cost is None or callable(self.cost) or isinstance(self.cost, Mapping),
            "cost",
            self.cost,
            "None, a mapping like {'memory_mb': 2048}, or a callable item -> mapping",
        )
        if isinstance(self.cost, Mapping):
            cost_of(self.cost, None)  # validates the keys now
        check(
            self.keep_items is True or self.keep_items is False or self.keep_items == "failed",
            "keep_items",
            self.keep_items,
            "True (every result keeps its item), False (none does) or 'failed' "
            "(only failed results do)",
        )

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
