"""When the live chart draws its next frame: a rate cap and a share of the loop's time.

:class:`FrameBudget` paces the frames of :class:`labkit.widgets.LiveTimeline`:
at most ``updates_per_s`` frames a second, and no more than ``max_load`` of the
time spent drawing, on an injectable clock.
"""

from __future__ import annotations

from collections import deque

from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import ConfigError

__all__ = ("FrameBudget",)


class FrameBudget:
    """When the next frame is due: a rate cap and a share of the loop's time.

    Frames come at most ``updates_per_s`` a second, and far enough apart that
    drawing takes at most ``max_load`` of the time: after frames of typical cost
    ``d`` seconds the gap is at least ``d / max_load``. The typical cost is the
    median of the last five frames' (counting two ideal ones until five were
    drawn), so one slow frame (the first, which builds the traces; a garbage
    collection; a busy machine) does not hold the chart back for long, while
    frames that stay slow do stretch the gap. The first frame also waits one
    interval, so a first burst of samples is drawn in one frame.

    Args:
        updates_per_s: The most frames per second.
        max_load: The largest fraction of time drawing may take (0 < x <= 1).
        clock: Where time is read.

    Raises:
        ConfigError: If ``updates_per_s`` is not > 0 or ``max_load`` not in (0, 1].
    """

    __slots__ = (
        "_clock",
        "_costs",
        "_gap",
        "_interval",
        "_last",
        "_max_load",
        "frames",
        "last_cost",
        "max_cost",
        "total_cost",
    )

    _HISTORY = 5

    def __init__(
        self, updates_per_s: float = 4.0, max_load: float = 0.05, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        if not (isinstance(updates_per_s, int | float) and updates_per_s > 0):
            raise ConfigError("updates_per_s", updates_per_s, "a number > 0")
        if not (isinstance(max_load, int | float) and 0 < max_load <= 1):
            raise ConfigError("max_load", max_load, "a fraction > 0 and <= 1")
        self._clock = clock
        self._interval = 1.0 / updates_per_s
        self._max_load = float(max_load)
        self._gap = self._interval
        self._last: float | None = None
        self._costs: deque[float] = deque(maxlen=self._HISTORY)
        self.frames = 0
        """Frames drawn so far."""
        self.last_cost = 0.0
        """Seconds the latest frame took."""
        self.max_cost = 0.0
        """Seconds the longest frame took."""
        self.total_cost = 0.0
        """Seconds all frames took together."""
        self.reset()

    def delay(self) -> float:
        """Seconds from now until the next frame is due (0: draw now)."""
        now = self._clock.now()
        if self._last is None:
            self._last = now  # the first frame waits one interval too
        return max(self._last + self._gap - now, 0.0)

    def drew(self, started: float) -> None:
        """Note a frame whose drawing began at ``started`` (clock seconds) and ended now."""
        finished = self._clock.now()
        self.last_cost = max(finished - started, 0.0)
        self.max_cost = max(self.max_cost, self.last_cost)
        self.total_cost += self.last_cost
        self._last = finished
        self._costs.append(self.last_cost)
        ordered = sorted(self._costs)
        typical = ordered[(len(ordered) - 1) // 2]  # the lower median
        self._gap = max(self._interval, typical / self._max_load)
        self.frames += 1

    def reset(self) -> None:
        """Forget past frames: the next waits one interval from when it is asked for."""
        self._last = None
        self._gap = self._interval
        self._costs.clear()
        self._costs.extend((self._interval * self._max_load,) * 2)

    @property
    def now(self) -> float:
        """The budget clock's reading, in seconds."""
        return self._clock.now()
