"""Sweeps: grids, lists and ask/tell strategies, failures, parallelism, GPUs, resume."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from labkit.errors import ConfigError
from labkit.experiment import Experiment, InstanceContext
from labkit.gpu import GPUPool, static_fleet
from labkit.results import ExperimentResult
from labkit.store import Store
from labkit.sweep import Strategy, StudyStrategy, objective_value, sweep


async def quadratic(ctx: InstanceContext) -> dict[str, float]:
    """score = (x - 2)^2 + y; loss falls over three steps to the score plus the index."""
    x, y = ctx.params["x"], ctx.params.get("y", 0)
    score = (x - 2) ** 2 + y
    for step in range(3):
        ctx.record(loss=score + ctx.index + 3 - step)
    return {"score": float(score)}


EXP = Experiment("quad", quadratic, params={"y": 0})


@pytest.mark.asyncio
async def test_a_grid_runs_every_combination_and_marks_the_best() -> None:
    frame = await sweep(EXP, {"x": [1, 2, 3], "y": [10, 20]}, objective="score")
    assert frame["trial"].tolist() == list(range(6))
    assert list(zip(frame["x"], frame["y"], strict=True)) == [
        (1, 10), (1, 20), (2, 10), (2, 20), (3, 10), (3, 20),
    ]  # fmt: skip
    assert frame["status"].tolist() == ["ok"] * 6
    assert frame["objective"].tolist() == [11, 21, 10, 20, 11, 21]
    assert frame["best"].dtype == bool and frame["best"].sum() == 1
    assert frame.loc[frame["best"], ["x", "y"]].values.tolist() == [[2, 10]]
    # Summary figures come along, one column each.
    assert frame["score"].tolist() == frame["objective"].tolist()
    assert frame["num_instances"].tolist() == [1] * 6
    assert frame["experiment_id"].isna().all()  # no store


@pytest.mark.asyncio
async def test_a_list_of_params_with_direction_max() -> None:
    frame = await sweep(EXP, [{"x": 0}, {"x": 5}, {"x": 2}], objective="score", direction="max")
    assert frame["x"].tolist() == [0, 5, 2]
    assert frame["best"].tolist() == [False, True, False]


@pytest.mark.asyncio
async def test_ties_mark_only_the_first_trial_best() -> None:
    frame = await sweep(EXP, {"x": [1, 3, 2]}, objective="score", direction="max")
    assert frame["objective"].tolist() == [1, 1, 0]
    assert frame["best"].tolist() == [True, False, False]


@pytest.mark.asyncio
async def test_a_recorded_metric_is_its_last_value_averaged_over_instances() -> None:
    frame = await sweep(EXP, {"x": [2, 4]}, instances=3, objective="loss")
    # Last loss of instance i is score + i + 1; averaged over i = 0, 1, 2: score + 2.
    assert frame["objective"].tolist() == [2.0, 6.0]
    assert frame["best"].tolist() == [True, False]


@pytest.mark.asyncio
async def test_a_callable_objective_gets_the_experiment_result() -> None:
    seen: list[ExperimentResult] = []

    def objective(result: ExperimentResult) -> float:
        seen.append(result)
        return -float(result.params["x"])

    frame = await sweep(EXP, {"x": [1, 7]}, instances=2, objective=objective)
    assert frame["objective"].tolist() == [-1.0, -7.0]
    assert frame["best"].tolist() == [False, True]
    assert [len(result.instances) for result in seen] == [2, 2]
    assert seen[0].params == {"y": 0, "x": 1}  # trial params merged over the experiment's


@pytest.mark.asyncio
async def test_a_failing_trial_is_recorded_and_the_sweep_goes_on() -> None:
    async def fragile(ctx: InstanceContext) -> dict[str, float]:
        if ctx.params["x"] == 2:
            raise RuntimeError("diverged")
        return {"score": float(ctx.params["x"])}

    frame = await sweep(Experiment("fragile", fragile), {"x": [3, 2, 1]}, objective="score")
    assert frame["status"].tolist() == ["ok", "failed", "ok"]
    assert "diverged" in frame["error"].iloc[1]
    assert math.isnan(frame["objective"].iloc[1])
    assert frame["best"].tolist() == [False, False, True]
    assert frame["num_failed"].tolist() == [0, 1, 0]


@pytest.mark.asyncio
async def test_an_objective_that_cannot_be_computed_fails_only_its_trial() -> None:
    frame = await sweep(EXP, {"x": [1, 2]}, objective="no_such_metric")
    assert frame["status"].tolist() == ["failed", "failed"]
    assert frame["error"].str.contains("no_such_metric").all()
    assert not frame["best"].any()


@pytest.mark.asyncio
async def test_max_parallel_trials_run_at_once() -> None:
    running: set[int] = set()
    peak = 0

    async def slow(ctx: InstanceContext) -> dict[str, float]:
        nonlocal peak
        running.add(ctx.params["x"])
        peak = max(peak, len(running))
        await asyncio.sleep(0.05)
        running.discard(ctx.params["x"])
        return {"score": float(ctx.params["x"])}

    frame = await sweep(
        Experiment("slow", slow), {"x": list(range(6))}, instances=2, objective="score",
        max_parallel=2,
    )  # fmt: skip
    assert peak == 2
    assert frame["status"].tolist() == ["ok"] * 6


@pytest.mark.asyncio
async def test_trials_share_the_gpu_pool() -> None:
    held: dict[str, int] = {}
    peak = 0

    async def on_gpu(ctx: InstanceContext) -> dict[str, float]:
        nonlocal peak
        (uuid,) = ctx.gpus
        assert uuid not in held, "two trials got the same GPU"
        held[uuid] = ctx.params["x"]
        peak = max(peak, len(held))
        await asyncio.sleep(0.03)
        del held[uuid]
        return {"score": float(ctx.params["x"])}

    pool = GPUPool(static_fleet(2))
    frame = await sweep(
        Experiment("gpu", on_gpu), {"x": list(range(5))}, objective="score", max_parallel=4,
        gpu_pool=pool, gpus_per_instance=1,
    )  # fmt: skip
    assert frame["status"].tolist() == ["ok"] * 5
    assert peak == 2  # four trials may run, but only two GPUs exist
    assert pool.stats().gpus_allocated == 0


@pytest.mark.asyncio
async def test_resume_skips_trials_finished_in_the_store(tmp_path: Path) -> None:
    calls: list[int] = []

    async def counted(ctx: InstanceContext) -> dict[str, float]:
        calls.append(ctx.params["x"])
        return {"score": float((ctx.params["x"] - 2) ** 2)}

    experiment = Experiment("counted", counted)
    with Store(tmp_path / "labkit.db") as store:
        first = await sweep(experiment, {"x": [1, 2]}, instances=2, objective="score", store=store)
        assert sorted(calls) == [1, 1, 2, 2]
        calls.clear()
        second = await sweep(
            experiment, {"x": [1, 2, 3]}, instances=2, objective="score", store=store
        )
        assert calls == [3, 3]  # only the new trial ran
        assert second["resumed"].tolist() == [True, True, False]
        assert second["experiment_id"].iloc[:2].tolist() == first["experiment_id"].tolist()
        assert second["objective"].tolist() == [1.0, 0.0, 1.0]
        assert second["best"].tolist() == [False, True, False]
        calls.clear()
        again = await sweep(
            experiment, {"x": [1]}, instances=2, objective="score", store=store, resume=False
        )
        assert calls == [1, 1] and not again["resumed"].any()
        assert len(store.experiments()) == 4


@dataclass
class Bisect:
    """A tiny ask/tell strategy: tries three points, remembers what it was told."""

    points: list[float] = field(default_factory=lambda: [0.0, 4.0, 2.0])
    told: list[tuple[dict[str, Any], float | None]] = field(default_factory=list)

    def ask(self) -> dict[str, Any] | None:
        return {"x": self.points.pop(0)} if self.points else None

    def tell(self, params: Mapping[str, Any], value: float | None) -> None:
        self.told.append((dict(params), value))


@pytest.mark.asyncio
async def test_an_ask_tell_strategy_runs_until_it_is_done() -> None:
    strategy = Bisect()
    assert isinstance(strategy, Strategy)
    frame = await sweep(EXP, strategy, objective="score")
    assert frame["x"].tolist() == [0.0, 4.0, 2.0]
    assert strategy.told == [({"x": 0.0}, 4.0), ({"x": 4.0}, 4.0), ({"x": 2.0}, 0.0)]
    assert frame["best"].tolist() == [False, False, True]


@pytest.mark.asyncio
async def test_n_trials_caps_a_strategy_and_failures_are_told_as_none() -> None:
    async def fails_at_4(ctx: InstanceContext) -> dict[str, float]:
        if ctx.params["x"] == 4.0:
            raise ValueError("bad x")
        return {"score": ctx.params["x"]}

    strategy = Bisect()
    frame = await sweep(Experiment("f", fails_at_4), strategy, objective="score", n_trials=2)
    assert len(frame) == 2
    assert strategy.told == [({"x": 0.0}, 0.0), ({"x": 4.0}, None)]


@dataclass
class FakeTrial:
    number: int
    params: dict[str, Any] = field(default_factory=dict)

    def suggest_int(self, name: str, low: int, high: int) -> int:
        self.params[name] = low + self.number % (high - low + 1)
        return self.params[name]


@dataclass
class FakeStudy:
    """Shaped like optuna's ask/tell API: ask() gives a trial, tell(trial, value)."""

    asked: int = 0
    told: list[tuple[int, Any, Any]] = field(default_factory=list)

    def ask(self, fixed_distributions: Mapping[str, list[int]] | None = None) -> FakeTrial:
        trial = FakeTrial(self.asked)
        self.asked += 1
        for name, choices in (fixed_distributions or {}).items():
            trial.params[name] = choices[trial.number % len(choices)]
        return trial

    def tell(self, trial: FakeTrial, values: float | None = None, state: Any = None) -> None:
        self.told.append((trial.number, values, state))


@pytest.mark.asyncio
async def test_a_study_with_fixed_distributions_is_a_strategy() -> None:
    study = FakeStudy()
    frame = await sweep(EXP, StudyStrategy(study, {"x": [5, 2, 0]}), objective="score", n_trials=4)
    assert frame["x"].tolist() == [5, 2, 0, 5]
    assert study.told == [(0, 9.0, None), (1, 0.0, None), (2, 4.0, None), (3, 9.0, None)]
    assert frame.loc[frame["best"], "x"].tolist() == [2]


@pytest.mark.asyncio
async def test_a_study_with_define_by_run_space_and_failed_trials() -> None:
    async def odd_fails(ctx: InstanceContext) -> dict[str, float]:
        if ctx.params["x"] % 2:
            raise RuntimeError("odd")
        return {"score": float(ctx.params["x"])}

    study = FakeStudy()
    strategy = StudyStrategy(study, lambda trial: {"x": trial.suggest_int("x", 0, 9)})
    frame = await sweep(Experiment("odd", odd_fails), strategy, objective="score", n_trials=3)
    assert frame["status"].tolist() == ["ok", "failed", "ok"]
    assert [(number, value) for number, value, _ in study.told] == [(0, 0.0), (1, None), (2, 2.0)]
    assert study.told[1][2] is not None  # a failed trial is told with a FAIL state


@pytest.mark.asyncio
async def test_parallel_study_trials_with_equal_params_are_told_apart() -> None:
    calls = 0

    async def first_is_slow(ctx: InstanceContext) -> dict[str, float]:
        nonlocal calls
        calls += 1
        mine = calls
        if mine == 1:
            await asyncio.sleep(0.05)
        return {"score": float(mine)}

    study = FakeStudy()
    await sweep(
        Experiment("same", first_is_slow), StudyStrategy(study, {"x": [1]}), objective="score",
        n_trials=2, max_parallel=2,
    )  # fmt: skip
    # Trial 1 ends first; its value goes to trial 1, not to the older trial with equal params.
    assert study.told == [(1, 2.0, None), (0, 1.0, None)]


@pytest.mark.asyncio
async def test_a_study_needs_n_trials_and_a_space() -> None:
    with pytest.raises(ConfigError, match="n_trials"):
        await sweep(EXP, StudyStrategy(FakeStudy(), {"x": [1]}), objective="score")
    with pytest.raises(ConfigError, match="search space"):
        await sweep(EXP, StudyStrategy(FakeStudy()), objective="score", n_trials=2)


@pytest.mark.asyncio
async def test_an_optuna_study_drives_a_sweep() -> None:
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=1))
    space = {"x": optuna.distributions.IntDistribution(0, 4)}
    frame = await sweep(EXP, StudyStrategy(study, space), objective="score", n_trials=6)
    assert len(study.trials) == 6
    assert study.best_value == frame["objective"].min()
    with pytest.raises(ConfigError, match="search space"):
        await sweep(EXP, optuna.create_study(), objective="score", n_trials=1)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("space", "options", "option"),
    [
        ("x=1", {}, "space"),
        ({"x": 3}, {}, "space['x']"),
        ([{"x": 1}, 2], {}, "space"),
        ({"x": [1]}, {"direction": "up"}, "direction"),
        ({"x": [1]}, {"max_parallel": 0}, "max_parallel"),
        ({"x": [1]}, {"objective": 3}, "objective"),
        ({"x": [1]}, {"instances": 0}, "instances"),
    ],
)
async def test_bad_options_raise_config_error(
    space: Any, options: dict[str, Any], option: str
) -> None:
    options = {"objective": "score", **options}
    with pytest.raises(ConfigError) as caught:
        await sweep(EXP, space, **options)
    assert caught.value.option == option


def test_objective_value_prefers_the_summary_then_metrics() -> None:
    from labkit.results import InstanceResult

    timeline = pd.DataFrame({"t": [0.0, 1.0], "loss": [3.0, float("nan")]})
    ok = InstanceResult(index=0, ok=True, error=None, timeline=timeline, summary={"loss": 9.0})
    result = ExperimentResult.build("e", {}, [ok], {})
    assert objective_value(result, "loss") == 9.0  # the summary key wins
    result = ExperimentResult.build(
        "e", {}, [InstanceResult(index=0, ok=True, error=None, timeline=timeline)], {}
    )
    assert objective_value(result, "loss") == 3.0  # last value that was recorded
    with pytest.raises(ValueError, match="not a number"):
        objective_value(result, lambda r: "high")  # type: ignore[arg-type,return-value]
