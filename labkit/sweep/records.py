"""A sweep's snapshots and events, its one ranking, and the leaderboard as text.

:class:`SweepStats` is what a sweep's watchers read: every trial's
:class:`TrialStats` (its state, its objective once ended, and its running
estimate: mean, ci95 and n over its instances' objectives), ranked once by
:func:`rank`. The text :func:`leaderboard` and the notebook's ``SweepPanel``
both draw that ranking; they differ only in drawing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import pandas as pd

from labkit.events import name_methods

__all__ = ("SweepEvent", "SweepStats", "TrialState", "TrialStats", "leaderboard", "rank")

TrialState = Literal["running", "ok", "failed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialStats:
    """One trial of a sweep, as far as it has gone.

    Attributes:
        trial: The trial's number (its ``trial`` column).
        state: ``"running"``, ``"ok"`` or ``"failed"``.
        params: Its parameters.
        objective: The sweep's figure once the trial ended ok (the frame's
            ``objective``), else NaN.
        mean: The running estimate: the mean of its instances' objectives
            (each instance's figure or last metric value; for a running
            instance, the figure of its samples so far), NaN without one.
        ci95: The mean's 95 % Student t half-width (:func:`labkit.stats.mean`),
            NaN below 2 values.
        n: The instances the estimate is over (those with a finite objective).
        instances: Instances run or running (the frame's ``instances`` once ended).
        failed_instances: Instances that failed.
        values: The objective of each finished instance, in instance order
            (NaN where it failed or has none): what the estimate's ended part is.
        finished_order: The order it ended in (``None`` while running).
        error: Why it failed, if it did.
    """

    trial: int
    state: TrialState
    params: Mapping[str, Any] = field(default_factory=dict)
    objective: float = math.nan
    mean: float = math.nan
    ci95: float = math.nan
    n: int = 0
    instances: int = 0
    failed_instances: int = 0
    values: tuple[float, ...] = ()
    finished_order: int | None = None
    error: str | None = None

    @property
    def figure(self) -> float:
        """What it is ranked by: the objective once ended ok, else the running mean."""
        return self.objective if self.state == "ok" else self.mean


@dataclass(frozen=True, slots=True)
class SweepStats:
    """A snapshot of a running sweep, for a live leaderboard.

    Attributes:
        started: Trials started so far.
        finished: Trials ended (ok or failed).
        failed: Trials that failed.
        running: Trials running now.
        direction: ``"min"`` or ``"max"``.
        best_trial: The best trial so far (``None`` before any succeeded).
        best_objective: Its objective (NaN before).
        best_params: Its parameters.
        leaderboard: Every trial, ranked by :func:`rank`: the trials that ended
            ok by objective (ties: the one that finished first, as optuna's
            ``best_trial``), then running trials by their running mean, then
            the rest by number.
        decision: For a racing sweep, what was decided so far, else ``None``.
        objective: The objective's name (``None`` for a function of the result).
    """

    started: int
    finished: int
    failed: int
    running: int
    direction: Literal["min", "max"]
    best_trial: int | None
    best_objective: float
    best_params: Mapping[str, Any]
    leaderboard: tuple[TrialStats, ...]
    decision: str | None = None
    objective: str | None = None

    @classmethod
    def of(
        cls,
        trials: Iterable[TrialStats],
        direction: Literal["min", "max"],
        *,
        decision: str | None = None,
        objective: str | None = None,
    ) -> SweepStats:
        """The snapshot of ``trials``: counts, ranking and best."""
        ranked = rank(trials, direction)
        ended = sum(trial.state != "running" for trial in ranked)
        best = ranked[0] if ranked and ranked[0].state == "ok" else None
        return cls(
            started=len(ranked),
            finished=ended,
            failed=sum(trial.state == "failed" for trial in ranked),
            running=len(ranked) - ended,
            direction=direction,
            best_trial=None if best is None else best.trial,
            best_objective=math.nan if best is None else best.objective,
            best_params=dict(best.params) if best is not None else {},
            leaderboard=ranked,
            decision=decision,
            objective=objective,
        )


class SweepEvent(NamedTuple):
    """A trial of a sweep started or ended; ``stats`` is the sweep after it.

    Attributes:
        kind: ``"trial_started"``, ``"trial_finished"`` (ok or failed: see
            ``status``) or ``"decided"`` (a racing round ended).
        time: When, in seconds on the trials' clock (``clock=`` in the run
            options; the system clock by default).
        trial: The trial's number (``None`` for ``decided``).
        status: For ``trial_finished``: ``"ok"`` or ``"failed"``.
        objective: For ``trial_finished``: its objective (NaN when failed).
        stats: The sweep's :class:`SweepStats` right after this event.
    """

    kind: Literal["trial_started", "trial_finished", "decided"]
    time: float
    trial: int | None
    status: str | None
    objective: float
    stats: SweepStats


name_methods(
    SweepEvent,
    {
        "trial_started": "on_trial_started",
        "trial_finished": "on_trial_finished",
        "decided": "on_race_decided",
    },
)


def rank(trials: Iterable[TrialStats], direction: Literal["min", "max"]) -> tuple[TrialStats, ...]:
    """The one ranking of a sweep's trials, best first.

    Trials that ended ok come first, by objective (ties: the first to finish),
    then running trials with a running mean, by that mean (ties: the lower
    number), then the others (running without a value yet, failed) by number.
    """
    sign = 1.0 if direction == "min" else -1.0
    trials = list(trials)
    ended = [t for t in trials if t.state == "ok" and math.isfinite(t.objective)]
    listed = {t.trial for t in ended}
    pool = [t for t in trials if t.trial not in listed]
    running = [t for t in pool if t.state == "running" and math.isfinite(t.mean)]
    listed.update(t.trial for t in running)
    rest = [t for t in pool if t.trial not in listed]
    ended.sort(key=lambda t: (sign * t.objective, _order(t.finished_order), t.trial))
    running.sort(key=lambda t: (sign * t.mean, t.trial))
    rest.sort(key=lambda t: t.trial)
    return (*ended, *running, *rest)


def _order(finished_order: int | None) -> float:
    return math.inf if finished_order is None else finished_order


def leaderboard(source: SweepStats | pd.DataFrame, *, top: int = 10) -> str:
    """The best trials as a few lines of text, best first (the ranking of :func:`rank`).

    Args:
        source: A :class:`SweepStats` snapshot or the frame ``sweep`` returned.
        top: How many trials to show.

    Returns:
        One line per trial: rank, trial, objective ± its ci95, instances and
        (for a frame) the parameters; then the decision of a racing sweep, if any.
    """
    if isinstance(source, SweepStats):
        shown = [t for t in source.leaderboard if t.state != "failed"]
        params: list[str] = []
        decision = source.decision
    else:
        direction = source.attrs.get("direction", "min")
        shown = [t for t in rank(_from_frame(source), direction) if t.state == "ok"]
        params = list(source.attrs.get("params", []))
        decision = source.attrs.get("decision")
    lines = [_line(place, trial, params) for place, trial in enumerate(shown[:top], start=1)]
    if not any(trial.state == "ok" for trial in shown):
        lines.append("no trial succeeded")
    if decision:
        lines.append(decision)
    return "\n".join(lines)


def _line(place: int, trial: TrialStats, params: list[str]) -> str:
    figure = f"{trial.figure:.6g}" if math.isfinite(trial.figure) else "-"
    if math.isfinite(trial.figure) and math.isfinite(trial.ci95):
        figure += f" ± {trial.ci95:.2g} ci95 (n={trial.n})"
    state = "" if trial.state == "ok" else f", {trial.state}"
    count = f"({trial.instances} instances{state})"
    line = f"{place:>3}. trial {trial.trial:<4} objective {figure}  {count}"
    settings = " ".join(f"{name}={trial.params.get(name)!r}" for name in params)
    return f"{line}  {settings}".rstrip()


def _from_frame(frame: pd.DataFrame) -> list[TrialStats]:
    """The ended trials of a sweep's frame as :class:`TrialStats`, for the same ranking."""
    params = list(frame.attrs.get("params", []))
    trials = []
    for row in frame.to_dict("records"):
        order = row.get("finished_order")
        trials.append(
            TrialStats(
                trial=int(row["trial"]),
                state="ok" if row["status"] == "ok" else "failed",
                params={name: row[name] for name in params},
                objective=float(row["objective"]),
                mean=float(row["objective"]),
                ci95=float(row.get("objective_ci95", math.nan)),
                n=int(row.get("objective_n", 0)),
                instances=int(row["instances"]),
                finished_order=None if order is None or pd.isna(order) else int(order),
            )
        )
    return trials
