"""Adaptive concurrency: find the level that gives the most throughput, and keep it.

``max_concurrency="auto"`` (or an :class:`AutoConcurrency` with bounds) lets the
runner choose its own limit, the way TCP finds a link's capacity:

- *slow start*: from ``initial``, double the limit while each doubling pays;
- *additive increase*: then raise it by one while each step pays;
- *multiplicative decrease*: when a step does not pay (throughput fell or stayed
  flat), or the resource guard holds starts back, cut it by ``backoff``.

A step "pays" when throughput rose by at least ``tolerance`` of what a perfectly
parallel service would give for that step (``limit / previous - 1``), so noise on a
flat plateau does not ratchet the limit up. Throughput is measured over windows of
``window x limit`` completions, after letting the tasks started under the previous
limit drain (``limit`` completions), so each measurement sees one level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from labkit._checks import check, is_int, is_real

__all__ = ("AutoConcurrency", "ConcurrencyController")

_MAX_LIMIT = 1_000_000  # the runner's own cap on concurrency (RunOptions.MAX_CONCURRENCY)


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoConcurrency:
    """Bounds and tuning of adaptive concurrency (the defaults need no tuning).

    Args:
        min: The lowest limit (>= 1).
        max: The highest limit; also how many workers the runner keeps.
        initial: The starting limit (default: 8, within ``min`` and ``max``).
        backoff: The factor applied to the limit when a step does not pay (0 to 1).
        tolerance: The share of a step's ideal gain it must deliver to count as paying.
        window: Completions per measurement, as a multiple of the limit.
        min_window: The fewest completions per measurement.

    Raises:
        ConfigError: If a bound is out of range.
    """

    min: int = 1
    max: int = 256
    initial: int | None = None
    backoff: float = 0.95
    tolerance: float = 0.25
    window: float = 2.0
    min_window: int = 8

    def __post_init__(self) -> None:
        check(
            is_int(self.min) and 1 <= self.min <= _MAX_LIMIT,
            "min",
            self.min,
            f"an integer from 1 to {_MAX_LIMIT:,}",
        )
        check(
            is_int(self.max) and self.min <= self.max <= _MAX_LIMIT,
            "max",
            self.max,
            f"an integer from min ({self.min}) to {_MAX_LIMIT:,}",
        )
        check(
            self.initial is None or (is_int(self.initial) and self.min <= self.initial <= self.max),
            "initial",
            self.initial,
            f"None or an integer from {self.min} to {self.max}",
        )
        check(
            is_real(self.backoff) and 0 < self.backoff < 1,
            "backoff",
            self.backoff,
            "a factor between 0 and 1",
        )
        check(
            is_real(self.tolerance) and 0 <= self.tolerance <= 1,
            "tolerance",
            self.tolerance,
            "a fraction from 0 to 1",
        )
        check(
            is_real(self.window) and 0 < self.window <= 1_000,
            "window",
            self.window,
            "a multiple of the limit > 0 and <= 1,000",
        )
        check(
            is_int(self.min_window) and 1 <= self.min_window <= _MAX_LIMIT,
            "min_window",
            self.min_window,
            f"an integer from 1 to {_MAX_LIMIT:,}",
        )

    @property
    def start(self) -> int:
        if self.initial is not None:
            return self.initial
        return max(self.min, min(8, self.max))


class ConcurrencyController:
    """The AIMD state machine; the runner feeds it completions and applies its limit.

    Args:
        policy: Bounds and tuning.
    """

    def __init__(self, policy: AutoConcurrency) -> None:
        self.policy = policy
        self.limit = policy.start
        self.slow_start = True
        self.last_throughput = 0.0
        """Tasks per second measured in the latest window."""
        self._previous: tuple[int, float] | None = None
        self._settle = self.limit
        self._count = 0
        self._window_start = 0.0

    def _window_size(self) -> int:
        return max(math.ceil(self.policy.window * self.limit), self.policy.min_window)

    def _reset(self, now: float) -> None:
        self._settle = self.limit
        self._count = 0
        self._window_start = now

    def completed(self, now: float) -> tuple[int, float, str] | None:
        """Count one finished task at ``now`` (s); returns (new limit, throughput, reason).

        Returns None while the limit stays.
        """
        if self._settle > 0:
            self._settle -= 1
            if self._settle == 0:
                self._window_start = now
            return None
        self._count += 1
        if self._count < self._window_size():
            return None
        elapsed = now - self._window_start
        throughput = self._count / elapsed if elapsed > 0 else math.inf
        self.last_throughput = throughput
        return self._decide(throughput, now)

    def _decide(self, throughput: float, now: float) -> tuple[int, float, str] | None:
        policy = self.policy
        limit = self.limit
        previous = self._previous
        self._previous = (limit, throughput)
        if previous is not None and limit > previous[0]:
            ideal_gain = limit / previous[0] - 1
            if throughput < previous[1] * (1 + policy.tolerance * ideal_gain):
                # That step did not pay: fall back below it and climb slowly from there.
                new = previous[0] if self.slow_start else math.floor(limit * policy.backoff)
                self.slow_start = False
                return self._apply(min(new, limit - 1), throughput, now, "back-off")
        new = limit * 2 if self.slow_start else limit + 1
        return self._apply(new, throughput, now, "probe")

    def pressure(self, now: float) -> tuple[int, float, str] | None:
        """The resource guard held a start back: cut the limit (once per window)."""
        if self._count == 0 and self._settle == self.limit:
            return None  # already cut for this window
        self.slow_start = False
        self._previous = None
        new = math.floor(self.limit * self.policy.backoff)
        return self._apply(min(new, self.limit - 1), self.last_throughput, now, "pressure")

    def _apply(
        self, new: int, throughput: float, now: float, reason: str
    ) -> tuple[int, float, str] | None:
        new = max(self.policy.min, min(self.policy.max, new))
        self._reset(now)
        if new == self.limit:
            return None
        # Drain the tasks started under the old limit before measuring the new one.
        self._settle = min(new, self.limit)
        self.limit = new
        return new, throughput, reason
