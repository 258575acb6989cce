"""A sweep, live: a leaderboard of its trials beside the chart of the current best.

:class:`SweepPanel` is an ``on_event`` callback for :func:`labkit.sweep`. It feeds
every event to a :class:`~labkit.sweep.SweepBoard` (the core model: each
trial's state, instances and running estimate, ranked once) and draws the
board's :class:`~labkit.sweep.SweepStats`, as the text
:func:`~labkit.sweep.leaderboard` does: the two differ only in drawing, and the
panel computes no statistic. Each trial's instances also feed a
:class:`labkit.live.LiveTimelineModel` of their own; the chart shows the best
trial's (the leader by its running estimate until a trial has finished).
"""

from __future__ import annotations

import html
import math
from typing import Any, Literal

import ipywidgets as w

from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import ConfigError
from labkit.events import InstanceEvent, TimelineEvent, TrialEvent, Watcher
from labkit.live import LiveTimelineModel
from labkit.plots.style import DEFAULT_BAND
from labkit.results import ROUND_TO_INT
from labkit.sweep import SweepBoard, SweepEvent, SweepStats, TrialStats
from labkit.sweep.objective import Objective, check_objective, objective_name
from labkit.widgets.live import LiveTimeline

__all__ = ("SweepPanel",)

_STATE_COLOURS = {"running": "#1f77b4", "ok": "#2e7d32", "failed": "#c62828"}


class SweepPanel(w.VBox, Watcher):  # type: ignore[misc]
    """A live leaderboard of a sweep's trials and the chart of the best one.

    Pass the panel (or :meth:`handle`) as ``on_event`` to :func:`labkit.sweep` and
    display it. The leaderboard lists each trial's state (running, ok, failed),
    its instances (as many as the sweep's frame will say, racing included) and
    its objective: the sweep's own figure once the trial has ended, else the
    mean of its instances' objectives so far, with the 95 % confidence
    half-width and the number of instances it is over.

    Args:
        objective: The sweep's ``objective``, as the sweep accepts it (a summary
            figure such as ``"loss_last"``, a metric such as ``"loss"``, or a
            function of the result, known only once a trial ends); ``None``:
            the name the sweep's first event gives.
        direction: ``"min"`` or ``"max"``, until the sweep's first event says.
        top: The most trials listed.
        band: The band of the best trial's chart (as for :class:`LiveTimeline`).
        refresh_every: The most often the leaderboard is redrawn while samples
            arrive, in seconds (a trial starting or ending redraws it at once).
        clock: The clock the chart and the refreshes are timed on.

    Raises:
        ConfigError: If ``objective``, ``direction``, ``top`` or ``refresh_every``
            is invalid.
    """

    def __init__(
        self,
        objective: Objective | None = None,
        *,
        direction: Literal["min", "max"] = "min",
        top: int = 10,
        band: Any = DEFAULT_BAND,
        refresh_every: float = 0.5,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if objective is not None:
            check_objective(objective)
        if direction not in ("min", "max"):
            raise ConfigError("direction", direction, "'min' or 'max'")
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise ConfigError("top", top, "an integer >= 1")
        if not (isinstance(refresh_every, int | float) and refresh_every >= 0):
            raise ConfigError("refresh_every", refresh_every, "a number of seconds >= 0")
        self.model = SweepBoard(direction=direction, objective=objective)
        """The board the panel draws (the core model of the sweep's trials)."""
        self.top = top
        self._refresh_every = float(refresh_every)
        self._clock = clock
        self._models: dict[int, LiveTimelineModel] = {}
        self._shown: int | None = None
        self._drawn_at = -math.inf
        self.stats: SweepStats | None = None
        """The latest :class:`~labkit.sweep.SweepStats` the sweep sent."""
        self.chart = LiveTimeline(band=band, clock=clock)
        self.heading = w.HTML()
        self.board = w.HTML()
        self.board.add_class("labkit-sweep-board")
        super().__init__([self.heading, w.HBox([self.board, self.chart.figure])])
        self.add_class("labkit-sweep-panel")
        self._render(self.model.stats())

    @property
    def objective(self) -> Objective | None:
        """The objective the board ranks by."""
        return self.model.objective

    @property
    def direction(self) -> Literal["min", "max"]:
        """``"min"`` or ``"max"``: the sweep's, once it said."""
        return self.model.direction

    @property
    def shown_trial(self) -> int | None:
        """The trial whose instances the chart shows."""
        return self._shown

    def __call__(self, event: Any) -> None:
        """Same as :meth:`handle`."""
        self.handle(event)

    def handle(self, event: Any) -> None:
        """Read a sweep's event: a trial's instance event, or a trial starting or ending."""
        changed = self.model.handle(event)
        if type(event) is TrialEvent:
            self._trial_event(event.trial, event.event, changed)
        elif type(event) is SweepEvent:
            self.stats = event.stats
            self._redraw()

    on_trial_event = on_trial_started = on_trial_finished = on_race_decided = handle

    def close(self) -> None:
        """Stop the chart's redraws and close the panel's widgets."""
        if hasattr(self, "chart"):
            self.chart.close()
        super().close()

    # Events ---------------------------------------------------------------------------

    def _trial_event(self, number: int, inner: Any, changed: bool) -> None:
        if type(inner) not in (InstanceEvent, TimelineEvent):
            return
        self._receiver(number).handle(inner)  # a TimelineEvent's samples come from its log
        if self._shown is None and type(inner) is InstanceEvent and inner.kind == "started":
            self._show(number)
        if changed or self._clock.now() - self._drawn_at >= self._refresh_every:
            self._redraw()

    def _receiver(self, number: int) -> LiveTimeline | LiveTimelineModel:
        """Where a trial's events go: the chart while it shows the trial, else its model."""
        if number not in self._models:
            self._models[number] = LiveTimelineModel(round_to_int=ROUND_TO_INT, clock=self._clock)
        return self.chart if number == self._shown else self._models[number]

    def _redraw(self) -> None:
        stats = self.model.stats()
        self._follow_leader(stats)
        self._render(stats)

    def _follow_leader(self, stats: SweepStats) -> None:
        """Show the best trial: the sweep's, else the leader by its running estimate."""
        leader = stats.best_trial
        if leader is None and stats.leaderboard and math.isfinite(stats.leaderboard[0].figure):
            leader = stats.leaderboard[0].trial
        if leader is not None and leader != self._shown:
            self._show(leader)

    def _show(self, number: int) -> None:
        self._receiver(number)
        self._shown = number
        self.chart.watch(self._models[number])

    # Drawing -------------------------------------------------------------------------

    def _render(self, stats: SweepStats) -> None:
        self._drawn_at = self._clock.now()
        goal = "lowest" if stats.direction == "min" else "highest"
        objective = self.model.objective
        name = html.escape("objective" if objective is None else objective_name(objective))
        shown = "" if self._shown is None else f"; chart: trial {self._shown}"
        self.heading.value = (
            f"<b>Sweep</b>: {stats.started} trials, {stats.finished} ended"
            + (f", {stats.failed} failed" if stats.failed else "")
            + f"; {name}, {goal} best{shown}"
            + (f"<br>{html.escape(stats.decision)}" if stats.decision else "")
        )
        if not stats.leaderboard:
            self.board.value = '<div class="labkit-sweep-empty">No trial has started yet.</div>'
            return
        shown_rows = stats.leaderboard[: self.top]
        rows = "".join(
            _row(place, trial, stats.best_trial) for place, trial in enumerate(shown_rows, 1)
        )
        more = len(stats.leaderboard) - self.top
        self.board.value = (
            '<table style="font-size:12px;border-collapse:collapse">'
            "<thead><tr><th>#</th><th>trial</th><th>state</th>"
            f"<th>{name} (mean ± ci95, n)</th><th>instances</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>" + (f"<div>and {more} more</div>" if more > 0 else "")
        )


def _row(place: int, trial: TrialStats, best: int | None) -> str:
    """One trial's row: what its :class:`~labkit.sweep.TrialStats` says, as HTML."""
    figure = "-" if not math.isfinite(trial.figure) else f"{trial.figure:.4g}"
    if math.isfinite(trial.figure) and math.isfinite(trial.ci95):
        figure += f" ± {trial.ci95:.2g}"
    figure += f" (n={trial.n})"
    instances = f"{trial.instances}" + (
        f", {trial.failed_instances} failed" if trial.failed_instances else ""
    )
    is_best = trial.trial == best
    style = ' style="font-weight:bold"' if is_best else ""
    return (
        f'<tr class="labkit-trial"{style}><td>{place}</td><td>{trial.trial}'
        + (" ★" if is_best else "")
        + f'</td><td style="color:{_STATE_COLOURS[trial.state]}">{trial.state}</td>'
        f"<td>{figure}</td><td>{instances}</td></tr>"
    )
