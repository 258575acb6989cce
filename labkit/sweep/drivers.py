"""How a sweep runs its trials: each with a fixed number of instances, or raced.

:func:`run_fixed` runs every trial as it comes (as many at once as the runner
allows), telling a strategy each objective as soon as it is known.
:func:`run_race` opens every trial's experiment and lets
:func:`~labkit.sweep.racing.race` decide, round by round, which trials get more
instances; each trial stays one experiment that grows.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from labkit.results import error_text
from labkit.runner.inputs import OnLoop
from labkit.sweep.board import Trial
from labkit.sweep.decision import RaceDecision
from labkit.sweep.racing import Race, race
from labkit.sweep.space import Strategy
from labkit.sweep.trials import TrialRunner

__all__ = ("run_fixed", "run_race")


async def run_fixed(
    runner: Any,
    trials: TrialRunner,
    strategy: Strategy | None,
    source: Iterable[Mapping[str, Any]],
    instances: int | Literal["auto"],
) -> None:
    """Every trial with the same number of instances (or ``"auto"``), as it comes."""
    numbers = itertools.count()
    board = trials.board

    async def one(params: Mapping[str, Any]) -> int:
        trial = Trial(next(numbers), dict(params))
        board.started(trial)
        await trials.run(trial, instances)
        board.finished(trial)
        if strategy is not None:
            strategy.tell(params, trial.objective if trial.status == "ok" else None)
        return trial.number

    each: Callable[[Any], Awaitable[Any]] = one  # the runner's map is generic
    # On the loop: a strategy's ask() and tell() must never run at once in two threads.
    await runner.map(each, OnLoop(trials.unless_refused(source)))


async def run_race(
    runner: Any,
    trials: TrialRunner,
    asked: Sequence[Mapping[str, Any]],
    options: Race,
    direction: Literal["min", "max"],
) -> RaceDecision:
    """Race the trials, each one experiment that grows round by round.

    Every trial's run is opened (its options checked) before any instance runs;
    with a store and ``resume`` each picks up the instances its record already
    has, and the race goes on from there. Each trial is finished (averaged over
    all its instances, recorded once) when the race ends.
    """
    board = trials.board
    racing = [Trial(number, dict(params)) for number, params in enumerate(asked)]
    for trial in racing:
        board.started(trial)
    async with contextlib.AsyncExitStack() as stack:
        runs = [
            await stack.enter_async_context(trials.open(trial, options.max_instances))
            for trial in racing
        ]
        for trial, grown in zip(racing, runs, strict=True):
            _resumed(trials, trial, grown.results)

        async def batch(job: tuple[int, int]) -> int:
            number, size = job
            trial = racing[number]
            try:
                added = await runs[number].add(size)
            except Exception as exc:
                trial.error = error_text(exc)
                trial.values.extend([math.nan] * size)  # keeps later instances paired
            else:
                trial.values.extend(trials.values(trial, added))
            return number

        async def run(batches: Sequence[tuple[int, int]]) -> dict[int, list[float]]:
            each: Callable[[Any], Awaitable[Any]] = batch
            await runner.map(each, batches)
            return {trial.number: trial.values for trial in racing}

        def on_round(decision: RaceDecision, counts: Mapping[int, int]) -> None:
            board.decided(decision.statement(counts))

        decision, _ = await race(
            [trial.number for trial in racing],
            run,
            options,
            direction=direction,
            on_round=on_round,
            counts={trial.number: len(trial.values) for trial in racing},
        )
        for trial, grown in zip(racing, runs, strict=True):
            trials.take(trial, await grown.finish())
            board.finished(trial)
    return decision


def _resumed(trials: TrialRunner, trial: Trial, results: Mapping[int, Any]) -> None:
    """The values of the instances a trial's record already has, by index.

    One that failed (and was forgotten) is a NaN, so that instance *i* of every
    trial stays at position *i*, paired by seed.
    """
    loaded = trials.values(trial, [results[i] for i in sorted(results)])
    by_index = dict(zip(sorted(results), loaded, strict=True))
    trial.resumed = bool(by_index)
    trial.values = [by_index.get(i, math.nan) for i in range(max(by_index, default=-1) + 1)]
