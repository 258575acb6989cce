"""Parameter sweeps: one experiment run over many parameter sets, the best one marked.

:func:`sweep` runs an :class:`~labkit.experiment.Experiment` once per *trial*, each
trial with its own parameters (merged over the experiment's own) and all its
instances, and returns one row per trial with the objective and a ``best`` column.
Trials run through a :class:`labkit.Runner` (``max_parallel`` at once).

Where trials come from (``space``):

- a dict of lists: the grid, every combination (``{"lr": [0.1, 0.01], "bs": [32, 64]}``
  is 4 trials, in ``itertools.product`` order);
- a list of parameter dicts, run as given;
- an ask/tell :class:`Strategy`: ``ask()`` gives the next parameters (``None`` when
  done), ``tell(params, value)`` hears back the objective (``None`` for a failed
  trial). An ``optuna.Study`` becomes one through :class:`StudyStrategy`.

Watching a sweep: every event a trial's experiment emits reaches ``on_event``
wrapped in a :class:`~labkit.events.TrialEvent` that names the trial, and the sweep
emits a :class:`SweepEvent` as each trial starts and ends, carrying a
:class:`SweepStats` snapshot with the leaderboard so far (:func:`leaderboard`
prints one).

With ``instances=lk.Race(...)`` (or ``"race"``) the sweep races its trials
(:mod:`labkit.race`): a few instances each, then one more per round for every
trial not yet ruled out; the frame says how many each got and what was decided,
a statement that is wrong at most ``1 - confidence`` of the time. A racing trial
is one experiment that grows round by round (one store record, indices and seeds
continuing, its averaged timeline over all its instances).

With a store and ``resume=True`` a trial whose experiment (same name, params and
instance count) already finished in the store is loaded instead of run; one that
was interrupted resumes its missing instances. A race resumes the same way: each
trial picks up the instances its record has (its most instances, ``max_instances``,
are the count that identifies it) and the race goes on from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import itertools
import math
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from labkit._checks import check, is_int, is_real
from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import ConfigError
from labkit.events import EventBus, TrialEvent
from labkit.experiment import Experiment, run_experiment
from labkit.experiment.options import check_resources
from labkit.experiment.run import ExperimentRun, open_run
from labkit.experiment.spec import MAX_INSTANCES
from labkit.race import Race, RaceDecision, race
from labkit.results import ExperimentResult, InstanceResult, error_text
from labkit.runner.inputs import OnLoop
from labkit.seeds import check_seed

if TYPE_CHECKING:
    from labkit.gpu import GPUPool
    from labkit.store import Store

__all__ = (
    "Objective",
    "Strategy",
    "StudyStrategy",
    "SweepEvent",
    "SweepStats",
    "leaderboard",
    "objective_value",
    "sweep",
)

Objective = str | Callable[[ExperimentResult], float]
"""A summary key, a recorded metric's name, or a function of the result."""

_COLUMNS = (
    "trial",
    "status",
    "objective",
    "best",
    "tied_with_best",
    "instances",
    "resumed",
    "experiment_id",
    "error",
)


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
    ``tell`` only. :func:`sweep` refuses a ``direction`` that contradicts the
    study's own (:attr:`direction`).

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

    @property
    def direction(self) -> Literal["min", "max"] | None:
        """The study's direction as :func:`sweep` spells it; ``None`` when it has none.

        Reads ``study.direction`` (optuna's ``StudyDirection.MINIMIZE`` or
        ``MAXIMIZE``, or their names); a multi-objective study, whose
        ``direction`` raises, has none.
        """
        try:
            raw = getattr(self.study, "direction", None)
        except Exception:
            return None
        name = str(getattr(raw, "name", raw) or "").upper()
        if name == "MINIMIZE":
            return "min"
        if name == "MAXIMIZE":
            return "max"
        return None

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
    if not is_real(raw, finite=False):
        raise ValueError(f"objective is {raw!r}, not a number")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"objective is {value}")
    return value


def instance_values(
    name: str,
    params: Mapping[str, Any],
    instances: Sequence[InstanceResult],
    objective: Objective,
) -> list[float]:
    """The objective of each of ``instances``, each as a one-instance experiment.

    What a racing sweep compares: for a summary key, each instance's figure; for a
    recorded metric, its last value; for a function, the function of a result
    holding that instance alone. A failed instance, or one whose objective cannot
    be computed, gives NaN (left out of the comparison; its place keeps the
    instances of two trials paired by index).
    """
    values: list[float] = []
    for instance in instances:
        if not instance.ok:
            values.append(math.nan)
            continue
        alone = ExperimentResult.build(name, dict(params), [instance], {})
        try:
            values.append(objective_value(alone, objective))
        except (KeyError, ValueError):
            values.append(math.nan)
    return values


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
        leaderboard: ``(trial, objective, instances)`` of every succeeded trial,
            best first (ties: the one that finished first, as optuna's
            ``best_trial``).
        decision: For a racing sweep, what was decided so far, else ``None``.
    """

    started: int
    finished: int
    failed: int
    running: int
    direction: Literal["min", "max"]
    best_trial: int | None
    best_objective: float
    best_params: Mapping[str, Any]
    leaderboard: tuple[tuple[int, float, int], ...]
    decision: str | None = None


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


def leaderboard(source: SweepStats | pd.DataFrame, *, top: int = 10) -> str:
    """The best trials as a few lines of text, best first.

    Args:
        source: A :class:`SweepStats` snapshot or the frame :func:`sweep` returned.
        top: How many trials to show.

    Returns:
        One line per trial: rank, trial, objective, instances and (for a frame)
        the parameters; then the decision of a racing sweep, if any.
    """
    lines: list[str] = []
    if isinstance(source, SweepStats):
        rows = [(trial, value, n, "") for trial, value, n in source.leaderboard]
        decision = source.decision
    else:
        ok = source[source["status"] == "ok"]
        ascending = source.attrs.get("direction", "min") == "min"
        ok = ok.sort_values(["objective", "finished_order"], ascending=[ascending, True])
        params = source.attrs.get("params", [])
        rows = [
            (
                int(row["trial"]),
                float(row["objective"]),
                int(row["instances"]),
                " ".join(f"{name}={row[name]!r}" for name in params),
            )
            for _, row in ok.iterrows()
        ]
        decision = source.attrs.get("decision")
    for rank, (trial, value, n, params_text) in enumerate(rows[:top], start=1):
        line = f"{rank:>3}. trial {trial:<4} objective {value:.6g}  ({n} instances)"
        lines.append(f"{line}  {params_text}".rstrip())
    if not rows:
        lines.append("no trial succeeded")
    if decision:
        lines.append(decision)
    return "\n".join(lines)


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
    instances: list[InstanceResult] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    finished_order: int | None = None


@dataclass(slots=True, kw_only=True)
class _Board:
    """The sweep's trials and the events that report them."""

    direction: Literal["min", "max"]
    bus: EventBus
    clock: Clock = SYSTEM_CLOCK
    trials: list[_Trial] = field(default_factory=list)
    ended: int = 0
    decision: str | None = None

    def best(self) -> _Trial | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def ranked(self) -> list[_Trial]:
        """Succeeded trials, best first; equal objectives: the first to finish first."""
        sign = 1.0 if self.direction == "min" else -1.0
        done = [trial for trial in self.trials if trial.status == "ok"]
        return sorted(done, key=lambda trial: (sign * trial.objective, trial.finished_order))

    def stats(self) -> SweepStats:
        best = self.best()
        failed = sum(
            trial.status == "failed" and trial.finished_order is not None for trial in self.trials
        )
        return SweepStats(
            started=len(self.trials),
            finished=self.ended,
            failed=failed,
            running=len(self.trials) - self.ended,
            direction=self.direction,
            best_trial=None if best is None else best.number,
            best_objective=math.nan if best is None else best.objective,
            best_params=dict(best.params) if best is not None else {},
            leaderboard=tuple(
                (trial.number, trial.objective, len(trial.instances)) for trial in self.ranked()
            ),
            decision=self.decision,
        )

    def started(self, trial: _Trial) -> None:
        self.trials.append(trial)
        self._emit("trial_started", trial)

    def finished(self, trial: _Trial) -> None:
        trial.finished_order = self.ended
        self.ended += 1
        self._emit("trial_finished", trial)

    def decided(self, statement: str) -> None:
        self.decision = statement
        self._emit("decided", None)

    def _emit(
        self, kind: Literal["trial_started", "trial_finished", "decided"], trial: _Trial | None
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
    confidence: float | None = None,
    min_effect: float | None = None,
    initial_instances: int | None = None,
    max_instances: int | None = None,
    budget: int | None = None,
    seed: int = 0,
    **run_options: Any,
) -> pd.DataFrame:
    """Run ``experiment`` once per parameter set and mark the best trial.

    Each trial is a whole :func:`~labkit.experiment.run_experiment` with
    ``instances`` instances; up to ``max_parallel`` trials run at once (through a
    :class:`labkit.Runner`), and their instances share ``gpu_pool`` (one pool for
    the whole sweep, so parallel trials never hold the same GPU). A trial that
    raises, or whose objective cannot be computed, is recorded as failed (its
    error text keeps the original exception's type) and the sweep goes on.

    Racing (``instances=lk.Race(...)``, or ``"race"`` with the options below):
    every trial starts with ``initial`` instances (5); then, round after round,
    one more instance goes to every trial not yet ruled out, and a trial is
    ruled out once another trial still racing is shown better than it by an
    anytime-valid confidence sequence on their instance-by-instance
    differences (paired by seed in a seeded sweep). The race stops when one
    trial is left (or, with ``min_effect``, the leader is shown within it of
    every trial left), when the trials left reach ``max_instances`` (default
    10), or when ``budget`` instances ran in all; its decision is wrong at most
    ``1 - confidence`` of the time (:mod:`labkit.race` says under which
    assumptions). Each trial is one experiment that grows round by round
    (:func:`~labkit.experiment.run.open_run`: one store record, instance
    indices and seeds continuing, so instance *i* of every trial shares its
    seed and the race compares them pair by pair); with a store and
    ``resume`` an interrupted race continues from what its trials recorded.
    A strategy is asked for ``n_trials`` trials up front and told their final
    objectives at the end.

    Args:
        experiment: What to run; each trial's params are merged over its own.
        space: A dict of lists (the grid), a list of param dicts, a
            :class:`Strategy`, or an ``optuna.Study`` wrapped in
            :class:`StudyStrategy`.
        instances: Instances per trial (as in ``run_experiment``), a
            :class:`~labkit.race.Race`, or ``"race"`` (a ``Race`` built from
            the racing options below).
        max_parallel: Trials running at once.
        objective: What to optimise: a summary key (``"cpu_peak"``), a recorded
            metric (its last value per instance, averaged), or a function of the
            :class:`~labkit.results.ExperimentResult`.
        direction: ``"min"`` or ``"max"``: which objective is best. A
            :class:`StudyStrategy` whose study says otherwise is refused.
        store: Records every trial; with ``resume`` it also skips finished ones.
        resume: With ``store``, load trials that already finished instead of
            running them, and resume interrupted ones.
        gpu_pool: Where GPUs come from (``gpus_per_instance=`` in ``run_options``);
            one ``GPUPool()`` for the whole sweep when GPUs are asked for without one.
        n_trials: Run at most this many trials; needed for a strategy that never
            says it is done (an optuna study).
        confidence: With ``"race"``: the race's confidence (0.95).
        min_effect: With ``"race"``: its indifference zone (0).
        initial_instances: With ``"race"``: instances every trial starts with (5).
        max_instances: With ``"race"``: the most instances one trial gets (10);
            with ``instances="auto"``, passed to ``run_experiment``.
        budget: With ``"race"``: the most instances in all (default: trials
            times ``max_instances``). With a ``Race`` these five stay unset.
        seed: The base seed of every trial: instance *i* of every trial gets the
            same ``ctx.seed`` (common random numbers, so trials compare pair by
            pair), and no two instances of one trial share one.
        **run_options: Passed to ``run_experiment`` for every trial (``duration``,
            ``gpus_per_instance``, ``timeout``, ``retry``...). ``on_event`` gets
            every trial's events as :class:`~labkit.events.TrialEvent` and the
            sweep's own :class:`SweepEvent`.

    Returns:
        One row per trial, in trial order: ``trial``, one column per parameter,
        ``status`` (``"ok"`` or ``"failed"``), ``objective`` (NaN when failed),
        ``best`` (exactly one True when any trial succeeded; among equal
        objectives the trial that finished first, as optuna's ``best_trial``),
        ``tied_with_best`` (racing: still racing when every trial left reached
        ``max_instances``, never ruled out; otherwise: an objective equal to
        the best's),
        ``instances`` (instances run), ``resumed`` (loaded from the store),
        ``experiment_id``, ``error``, ``finished_order``, then the scalar figures
        of each trial's summary (``summary.<key>`` where a key clashes with a
        column above). ``frame.attrs`` holds ``direction``, ``params`` (the
        parameter columns) and, for a race, ``decision``: what was decided, as
        a sentence ("trial 3 beats the other 7 at 95 %", or "no decision:
        trials 3 and 5 still race after 7 instances each, the budget is spent
        (trial 3 leads); 6 others are beaten at 95 %").

    Raises:
        ConfigError: An option or the ``space`` is invalid, ``direction``
            contradicts a study's, or ``run_experiment`` refuses its options
            (that would fail every trial alike).
    """
    _check_options(
        experiment, objective, direction, instances, max_parallel, n_trials, max_instances, resume
    )
    check_resources(gpu_pool, None, store)
    run_options["seed"] = check_seed(seed)
    options = _race_options(
        instances,
        confidence=confidence,
        min_effect=min_effect,
        initial=initial_instances,
        max_instances=max_instances,
        budget=budget,
    )
    if instances == "auto" and max_instances is not None:
        run_options["max_instances"] = max_instances
    source, strategy = _trials(space, n_trials)
    if isinstance(strategy, StudyStrategy) and strategy.direction not in (None, direction):
        raise ConfigError(
            "direction",
            direction,
            f'"{strategy.direction}", the direction of the study the strategy asks',
        )
    if run_options.get("gpus_per_instance") and gpu_pool is None:
        from labkit.gpu import GPUPool

        gpu_pool = GPUPool()
    board = _Board(
        direction=direction,
        bus=_bus(run_options.pop("on_event", None)),
        clock=run_options.get("clock") or SYSTEM_CLOCK,
    )
    trial_runner = _TrialRunner(
        experiment=experiment,
        objective=objective,
        store=store,
        resume=resume,
        gpu_pool=gpu_pool,
        board=board,
        run_options=run_options,
        sweep_id=uuid.uuid4().hex[:8],
    )
    from labkit.runner import Runner

    async with Runner(max_concurrency=max_parallel) as runner:
        if options is None:
            assert not isinstance(instances, Race)  # a Race is always raced
            await _fixed(runner, trial_runner, board, strategy, source, instances)
            decision: RaceDecision | None = None
        else:
            asked = list(source)
            decision = await _race(runner, trial_runner, asked, options, direction)
            if strategy is not None:
                for trial, params in zip(board.trials, asked, strict=True):
                    strategy.tell(params, trial.objective if trial.status == "ok" else None)
    if trial_runner.refused is not None:
        raise trial_runner.refused
    return _frame(board, decision)


def _race_options(instances: Any, **given: Any) -> Race | None:
    """The race a sweep runs: ``instances`` itself, one built from ``given``, or none."""
    if isinstance(instances, Race):
        for name, value in given.items():
            option = "initial_instances" if name == "initial" else name
            check(
                value is None,
                option,
                value,
                "unset when instances is a labkit.Race (set it on the Race)",
            )
        return instances
    if instances != "race":
        for name in ("confidence", "min_effect", "initial", "budget"):
            option = "initial_instances" if name == "initial" else name
            check(
                given[name] is None,
                option,
                given[name],
                'unset unless instances is "race" or a labkit.Race',
            )
        return None
    return Race(**{name: value for name, value in given.items() if value is not None})


def _check_options(
    experiment: Any,
    objective: Any,
    direction: Any,
    instances: Any,
    max_parallel: Any,
    n_trials: Any,
    max_instances: Any,
    resume: Any,
) -> None:
    """Refuse a bad sweep option before any trial starts."""
    check(isinstance(experiment, Experiment), "experiment", experiment, "a labkit.Experiment")
    check(
        isinstance(objective, str) or callable(objective),
        "objective",
        objective,
        "a summary key, a metric name or a function of the ExperimentResult",
    )
    check(direction in ("min", "max"), "direction", direction, '"min" or "max"')
    check(
        isinstance(instances, Race)
        or instances in ("auto", "race")
        or (is_int(instances) and 1 <= instances <= MAX_INSTANCES),
        "instances",
        instances,
        f"an int from 1 to {MAX_INSTANCES}, 'auto', 'race' or a labkit.Race",
    )
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
    check(
        max_instances is None or (is_int(max_instances) and 1 <= max_instances <= MAX_INSTANCES),
        "max_instances",
        max_instances,
        f"None or an int from 1 to {MAX_INSTANCES}",
    )
    check(isinstance(resume, bool), "resume", resume, "True or False")


async def _fixed(
    runner: Any,
    trial_runner: _TrialRunner,
    board: _Board,
    strategy: Any,
    source: Iterable[Mapping[str, Any]],
    instances: int | Literal["auto", "race"],
) -> None:
    """Every trial with the same number of instances (or ``"auto"``), as it comes."""
    numbers = itertools.count()

    async def one(params: Mapping[str, Any]) -> int:
        trial = _Trial(next(numbers), dict(params))
        board.started(trial)
        await trial_runner.run(trial, instances)
        board.finished(trial)
        if strategy is not None:
            strategy.tell(params, trial.objective if trial.status == "ok" else None)
        return trial.number

    each: Callable[[Any], Awaitable[Any]] = one  # the runner's map is generic
    # On the loop: a strategy's ask() and tell() must never run at once in two threads.
    await runner.map(each, OnLoop(trial_runner.unless_refused(source)))


async def _race(
    runner: Any,
    trial_runner: _TrialRunner,
    asked: Sequence[Mapping[str, Any]],
    options: Race,
    direction: Literal["min", "max"],
) -> RaceDecision:
    """Race the trials, each one experiment that grows round by round (:func:`open_run`).

    Every trial's run is opened (its options checked) before any instance runs;
    with a store and ``resume`` each picks up the instances its record already
    has, and the race goes on from there. Each trial is finished (averaged over
    all its instances, recorded once) when the race ends.
    """
    board = trial_runner.board
    trials = [_Trial(number, dict(params)) for number, params in enumerate(asked)]
    for trial in trials:
        board.started(trial)
    async with contextlib.AsyncExitStack() as stack:
        runs = [
            await stack.enter_async_context(trial_runner.open(trial, options.max_instances))
            for trial in trials
        ]
        for trial, grown in zip(trials, runs, strict=True):
            # Resumed instances by index; one that failed (and was forgotten) is a NaN,
            # so that instance i of every trial stays at position i, paired by seed.
            loaded = trial_runner.values(trial, [grown.results[i] for i in sorted(grown.results)])
            by_index = dict(zip(sorted(grown.results), loaded, strict=True))
            trial.resumed = bool(by_index)
            trial.values = [by_index.get(i, math.nan) for i in range(max(by_index, default=-1) + 1)]

        async def batch(job: tuple[int, int]) -> int:
            number, size = job
            trial = trials[number]
            try:
                added = await runs[number].add(size)
            except Exception as exc:
                trial.error = error_text(exc)
                trial.values.extend([math.nan] * size)  # keeps later instances paired
            else:
                trial.values.extend(trial_runner.values(trial, added))
            return number

        async def run(batches: Sequence[tuple[int, int]]) -> dict[int, list[float]]:
            each: Callable[[Any], Awaitable[Any]] = batch
            await runner.map(each, batches)
            return {trial.number: trial.values for trial in trials}

        def on_round(decision: RaceDecision, counts: Mapping[int, int]) -> None:
            board.decided(decision.statement(counts))

        decision, _ = await race(
            [trial.number for trial in trials],
            run,
            options,
            direction=direction,
            on_round=on_round,
            counts={trial.number: len(trial.values) for trial in trials},
        )
        for trial, grown in zip(trials, runs, strict=True):
            trial_runner.take(trial, await grown.finish())
            board.finished(trial)
    return decision


@dataclass(slots=True, kw_only=True)
class _TrialRunner:
    """Runs trials (or a racing trial's next instances) and fills in their rows."""

    experiment: Experiment
    objective: Objective
    store: Store | None
    resume: bool
    gpu_pool: GPUPool | None
    board: _Board
    run_options: dict[str, Any]
    sweep_id: str
    """Names this sweep in each trial's record (``labels``: sweep and trial)."""
    refused: ConfigError | None = None

    def labels(self, trial: _Trial) -> dict[str, str | int]:
        """What a trial's run is marked with in the store: its sweep and its number."""
        return {"sweep": self.sweep_id, "trial": trial.number}

    def unless_refused(self, items: Any) -> Iterator[Any]:
        """The items, until a trial's options or the space are refused (the sweep stops)."""
        iterator = iter(items)
        while self.refused is None:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except ConfigError as exc:
                self.refused = exc  # a strategy's ask() refused: raised once the runner ends
                return
            yield item

    def open(self, trial: _Trial, planned: int) -> AbstractAsyncContextManager[ExperimentRun]:
        """A racing trial's experiment, open to grow (``planned``: its most instances)."""
        return open_run(
            self.experiment.with_params(**trial.params),
            instances=planned,
            store=self.store,
            resume=self.resume and self.store is not None,
            gpu_pool=self.gpu_pool,
            on_event=functools.partial(_wrap, self.board.bus, trial.number),
            labels=self.labels(trial),
            **self.run_options,
        )

    def values(self, trial: _Trial, instances: Sequence[InstanceResult]) -> list[float]:
        """The objective of each of ``instances``, in order (NaN where it has none)."""
        variant = self.experiment.with_params(**trial.params)
        return instance_values(variant.name, dict(variant.params or {}), instances, self.objective)

    async def run(self, trial: _Trial, instances: Any) -> None:
        variant = self.experiment.with_params(**trial.params)
        result: ExperimentResult | None = None
        store = self.store
        if store is not None and self.resume and isinstance(instances, int):
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
                    resume=self.resume and store is not None,
                    gpu_pool=self.gpu_pool,
                    on_event=functools.partial(_wrap, self.board.bus, trial.number),
                    labels=self.labels(trial),
                    **self.run_options,
                )
        except ConfigError as exc:
            # A refused option would fail every trial alike: stop the sweep instead.
            self.refused = self.refused or exc
            trial.error = error_text(exc)
            return
        except Exception as exc:
            trial.error = error_text(exc)
            return
        self.take(trial, result)

    def take(self, trial: _Trial, result: ExperimentResult) -> None:
        """Fill in the trial's row from its experiment's result."""
        trial.experiment_id = result.experiment_id
        trial.instances = list(result.instances)
        trial.summary = result.summary
        trial.status, trial.error, trial.objective = "failed", None, math.nan
        if result.all_failed:
            first = next(iter(result.failed), None)
            trial.error = first.error if first is not None else "every instance failed"
            return
        try:
            trial.objective = objective_value(result, self.objective)
        except (KeyError, ValueError) as exc:
            trial.error = error_text(exc)
            return
        trial.status = "ok"


def _wrap(bus: EventBus, trial: int, event: Any) -> None:
    bus.emit(TrialEvent(trial, event))


def _bus(on_event: Any) -> EventBus:
    if isinstance(on_event, EventBus):
        return on_event
    bus = EventBus()
    if on_event is not None:
        check(callable(on_event), "on_event", on_event, "a callable or an EventBus")
        bus.subscribe(on_event)
    return bus


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


def _frame(board: _Board, decision: RaceDecision | None) -> pd.DataFrame:
    trials = sorted(board.trials, key=lambda trial: trial.number)
    param_names = list(dict.fromkeys(name for trial in trials for name in trial.params))
    taken = {*_COLUMNS, "finished_order", *param_names}
    summary_names = list(
        dict.fromkeys(
            name
            for trial in trials
            for name, value in trial.summary.items()
            if value is None or isinstance(value, bool | int | float | str | np.number)
        )
    )
    best = board.best()
    if decision is not None and decision.leader is not None:
        # The race's leader is the best: the trial its comparisons were made against.
        best = next(trial for trial in trials if trial.number == decision.leader)
    tied: set[int] = set()
    if best is not None:
        if decision is not None:
            # Only trials examined to the end are tied; an undecided race says so.
            tied = set(decision.contenders) if decision.ending == "max_instances" else set()
        else:
            tied = {
                trial.number
                for trial in trials
                if trial.status == "ok" and trial.objective == best.objective
            }
        tied.discard(best.number)
    rows = []
    for trial in trials:
        row: dict[str, Any] = {"trial": trial.number}
        row.update({name: trial.params.get(name) for name in param_names})
        row.update(
            status=trial.status,
            objective=trial.objective,
            best=best is not None and trial.number == best.number,
            tied_with_best=trial.number in tied,
            instances=len(trial.instances),
            resumed=trial.resumed,
            experiment_id=trial.experiment_id,
            error=trial.error,
            finished_order=trial.finished_order,
        )
        for name in summary_names:
            column = f"summary.{name}" if name in taken else name
            row[column] = trial.summary.get(name)
        rows.append(row)
    columns = ["trial", *param_names, *_COLUMNS[1:], "finished_order"]
    frame = pd.DataFrame(rows, columns=columns if not rows else None)
    for column in ("best", "tied_with_best", "resumed"):
        frame[column] = frame[column].astype(bool)
    frame["objective"] = frame["objective"].astype(float)
    frame["instances"] = frame["instances"].astype("int64")
    frame.attrs["direction"] = board.direction
    frame.attrs["params"] = param_names
    if board.decision is not None:
        frame.attrs["decision"] = board.decision
    return frame
