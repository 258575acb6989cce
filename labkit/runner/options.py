"""The options of a run, validated once, before anything runs."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from labkit.adaptive import AutoConcurrency
from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import check
from labkit.events import EventBus, TaskEvent
from labkit.guard import Cost, HostProbe, ResourceLimits, cost_of
from labkit.policies import RateLimit, Retry

__all__ = ("Priority", "RunOptions")

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
                isinstance(self.max_concurrency, int)
                and not isinstance(self.max_concurrency, bool)
                and self.max_concurrency >= 1
            ),
            "max_concurrency",
            self.max_concurrency,
            "an integer >= 1, 'auto', or a labkit.AutoConcurrency",
        )
        check(
            self.timeout is None or (isinstance(self.timeout, int | float) and self.timeout > 0),
            "timeout",
            self.timeout,
            "None or seconds > 0",
        )
        check(
            self.retry is None or isinstance(self.retry, Retry),
            "retry",
            self.retry,
            "None or a labkit.Retry",
        )
        check(
            self.rate_limit is None or isinstance(self.rate_limit, RateLimit),
            "rate_limit",
            self.rate_limit,
            "None or a labkit.RateLimit",
        )
        check(
            self.batch_size is None or (isinstance(self.batch_size, int) and self.batch_size >= 1),
            "batch_size",
            self.batch_size,
            "None or an integer >= 1",
        )
        check(self.batch_delay >= 0, "batch_delay", self.batch_delay, "seconds >= 0")
        check(
            self.priority is None or callable(self.priority) or isinstance(self.priority, Sequence),
            "priority",
            self.priority,
            "None, a callable item -> number, or one number per item",
        )
        check(
            self.on_event is None or callable(self.on_event) or isinstance(self.on_event, EventBus),
            "on_event",
            self.on_event,
            "None, a callable taking an event, or a labkit.EventBus",
        )
        check(isinstance(self.clock, Clock), "clock", self.clock, "a labkit.Clock")
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
