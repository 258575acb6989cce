"""The frame a sweep returns: one row per trial, built column group by column group.

Columns, in order: ``trial``; one per parameter; ``status`` (``"ok"`` or
``"failed"``); ``objective`` (NaN when failed); ``objective_ci95`` and
``objective_n`` (the 95 % half-width of the mean of the instances' objectives,
and how many instances have one: what the live board showed); ``best`` (exactly
one True when any trial succeeded: among equal objectives the trial that
finished first, as optuna's ``best_trial``; in a race, the race's leader);
``tied_with_best`` (racing: still racing when every trial left reached
``max_instances``, never ruled out; otherwise an objective equal to the best's);
``instances`` (instances run); ``resumed`` (loaded from the store);
``experiment_id``; ``error``; ``finished_order``; then the scalar figures of each
trial's summary (``summary.<key>`` where a key clashes with a column above).
``frame.attrs`` holds ``direction``, ``params`` (the parameter columns) and, for
a race, ``decision``: what was decided, as a sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from labkit.sweep.board import SweepBoard, Trial
from labkit.sweep.decision import RaceDecision

__all__ = ("sweep_frame",)

OUTCOME_COLUMNS = (
    "status",
    "objective",
    "objective_ci95",
    "objective_n",
    "best",
    "tied_with_best",
    "instances",
    "resumed",
    "experiment_id",
    "error",
    "finished_order",
)

Columns = dict[str, list[Any]]


def sweep_frame(board: SweepBoard, decision: RaceDecision | None) -> pd.DataFrame:
    """The sweep's frame (the columns are in this module's docstring)."""
    trials = sorted(board.trials.values(), key=lambda trial: trial.number)
    params = list(dict.fromkeys(name for trial in trials for name in trial.params))
    best = _best(board, trials, decision)
    columns: Columns = {"trial": [trial.number for trial in trials]}
    columns.update({name: [trial.params.get(name) for trial in trials] for name in params})
    columns.update(_outcomes(board, trials, best, _tied(trials, best, decision)))
    columns.update(_summaries(trials, taken={"trial", *params, *OUTCOME_COLUMNS}))
    frame = pd.DataFrame(columns)
    for column in ("objective", "objective_ci95"):
        frame[column] = frame[column].astype("float64")
    for column in ("objective_n", "instances"):
        frame[column] = frame[column].astype("int64")
    for column in ("best", "tied_with_best", "resumed"):
        frame[column] = frame[column].astype(bool)
    frame.attrs["direction"] = board.direction
    frame.attrs["params"] = params
    if board.decision is not None:
        frame.attrs["decision"] = board.decision
    return frame


def _best(board: SweepBoard, trials: Sequence[Trial], decision: RaceDecision | None) -> int | None:
    """The best trial: the race's leader (what its comparisons were made against), else
    the board's best."""
    if decision is not None and decision.leader is not None:
        return decision.leader
    best = board.best()
    return None if best is None else best.number


def _tied(trials: Sequence[Trial], best: int | None, decision: RaceDecision | None) -> set[int]:
    """The trials tied with the best (never the best itself)."""
    if best is None:
        return set()
    if decision is not None:
        # Only trials examined to the end are tied; an undecided race says so.
        tied = set(decision.contenders) if decision.ending == "max_instances" else set()
    else:
        value = next(trial.objective for trial in trials if trial.number == best)
        tied = {
            trial.number for trial in trials if trial.status == "ok" and trial.objective == value
        }
    return tied - {best}


def _outcomes(
    board: SweepBoard, trials: Sequence[Trial], best: int | None, tied: set[int]
) -> Columns:
    """What each trial came to: status, objective and its estimate, best, instances."""
    estimates = [trial.stats(board.objective) for trial in trials]
    return {
        "status": [trial.status for trial in trials],
        "objective": [trial.objective for trial in trials],
        "objective_ci95": [estimate.ci95 for estimate in estimates],
        "objective_n": [estimate.n for estimate in estimates],
        "best": [trial.number == best for trial in trials],
        "tied_with_best": [trial.number in tied for trial in trials],
        "instances": [len(trial.instances) for trial in trials],
        "resumed": [trial.resumed for trial in trials],
        "experiment_id": [trial.experiment_id for trial in trials],
        "error": [trial.error for trial in trials],
        "finished_order": [trial.finished_order for trial in trials],
    }


def _summaries(trials: Sequence[Trial], *, taken: set[str]) -> Columns:
    """Each scalar summary figure, one column each (``summary.<key>`` on a clash)."""
    names = dict.fromkeys(
        name
        for trial in trials
        for name, value in trial.summary.items()
        if value is None or isinstance(value, bool | int | float | str | np.number)
    )
    return {
        (f"summary.{name}" if name in taken else name): [
            trial.summary.get(name) for trial in trials
        ]
        for name in names
    }
