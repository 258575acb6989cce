"""Experiments: instances, averaging, failures, resources, recording, adaptive counts.

Most tests run on a FakeClock (autojump) with FakeSandboxes and a static GPU fleet,
so they take milliseconds; the cancellation test uses real LocalSandboxes.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
import pytest

from labkit.errors import ConfigError
from labkit.events import EventBus
from labkit.experiment import (
    E2B_PRICE_PER_GIB_SECOND,
    E2B_PRICE_PER_VCPU_SECOND,
    MAX_INSTANCES,
    Experiment,
    InstanceContext,
    InstanceEvent,
    estimate_cost,
    run_experiment,
)
from labkit.gpu import GPUPool, static_fleet
from labkit.policies import Retry
from labkit.results import ExperimentResult, InstanceResult
from labkit.samplelog import SampleLog
from labkit.sampling import ResourceSampler
from labkit.sandbox.base import ResourceSample
from labkit.sandbox.fake import FakeSandbox
from labkit.sandbox.local import LocalSandbox
from labkit.sandbox.pool import SandboxPool
from labkit.seeds import instance_seed
from labkit.testing import FakeClock


def ramp(offset: float) -> Any:
    """An instance function recording x = i + offset * index for 5 one-second steps."""

    async def fn(ctx: InstanceContext) -> dict[str, float]:
        for i in range(5):
            ctx.record(x=i + offset * ctx.index, errors=1)
            await ctx.sleep(1.0)
        return {"score": 10.0 + ctx.index}

    return fn


async def run(fn: Any, **options: Any) -> ExperimentResult:
    options.setdefault("clock", FakeClock(autojump=True))
    return await run_experiment(Experiment("exp", fn), **options)


@pytest.mark.asyncio
async def test_three_instances_are_averaged_with_their_spread() -> None:
    result = await run(ramp(1.0), instances=3)

    assert result.ok and not result.all_failed
    assert [instance.index for instance in result.instances] == [0, 1, 2]
    averaged = result.averaged
    assert list(averaged["t"]) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert list(averaged["n"]) == [3] * 5
    # x = i + index: mean over indices 0, 1, 2 is i + 1, std is 1.
    assert list(averaged["x"]) == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])
    assert list(averaged["x_std"]) == pytest.approx([1.0] * 5)
    summary = result.summary
    assert summary["num_instances"] == 3 and summary["num_failed"] == 0
    assert summary["x_last"] == pytest.approx(5.0)  # last values 4, 5, 6
    assert summary["error_count"] == 5
    assert summary["score"] == pytest.approx(11.0)  # the functions' own figures


@pytest.mark.asyncio
async def test_one_failing_instance_is_kept_and_the_others_averaged() -> None:
    async def fn(ctx: InstanceContext) -> None:
        ctx.record(x=10.0 * (ctx.index + 1))
        await ctx.sleep(1.0)
        ctx.record(x=10.0 * (ctx.index + 1))
        if ctx.index == 1:
            raise ValueError("disk full")

    result = await run(fn, instances=3)

    assert not result.ok and not result.all_failed
    failed = result.instances[1]
    assert not failed.ok and failed.error == "ValueError: disk full"
    assert list(failed.timeline["x"]) == [20.0, 20.0]  # what it measured is kept
    assert result.summary["num_instances"] == 3
    assert result.summary["num_failed"] == 1
    assert result.summary["errors"] == {1: "ValueError: disk full"}
    # Instances 0 and 2 (x = 10 and 30) make the average; the failure does not.
    assert list(result.averaged["x"]) == pytest.approx([20.0, 20.0])
    assert list(result.averaged["n"]) == [2, 2]


@pytest.mark.asyncio
async def test_when_every_instance_fails_the_result_says_so() -> None:
    def fn(ctx: InstanceContext) -> None:
        raise RuntimeError(f"no luck {ctx.index}")

    result = await run(fn, instances=2)

    assert result.all_failed and not result.ok
    assert result.summary["all_failed"] is True
    assert result.summary["num_failed"] == 2
    assert result.summary["errors"] == {0: "RuntimeError: no luck 0", 1: "RuntimeError: no luck 1"}
    assert result.averaged.empty


@pytest.mark.asyncio
async def test_an_instance_past_the_timeout_fails_and_the_rest_finish() -> None:
    async def fn(ctx: InstanceContext) -> None:
        ctx.record(x=1.0)
        await ctx.sleep(100.0 if ctx.index == 0 else 1.0)
        ctx.record(x=2.0)

    result = await run(fn, instances=2, timeout=10.0)

    slow, quick = result.instances
    assert not slow.ok and "Timeout" in (slow.error or "")
    assert quick.ok
    assert result.summary["num_failed"] == 1


@pytest.mark.asyncio
async def test_a_sync_function_runs_in_a_thread_and_records() -> None:
    def fn(ctx: InstanceContext) -> dict[str, int]:
        ctx.record(x=float(ctx.index))
        ctx.log("hello from", ctx.index)
        return {"answer": 42}

    events: list[Any] = []
    result = await run_experiment(Experiment("sync", fn), instances=2, on_event=events.append)
    await asyncio.sleep(0)  # events from the threads are delivered on the loop

    assert result.ok
    assert [list(i.timeline["x"]) for i in result.instances] == [[0.0], [1.0]]
    assert result.summary["answer"] == 42
    logs = [e.message for e in events if isinstance(e, InstanceEvent) and e.kind == "log"]
    assert sorted(logs) == ["hello from 0", "hello from 1"]


@pytest.mark.asyncio
async def test_events_reach_the_callback_and_a_bus() -> None:
    bus = EventBus()
    seen: list[Any] = []
    bus.subscribe(seen.append)

    await run(ramp(0.0), instances=2, on_event=bus)

    kinds = {(type(e).__name__, e.kind) for e in seen}
    assert ("InstanceEvent", "started") in kinds
    assert ("InstanceEvent", "finished") in kinds
    assert ("TaskEvent", "succeeded") in kinds
    samples = [e for e in seen if isinstance(e, InstanceEvent) and e.kind == "sample"]
    assert len(samples) == 10
    assert samples[-1].metrics == {"x": 4.0, "errors": 1.0}
    assert {e.offset for e in samples} == {0.0, 1.0, 2.0, 3.0, 4.0}


@pytest.mark.asyncio
async def test_retry_reruns_an_instance_and_keeps_only_the_last_attempt() -> None:
    calls: dict[int, int] = {}

    async def flaky(ctx: InstanceContext) -> None:
        calls[ctx.index] = calls.get(ctx.index, 0) + 1
        ctx.record(attempt=float(ctx.attempt))
        if ctx.attempt == 1:
            raise ConnectionError("transient")

    result = await run(flaky, instances=2, retry=Retry(attempts=3, initial=0.1, jitter=0.0))

    assert result.ok
    assert calls == {0: 2, 1: 2}
    assert [i.attempts for i in result.instances] == [2, 2]
    assert [list(i.timeline["attempt"]) for i in result.instances] == [[2.0], [2.0]]


@pytest.mark.asyncio
async def test_each_instance_holds_its_gpus_and_sandbox_and_gives_them_back() -> None:
    clock = FakeClock(autojump=True)
    gpu_pool = GPUPool(static_fleet(4), clock=clock)
    sandboxes: list[FakeSandbox] = []

    def factory() -> FakeSandbox:
        sandbox = FakeSandbox(clock=clock, sample=ResourceSample(0.0, 50.0, 100.0, 1.0))
        sandboxes.append(sandbox)
        return sandbox

    sandbox_pool = SandboxPool(factory, max_size=2, clock=clock)
    seen: dict[int, tuple[Any, ...]] = {}

    async def fn(ctx: InstanceContext) -> None:
        assert ctx.sandbox is not None
        seen[ctx.index] = (ctx.gpus, ctx.env["CUDA_VISIBLE_DEVICES"], ctx.sandbox.id)
        await ctx.sleep(3.0)

    result = await run_experiment(
        Experiment("gpus", fn),
        instances=2,
        gpus_per_instance=2,
        gpu_pool=gpu_pool,
        sandbox_pool=sandbox_pool,
        sample_every=1.0,
        clock=clock,
    )
    await sandbox_pool.close()

    assert result.ok
    held = [set(gpus) for gpus, _, _ in seen.values()]
    assert all(len(gpus) == 2 for gpus in held) and not held[0] & held[1]
    for index, (gpus, env, sandbox_id) in seen.items():
        assert env == ",".join(gpus)
        assert result.instances[index].gpu_uuids == gpus
        assert result.instances[index].sandbox_id == sandbox_id
    assert gpu_pool.stats().gpus_allocated == 0 and gpu_pool.stats().active == 0
    # The sampler read each sandbox every second: cpu and memory joined the timeline.
    timeline = result.instances[0].timeline
    assert list(timeline["t"]) == [0.0, 1.0, 2.0]
    assert set(timeline["cpu"]) == {50.0} and set(timeline["memory"]) == {100.0}
    assert result.summary["cpu_peak"] == 50.0


@pytest.mark.asyncio
async def test_an_instance_without_gpus_sees_none() -> None:
    result_env: list[str] = []

    async def fn(ctx: InstanceContext) -> None:
        result_env.append(ctx.env["CUDA_VISIBLE_DEVICES"])

    await run(fn, instances=1)
    assert result_env == [""]


@pytest.mark.asyncio
async def test_cancelling_the_run_releases_every_gpu_and_sandbox() -> None:
    gpu_pool = GPUPool(static_fleet(3))
    sandbox_pool = SandboxPool(LocalSandbox, max_size=3)
    started = asyncio.Event()
    running: set[int] = set()

    async def fn(ctx: InstanceContext) -> None:
        assert ctx.sandbox is not None
        running.add(ctx.index)
        if len(running) == 3:
            started.set()
        await ctx.sandbox.run("sleep 30", timeout=60)

    task = asyncio.create_task(
        run_experiment(
            Experiment("stuck", fn),
            instances=3,
            gpus_per_instance=1,
            gpu_pool=gpu_pool,
            sandbox_pool=sandbox_pool,
            sample_every=0.2,
        )
    )
    try:
        await asyncio.wait_for(started.wait(), timeout=20)
        assert gpu_pool.stats().gpus_allocated == 3
        assert sandbox_pool.stats().active == 3
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gpu_pool.stats().gpus_allocated == 0
        assert gpu_pool.stats().active == 0
        assert sandbox_pool.stats().active == 0
    finally:
        await sandbox_pool.close()


@pytest.mark.asyncio
async def test_options_are_checked_before_anything_starts() -> None:
    calls: list[int] = []

    async def fn(ctx: InstanceContext) -> None:
        calls.append(ctx.index)

    experiment = Experiment("checked", fn)
    with pytest.raises(ConfigError, match=rf"instances=0.*{MAX_INSTANCES}"):
        await run_experiment(experiment, instances=0)
    with pytest.raises(ConfigError, match="instances"):
        await run_experiment(experiment, instances=MAX_INSTANCES + 1)
    with pytest.raises(ConfigError, match=r"gpus_per_instance=3.*at most 2"):
        await run_experiment(experiment, gpus_per_instance=3, gpu_pool=GPUPool(static_fleet(2)))
    with pytest.raises(ConfigError, match="duration"):
        await run_experiment(experiment, duration=-1.0)
    with pytest.raises(ConfigError, match="duration"):
        await run_experiment(experiment, duration=7 * 24 * 3600.0)
    with pytest.raises(ConfigError, match="max_concurrency"):
        await run_experiment(experiment, max_concurrency=0)
    with pytest.raises(ConfigError, match=r"executor='processes'.*'process'"):
        await run_experiment(experiment, executor="processes")
    with pytest.raises(ConfigError, match="seed=-1"):
        await run_experiment(experiment, seed=-1)
    assert calls == []


def test_an_experiment_checks_its_arguments_and_merges_params() -> None:
    async def fn(ctx: InstanceContext) -> None:
        return None

    with pytest.raises(ConfigError, match="name"):
        Experiment("", fn)
    with pytest.raises(ConfigError, match="fn"):
        Experiment("x", "not callable")  # type: ignore[arg-type]
    base = Experiment("x", fn, params={"a": 1, "b": 2})
    assert dict(base.with_params(b=3, c=4).params or {}) == {"a": 1, "b": 3, "c": 4}
    assert dict(base.params or {}) == {"a": 1, "b": 2}


@pytest.mark.asyncio
async def test_record_refuses_what_is_not_a_number() -> None:
    async def fn(ctx: InstanceContext) -> None:
        ctx.record(x="fast")  # type: ignore[arg-type]

    result = await run(fn)
    assert not result.ok
    assert "x='fast'" in (result.instances[0].error or "")


class MemoryRecorder:
    """An in-memory ExperimentRecorder, as the store implements it."""

    def __init__(self, done: Mapping[int, InstanceResult] | None = None) -> None:
        self.done = dict(done or {})
        self.begun: list[dict[str, Any]] = []
        self.followed: list[tuple[int, SampleLog | None]] = []
        self.finished_instances: list[InstanceResult] = []
        self.finished: ExperimentResult | None = None

    def begin(self, **kwargs: Any) -> tuple[str, dict[int, InstanceResult]]:
        self.begun.append(kwargs)
        return "exp-1", dict(self.done) if kwargs["resume"] else {}

    def follow(self, experiment_id: str, instance: int, log: SampleLog | None) -> None:
        assert experiment_id == "exp-1"
        self.followed.append((instance, log))

    async def finish_instance(self, experiment_id: str, result: InstanceResult) -> None:
        self.finished_instances.append(result)

    async def finish(self, experiment_id: str, result: ExperimentResult) -> None:
        self.finished = result


@pytest.mark.asyncio
async def test_a_recorder_gets_every_sample_instance_and_the_result() -> None:
    async def fn(ctx: InstanceContext) -> None:
        ctx.record(x=1.0)
        if ctx.index == 1:
            raise KeyError("gone")

    recorder = MemoryRecorder()
    result = await run(fn, instances=2, store=recorder)

    assert recorder.begun[0]["name"] == "exp" and recorder.begun[0]["instances"] == 2
    # Each attempt's log is followed while it runs; the failed one is let go at its end.
    logs = {instance: log for instance, log in recorder.followed if log is not None}
    assert sorted(logs) == [0, 1] and all(len(log) == 1 for log in logs.values())
    assert (1, None) in recorder.followed
    pd.testing.assert_frame_equal(logs[0].frame(), result.instances[0].timeline)
    assert sorted((r.index, r.ok) for r in recorder.finished_instances) == [(0, True), (1, False)]
    assert recorder.finished is result
    assert result.experiment_id == "exp-1"


@pytest.mark.asyncio
async def test_resume_loads_finished_instances_instead_of_rerunning_them() -> None:
    done = InstanceResult(0, True, None, pd.DataFrame({"t": [0.0], "x": [7.0]}), {"x_last": 7.0})
    recorder = MemoryRecorder({0: done})
    ran: list[int] = []

    async def fn(ctx: InstanceContext) -> None:
        ran.append(ctx.index)
        ctx.record(x=9.0)

    result = await run(fn, instances=2, store=recorder, resume=True)

    assert ran == [1]
    # The loaded instance is kept as stored, given its seed (the store keeps the base seed).
    kept = result.instances[0]
    assert kept.timeline is done.timeline and kept.summary is done.summary
    assert kept.seed == instance_seed(0, 0)
    assert result.summary["x_last"] == pytest.approx(8.0)


@pytest.mark.asyncio
async def test_auto_instances_stop_at_the_cap_when_the_spread_is_wide() -> None:
    async def fn(ctx: InstanceContext) -> dict[str, float]:
        return {"score": 100.0 + (20.0 if ctx.index % 2 else -20.0)}

    result = await run(fn, instances="auto", max_instances=7, auto_metric="score")

    assert len(result.instances) == 7
    assert result.config["instances"] == "auto" and result.config["instances_run"] == 7


@pytest.mark.asyncio
async def test_auto_instances_stop_after_the_pilot_when_values_agree() -> None:
    async def fn(ctx: InstanceContext) -> dict[str, float]:
        return {"score": 100.0 + 0.01 * ctx.index}

    result = await run(fn, instances="auto", max_instances=20)

    assert len(result.instances) == 3


@pytest.mark.asyncio
async def test_auto_instances_add_what_the_pilot_says_is_needed() -> None:
    # Pilot 90, 100, 110 (mean 100, s 10) needs 18 for +-5 % (see instances_needed).
    values = [90.0, 100.0, 110.0] + [100.0] * 30

    async def fn(ctx: InstanceContext) -> dict[str, float]:
        return {"score": values[ctx.index]}

    result = await run(fn, instances="auto", max_instances=30, auto_metric="score")

    assert 18 <= len(result.instances) < 30


@pytest.mark.asyncio
async def test_the_sampler_degrades_when_metrics_fail() -> None:
    class Flaky:
        def __init__(self) -> None:
            self.calls = 0

        async def metrics(self) -> ResourceSample:
            self.calls += 1
            if self.calls % 2 == 0:
                raise OSError("metrics endpoint down")
            return ResourceSample(0.0, 10.0 * self.calls, math.nan, 0.0)

    recorded: list[dict[str, float]] = []
    clock = FakeClock()
    sampler = ResourceSampler(Flaky(), lambda **m: recorded.append(m), every=0.5, clock=clock)
    async with sampler:
        for _ in range(4):
            await asyncio.sleep(0)
            clock.advance(0.5)
        await asyncio.sleep(0)

    # Odd calls give cpu (memory is NaN, so left out); even calls fail and are skipped.
    assert recorded == [{"cpu": 10.0}, {"cpu": 30.0}, {"cpu": 50.0}]
    assert sampler.failures == 2
    with pytest.raises(ConfigError, match="sample_every"):
        ResourceSampler(Flaky(), print, every=0)


def test_estimate_cost_uses_e2b_rates_and_accepts_others() -> None:
    per_second = 2 * E2B_PRICE_PER_VCPU_SECOND + 0.5 * E2B_PRICE_PER_GIB_SECOND
    assert estimate_cost(instances=3, duration=3600) == pytest.approx(3 * 3600 * per_second)
    assert estimate_cost(instances=1, duration=3600) == pytest.approx(0.1089)  # E2B's example
    assert estimate_cost(
        instances=2, duration=10, vcpus=4, memory_gib=2, price_per_vcpu_second=1.0,
        price_per_gib_second=0.5,
    ) == pytest.approx(2 * 10 * (4 + 1))  # fmt: skip
    with pytest.raises(ConfigError, match="instances"):
        estimate_cost(instances=0, duration=1)
    with pytest.raises(ConfigError, match="duration"):
        estimate_cost(instances=1, duration=-5)


@pytest.mark.asyncio
async def test_a_result_survives_a_json_round_trip() -> None:
    async def fn(ctx: InstanceContext) -> None:
        ctx.record(x=float(ctx.index))
        await ctx.sleep(1.0)
        ctx.record(y=2.0)
        if ctx.index == 2:
            raise ValueError("bad")

    result = await run(fn, instances=3)
    text = result.to_json()
    back = ExperimentResult.from_json(text)

    assert json.loads(text)["summary"]["errors"] == {"2": "ValueError: bad"}
    assert back.summary == result.summary
    assert back.outliers == result.outliers
    pd.testing.assert_frame_equal(back.averaged, result.averaged)
    for original, copy in zip(result.instances, back.instances, strict=True):
        assert (copy.index, copy.ok, copy.error) == (original.index, original.ok, original.error)
        pd.testing.assert_frame_equal(copy.timeline, original.timeline)
    rebuilt = ExperimentResult.build("exp", {}, back.instances, back.config)
    assert rebuilt.summary == result.summary


# --- no computed instance is ever lost ------------------------------------------------


async def diverging(ctx: InstanceContext) -> None:
    """Instance 2's loss diverges to inf at its last step."""
    for step in range(4):
        loss = math.inf if ctx.index == 2 and step == 3 else 1.0 / (step + 1)
        ctx.record(loss=loss)
        await ctx.sleep(1.0)


async def test_an_inf_loss_keeps_every_instance_and_the_average(tmp_path: Any) -> None:
    from labkit.store import Store

    with Store(tmp_path / "labkit.db") as store:
        result = await run(diverging, instances=3, store=store)
        status = store.experiments()["status"].tolist()
    assert [instance.ok for instance in result.instances] == [True, True, True]
    assert math.isinf(result.instances[2].timeline["loss"].iloc[-1])
    assert result.notes == ()
    # The inf sample is left out of the mean at its point, and counted there.
    last = result.averaged.iloc[-1]
    assert last["loss"] == pytest.approx(0.25) and last["loss_nonfinite"] == 1
    assert status == ["finished"]


async def test_a_failing_average_keeps_the_instances_and_says_so(tmp_path: Any) -> None:
    from labkit.store import Store

    async def clashing(ctx: InstanceContext) -> dict[str, float]:
        ctx.record(n=1.0)  # averaging refuses a metric named like its count column
        return {"score": float(ctx.index)}

    with Store(tmp_path / "labkit.db") as store:
        result = await run(clashing, instances=2, store=store)
        frame = store.experiments()
        loaded = store.load(result.experiment_id or "")
    assert [instance.summary["score"] for instance in result.instances] == [0.0, 1.0]
    assert result.summary["score"] == 0.5
    assert result.averaged.empty
    assert result.notes[0].startswith("averaging the timelines failed: ConfigError")
    assert all("a metric named 'n'" in note for note in result.notes)
    assert frame["status"].tolist() == ["finished"]
    assert frame["notes"].tolist() == [list(result.notes)]
    assert loaded.notes == result.notes


class BrokenStore:
    """A recorder whose commits fail: the run must still return every instance."""

    def begin(self, **_: Any) -> tuple[str, dict[int, InstanceResult]]:
        return "broken", {}

    def follow(self, *_: Any) -> None:
        pass

    async def finish_instance(self, experiment_id: str, result: InstanceResult) -> None:
        raise OSError("disk full")

    async def finish(self, experiment_id: str, result: ExperimentResult) -> None:
        raise OSError("disk full")


async def test_a_failing_store_costs_no_instance() -> None:
    result = await run(ramp(1.0), instances=2, store=BrokenStore())
    assert result.ok and len(result.instances) == 2
    assert result.notes == (
        "instance 0 was not recorded in the store: OSError: disk full",
        "instance 1 was not recorded in the store: OSError: disk full",
        "the store could not record the finished experiment: OSError: disk full",
    )


# --- options and summaries ------------------------------------------------------------


def test_experiment_options_are_checked_once_and_frozen() -> None:
    from dataclasses import FrozenInstanceError

    from labkit.experiment import ExperimentOptions

    options = ExperimentOptions(instances="auto", max_instances=8)
    assert (options.adaptive, options.planned, options.pilot) == (True, 8, 3)
    assert ExperimentOptions(instances=5).pilot == 5
    with pytest.raises(FrozenInstanceError):
        options.instances = 2  # type: ignore[misc]
    with pytest.raises(ConfigError, match="heartbeat_every"):
        ExperimentOptions(heartbeat_every=0)
    with pytest.raises(ConfigError, match="instances"):
        ExperimentOptions(instances=True)  # type: ignore[arg-type]


def training(ctx: InstanceContext) -> None:
    for step in range(4):
        ctx.record(loss=4.0 - step - ctx.index, accuracy=[0.5, 0.9, 0.7, 0.8][step])


async def test_summarize_chooses_each_metrics_figure() -> None:
    experiment = Experiment(
        "train", training, summarize={"loss": "peak", "accuracy": ["max", "mean"]}
    )
    result = await run_experiment(experiment, instances=2, clock=FakeClock(autojump=True))
    first = result.instances[0].summary
    assert first["loss_peak"] == 4.0 and "loss_last" not in first
    assert first["accuracy_max"] == 0.9 and first["accuracy_mean"] == pytest.approx(0.725)
    assert "accuracy_last" not in first
    assert result.summary["loss_peak"] == 3.5  # (4.0 + 3.0) / 2


async def test_a_recorded_metric_defaults_to_its_last_value() -> None:
    result = await run_experiment(
        Experiment("train", training), instances=2, clock=FakeClock(autojump=True)
    )
    first = result.instances[0].summary
    assert first == {"loss_last": 1.0, "accuracy_last": 0.8}  # where training ended up
    assert result.summary["loss_last"] == 0.5  # (1.0 + 0.0) / 2
    # Nothing was recorded about errors or recoveries: no figure claims it was.
    assert "error_count" not in result.summary and "recovery_times" not in result.summary
    assert set(result.summary_table().index) == {"loss_last", "accuracy_last"}


async def test_errors_and_recovery_times_appear_when_recorded() -> None:
    def flaky(ctx: InstanceContext) -> dict[str, float]:
        ctx.record(errors=ctx.index + 1, cpu=10.0 * (ctx.index + 1))
        ctx.record(errors=0, cpu=5.0)
        return {"recovery_time": 0.5 * (ctx.index + 1)}

    result = await run_experiment(
        Experiment("flaky", flaky), instances=2, clock=FakeClock(autojump=True)
    )
    assert result.instances[1].summary == {"cpu_peak": 20.0, "error_count": 2, "recovery_time": 1.0}
    assert result.summary["error_count"] == 2  # (1 + 2) / 2, halves up
    assert result.summary["cpu_peak"] == 15.0
    assert result.summary["recovery_times"] == [0.5, 1.0]


def test_summarize_refuses_an_unknown_kind() -> None:
    with pytest.raises(ConfigError, match=r"summarize\['loss'\].*last, min, max, mean, peak"):
        Experiment("train", training, summarize={"loss": "median"})  # type: ignore[dict-item]


async def test_the_context_shows_its_samples_and_start_read_only() -> None:
    seen: list[Any] = []

    async def fn(ctx: InstanceContext) -> None:
        ctx.record(x=1.0)
        seen.append((ctx.samples, ctx.started))

    await run(fn)
    (samples, started) = seen[0]
    assert samples == ((0.0, {"x": 1.0}),) and isinstance(samples, tuple)
    assert isinstance(started, float)


async def test_a_cancelled_run_is_marked_interrupted_at_once_and_resumes(tmp_path: Any) -> None:
    from labkit.store import Store

    ran: list[int] = []

    async def staggered(ctx: InstanceContext) -> None:
        ran.append(ctx.index)
        ctx.record(x=float(ctx.index))
        if ctx.index == 1 and len(ran) < 3:
            await asyncio.Event().wait()  # the first run is cancelled here

    committed = asyncio.Event()

    class Watched(Store):
        async def finish_instance(self, experiment_id: str, result: InstanceResult) -> None:
            await super().finish_instance(experiment_id, result)
            committed.set()

    experiment = Experiment("staggered", staggered)
    with Watched(tmp_path / "labkit.db") as store:
        task = asyncio.ensure_future(run_experiment(experiment, instances=2, store=store))
        await committed.wait()  # instance 0 is in the store, instance 1 still runs
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        store.flush()
        # Judged far in the past, the heartbeat alone would still say running.
        assert store.experiments(now=0.0)["status"].tolist() == ["interrupted"]
        result = await run_experiment(experiment, instances=2, store=store, resume=True)
        assert store.experiments()["status"].tolist() == ["finished"]
    assert ran == [0, 1, 1] and result.ok


@pytest.mark.asyncio
async def test_each_attempt_announces_its_log_before_its_samples() -> None:
    seen: list[Any] = []
    result = await run(ramp(0.0), instances=2, on_event=seen.append)

    for instance in range(2):
        mine = [e for e in seen if getattr(e, "instance", None) == instance]
        kinds = [e.kind for e in mine]
        assert kinds[:2] == ["started", "timeline"]
        log = mine[1].log
        assert isinstance(log, SampleLog) and len(log) == 5
        pd.testing.assert_frame_equal(log.frame(), result.instances[instance].timeline)


async def outage(ctx: InstanceContext) -> None:
    """Latency every second for 10 s; instance 0's server is down from 3 to 7 s, and
    its first sample after the outage counts the errors it saw meanwhile."""
    for second in range(10):
        down = ctx.index == 0 and 3 < second < 7
        if not down:
            errors = 12 if (ctx.index == 0 and second == 7) else second % 2
            ctx.record(latency=10.0 * (ctx.index + 1), errors=errors)
        await ctx.sleep(1.0)


@pytest.mark.asyncio
async def test_an_outage_is_averaged_from_the_instances_that_measured(tmp_path: Any) -> None:
    from labkit.store import Store

    with Store(tmp_path / "labkit.db") as store:
        result = await run(outage, instances=2, store=store)
        loaded = store.load(result.experiment_id or "")

    at = result.averaged.set_index("t")
    assert at.loc[[4.0, 5.0, 6.0], "latency"].tolist() == [20.0] * 3  # instance 1 only
    assert at.loc[[4.0, 5.0, 6.0], "latency_n"].tolist() == [1] * 3
    assert at.loc[[3.0, 7.0], "latency"].tolist() == [15.0, 15.0]
    totals = [instance.summary["error_count"] for instance in result.instances]
    assert totals == [15, 5]  # 0 + 1 + 0 + 1 + 12 + 0 + 1, and 1 + 1 + 1 + 1 + 1
    assert result.averaged["errors"].sum() == 10  # the instances' totals, averaged
    assert (result.averaged["errors_n"] == 2).all()
    pd.testing.assert_frame_equal(loaded.averaged, result.averaged, check_dtype=False)


@pytest.mark.asyncio
async def test_max_gap_and_method_reach_the_average_from_the_experiment_or_the_run(
    tmp_path: Any,
) -> None:
    from labkit.store import Store

    bridged = Experiment("exp", outage, max_gap=math.inf, method={"errors": "linear"})
    with Store(tmp_path / "labkit.db") as store:
        result = await run_experiment(
            bridged, instances=2, clock=FakeClock(autojump=True), store=store
        )
        loaded = store.load(result.experiment_id or "")
    overridden = await run_experiment(
        bridged, instances=2, clock=FakeClock(autojump=True), max_gap=2.0, method="previous"
    )

    assert result.config["max_gap"] == "inf" and result.config["method"] == {"errors": "linear"}
    assert result.averaged.set_index("t").loc[5.0, "latency_n"] == 2  # bridged
    assert result.averaged["errors"].sum() != 10  # interpolated, as asked: not conserved
    pd.testing.assert_frame_equal(loaded.averaged, result.averaged, check_dtype=False)
    assert overridden.config["max_gap"] == 2.0 and overridden.config["method"] == "previous"
    assert overridden.averaged.set_index("t").loc[5.0, "latency_n"] == 1


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"max_gap": 0.0}, "max_gap"),
        ({"max_gap": {"latency": -1.0}}, "max_gap['latency']"),
        ({"method": "cubic"}, "method"),
        ({"method": {"errors": "count"}}, "method['errors']"),
    ],
)
async def test_bad_averaging_options_are_refused_before_anything_runs(
    options: dict[str, Any], option: str
) -> None:
    ran: list[int] = []

    def fn(ctx: InstanceContext) -> None:
        ran.append(ctx.index)

    with pytest.raises(ConfigError) as on_experiment:
        Experiment("exp", fn, **options)
    with pytest.raises(ConfigError) as on_run:
        await run_experiment(Experiment("exp", fn), clock=FakeClock(autojump=True), **options)
    assert on_experiment.value.option == option and on_run.value.option == option
    assert ran == []
