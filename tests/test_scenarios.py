"""Built-in scenarios, run for real: python3 subprocesses in LocalSandboxes."""

from __future__ import annotations

import pytest

from labkit.errors import ConfigError
from labkit.experiment import Experiment, InstanceContext, run_experiment
from labkit.scenarios import (
    SCENARIOS,
    cpu_stress,
    error_burst,
    memory_pressure,
    network_delay,
    recovery_time,
    scenario,
)
from labkit.timeline import average_timelines


@pytest.mark.asyncio
async def test_three_cpu_stress_instances_are_averaged() -> None:
    result = await run_experiment(cpu_stress("high"), instances=3, duration=2.0, sample_every=0.25)

    assert result.ok, result.summary["errors"]
    for instance in result.instances:
        assert instance.sandbox_id is not None and instance.sandbox_id.startswith("local-")
        assert {"cpu", "memory", "ops"} <= set(instance.timeline.columns)
        assert instance.summary["ops_total"] > 0
    # The sampler saw the busy loop: a busy process reads tens of percent of a core.
    assert result.summary["cpu_peak"] > 10.0
    assert result.summary["num_instances"] == 3
    expected = average_timelines([instance.timeline for instance in result.instances])
    assert list(result.averaged.columns) == list(expected.columns)
    assert result.averaged["n"].max() == 3


@pytest.mark.asyncio
async def test_a_failing_and_a_timed_out_instance_are_recorded_beside_the_others() -> None:
    base = memory_pressure("low")

    async def fn(ctx: InstanceContext) -> object:
        assert ctx.sandbox is not None
        if ctx.index == 1:
            await ctx.sandbox.run("exit 3", timeout=5)
            raise RuntimeError("instance 1 gave up")
        if ctx.index == 2:
            await ctx.sandbox.run("sleep 30", timeout=60)  # stopped by the run's timeout
        return await base.fn(ctx)

    experiment = Experiment(
        "mixed", fn, params=base.params, needs_sandbox=True, summarize=base.summarize
    )
    result = await run_experiment(
        experiment, instances=3, duration=1.0, timeout=2.5, sample_every=0.1
    )

    ok, failed, timed_out = result.instances
    assert ok.ok and ok.summary["allocated_mb_peak"] == 64.0
    assert failed.error == "RuntimeError: instance 1 gave up"
    assert not timed_out.ok and "Timeout" in (timed_out.error or "")
    assert result.summary["num_failed"] == 2
    assert result.summary["allocated_mb_peak"] == 64.0  # only the instance that succeeded
    assert result.summary["memory_peak"] > 40.0  # resident memory of 64 MB touched


@pytest.mark.asyncio
async def test_network_delay_records_latency_and_errors() -> None:
    result = await run_experiment(network_delay("high"), instances=1, duration=2.0)

    assert result.ok, result.summary["errors"]
    timeline = result.instances[0].timeline
    latency = timeline["latency_ms"].dropna()
    # 50 ms injected, jittered between 25 and 75 ms.
    assert 20.0 < latency.median() < 150.0
    assert result.instances[0].summary["requests"] > 10
    assert "errors" in timeline and result.summary["error_count"] >= 0


@pytest.mark.asyncio
async def test_error_burst_fails_for_a_while_and_reports_recovery() -> None:
    result = await run_experiment(error_burst("high"), instances=1, duration=3.0)

    assert result.ok, result.summary["errors"]
    instance = result.instances[0]
    errors = instance.timeline.dropna(subset=["errors"])
    # Errors only inside the fault window (25 % to 50 % of the run), plus a margin
    # for the interval that reports them.
    in_fault = errors[(errors["t"] > 0.6) & (errors["t"] < 1.9)]["errors"].sum()
    assert in_fault > 0
    assert errors[errors["t"] < 0.5]["errors"].sum() == 0
    assert "recovery_time" in instance.summary
    assert len(result.summary["recovery_times"]) == 1


def test_recovery_time_is_measured_from_the_end_of_the_fault() -> None:
    lines = [
        {"t": 0.0, "latency_ms": 10.0},
        {"t": 1.0, "latency_ms": 10.4},
        {"t": 2.0, "latency_ms": 9.8},  # fault from 2 to 4
        {"t": 3.0, "latency_ms": 10.0},
        {"t": 4.0, "latency_ms": 50.0},
        {"t": 5.0, "latency_ms": 10.5},  # within 10 %...
        {"t": 6.0, "latency_ms": 12.0},  # ...but not yet for good
        {"t": 7.0, "latency_ms": 10.9},
        {"t": 8.0, "latency_ms": 10.1},
    ]
    assert recovery_time(lines, fault_start=2.0, fault_end=4.0) == pytest.approx(3.0)
    assert recovery_time(lines[:7], fault_start=2.0, fault_end=4.0) is None
    assert recovery_time(lines[2:], fault_start=2.0, fault_end=4.0) is None  # no baseline


def test_scenarios_are_experiments_with_an_intensity() -> None:
    assert set(SCENARIOS) == {"cpu_stress", "memory_pressure", "network_delay", "error_burst"}
    for name in SCENARIOS:
        experiment = scenario(name, "low", seed=3)
        assert experiment.name == name and experiment.needs_sandbox
        assert dict(experiment.params or {}) == {"intensity": "low", "seed": 3}
    with pytest.raises(ConfigError, match="intensity"):
        cpu_stress("extreme")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="scenario"):
        scenario("nope")


@pytest.mark.asyncio
async def test_a_scenario_without_a_sandbox_fails_with_a_clear_error() -> None:
    bare = Experiment("bare", cpu_stress().fn, params={"intensity": "low"})
    result = await run_experiment(bare, instances=1, duration=1.0)
    assert result.all_failed
    assert "sandbox_pool" in (result.instances[0].error or "")
