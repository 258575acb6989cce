"""The terminal's progress bars: a text drawing of :class:`labkit.progress.InstanceProgress`.

The model says where each instance stands (the panel draws the same one); this
module only draws it: one tqdm bar per instance, or one bar of instances ended
and a summary line (counts by state, the slowest instances) past
:data:`MAX_BARS` instances. A bar is full only once its instance ended; while it
runs it shows what is known (steps or samples recorded, seconds elapsed), and a
percentage only when the function honours ``ctx.duration``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.events import Watcher
from labkit.progress import InstanceProgress, ProgressSnapshot

__all__ = ("MAX_BARS", "ProgressBars")

MAX_BARS = 16
"""The most instances drawn as a bar each; past it, one bar and a summary line."""

REDRAW_EVERY_S = 0.5
"""Seconds between redraws while the run goes (samples arrive with no event)."""

# A percentage only where it means something: the function honours its duration.
# The text rides in tqdm's free ``unit`` field (its postfix would add a comma).
_KNOWN = "{desc}: {percentage:3.0f}%|{bar}| {unit}"
_UNKNOWN = "{desc}: {unit}"


class ProgressBars(Watcher):
    """Bars for one run's instances, drawn from an :class:`InstanceProgress`.

    Subscribe it to the run's events (it is a watcher: it reads the instances'
    state changes, their logs, retries and cancellations); call :meth:`close`
    when the run ends.

    Args:
        instances: How many instances the run plans.
        expected_s: How long each instance should run, in seconds, when its
            function reads ``ctx.duration`` (see
            :func:`labkit.progress.reads_duration`); ``None``: unknown.
        enabled: Whether to draw; bars are drawn only when stderr is a terminal.
        clock: The run's clock.
    """

    def __init__(
        self,
        instances: int,
        expected_s: float | None,
        *,
        enabled: bool,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.model = InstanceProgress(instances, expected_s=expected_s, clock=clock)
        """What the bars draw."""
        # tqdm draws only in a terminal; a pipe or a file gets no bars.
        self._enabled = enabled and sys.stderr.isatty()
        self._bars: dict[int, Any] = {}
        self._redraw: asyncio.TimerHandle | None = None

    def _take(self, event: Any) -> None:
        if self.model.handle(event) and self._enabled:
            self.draw()

    on_instance_started = on_samples = on_instance_finished = on_instance_failed = _take
    on_task_retry = on_task_cancelled = _take

    def draw(self) -> None:
        """Draw the model as it stands now, and again in :data:`REDRAW_EVERY_S` while it runs."""
        snapshot = self.model.snapshot()
        if snapshot.total > MAX_BARS:
            self._draw_summary(snapshot)
        else:
            for status in snapshot.instances:
                if status.state != "queued" or status.index in self._bars:
                    self._draw_one(status.index, status.fraction, status.text())
        self._schedule(snapshot)

    def _draw_one(self, index: int, fraction: float | None, text: str) -> None:
        bar = self._bars.get(index)
        if bar is None:
            bar = self._bars[index] = self._new_bar(f"instance {index}", index)
        bar.bar_format = _UNKNOWN if fraction is None else _KNOWN
        bar.n = 0.0 if fraction is None else fraction
        bar.unit = text
        bar.refresh()

    def _draw_summary(self, snapshot: ProgressSnapshot) -> None:
        bar = self._bars.get(-1)
        if bar is None:
            bar = self._bars[-1] = self._new_bar("instances", 0)
            bar.bar_format = "{desc}: {n:.0f}/{total:.0f} ended|{bar}| {unit}"
            bar.total = snapshot.total
        bar.n = sum(status.ended for status in snapshot.instances)
        bar.unit = snapshot.summary()
        bar.refresh()

    @staticmethod
    def _new_bar(desc: str, position: int) -> Any:
        from tqdm import tqdm  # type: ignore[import-untyped]

        return tqdm(
            total=1.0,
            desc=desc,
            position=position,
            leave=True,
            file=sys.stderr,
            bar_format=_UNKNOWN,
        )

    def _schedule(self, snapshot: ProgressSnapshot) -> None:
        """Redraw on a timer while an instance runs: samples come with no event."""
        if self._redraw is not None or not any(
            status.state in ("running", "retrying") for status in snapshot.instances
        ):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._redraw = loop.call_later(REDRAW_EVERY_S, self._tick)

    def _tick(self) -> None:
        self._redraw = None
        self.draw()

    def close(self) -> None:
        """Draw the last state and leave every bar as it is."""
        if self._enabled and self._bars:
            self.draw()
        if self._redraw is not None:
            self._redraw.cancel()
            self._redraw = None
        for bar in self._bars.values():
            bar.close()
