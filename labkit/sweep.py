"""Parameter sweeps: one experiment run over many parameter sets, the best one marked.

:func:`sweep` runs an :class:`~labkit.experiment.Experiment` once per *trial*, each
trial with its own parameters (merged over the experiment's own) and all its
instances, and returns one row per trial with the objective and a ``best`` column.

Where trials come from (``space``):

- a dict of lists: the grid, every combination (``{"lr": [0.1, 0.01], "bs": [32, 64]}``
  is 4 trials, in ``itertools.product`` order);
- a list of parameter dicts, run as given;
- an ask/tell :class:`Strategy`: ``ask()`` gives the next parameters (``None`` when
  done), ``tell(params, value)`` hears back the objective (``None`` for a failed
  trial). An ``optuna.Study`` becomes one through :class:`StudyStrategy`.

With a store and ``resume=True`` a trial whose experiment (same name, params and
instance count) already finished in the store is loaded instead of run; one that
was interrupted resumes its missing instances.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from labkit.errors import ConfigError, check
from labkit.experiment import Experiment, run_experiment
from labkit.results import ExperimentResult, error_text

if TYPE_CHECKING:
    from labkit.gpu import GPUPool
    from labkit.store import Store

__all__ = ("Objective", "Strategy", "StudyStrategy", "objective_value", "sweep")

Objective = str | Callable[[ExperimentResult], float]
"""A summary key, a recorded metric's name, or a function of the result."""

_COLUMNS = ("trial", "status", "objective", "best", "resumed", "experiment_id", "error")


@runtime_checkable
class Strategy(Protocol):
    """An ask/tell search: it proposes parameters and learns from their objective."""

    def ask(self) -> Mapping[str, Any] | None:
        """The next trial's parameters, or ``None`` when the search is over."""
        ...

    def tell(self, params: Mapping[str, Any], value: float | None) -> None:
        """The objective of a trial ``ask`` proposed; ``None`` when it failed."""
        ...


class StudyStrategy:
    """An ``optuna.Study`` (or anything with its ask/tell API) as a :class:`Strategy`.

    optuna is not a labkit dependency: the study is used through ``ask`` and
    ``tell`` only. Set the study's own direction to match ``sweep``'s.

    Args:
        study: The study: ``ask(fixed_distributions=None)`` returns a trial with
            a ``params`` dict; ``tell(trial, value)`` or ``tell(trial,
            state=FAIL)`` finishes it.
        space: The search space, either ``{name: distribution}`` (optuna's
            ``FloatDistribution`` and the like, passed to ``study.ask``) or a
            function ``space(trial) -> params`` calling ``trial.suggest_*``
            (define-by-run). ``None`` takes whatever ``trial.params`` holds.

    Example:
        >>> study = optuna.create_study(direction="minimize")
        >>> space = lambda trial: {"lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True)}
        >>> await lk.sweep(exp, StudyStrategy(study, space), n_trials=20, objective="loss")
    """

    def __init__(
        self,
        study: Any,
        space: Mapping[str, Any] | Callable[[Any], Mapping[str, Any]] | None = None,
    ) -> None:
        check(
            callable(getattr(study, "ask", None)) and callable(getattr(study, "tell", None)),
            "study",
            study,
            "an object with ask() and tell() (an optuna.Study)",
        )
        self.study = study
        self.space = space
        self._asked: list[tuple[dict[str, Any], Any]] = []

    def ask(self) -> dict[str, Any]:
        """Ask the study for a trial and return its parameters.

        Raises:
            ConfigError: The trial has no parameters: the study needs a ``space``.
        """
        if isinstance(self.space, Mapping):
            trial = self.study.ask(dict(self.space))
            params = dict(trial.params)
        elif callable(self.space):
            trial = self.study.ask()
            params = dict(self.space(trial))
        else:
            trial = self.study.ask()
            params = dict(getattr(trial, "params", None) or {})
        if not params:
            raise ConfigError(
                "space",
                self.space,
                "a search space: {name: distribution} or a function trial -> params",
            )
        self._asked.append((params, trial))
        return params

    def tell(self, params: Mapping[str, Any], value: float | None) -> None:
        """Finish the study's trial for ``params`` with ``value`` (``None``: failed)."""
        # The very dict ask() returned identifies its trial even when two parallel
        # trials have equal params; equality is the fallback for a copy.
        position = next((i for i, (asked, _) in enumerate(self._asked) if asked is params), None)
        if position is None:
            wanted = dict(params)
            position = next(
                (i for i, (asked, _) in enumerate(self._asked) if asked == wanted), None
            )
        if position is None:
            return
        _, trial = self._asked.pop(position)
        if value is None:
            self.study.tell(trial, state=_failed_state())
        else:
            self.study.tell(trial, value)


def _failed_state() -> Any:
    try:
        trial_module = importlib.import_module("optuna.trial")
    except ImportError:
        # A study that only looks like optuna's gets the state by name.
        return "FAIL"
    return trial_module.TrialState.FAIL


def objective_value(result: ExperimentResult, objective: Objective) -> float:
    """The objective of one finished experiment.

    Args:
        result: The experiment's result.
        objective: A callable on the result; else a key of ``result.summary``;
            else a metric recorded in the timelines, whose last value in each
            successful instance is averaged over those instances.

    Returns:
        The value as a float.

    Raises:
        KeyError: ``objective`` names neither a summary figure nor a metric.
        ValueError: The value is not a finite number.
    """
    if callable(objective):
        raw = objective(result)
    elif objective in result.summary:
        raw = result.summary[objective]
    else:
        last = [
            values[-1]
            for instance in result.instances
            if instance.ok and objective in instance.timeline.columns
            for values in [instance.timeline[objective].dropna().to_numpy(dtype=float)]
            if values.size
        ]
        if not last:
            raise KeyError(f"objective {objective!r} is neither a summary key nor a metric")
        raw = float(np.mean(last))
    if isinstance(raw, bool) or not isinstance(raw, int | float | np.number):
        raise ValueError(f"objective is {raw!r}, not a number")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"objective is {value}")
    return value


@dataclass(slots=True)
class _Trial:
    number: int
    params: dict[str, Any]
    status: Literal["ok", "failed"] = "failed"
    objective: float = math.nan
    resumed: bool = False
    experiment_id: str | None = None
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


async def sweep(
    experiment: Experiment,
    space: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]] | Strategy | Any,
    *,
    instances: int | Literal["auto"] = 1,
    max_parallel: int = 1,
    objective: Objective,
    direction: Literal["min", "max"] = "min",
    store: Store | None = None,
    resume: bool = True,
    gpu_pool: GPUPool | None = None,
    n_trials: int | None = None,
    **run_options: Any,
) -> pd.DataFrame:
    """Run ``experiment`` once per parameter set and mark the best trial.

    Each trial is a whole :func:`~labkit.experiment.run_experiment` with
    ``instances`` instances; up to ``max_parallel`` trials run at once, and their
    instances share ``gpu_pool`` (one pool for the whole sweep, so parallel trials
    never hold the same GPU). A trial that raises, or whose objective cannot be
    computed, is recorded as failed and the sweep goes on.

    Args:
        experiment: What to run; each trial's params are merged over its own.
        space: A dict of lists (the grid), a list of param dicts, a
            :class:`Strategy`, or an ``optuna.Study`` wrapped in
            :class:`StudyStrategy`.
        instances: Instances per trial (as in ``run_experiment``).
        max_parallel: Trials running at once.
        objective: What to optimise: a summary key (``"cpu_peak"``), a recorded
            metric (its last value per instance, averaged), or a function of the
            :class:`~labkit.results.ExperimentResult`.
        direction: ``"min"`` or ``"max"``: which objective is best.
        store: Records every trial; with ``resume`` it also skips finished ones.
        resume: With ``store``, load trials that already finished instead of
            running them, and resume interrupted ones.
        gpu_pool: Where GPUs come from (``gpus_per_instance=`` in ``run_options``);
            one ``GPUPool()`` for the whole sweep when GPUs are asked for without one.
        n_trials: Run at most this many trials; needed for a strategy that never
            says it is done (an optuna study).
        **run_options: Passed to ``run_experiment`` for every trial (``duration``,
            ``gpus_per_instance``, ``timeout``, ``retry``, ``on_event``...).

    Returns:
        One row per trial, in trial order: ``trial``, one column per parameter,
        ``status`` (``"ok"`` or ``"failed"``), ``objective`` (NaN when failed),
        ``best`` (exactly one True when any trial succeeded; the first of equals),
        ``resumed`` (loaded from the store), ``experiment_id``, ``error``, then
        the scalar figures of each trial's summary (``summary.<key>`` where a key
        clashes with a column above).

    Raises:
        ConfigError: An option or the ``space`` is invalid, or ``run_experiment``
            refuses its options (that would fail every trial alike).
    """
    check(isinstance(experiment, Experiment), "experiment", experiment, "a labkit.Experiment")
    check(
        isinstance(objective, str) or callable(objective),
        "objective",
        objective,
        "a summary key, a metric name or a function of the ExperimentResult",
    )
    check(direction in ("min", "max"), "direction", direction, '"min" or "max"')
    check(
        isinstance(max_parallel, int) and max_parallel >= 1,
        "max_parallel",
        max_parallel,
        "an int >= 1",
    )
    check(
        n_trials is None or (isinstance(n_trials, int) and n_trials >= 1),
        "n_trials",
        n_trials,
        "an int >= 1, or None",
    )
    source, strategy = _trials(space, n_trials)
    if run_options.get("gpus_per_instance") and gpu_pool is None:
        from labkit.gpu import GPUPool

        gpu_pool = GPUPool()
    numbers = itertools.count()
    trials: list[_Trial] = []

    async def run_trial(trial: _Trial) -> None:
        variant = experiment.with_params(**trial.params)
        result: ExperimentResult | None = None
        if store is not None and resume and isinstance(instances, int):
            found = store.find(variant.name, dict(variant.params or {}), instances)
            if found is not None:
                result = await asyncio.to_thread(store.load, found)
                trial.resumed = True
        try:
            if result is None:
                result = await run_experiment(
                    variant,
                    instances=instances,
                    store=store,
                    resume=resume and store is not None,
                    gpu_pool=gpu_pool,
                    **run_options,
                )
            trial.experiment_id = result.experiment_id
            trial.summary = result.summary
            if result.all_failed:
                first = next(iter(result.failed), None)
                raise RuntimeError(first.error if first is not None else "every instance failed")
            trial.objective = objective_value(result, objective)
            trial.status = "ok"
        except ConfigError:
            # A refused option would fail every trial alike: stop the sweep instead.
            raise
        except Exception as exc:
            trial.error = error_text(exc)

    async def worker() -> None:
        # Workers pull from one shared source, so a strategy is asked only when a
        # slot is free and hears about each trial as soon as it ends.
        for params in source:
            trial = _Trial(next(numbers), dict(params))
            trials.append(trial)
            await run_trial(trial)
            if strategy is not None:
                strategy.tell(params, trial.objective if trial.status == "ok" else None)

    workers = [asyncio.create_task(worker()) for _ in range(max_parallel)]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return _frame(sorted(trials, key=lambda trial: trial.number), direction)


def _trials(
    space: Any, n_trials: int | None
) -> tuple[Iterator[Mapping[str, Any]], Strategy | None]:
    """The parameter sets of ``space``, lazily (a strategy is asked only when needed)."""
    if isinstance(space, Mapping):
        for name, values in space.items():
            check(
                isinstance(values, Sequence | np.ndarray) and not isinstance(values, str | bytes),
                f"space[{name!r}]",
                values,
                "a list of values",
            )
        names = list(space)
        grid: Iterator[Mapping[str, Any]] = (
            dict(zip(names, combo, strict=True))
            for combo in itertools.product(*(list(space[name]) for name in names))
        )
        return itertools.islice(grid, n_trials), None
    if isinstance(space, Sequence) and not isinstance(space, str | bytes):
        for item in space:
            check(isinstance(item, Mapping), "space", item, "a dict of params in the list")
        return itertools.islice(iter(space), n_trials), None
    if _is_study(space):
        space = StudyStrategy(space)
    if isinstance(space, Strategy):
        check(
            n_trials is not None or not isinstance(space, StudyStrategy),
            "n_trials",
            n_trials,
            "a number of trials: a study never runs out of them",
        )
        return itertools.islice(_asking(space), n_trials), space
    raise ConfigError(
        "space",
        space,
        "a dict of lists (grid), a list of param dicts, or an ask/tell strategy",
    )


def _is_study(space: Any) -> bool:
    """An optuna study given as is (its ask() returns a trial, not params)."""
    return type(space).__module__.split(".")[0] == "optuna" and hasattr(space, "ask")


def _asking(strategy: Strategy) -> Iterator[Mapping[str, Any]]:
    while (params := strategy.ask()) is not None:
        check(isinstance(params, Mapping), "ask()", params, "a dict of params or None")
        yield params


def _frame(trials: Sequence[_Trial], direction: str) -> pd.DataFrame:
    param_names = list(dict.fromkeys(name for trial in trials for name in trial.params))
    taken = {*_COLUMNS, *param_names}
    summary_names = list(
        dict.fromkeys(
            name
            for trial in trials
            for name, value in trial.summary.items()
            if value is None or isinstance(value, bool | int | float | str | np.number)
        )
    )
    rows = []
    for trial in trials:
        row: dict[str, Any] = {"trial": trial.number}
        row.update({name: trial.params.get(name) for name in param_names})
        row.update(
            status=trial.status,
            objective=trial.objective,
            best=False,
            resumed=trial.resumed,
            experiment_id=trial.experiment_id,
            error=trial.error,
        )
        for name in summary_names:
            column = f"summary.{name}" if name in taken else name
            row[column] = trial.summary.get(name)
        rows.append(row)
    columns = ["trial", *param_names, *_COLUMNS[1:]]
    frame = pd.DataFrame(rows, columns=columns if not rows else None)
    frame["best"] = frame["best"].astype(bool)
    frame["objective"] = frame["objective"].astype(float)
    succeeded = frame.index[frame["status"] == "ok"]
    if len(succeeded):
        values = frame.loc[succeeded, "objective"]
        best = values.idxmin() if direction == "min" else values.idxmax()
        frame.loc[best, "best"] = True
    return frame
