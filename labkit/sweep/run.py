"""The sweep itself: check the options, pick the driver, return the frame.

:func:`sweep` runs an :class:`~labkit.experiment.Experiment` once per *trial*,
each trial with its own parameters (merged over the experiment's own) and all
its instances, through a :class:`labkit.Runner` (``max_parallel`` trials at
once), and returns one row per trial with the objective and a ``best`` column
(:mod:`labkit.sweep.frame`). Trials come from a grid, a list or an ask/tell
strategy (:mod:`labkit.sweep.space`); with ``instances=lk.Race(...)`` they are
raced (:mod:`labkit.sweep.racing`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from labkit._checks import check, is_int
from labkit.clock import SYSTEM_CLOCK
from labkit.errors import ConfigError
from labkit.events import as_bus
from labkit.experiment import Experiment
from labkit.experiment.options import check_resources
from labkit.experiment.spec import MAX_INSTANCES
from labkit.seeds import check_seed
from labkit.sweep.board import SweepBoard
from labkit.sweep.decision import RaceDecision
from labkit.sweep.drivers import run_fixed, run_race
from labkit.sweep.frame import sweep_frame
from labkit.sweep.objective import Objective, check_objective
from labkit.sweep.racing import Race
from labkit.sweep.space import Strategy, StudyStrategy, trial_source
from labkit.sweep.trials import TrialRunner

if TYPE_CHECKING:
    from labkit.gpu import GPUPool
    from labkit.store import Store

__all__ = ("sweep",)

RACE_FIELDS = {
    "confidence": "confidence",
    "min_effect": "min_effect",
    "budget": "budget",
    "initial_instances": "initial",
}
"""Racing settings, by the name a caller might pass to :func:`sweep`: fields of :class:`Race`."""


async def sweep(
    experiment: Experiment,
    space: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]] | Strategy | Any,
    *,
    instances: int | Literal["auto", "race"] | Race = 1,
    max_parallel: int = 1,
    objective: Objective,
    direction: Literal["min", "max"] = "min",
    store: Store | None = None,
    resume: bool = True,
    gpu_pool: GPUPool | None = None,
    n_trials: int | None = None,
    seed: int = 0,
    **run_options: Any,
) -> pd.DataFrame:
    """Run ``experiment`` once per parameter set and mark the best trial.

    Each trial is a whole :func:`~labkit.experiment.run_experiment`; all share
    ``gpu_pool``. A trial that raises, or whose objective cannot be computed,
    is recorded as failed (its error keeps the exception's type) and the sweep
    goes on. With ``store`` and ``resume``, finished trials are loaded and
    interrupted ones (a race's too) resume their missing instances.

    Args:
        experiment: What to run; each trial's params are merged over its own.
        space: A dict of lists (the grid), a list of param dicts, a
            :class:`~labkit.sweep.space.Strategy`, or an ``optuna.Study``.
        instances: Instances per trial (as in ``run_experiment``), or the
            racing policy :class:`~labkit.sweep.racing.Race` (``"race"`` is
            ``lk.Race()``; a strategy is then asked ``n_trials`` trials first).
        max_parallel: Trials (racing: batches of instances) running at once.
        objective: A summary figure (``"loss_last"``), a recorded metric (its
            last value per instance, averaged) or a function of the result.
        direction: ``"min"`` or ``"max"``; a study saying otherwise is refused.
        store: Records every trial.
        resume: With ``store``, reuse what it recorded.
        gpu_pool: Where GPUs come from (one ``GPUPool()`` if none is given).
        n_trials: At most this many trials (needed for an optuna study).
        seed: Instance *i* of every trial gets the same ``ctx.seed``.
        **run_options: For ``run_experiment`` (``duration``, ``timeout``,
            ``max_instances`` with ``"auto"``...); ``on_event`` also gets
            :class:`~labkit.events.TrialEvent` and ``SweepEvent`` records.

    Returns:
        One row per trial, in trial order (columns: :mod:`labkit.sweep.frame`).

    Raises:
        ConfigError: An option or the ``space`` is invalid, ``direction``
            contradicts a study's, or ``run_experiment`` refuses its options.
    """
    _check_options(experiment, objective, direction, max_parallel, n_trials, resume)
    policy = _policy(instances, run_options)
    check_resources(gpu_pool, None, store)
    source, strategy = trial_source(space, n_trials)
    _check_study(strategy, direction)
    run_options["seed"] = check_seed(seed)
    trials = TrialRunner(
        experiment=experiment,
        objective=objective,
        store=store,
        resume=resume,
        gpu_pool=_pool(gpu_pool, run_options),
        board=_board(direction, objective, run_options),
        run_options=run_options,
        sweep_id=uuid.uuid4().hex[:8],
    )
    decision = await _drive(trials, policy, instances, source, strategy, max_parallel)
    if trials.refused is not None:
        raise trials.refused
    return sweep_frame(trials.board, decision)


def _check_study(strategy: Strategy | None, direction: str) -> None:
    """Refuse a direction that contradicts the study a strategy asks."""
    if isinstance(strategy, StudyStrategy) and strategy.direction not in (None, direction):
        raise ConfigError(
            "direction",
            direction,
            f'"{strategy.direction}", the direction of the study the strategy asks',
        )


def _board(
    direction: Literal["min", "max"], objective: Objective, run_options: dict[str, Any]
) -> SweepBoard:
    """The sweep's board; it emits to ``run_options``' ``on_event`` (taken out of them)."""
    return SweepBoard(
        direction=direction,
        objective=objective,
        bus=as_bus(run_options.pop("on_event", None)),
        clock=run_options.get("clock") or SYSTEM_CLOCK,
    )


async def _drive(
    trials: TrialRunner,
    policy: Race | None,
    instances: Any,
    source: Any,
    strategy: Strategy | None,
    max_parallel: int,
) -> RaceDecision | None:
    """Run the trials with the fixed or the racing driver; the race's decision, if any."""
    from labkit.runner import Runner

    async with Runner(max_concurrency=max_parallel) as runner:
        if policy is None:
            await run_fixed(runner, trials, strategy, source, instances)
            return None
        asked = list(source)
        decision = await run_race(runner, trials, asked, policy, trials.board.direction)
    if strategy is not None:
        for trial, params in zip(trials.board.trials.values(), asked, strict=True):
            strategy.tell(params, trial.objective if trial.status == "ok" else None)
    return decision


def _policy(instances: Any, run_options: Mapping[str, Any]) -> Race | None:
    """The race a sweep runs (``instances`` itself, ``Race()`` for ``"race"``) or none.

    Raises:
        ConfigError: ``instances`` is invalid, or a racing setting was passed
            to the sweep instead of the :class:`Race`.
    """
    check(
        isinstance(instances, Race)
        or (isinstance(instances, str) and instances in ("auto", "race"))
        or (is_int(instances) and 1 <= instances <= MAX_INSTANCES),
        "instances",
        instances,
        f'an int from 1 to {MAX_INSTANCES}, "auto", or a labkit.Race ("race" is lk.Race())',
    )
    for option, name in RACE_FIELDS.items():
        if option in run_options:
            raise ConfigError(
                option, run_options[option], f"unset: racing takes it as lk.Race({name}=...)"
            )
    if not (isinstance(instances, Race) or instances == "race"):
        return None
    if "max_instances" in run_options:
        raise ConfigError(
            "max_instances",
            run_options["max_instances"],
            "unset when racing: racing takes it as lk.Race(max_instances=...)",
        )
    return instances if isinstance(instances, Race) else Race()


def _check_options(
    experiment: Any,
    objective: Any,
    direction: Any,
    max_parallel: Any,
    n_trials: Any,
    resume: Any,
) -> None:
    """Refuse a bad sweep option before any trial starts."""
    check(isinstance(experiment, Experiment), "experiment", experiment, "a labkit.Experiment")
    check_objective(objective)
    check(direction in ("min", "max"), "direction", direction, '"min" or "max"')
    check(
        is_int(max_parallel) and 1 <= max_parallel <= MAX_INSTANCES,
        "max_parallel",
        max_parallel,
        f"an int from 1 to {MAX_INSTANCES}",
    )
    check(
        n_trials is None or (is_int(n_trials) and n_trials >= 1),
        "n_trials",
        n_trials,
        "an int >= 1, or None",
    )
    check(isinstance(resume, bool), "resume", resume, "True or False")


def _pool(gpu_pool: GPUPool | None, run_options: Mapping[str, Any]) -> GPUPool | None:
    """The sweep's GPU pool: the one given, or one for the whole sweep when GPUs are asked."""
    if run_options.get("gpus_per_instance") and gpu_pool is None:
        from labkit.gpu import GPUPool

        return GPUPool()
    return gpu_pool
