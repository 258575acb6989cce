"""``ctx.seed``: one seed per instance, derived from a base seed and the index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import labkit as lk
from labkit.errors import ConfigError
from labkit.experiment import InstanceContext
from labkit.experiment.run import open_run
from labkit.seeds import MAX_SEED, check_seed, instance_seed
from labkit.sweep import sweep


def test_seeds_never_repeat_within_an_experiment_and_differ_across_base_seeds() -> None:
    for base in (0, 1, 12345, MAX_SEED):
        seeds = [instance_seed(base, index) for index in range(100_000)]
        assert len(set(seeds)) == len(seeds)
        assert all(0 <= seed <= MAX_SEED for seed in seeds)
    for index in (0, 1, 7, 99_999):
        assert len({instance_seed(base, index) for base in range(10_000)}) == 10_000
    # Neighbouring instances get unrelated seeds, not seed, seed + 1, ...
    diffs = np.diff([instance_seed(0, index) for index in range(1000)])
    assert len(set(diffs.tolist())) > 990
    assert instance_seed(0, 0) != 0


def test_a_base_seed_is_an_int_in_range() -> None:
    assert check_seed(0) == 0 and check_seed(MAX_SEED) == MAX_SEED
    for bad in (-1, MAX_SEED + 1, 1.0, True, "3", None):
        with pytest.raises(ConfigError, match="seed"):
            check_seed(bad)


async def seeded(ctx: InstanceContext) -> dict[str, Any]:
    ctx.record(x=float(ctx.index))
    return {"seed_seen": ctx.seed, "score": float(np.random.default_rng(ctx.seed).normal())}


async def test_each_instance_sees_its_seed_and_the_result_keeps_it() -> None:
    result = await lk.run_experiment(lk.Experiment("s", seeded), instances=4, seed=11)
    for instance in result.instances:
        expected = instance_seed(11, instance.index)
        assert instance.seed == instance.summary["seed_seen"] == expected
    assert result.config["seed"] == 11
    again = await lk.run_experiment(lk.Experiment("s", seeded), instances=4, seed=11)
    assert [i.summary["score"] for i in again.instances] == [
        i.summary["score"] for i in result.instances
    ]  # reproducible
    other = await lk.run_experiment(lk.Experiment("s", seeded), instances=4, seed=12)
    assert not {i.seed for i in other.instances} & {i.seed for i in result.instances}
    assert lk.results.InstanceResult.from_dict(result.instances[1].to_dict()).seed == (
        result.instances[1].seed
    )


async def test_instance_i_of_every_trial_of_a_sweep_shares_its_seed() -> None:
    seen: list[list[int]] = []

    async def capture(ctx: InstanceContext) -> dict[str, Any]:
        seen.append([ctx.params["lr"], ctx.index, ctx.seed])
        return await seeded(ctx)

    await sweep(
        lk.Experiment("s", capture), {"lr": [0.1, 0.2]}, instances=2, objective="score", seed=5
    )
    by_index: dict[int, set[int]] = {}
    for _, index, seed in seen:
        by_index.setdefault(index, set()).add(seed)
    assert by_index == {0: {instance_seed(5, 0)}, 1: {instance_seed(5, 1)}}


async def test_auto_and_resume_keep_indices_and_seeds_unique(tmp_path: Path) -> None:
    async def spread(ctx: InstanceContext) -> dict[str, float]:
        return {"score": 100.0 + (30.0 if ctx.index % 2 else -30.0)}

    auto = await lk.run_experiment(
        lk.Experiment("auto", spread), instances="auto", max_instances=9, auto_metric="score"
    )
    seeds = [i.seed for i in auto.instances]
    assert len(auto.instances) == 9 and len(set(seeds)) == 9

    calls: list[int] = []

    async def flaky(ctx: InstanceContext) -> None:
        calls.append(ctx.index)
        ctx.record(x=1.0)
        if ctx.index == 2 and len(calls) <= 4:
            raise RuntimeError("first run fails instance 2")

    with lk.Store(tmp_path / "s.db") as store:
        first = await lk.run_experiment(lk.Experiment("r", flaky), instances=4, store=store, seed=3)
        assert [i.ok for i in first.instances] == [True, True, False, True]
        second = await lk.run_experiment(
            lk.Experiment("r", flaky), instances=4, store=store, resume=True, seed=3
        )
        loaded = store.load(second.experiment_id)
    assert calls[4:] == [2]  # only the failed one ran again
    for result in (second, loaded):
        assert [i.seed for i in result.instances] == [instance_seed(3, k) for k in range(4)]


async def test_an_open_run_grows_with_continuing_indices_and_one_record(tmp_path: Path) -> None:
    with lk.Store(tmp_path / "grow.db") as store:
        async with open_run(lk.Experiment("grow", seeded), instances=6, store=store) as run:
            first = await run.add(2)
            second = await run.add(3)
            result = await run.finish()
        frame = store.experiments()
    assert [i.index for i in first] == [0, 1] and [i.index for i in second] == [2, 3, 4]
    assert [i.seed for i in result.instances] == [instance_seed(0, k) for k in range(5)]
    assert len(frame) == 1 and result.experiment_id == frame["id"].iloc[0]
    assert len(result.instances) == 5
    with pytest.raises(ConfigError, match="n=0"):
        async with open_run(lk.Experiment("grow", seeded)) as run:
            await run.add(0)
