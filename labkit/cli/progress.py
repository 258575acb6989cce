"""The terminal's progress bars: one tqdm bar per instance of a run.

The whole interface is :class:`ProgressBars`: built with the run's ``duration``,
subscribed to the run's events, closed when the run ends. What an event means
for an instance's bar is decided here and nowhere else in the command line.
"""

from __future__ import annotations

import sys
from typing import Any

from labkit.events import TaskEvent
from labkit.experiment import InstanceEvent

__all__ = ("ProgressBars",)

# tqdm writes its postfix as ", " + text: the unit comes right before it, so that a bar
# reads "2/20 s, running".
_TIMED = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s{postfix}"
_UNTIMED = "{desc}: {n:.0f} s{postfix}"


class ProgressBars:
    """One tqdm bar per instance, advanced by its samples (seconds of ``duration``).

    Args:
        duration: The run's ``duration`` in seconds (a bar's total), or ``None``
            for a bar that counts the seconds an instance has run.
        enabled: Whether to draw; bars are drawn only when stderr is a terminal.
    """

    def __init__(self, duration: float | None, *, enabled: bool) -> None:
        self._duration = duration
        # tqdm draws only in a terminal; a pipe or a file gets no bars.
        self._enabled = enabled and sys.stderr.isatty()
        self._bars: dict[int, Any] = {}

    def __call__(self, event: InstanceEvent | TaskEvent) -> None:
        """Move the bar an event is about (subscribe this to the run's events)."""
        if not self._enabled:
            return
        if isinstance(event, TaskEvent):
            if event.kind == "retrying" and event.index in self._bars:
                self._bars[event.index].set_postfix_str(f"retry in {event.delay:.1f} s")
            return
        bar = self._bars.get(event.instance)
        if event.kind == "started":
            self._started(event.instance, bar)
        elif bar is None:
            return
        elif event.kind == "sample":
            bar.n = min(event.offset, self._duration or event.offset)
            bar.refresh()
        elif event.kind == "finished":
            bar.n = self._duration or event.offset
            bar.set_postfix_str("ok")
        elif event.kind == "failed":
            bar.set_postfix_str(f"failed: {(event.message or '')[:60]}")

    def _started(self, instance: int, bar: Any) -> None:
        """An attempt of ``instance`` began: its bar, new or reset to zero."""
        if bar is None:
            from tqdm import tqdm  # type: ignore[import-untyped]

            bar = self._bars[instance] = tqdm(
                total=self._duration,
                desc=f"instance {instance}",
                position=instance,
                unit="s",
                bar_format=_TIMED if self._duration else _UNTIMED,
                leave=True,
                file=sys.stderr,
            )
        bar.reset(total=self._duration)
        bar.set_postfix_str("running")

    def close(self) -> None:
        """Leave every bar as it was last drawn."""
        for bar in self._bars.values():
            bar.close()
