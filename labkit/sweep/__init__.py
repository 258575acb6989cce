"""Parameter sweeps: one experiment run over many parameter sets, the best one marked.

:func:`sweep` runs an experiment once per *trial* (a grid, a list of parameter
sets or an ask/tell :class:`Strategy`) and returns one row per trial with its
objective and a ``best`` column. With ``instances=lk.Race(...)`` (or ``"race"``)
it races its trials: a few instances each, then one more per round for every
trial not yet ruled out, a decision that is wrong at most ``1 - confidence`` of
the time. Watchers get a :class:`SweepEvent` as each trial starts and ends,
with a :class:`SweepStats` snapshot whose leaderboard ranks every trial by its
objective or running estimate; :func:`leaderboard` prints it, and
:class:`SweepBoard` is the model a live view feeds with a sweep's events.

The modules, one idea each: :mod:`~labkit.sweep.space` (where trials come
from), :mod:`~labkit.sweep.objective` (what is optimised),
:mod:`~labkit.sweep.records` (snapshots, events, the ranking, the text),
:mod:`~labkit.sweep.board` (the trials' state and estimates),
:mod:`~labkit.sweep.frame` (the returned frame), :mod:`~labkit.sweep.trials`
(running one trial), :mod:`~labkit.sweep.drivers` (fixed and racing),
:mod:`~labkit.sweep.racing` and :mod:`~labkit.sweep.decision` (the race and its
confidence sequences), :mod:`~labkit.sweep.run` (:func:`sweep` itself).
"""

from labkit.sweep.board import SweepBoard
from labkit.sweep.decision import RaceDecision, judge
from labkit.sweep.objective import (
    Objective,
    instance_values,
    live_value,
    objective_value,
    recorded_names,
    resolve_objective,
)
from labkit.sweep.racing import Race, next_round, race
from labkit.sweep.records import SweepEvent, SweepStats, TrialStats, leaderboard, rank
from labkit.sweep.run import sweep
from labkit.sweep.space import Strategy, StudyStrategy

__all__ = (
    "Objective",
    "Race",
    "RaceDecision",
    "Strategy",
    "StudyStrategy",
    "SweepBoard",
    "SweepEvent",
    "SweepStats",
    "TrialStats",
    "instance_values",
    "judge",
    "leaderboard",
    "live_value",
    "next_round",
    "objective_value",
    "race",
    "rank",
    "recorded_names",
    "resolve_objective",
    "sweep",
)
