"""The line ``labkit sweep`` prints as each trial ends: its objective, or why it
failed, and the best trial so far."""

from __future__ import annotations

from typing import Any, TextIO

from labkit.cli.objective import CheckedObjective
from labkit.events import TrialEvent
from labkit.experiment import InstanceEvent
from labkit.sweep import SweepEvent

__all__ = ("TrialLines",)


class TrialLines:
    """Prints one line per finished trial (subscribe it to the sweep's events).

    A failed trial's reason is its instances' error when none of them finished
    (the first instance's, as the sweep's ``error`` column has it), else why its
    objective could not be computed.

    Args:
        out: Where the lines go.
        objective: The sweep's objective, which keeps its last failure.
    """

    def __init__(self, out: TextIO, objective: CheckedObjective) -> None:
        self._out = out
        self._objective = objective
        self._finished: dict[int, set[int]] = {}
        self._errors: dict[int, dict[int, str]] = {}

    def __call__(self, event: Any) -> None:
        if isinstance(event, TrialEvent) and isinstance(event.event, InstanceEvent):
            self._instance(event.trial, event.event)
        elif (
            isinstance(event, SweepEvent)
            and event.kind == "trial_finished"
            and self._objective.problem is None  # else the sweep stops with that problem
        ):
            print(self.line(event), file=self._out, flush=True)

    def _instance(self, trial: int, event: InstanceEvent) -> None:
        if event.kind == "finished":
            self._finished.setdefault(trial, set()).add(event.instance)
            self._errors.get(trial, {}).pop(event.instance, None)  # a retry succeeded
        elif event.kind == "failed":
            self._errors.setdefault(trial, {})[event.instance] = event.message or "failed"

    def line(self, event: SweepEvent) -> str:
        """``trial 2 ok: objective 0.31 (best so far: trial 2, 0.31)``, or
        ``trial 3 failed: REASON (best so far: ...)``."""
        stats = event.stats
        best = (
            "no trial succeeded so far"
            if stats.best_trial is None
            else f"best so far: trial {stats.best_trial}, {stats.best_objective:.6g}"
        )
        if event.status == "ok":
            return f"trial {event.trial} ok: objective {event.objective:.6g} ({best})"
        return f"trial {event.trial} failed: {self._reason(event.trial)} ({best})"

    def _reason(self, trial: int | None) -> str:
        if trial is None:
            return "failed"
        errors = self._errors.get(trial, {})
        if not self._finished.get(trial) and errors:
            return errors[min(errors)]
        return self._objective.last_error or "failed"
