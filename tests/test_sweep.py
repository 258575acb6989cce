"""Sweeps: grids, lists and ask/tell strategies, failures, parallelism, GPUs, resume."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import labkit as lk
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


async def test_an_optuna_study_agrees_on_direction_and_on_the_best_of_ties() -> None:
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"x": optuna.distributions.IntDistribution(0, 1)}
    with pytest.raises(ConfigError, match="direction"):
        await sweep(
            EXP, StudyStrategy(optuna.create_study(direction="maximize"), space),
            objective="score", n_trials=1,
        )  # fmt: skip

    async def tie(ctx: InstanceContext) -> dict[str, float]:
        await asyncio.sleep(0.05 if ctx.attempt == 1 and ctx.params["slow"] else 0.0)
        return {"score": 1.0}

    study = optuna.create_study(direction="minimize")
    slow = iter([True, False])
    strategy = StudyStrategy(study, lambda trial: {"slow": next(slow)})
    frame = await sweep(
        Experiment("tie", tie), strategy, objective="score", n_trials=2, max_parallel=2
    )
    # Trial 0 is slow, trial 1 ties it and is told first: both name trial 1 the best.
    assert frame.loc[frame["best"], "trial"].tolist() == [study.best_trial.number] == [1]


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


# --- sweeps you can watch ----------------------------------------------------------------


async def test_every_event_names_its_trial_and_the_best_is_published_live() -> None:
    from labkit.events import InstanceEvent, TaskEvent, TrialEvent
    from labkit.sweep import SweepEvent

    seen: list[Any] = []

    async def slow(ctx: InstanceContext) -> dict[str, float]:
        await asyncio.sleep(0.01 * ctx.params["x"])
        return {"score": float(ctx.params["x"])}

    frame = await sweep(
        Experiment("slow", slow), {"x": [3, 1, 2]}, objective="score", max_parallel=3,
        on_event=seen.append,
    )  # fmt: skip
    wrapped = [event for event in seen if isinstance(event, TrialEvent)]
    starts = {
        event.trial
        for event in wrapped
        if isinstance(event.event, InstanceEvent) and event.event.kind == "started"
    }
    # Three concurrent trials each have an instance 0: the trial tells them apart.
    assert starts == {0, 1, 2}
    assert any(isinstance(event.event, TaskEvent) for event in wrapped)
    ends = [e for e in seen if isinstance(e, SweepEvent) and e.kind == "trial_finished"]
    assert [event.trial for event in ends] == [1, 2, 0]  # in the order they finished
    assert [event.stats.best_trial for event in ends] == [1, 1, 1]
    board = ends[-1].stats.leaderboard
    assert [(t.trial, t.objective, t.instances) for t in board] == [
        (1, 1.0, 1),
        (2, 2.0, 1),
        (0, 3.0, 1),
    ]
    assert ends[-1].stats.finished == 3 and ends[-1].stats.running == 0
    assert frame.loc[frame["best"], "trial"].tolist() == [1]


async def test_a_failed_trial_keeps_the_original_error_type() -> None:
    async def oom(ctx: InstanceContext) -> None:
        raise ValueError("OOM")

    frame = await sweep(Experiment("oom", oom), {"x": [1]}, objective="score")
    assert frame["error"].tolist() == ["ValueError: OOM"]


def test_leaderboard_prints_the_best_trials_first() -> None:
    from labkit.sweep import leaderboard

    frame = asyncio.run(sweep(EXP, {"x": [0, 2, 3]}, objective="score"))
    lines = leaderboard(frame).splitlines()
    assert lines[0].startswith("  1. trial 1") and "objective 0" in lines[0] and "x=2" in lines[0]
    assert [line.split()[2] for line in lines] == ["1", "2", "0"]


@dataclass
class DirectedStudy(FakeStudy):
    """A fake study with optuna's direction and its in-memory best_trial rule."""

    direction: Any = None
    best: tuple[int, float] | None = None

    def tell(self, trial: FakeTrial, values: float | None = None, state: Any = None) -> None:
        super().tell(trial, values, state)
        if values is None:
            return
        sign = -1.0 if self.direction.name == "MAXIMIZE" else 1.0
        # Strictly better only, as optuna's in-memory storage: the first told of equals.
        if self.best is None or sign * values < sign * self.best[1]:
            self.best = (trial.number, values)


async def test_a_strategy_refuses_a_direction_that_contradicts_its_study() -> None:
    from types import SimpleNamespace

    study = DirectedStudy(direction=SimpleNamespace(name="MAXIMIZE"))
    with pytest.raises(ConfigError, match=r'direction=.min.*"max", the direction of the study'):
        await sweep(EXP, StudyStrategy(study, {"x": [1]}), objective="score", n_trials=2)
    assert study.asked == 0


async def test_tied_trials_name_the_best_as_optuna_does() -> None:
    from types import SimpleNamespace

    async def tie(ctx: InstanceContext) -> dict[str, float]:
        # Trial 0 is slow; both score the same: optuna's best_trial is the first told.
        await asyncio.sleep(0.05 if ctx.params["x"] == 0 else 0.0)
        return {"score": 1.0}

    study = DirectedStudy(direction=SimpleNamespace(name="MINIMIZE"))
    frame = await sweep(
        Experiment("tie", tie), StudyStrategy(study, {"x": [0, 1]}), objective="score",
        n_trials=2, max_parallel=2,
    )  # fmt: skip
    assert study.best is not None
    assert frame.loc[frame["best"], "trial"].tolist() == [study.best[0]] == [1]
    assert frame["tied_with_best"].tolist() == [True, False]


# --- racing --------------------------------------------------------------------------------


def noisy(means: Sequence[float], sd: float) -> Experiment:
    """Trial ``k`` scores ``means[k]`` plus noise, a different draw per instance."""

    rng = random.Random(11)

    async def fn(ctx: InstanceContext) -> dict[str, float]:
        k = ctx.params["k"]
        ctx.params["draws"].append(k)
        return {"score": means[k] + rng.gauss(0.0, sd)}

    return Experiment("noisy", fn)


async def test_a_race_stops_adding_instances_once_the_leader_is_clear() -> None:
    draws: list[int] = []
    experiment = noisy([0.0, 5.0, 10.0], 0.1).with_params(draws=draws)
    frame = await sweep(
        experiment, {"k": [2, 0, 1]}, instances="race", objective="score", max_parallel=3
    )
    assert frame["instances"].tolist() == [5, 5, 5]  # the first round (5 each) decides
    assert frame.loc[frame["best"], "k"].tolist() == [0]
    assert not frame["tied_with_best"].any()
    assert frame.attrs["decision"] == "trial 1 beats the other 2 at 95 %"
    assert sorted(draws) == [0] * 5 + [1] * 5 + [2] * 5


async def test_a_race_between_equals_spends_up_to_max_instances_and_says_so() -> None:
    draws: list[int] = []
    experiment = noisy([1.0, 1.0, 9.0], 0.5).with_params(draws=draws)
    frame = await sweep(
        experiment, {"k": [0, 1, 2]}, instances=lk.Race(max_instances=7), objective="score"
    )
    assert frame["instances"].tolist() == [7, 7, 5]  # trial 2 is ruled out after the first round
    best = int(frame.loc[frame["best"], "trial"].iloc[0])
    assert set(frame.loc[frame["tied_with_best"], "trial"]) == {1 - best}
    assert frame.attrs["decision"] == (
        f"trials {best} and {1 - best} cannot be told apart with 7 instances each at 95 %"
        f" (trial {best} leads); 1 other beaten at 95 %"
    )
    assert frame["num_instances"].tolist() == [7, 7, 5]  # the summary covers every round


async def test_a_race_out_of_budget_says_no_decision_and_still_marks_the_leader() -> None:
    experiment = noisy([1.0, 1.0, 1.05, 9.0], 0.5).with_params(draws=[])
    frame = await sweep(
        experiment, {"k": [0, 1, 2, 3]}, instances=lk.Race(budget=26, max_instances=20),
        objective="score",
    )  # fmt: skip
    assert frame["instances"].sum() == 26  # the whole budget is spent
    assert frame["instances"].tolist()[3] == 5  # ruled out after the first round
    decision = frame.attrs["decision"]
    leader = int(frame.loc[frame["best"], "trial"].iloc[0])
    assert decision.startswith("no decision: trials ")
    assert f"the budget is spent (trial {leader} leads); 1 other beaten at 95 %" in decision
    assert leader in (0, 1, 2)
    assert not frame["tied_with_best"].any()  # nothing was examined to the end


async def test_a_race_value_and_the_race_string_run_the_same_race() -> None:
    space = {"k": [0, 1, 2]}
    shorthand = await sweep(
        noisy([0.0, 0.3, 2.0], 0.4).with_params(draws=[]), space, instances="race",
        objective="score",
    )  # fmt: skip
    spelled = await sweep(
        noisy([0.0, 0.3, 2.0], 0.4).with_params(draws=[]), space, instances=lk.Race(),
        objective="score",
    )  # fmt: skip
    pd.testing.assert_frame_equal(shorthand, spelled)
    assert shorthand.attrs["decision"] == spelled.attrs["decision"]
    assert "95 %" in spelled.attrs["decision"]
    looser = await sweep(
        noisy([0.0, 0.3, 2.0], 0.4).with_params(draws=[]), space,
        instances=lk.Race(max_instances=8, confidence=0.9), objective="score",
    )  # fmt: skip
    assert "90 %" in looser.attrs["decision"]
    assert looser["instances"].max() <= 8


def test_a_round_gives_every_plausible_trial_one_instance_then_the_rest() -> None:
    from labkit.sweep import judge, next_round

    options = lk.Race(max_instances=8)
    values = {
        0: [1.0, 1.2, 0.9, 1.1, 1.0],
        1: [1.1, 1.4, 0.9, 1.3, 1.2],
        2: [2.6, 1.6, 2.3, 1.9, math.nan],  # plainly worse, yet not ruled out at 4 pairs
        3: [1.05, 0.95, 1.3, 1.0, 1.2],
    }
    decision = judge(values, direction="min")
    assert decision.leader == 0 and not decision.beaten
    counts = {0: 5, 1: 5, 2: 5, 3: 5}
    # The leader and the trials its plain t interval cannot yet tell from it.
    assert next_round(decision, values, counts, options, 10, direction="min") == [
        (0, 1), (3, 1), (1, 1)
    ]  # fmt: skip
    # Over budget: the best means first.
    assert next_round(decision, values, counts, options, 2, direction="min") == [(0, 1), (3, 1)]
    # Once those are at max_instances, the budget goes to the trial left.
    full = {0: 8, 1: 8, 2: 5, 3: 8}
    assert next_round(decision, values, full, options, 10, direction="min") == [(2, 1)]
    assert next_round(decision, values, {t: 8 for t in values}, options, 10, direction="min") == []


async def test_a_race_with_an_ask_tell_strategy_tells_the_final_objectives() -> None:
    draws: list[int] = []
    study = FakeStudy()
    experiment = noisy([3.0, 0.0, 6.0], 0.1).with_params(draws=draws)
    frame = await sweep(
        experiment, StudyStrategy(study, {"k": [0, 1, 2]}), instances="race",
        objective="score", n_trials=3,
    )  # fmt: skip
    assert frame.loc[frame["best"], "k"].tolist() == [1]
    told = {number: value for number, value, _ in study.told}
    assert told == dict(zip(frame["trial"], frame["objective"], strict=True))


async def test_race_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="initial"):
        lk.Race(initial=0)
    with pytest.raises(ConfigError, match="max_instances"):
        lk.Race(max_instances=1)
    # Racing settings belong to the Race: given to the sweep, they are refused by name.
    for option, value in (("confidence", 0.9), ("min_effect", 0.1), ("budget", 10),
                          ("initial_instances", 3)):  # fmt: skip
        for instances in ("race", lk.Race(), 3):
            with pytest.raises(ConfigError) as caught:
                await sweep(
                    EXP, {"x": [1]}, instances=instances, objective="score", **{option: value}
                )
            assert caught.value.option == option
            assert "lk.Race(" in str(caught.value)
    with pytest.raises(ConfigError, match="max_instances") as racing:
        await sweep(EXP, {"x": [1]}, instances="race", objective="score", max_instances=7)
    assert "lk.Race(max_instances=" in str(racing.value)
    with pytest.raises(ConfigError, match="budget") as small:
        await sweep(EXP, {"x": [1, 2, 3]}, instances=lk.Race(budget=2), objective="score")
    assert "at least one instance per trial (3)" in str(small.value)


async def test_auto_instances_take_max_instances_as_a_run_option() -> None:
    frame = await sweep(EXP, {"x": [1, 2]}, instances="auto", max_instances=3, objective="score")
    assert frame["status"].tolist() == ["ok", "ok"]
    assert frame["instances"].max() <= 3


# --- a racing trial is one experiment that grows -------------------------------------------


def seeded(means: Sequence[float], seed_sd: float, noise: float) -> Experiment:
    """Trial ``k`` scores ``means[k]`` plus an effect of ``ctx.seed`` shared by every trial."""

    async def fn(ctx: InstanceContext) -> dict[str, float]:
        k = ctx.params["k"]
        ctx.params["seen"].append((k, ctx.index, ctx.seed))
        shared = random.Random(ctx.seed).gauss(0.0, seed_sd)
        own = random.Random(ctx.seed * 31 + k).gauss(0.0, noise)
        ctx.record(score=means[k] + shared + own)
        return {"score": means[k] + shared + own}

    return Experiment("seeded", fn)


async def test_a_racing_trial_is_one_stored_experiment_whose_instances_continue(
    tmp_path: Path,
) -> None:
    seen: list[tuple[int, int, int]] = []
    experiment = seeded([0.0, 0.05, 3.0], seed_sd=1.0, noise=0.5).with_params(seen=seen)
    with Store(tmp_path / "race.db") as store:
        frame = await sweep(
            experiment, {"k": [0, 1, 2]}, instances=lk.Race(max_instances=8),
            objective="score", store=store,
        )  # fmt: skip
        records = store.experiments()
        assert len(records) == 3  # one record per trial, however many rounds it ran
        for _, row in frame.iterrows():
            result = store.load(row["experiment_id"])
            indices = sorted(instance.index for instance in result.instances)
            assert indices == list(range(int(row["instances"])))
            assert int(result.averaged["n"].max()) == row["instances"]  # every round averaged
            assert result.summary["num_instances"] == row["instances"]
    assert frame["instances"].tolist()[:2] == [8, 8]
    # Instance i has the same seed in every trial, and no seed repeats within a trial.
    seeds: dict[int, set[int]] = {}
    for _, index, seed in seen:
        seeds.setdefault(index, set()).add(seed)
    assert all(len(found) == 1 for found in seeds.values())
    per_trial = [[seed for k, _, seed in seen if k == trial] for trial in range(3)]
    assert all(len(set(trial)) == len(trial) for trial in per_trial)


async def test_trials_sharing_seeds_race_on_paired_differences() -> None:
    # A seed's effect (sd 10) dwarfs the difference (1): compared as unrelated samples,
    # 5 instances a side could not tell; paired by seed, the first round does.
    experiment = seeded([0.0, 1.0, 2.0], seed_sd=10.0, noise=0.05).with_params(seen=[])
    frame = await sweep(
        experiment, {"k": [0, 1, 2]}, instances=lk.Race(max_instances=6), objective="score"
    )
    assert frame.attrs["decision"] == "trial 0 beats the other 2 at 95 %"
    assert frame["instances"].tolist() == [5, 5, 5]


async def test_a_race_resumes_from_its_trials_records(tmp_path: Path) -> None:
    seen: list[tuple[int, int, int]] = []
    experiment = seeded([0.0, 0.0, 0.1], seed_sd=1.0, noise=1.0).with_params(seen=seen)
    race = {"k": [0, 1, 2]}
    with Store(tmp_path / "race.db") as store:
        first = await sweep(
            experiment, race, instances=lk.Race(max_instances=12, budget=15),
            objective="score", store=store,
        )  # fmt: skip
        assert first.attrs["decision"].startswith("no decision")
        assert first["instances"].tolist() == [5, 5, 5]
        seen.clear()
        second = await sweep(
            experiment, race, instances=lk.Race(max_instances=12, budget=24),
            objective="score", store=store,
        )  # fmt: skip
        assert len(store.experiments()) == 3  # the same three records, grown
    assert second["resumed"].all()
    assert second["instances"].tolist() == [8, 8, 8]
    assert sorted({index for _, index, _ in seen}) == [5, 6, 7]  # nothing ran twice
    assert second["experiment_id"].tolist() == first["experiment_id"].tolist()


# --- objectives: checked against what an experiment records ---------------------------------


def test_resolve_objective_says_figure_or_metric_and_lists_what_exists() -> None:
    from labkit.sweep import recorded_names, resolve_objective

    assert resolve_objective("loss_last", figures=["loss_last"], metrics=["loss"]) == "figure"
    assert resolve_objective("loss", figures=["loss_last"], metrics=["loss"]) == "metric"
    # A figure wins over a metric of the same name, as objective_value reads them.
    assert resolve_objective("loss", figures=["loss"], metrics=["loss"]) == "figure"
    with pytest.raises(ConfigError) as caught:
        resolve_objective("los", figures=["loss_last", "cpu_peak"], metrics=["loss"])
    assert caught.value.option == "objective" and caught.value.value == "los"
    assert "a summary figure (loss_last, cpu_peak) or a recorded metric (loss)" in str(caught.value)
    with pytest.raises(ConfigError, match="a name the experiment records"):
        resolve_objective("loss")
    result = asyncio.run(lk.run_experiment(EXP.with_params(x=1), instances=2))
    figures, metrics = recorded_names(result)
    assert {"score", "loss_last"} <= set(figures) and metrics == ["loss"]


async def test_an_unknown_objective_fails_its_trials_naming_what_they_recorded() -> None:
    frame = await sweep(EXP, {"x": [1]}, objective="loss_lats")
    (error,) = frame["error"].tolist()
    assert error.startswith("ConfigError: objective='loss_lats'")
    assert "loss_last" in error and "recorded metric (loss)" in error
