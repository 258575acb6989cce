"""Results to export in the exporters' tests: real runs, with a failure and a seed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import labkit as lk
from labkit.results import ExperimentResult, InstanceResult

PARAMS = {"lr": 0.01, "optimizer": {"name": "adam", "betas": [0.9, 0.999]}}


async def _train(ctx: lk.InstanceContext) -> dict[str, float]:
    for step in range(6):
        # Values with full float64 digits: a float32 on the way would show.
        ctx.record(loss=1.0 / (step + 1 + ctx.index) + 1e-13 * ctx.index, acc=0.1 * step / 3.0)
        await asyncio.sleep(0)
    if ctx.index == 3:
        raise RuntimeError("instance 3 diverged")
    return {"final": 0.1 * ctx.index}


async def _train_by_step(ctx: lk.InstanceContext) -> None:
    for step in range(0, 50, 5):
        ctx.record(step=step, loss=1.0 / (step + 1 + ctx.index) + 1e-13 * ctx.index)
        await asyncio.sleep(0)


def run_result(*, by_step: bool = False, instances: int = 4) -> ExperimentResult:
    """A real run of ``instances`` instances; instance 3, if any, fails after recording."""
    fn = _train_by_step if by_step else _train
    experiment = lk.Experiment("train", fn, params=PARAMS)
    return asyncio.run(lk.run_experiment(experiment, instances=instances))


@dataclass(frozen=True, slots=True, eq=False)
class SeededInstance(InstanceResult):
    """An instance result that carries its seed, as instances of seeded runs do."""

    seed: int | None = None


def with_seeds(result: ExperimentResult, first_seed: int = 1000) -> ExperimentResult:
    """``result`` with every instance given the seed ``first_seed + index``."""
    seeded = [
        SeededInstance(
            index=i.index,
            ok=i.ok,
            error=i.error,
            timeline=i.timeline,
            summary=i.summary,
            started=i.started,
            finished=i.finished,
            attempts=i.attempts,
            seed=first_seed + i.index,
        )
        for i in result.instances
    ]
    return ExperimentResult.build(result.name, result.params, seeded, result.config)
