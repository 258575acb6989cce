"""A sweep, live: a leaderboard of its trials beside the chart of the current best.

:class:`SweepPanel` is an ``on_event`` callback for :func:`labkit.sweep`: it reads
the :class:`~labkit.sweep.SweepEvent` records (trials starting and ending, with the
sweep's :class:`~labkit.sweep.SweepStats`) and the trials' own instance events,
which reach it wrapped in :class:`~labkit.events.TrialEvent`. Each trial's
instances feed a :class:`labkit.live.LiveTimelineModel` of their own; the chart
shows the best trial's (the leader by its running objective until a trial has
finished).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import ipywidgets as w
import numpy as np

from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import ConfigError
from labkit.events import InstanceEvent, TimelineEvent, TrialEvent
from labkit.live import LiveTimelineModel
from labkit.results import ROUND_TO_INT
from labkit.stats import t_quantile
from labkit.sweep import SweepEvent
from labkit.widgets.live import LiveTimeline

__all__ = ("SweepPanel",)

TrialState = Literal["running", "ok", "failed"]


@dataclass(slots=True)
class _Trial:
    """What the panel knows of one trial."""

    number: int
    state: TrialState = "running"
    objective: float = math.nan  # the sweep's figure, once the trial ended
    last: dict[int, float] = field(default_factory=dict)  # instance -> latest objective metric
    instances: set[int] = field(default_factory=set)
    finished: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)

    def estimate(self) -> tuple[float, float, int]:
        """Mean, 95 % half-width (NaN below 2) and count of the instances' latest values."""
        values = np.fromiter(self.last.values(), dtype=float, count=len(self.last))
        n = values.size
        if n == 0:
            return math.nan, math.nan, 0
        mean = float(values.mean())
        if n < 2:
            return mean, math.nan, 1
        half = t_quantile(0.975, n - 1) * float(values.std(ddof=1)) / math.sqrt(n)
        return mean, half, n


class SweepPanel(w.VBox):  # type: ignore[misc]
    """A live leaderboard of a sweep's trials and the chart of the best one.

    Pass the panel (or :meth:`handle`) as ``on_event`` to :func:`labkit.sweep` and
    display it. The leaderboard lists each trial's state (running, ok, failed),
    its instances (finished of seen) and its objective: the sweep's own figure
    once the trial has ended, and, when ``objective`` names a recorded metric,
    the mean ± 95 % confidence half-width of the instances' latest values of it
    while it runs (which is what the sweep averages for such an objective).

    Args:
        objective: The recorded metric the sweep's objective is named after
            (``None``: the objective is shown once each trial ends).
        direction: ``"min"`` or ``"max"``, until the sweep's first event says.
        top: The most trials listed.
        band: The band of the best trial's chart (as for :class:`LiveTimeline`).
        refresh_every: The most often the leaderboard is redrawn while samples
            arrive, in seconds (a trial starting or ending redraws it at once).
        clock: The clock the chart and the refreshes are timed on.

    Raises:
        ConfigError: If ``direction``, ``top`` or ``refresh_every`` is invalid.
    """

    event_types = (TrialEvent, SweepEvent)
    """What the panel reads; a bus routes it nothing else."""

    def __init__(
        self,
        objective: str | None = None,
        *,
        direction: Literal["min", "max"] = "min",
        top: int = 10,
        band: Any = "std",
        refresh_every: float = 0.5,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if direction not in ("min", "max"):
            raise ConfigError("direction", direction, "'min' or 'max'")
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise ConfigError("top", top, "an integer >= 1")
        if not (isinstance(refresh_every, int | float) and refresh_every >= 0):
            raise ConfigError("refresh_every", refresh_every, "a number of seconds >= 0")
        self.objective = objective
        self.direction: Literal["min", "max"] = direction
        self.top = top
        self._refresh_every = float(refresh_every)
        self._clock = clock
        self._trials: dict[int, _Trial] = {}
        self._models: dict[int, LiveTimelineModel] = {}
        self._best: int | None = None  # the sweep's best, once a trial succeeded
        self._shown: int | None = None
        self._drawn_at = -math.inf
        self.stats: Any = None
        """The latest :class:`~labkit.sweep.SweepStats` the sweep sent."""
        self.chart = LiveTimeline(band=band, clock=clock)
        self.heading = w.HTML()
        self.board = w.HTML()
        self.board.add_class("labkit-sweep-board")
        super().__init__(
            [self.heading, w.HBox([self.board, self.chart.figure])],
        )
        self.add_class("labkit-sweep-panel")
        self._render()

    @property
    def shown_trial(self) -> int | None:
        """The trial whose instances the chart shows."""
        return self._shown

    def __call__(self, event: Any) -> None:
        """Same as :meth:`handle`."""
        self.handle(event)

    def handle(self, event: Any) -> None:
        """Read a sweep's event: a trial's instance event, or a trial starting or ending."""
        if type(event) is TrialEvent:
            inner = event.event
            if type(inner) is InstanceEvent:
                self._instance_event(event.trial, inner)
            elif type(inner) is TimelineEvent:
                self._trial(event.trial)
                self._receiver(event.trial).handle(inner)  # its samples come from the log
        elif type(event) is SweepEvent:
            self._sweep_event(event)

    handle.event_types = event_types  # type: ignore[attr-defined]

    def close(self) -> None:
        """Stop the chart's redraws and close the panel's widgets."""
        if hasattr(self, "chart"):
            self.chart.close()
        super().close()

    # Events ---------------------------------------------------------------------------

    def _trial(self, number: int) -> _Trial:
        trial = self._trials.get(number)
        if trial is None:
            trial = self._trials[number] = _Trial(number)
            self._models[number] = LiveTimelineModel(round_to_int=ROUND_TO_INT, clock=self._clock)
        return trial

    def _receiver(self, number: int) -> LiveTimeline | LiveTimelineModel:
        """Where a trial's events go: the chart while it shows the trial, else its model."""
        return self.chart if number == self._shown else self._models[number]

    def _instance_event(self, number: int, event: InstanceEvent) -> None:
        trial = self._trial(number)
        self._receiver(number).handle(event)
        kind = event.kind
        if kind == "sample":
            metrics = event.metrics
            if self.objective is not None and metrics and self.objective in metrics:
                trial.last[event.instance] = float(metrics[self.objective])
                now = self._clock.now()
                if now - self._drawn_at >= self._refresh_every:
                    self._follow_leader()
                    self._render()
            return
        if kind == "started":
            trial.instances.add(event.instance)
            trial.failed.discard(event.instance)
        elif kind == "finished":
            trial.finished.add(event.instance)
        elif kind == "failed":
            trial.failed.add(event.instance)
            trial.last.pop(event.instance, None)
        else:
            return
        if self._shown is None:
            self._show(number)
        self._render()

    def _sweep_event(self, event: SweepEvent) -> None:
        self.stats = event.stats
        self.direction = event.stats.direction
        if event.trial is not None:
            trial = self._trial(event.trial)
            if event.kind == "trial_finished":
                trial.state = "ok" if event.status == "ok" else "failed"
                trial.objective = float(event.objective)
        self._best = event.stats.best_trial
        self._follow_leader()
        self._render()

    def _follow_leader(self) -> None:
        """Show the best trial: the sweep's, else the leader by its running objective."""
        leader = self._best
        if leader is None:
            ranked = self._ranked()
            leader = ranked[0].number if ranked else None
        if leader is not None and leader != self._shown:
            self._show(leader)

    def _show(self, number: int) -> None:
        self._trial(number)
        self._shown = number
        self.chart.watch(self._models[number])

    # Drawing -------------------------------------------------------------------------

    def _value(self, trial: _Trial) -> float:
        """The figure a trial is ranked by: the sweep's once ended, else the running mean."""
        if trial.state != "running":
            return trial.objective
        return trial.estimate()[0]

    def _ranked(self) -> list[_Trial]:
        """Trials with a figure, best first; then the others by number."""
        sign = 1.0 if self.direction == "min" else -1.0
        valued = [t for t in self._trials.values() if math.isfinite(self._value(t))]
        others = [t for t in self._trials.values() if not math.isfinite(self._value(t))]
        valued.sort(key=lambda t: (t.state != "ok", sign * self._value(t), t.number))
        others.sort(key=lambda t: t.number)
        return valued + others

    def _render(self) -> None:
        self._drawn_at = self._clock.now()
        trials = self._ranked()
        done = sum(t.state != "running" for t in self._trials.values())
        failed = sum(t.state == "failed" for t in self._trials.values())
        goal = "lowest" if self.direction == "min" else "highest"
        name = html.escape(self.objective or "objective")
        shown = "" if self._shown is None else f"; chart: trial {self._shown}"
        self.heading.value = (
            f"<b>Sweep</b>: {len(self._trials)} trials, {done} ended"
            + (f", {failed} failed" if failed else "")
            + f"; {name}, {goal} best{shown}"
        )
        if not trials:
            self.board.value = '<div class="labkit-sweep-empty">No trial has started yet.</div>'
            return
        rows = "".join(self._row(rank, trial) for rank, trial in enumerate(trials[: self.top], 1))
        more = len(trials) - self.top
        self.board.value = (
            '<table style="font-size:12px;border-collapse:collapse">'
            "<thead><tr><th>#</th><th>trial</th><th>state</th>"
            f"<th>{name} (mean ± ci95)</th><th>instances</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>" + (f"<div>and {more} more</div>" if more > 0 else "")
        )

    def _row(self, rank: int, trial: _Trial) -> str:
        mean, half, n = trial.estimate()
        if trial.state != "running" and math.isfinite(trial.objective):
            mean = trial.objective
        figure = "-" if not math.isfinite(mean) else f"{mean:.4g}"
        if math.isfinite(mean) and math.isfinite(half):
            figure += f" ± {half:.2g}"
        seen = len(trial.instances)
        instances = f"{len(trial.finished)}/{seen}" + (
            f", {len(trial.failed)} failed" if trial.failed else ""
        )
        best = trial.number == self._best
        style = ' style="font-weight:bold"' if best else ""
        color = {"running": "#1f77b4", "ok": "#2e7d32", "failed": "#c62828"}[trial.state]
        return (
            f'<tr class="labkit-trial"{style}><td>{rank}</td><td>{trial.number}'
            + (" ★" if best else "")
            + f'</td><td style="color:{color}">{trial.state}</td>'
            f"<td>{figure}</td><td>{instances} (n={n})</td></tr>"
        )
