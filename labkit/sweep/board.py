"""The sweep's board: every trial's state and running estimate, the model its views draw.

A :class:`SweepBoard` is fed two ways. The sweep feeds its own as trials start,
grow (a racing round's instances) and end, and emits a
:class:`~labkit.sweep.records.SweepEvent` with the snapshot after each step. A
watcher (the notebook's ``SweepPanel``) feeds one the events it receives
(:meth:`SweepBoard.handle`): the sweep's snapshots, and its trials' own events,
whose sample logs give each running instance's objective between two
snapshots. Either way :meth:`SweepBoard.stats` is the one
:class:`~labkit.sweep.records.SweepStats` that the text leaderboard and the
panel draw: the estimates are :func:`labkit.stats.mean` of the instances'
objectives, computed here and nowhere in a view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from labkit import stats as estimates
from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.events import EventBus, InstanceEvent, TimelineEvent, TrialEvent, Watcher
from labkit.results import InstanceResult
from labkit.samplelog import SampleLog
from labkit.sweep.objective import Objective, live_value
from labkit.sweep.records import SweepEvent, SweepStats, TrialState, TrialStats

__all__ = ("SweepBoard", "Trial")


@dataclass(slots=True)
class Trial:
    """One trial as a board knows it: filled in by the sweep, or from its events.

    Attributes:
        number: The trial's number.
        params: Its parameters.
        status: ``"running"``, then ``"ok"`` or ``"failed"``.
        objective: The sweep's figure once ended ok, else NaN.
        resumed: Loaded from (or resumed in) the store.
        experiment_id: The store's key of its experiment.
        error: Why it failed.
        summary: Its experiment's summary, once ended.
        instances: Its experiment's instances, once ended (the sweep's side).
        values: Each finished instance's objective, in instance order (NaN
            where it failed or has none).
        finished_order: The order it ended in.
        reported: Instances and failed instances a sweep's snapshot reported
            (a watcher's board).
        logs: Each running instance's samples, by instance (from its events).
        started: Instances seen starting.
        failed: Instances whose last attempt failed.
    """

    number: int
    params: dict[str, Any] = field(default_factory=dict)
    status: TrialState = "running"
    objective: float = math.nan
    resumed: bool = False
    experiment_id: str | None = None
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    instances: list[InstanceResult] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    finished_order: int | None = None
    reported: tuple[int, int] = (0, 0)
    logs: dict[int, SampleLog] = field(default_factory=dict)
    started: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)

    def observe(self, event: Any) -> bool:
        """Take in one of the trial's own events; whether it changed what is shown."""
        if type(event) is TimelineEvent:
            self.logs[event.instance] = event.log
            return True
        if type(event) is not InstanceEvent or event.kind == "sample":
            return False
        if event.kind == "started":
            self.started.add(event.instance)
            self.failed.discard(event.instance)
        elif event.kind == "failed":
            self.failed.add(event.instance)
            self.logs.pop(event.instance, None)  # its samples no longer count
        return event.kind in ("started", "failed", "finished")

    def stats(self, objective: Objective | None) -> TrialStats:
        """The trial's snapshot, its estimate over finished and running instances."""
        known = list(self.values)
        live = (
            [live_value(log, objective) for i, log in sorted(self.logs.items()) if i >= len(known)]
            if self.status == "running" and objective is not None
            else []
        )
        finite = [value for value in (*known, *live) if math.isfinite(value)]
        estimate = estimates.mean(finite) if finite else None
        seen = set(range(len(known))) | self.started | set(self.logs)
        count = max(len(seen), len(self.instances), self.reported[0])
        failed = sum(not instance.ok for instance in self.instances)
        return TrialStats(
            trial=self.number,
            state=self.status,
            params=dict(self.params),
            objective=self.objective,
            mean=math.nan if estimate is None else estimate.estimate,
            ci95=math.nan if estimate is None else estimate.half_width,
            n=0 if estimate is None else estimate.n,
            instances=count,
            failed_instances=max(failed, len(self.failed), self.reported[1]),
            values=tuple(known),
            finished_order=self.finished_order,
            error=self.error,
        )

    def adopt(self, snapshot: TrialStats) -> None:
        """Take what a sweep's snapshot says of this trial (a watcher's board)."""
        self.params = dict(snapshot.params)
        self.status = snapshot.state
        self.objective = snapshot.objective
        self.values = list(snapshot.values)
        self.finished_order = snapshot.finished_order
        self.error = snapshot.error
        self.reported = (snapshot.instances, snapshot.failed_instances)
        if snapshot.state != "running":
            self.logs.clear()


@dataclass(slots=True, kw_only=True)
class SweepBoard:
    """A sweep's trials and the snapshot its views draw.

    Attributes:
        direction: ``"min"`` or ``"max"``.
        objective: What the sweep optimises; ``None`` on a watcher's board
            until the sweep's first snapshot names it.
        bus: Where the sweep's own board emits its
            :class:`~labkit.sweep.records.SweepEvent` (``None``: nowhere).
        clock: The clock event times are read from.
        trials: The trials, by number.
        decision: What a race decided so far.
    """

    direction: Literal["min", "max"] = "min"
    objective: Objective | None = None
    bus: EventBus | None = None
    clock: Clock = SYSTEM_CLOCK
    trials: dict[int, Trial] = field(default_factory=dict)
    decision: str | None = None
    ended: int = field(default=0, init=False)
    """Trials ended so far (the next one's ``finished_order``)."""

    def trial(self, number: int) -> Trial:
        """The trial numbered ``number``, added when first seen."""
        found = self.trials.get(number)
        if found is None:
            found = self.trials[number] = Trial(number)
        return found

    def stats(self) -> SweepStats:
        """The sweep now: every trial's snapshot, ranked, and the best."""
        name = self.objective if isinstance(self.objective, str) else None
        return SweepStats.of(
            (trial.stats(self.objective) for trial in self.trials.values()),
            self.direction,
            decision=self.decision,
            objective=name,
        )

    def best(self) -> Trial | None:
        """The best trial that ended ok, as :meth:`stats` ranks it."""
        best = self.stats().best_trial
        return None if best is None else self.trials[best]

    # The sweep's side ------------------------------------------------------------------

    def started(self, trial: Trial) -> None:
        """A trial starts: it joins the board."""
        self.trials[trial.number] = trial
        self._emit("trial_started", trial)

    def finished(self, trial: Trial) -> None:
        """A trial ended (its row filled in): it takes its place in the finishing order."""
        if trial.status == "running":
            trial.status = "failed"
        trial.finished_order = self.ended
        trial.logs.clear()
        self.ended += 1
        self._emit("trial_finished", trial)

    def decided(self, statement: str) -> None:
        """A racing round ended with ``statement``."""
        self.decision = statement
        self._emit("decided", None)

    def wrap(self, number: int, event: Any) -> None:
        """One of trial ``number``'s events: noted, then passed on wrapped in a TrialEvent."""
        self.trial(number).observe(event)
        if self.bus:
            self.bus.emit(TrialEvent(number, event))

    def relay(self, number: int) -> TrialRelay:
        """What watches trial ``number``'s experiment for this board (its ``on_event``)."""
        return TrialRelay(self, number)

    def _emit(
        self, kind: Literal["trial_started", "trial_finished", "decided"], trial: Trial | None
    ) -> None:
        if not self.bus:
            return
        ended = trial is not None and kind == "trial_finished"
        self.bus.emit(
            SweepEvent(
                kind,
                self.clock.now(),
                None if trial is None else trial.number,
                trial.status if ended and trial is not None else None,
                trial.objective if ended and trial is not None else math.nan,
                self.stats(),
            )
        )

    # A watcher's side ------------------------------------------------------------------

    def handle(self, event: Any) -> bool:
        """Take in one event a sweep emitted; whether it changed what is shown.

        A :class:`~labkit.events.TrialEvent` updates its trial's instances and
        sample logs; a :class:`~labkit.sweep.records.SweepEvent` replaces what
        the board knows of every trial with the sweep's snapshot.
        """
        if type(event) is TrialEvent:
            return self.trial(event.trial).observe(event.event)
        if type(event) is not SweepEvent:
            return False
        snapshot = event.stats
        self.direction = snapshot.direction
        self.decision = snapshot.decision
        if self.objective is None:
            self.objective = snapshot.objective
        for trial in snapshot.leaderboard:
            self.trial(trial.trial).adopt(trial)
        return True


class TrialRelay(Watcher):
    """Watches one trial's experiment: notes its instances on the board, and passes
    its events on to the sweep's watchers, each wrapped in a
    :class:`~labkit.events.TrialEvent`.

    The board reads the instances' state changes and sample logs. Task events are
    relayed only when some watcher of the sweep reads trial events, and per-sample
    events only when one reads a trial's samples one by one, so a sweep nobody
    watches that closely builds none of them.
    """

    def __init__(self, board: SweepBoard, number: int) -> None:
        self._board = board
        self._number = number
        bus = board.bus
        if bus is not None and bus.route(TrialEvent, "started"):
            for method in _TASKS:
                setattr(self, method, self._relay)  # an instance attribute overrides it
        if bus is not None and bus.route(TrialEvent, "sample"):
            setattr(self, "on_sample", self._relay)  # noqa: B010 (an instance override)

    def _relay(self, event: Any) -> None:
        self._board.wrap(self._number, event)

    on_instance_started = on_samples = on_instance_log = _relay
    on_instance_finished = on_instance_failed = _relay


_TASKS = (
    "on_task_queued",
    "on_task_started",
    "on_task_retry",
    "on_task_succeeded",
    "on_task_failed",
    "on_task_cancelled",
)
"""What a trial's relay reads only for watchers of the sweep's trial events."""
