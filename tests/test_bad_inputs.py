"""Every public option refuses bad values with a ConfigError that names it, at once.

A battery over the public API: per option, a hypothesis strategy draws the values
that option must refuse (wrong types, bools where numbers are wanted, NaN, +-inf,
zero, negatives, absurd sizes). Each call must raise :class:`labkit.errors.ConfigError`
whose ``option`` is that option and whose message shows the value, before anything
runs, and within a few seconds (async calls are bounded by ``asyncio.wait_for``,
every test by pytest-timeout), so that a value that would hang a run fails the test
instead of the suite.
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import labkit as lk
from labkit import stats
from labkit.errors import ConfigError
from labkit.experiment import ExperimentOptions
from labkit.testing import FakeClock, FakeSandbox, static_fleet

NAN, INF = math.nan, math.inf
BOUND_S = 5.0  # the longest any refused call may take

# -- bad values --------------------------------------------------------------------------

BOOLS = st.booleans()
NONFINITE = st.sampled_from([NAN, INF, -INF])
WRONG_TYPES = st.one_of(
    st.text(max_size=4),
    st.binary(max_size=2),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    st.complex_numbers(allow_nan=False, allow_infinity=False),
    st.just(object()),
    st.just(int),
)
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)


def _text_but(*allowed: str) -> st.SearchStrategy[Any]:
    return WRONG_TYPES.filter(lambda value: value not in allowed)


def count(*, low: int = 1, high: int | None = None, also: tuple[str, ...] = ()) -> Any:
    """Bad values for an int option allowed from ``low`` to ``high``."""
    parts = [BOOLS, ANY_FLOAT, st.integers(max_value=low - 1), _text_but(*also)]
    if high is not None:
        parts.append(st.integers(min_value=high + 1, max_value=high * 10**6))
    return st.one_of(parts)


def number(*, low: float = 0.0, strict: bool = False, high: float | None = None) -> Any:
    """Bad values for a finite real option from ``low`` (``strict``: above it) to ``high``."""
    below = st.floats(max_value=low, exclude_max=not strict, allow_nan=False)
    parts = [BOOLS, NONFINITE, below, st.integers(max_value=math.floor(low) - (not strict)),
             WRONG_TYPES]  # fmt: skip
    if high is not None:
        parts.append(st.floats(min_value=high, exclude_min=True, allow_infinity=False))
    return st.one_of(parts)


def seconds(*, zero_ok: bool = False, high: float | None = None) -> Any:
    """Bad values for a duration in seconds (> 0, or >= 0 with ``zero_ok``)."""
    return number(low=0.0, strict=not zero_ok, high=high)


def fraction(*, open_ends: bool = False) -> Any:
    """Bad values for a fraction from 0 to 1 (``open_ends``: strictly between)."""
    outside = st.one_of(
        st.floats(max_value=0.0, exclude_max=not open_ends, allow_nan=False),
        st.floats(min_value=1.0, exclude_min=not open_ends, allow_nan=False),
    )
    return st.one_of(BOOLS, NONFINITE, outside, WRONG_TYPES)


def not_bool() -> Any:
    return st.one_of(st.integers(), st.floats(), st.text(max_size=3), st.none())


def not_callable() -> Any:
    return st.one_of(st.none(), st.integers(), st.text(max_size=3), st.lists(st.integers()))


def instances_of_the_wrong_kind(*extra: Any) -> Any:
    return st.one_of(st.integers(), st.text(max_size=3), st.sampled_from([object(), *extra]))


# -- calls -------------------------------------------------------------------------------


def bounded(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to its end, failing instead of hanging past ``BOUND_S``."""
    return asyncio.run(asyncio.wait_for(coro, BOUND_S))


RAN: list[Any] = []  # what ran: a refused call must leave it empty


def identity(x: Any) -> Any:
    RAN.append(x)
    return x


async def instance(ctx: Any) -> None:
    RAN.append(ctx.index)


EXPERIMENT = lk.Experiment("probe", instance)


def runner_option(option: str) -> Callable[[Any], Any]:
    def call(value: Any) -> Any:
        RAN.clear()
        try:
            return bounded(lk.run_parallel(identity, [1, 2], **{option: value}))
        finally:
            assert not RAN, f"{option}={value!r}: a task ran before the refusal"

    return call


async def runner_call(method: str, *args: Any, **kwargs: Any) -> Any:
    async with lk.Runner() as runner:
        return await getattr(runner, method)(*args, **kwargs)


def experiment_option(option: str, **base: Any) -> Callable[[Any], Any]:
    def call(value: Any) -> Any:
        RAN.clear()
        try:
            return bounded(lk.run_experiment(EXPERIMENT, **{**base, option: value}))
        finally:
            assert not RAN, f"{option}={value!r}: an instance ran before the refusal"

    return call


def sweep_option(option: str, **base: Any) -> Callable[[Any], Any]:
    def call(value: Any) -> Any:
        RAN.clear()
        try:
            return bounded(
                lk.sweep(EXPERIMENT, {"a": [1, 2]}, **{"objective": "x", **base, option: value})
            )
        finally:
            assert not RAN, f"{option}={value!r}: a trial ran before the refusal"

    return call


def acquire(option: str) -> Callable[[Any], Any]:
    async def go(value: Any) -> None:
        async with lk.GPUPool(static_fleet(2), clock=FakeClock()) as pool:
            await pool.acquire(**{option: value})

    return lambda value: bounded(go(value))


NOWHERE = "/nonexistent-labkit-folder/lab.db"  # never opened: the options fail first
TIMELINE = pd.DataFrame({"t": [0.0, 1.0, 2.0], "x": [1.0, 2.0, 3.0]})
VALUES = [1.0, 2.0, 3.0, 4.0]


@dataclass(frozen=True)
class Spec:
    """One option: how to call the API with a value, and which values it must refuse."""

    name: str
    option: str
    call: Callable[[Any], Any]
    bad: st.SearchStrategy[Any]
    described: bool = False  # the message describes the value ("a column of dtype object")


SPECS = [
    # Runner options, through run_parallel (Runner, run_parallel_sync and parallel_map
    # build the same RunOptions).
    Spec("run_parallel", "max_concurrency", runner_option("max_concurrency"),
         count(high=1_000_000, also=("auto",))),
    Spec("run_parallel", "timeout", runner_option("timeout"), seconds()),
    Spec("run_parallel", "batch_size", runner_option("batch_size"), count(high=sys.maxsize)),
    Spec("run_parallel", "batch_delay", runner_option("batch_delay"),
         seconds(zero_ok=True, high=86_400)),
    Spec("run_parallel", "priority", runner_option("priority"),
         st.one_of(st.lists(st.one_of(NONFINITE, BOOLS, st.text(max_size=2)), min_size=2,
                            max_size=2), st.text(min_size=1, max_size=3), st.integers())),
    Spec("run_parallel", "retry", runner_option("retry"),
         instances_of_the_wrong_kind(lk.Retry, lk.RateLimit(1.0))),
    Spec("run_parallel", "rate_limit", runner_option("rate_limit"),
         instances_of_the_wrong_kind(lk.RateLimit, lk.Retry())),
    Spec("run_parallel", "rng", runner_option("rng"), instances_of_the_wrong_kind(random)),
    Spec("run_parallel", "keep_items", runner_option("keep_items"), st.one_of(
        st.integers(min_value=2), st.text(max_size=3).filter(lambda v: v != "failed"))),
    Spec("run_parallel", "fn",
         lambda value: bounded(lk.run_parallel(value, [1])), not_callable()),
    Spec("Runner.map", "items", lambda value: bounded(runner_call("map", identity, value)),
         st.one_of(st.none(), st.integers(), st.text(max_size=3))),
    Spec("Runner.submit", "depends_on",
         lambda value: bounded(runner_call("submit", identity, 1, depends_on=value)),
         st.one_of(st.integers(), st.lists(st.integers(), min_size=1, max_size=2)), described=True),
    Spec("Runner.submit", "label",
         lambda value: bounded(runner_call("submit", identity, 1, label=value)),
         st.one_of(st.integers(), st.lists(st.text(), max_size=1))),
    Spec("parallel_map", "max_concurrency",
         lambda value: lk.parallel_map(max_concurrency=value), count(high=1_000_000,
                                                                     also=("auto",))),
    Spec("parallel_map", "fn", lambda value: lk.parallel_map(value),
         st.one_of(st.integers(), st.text(max_size=3))),
    Spec("run_graph", "graph", lambda value: bounded(lk.run_graph(value)),
         st.one_of(st.none(), st.integers(), st.lists(st.integers(), max_size=2))),
    Spec("AutoConcurrency", "min",
         lambda value: lk.AutoConcurrency(min=value, max=1_000_000), count(high=1_000_000)),
    Spec("AutoConcurrency", "max", lambda value: lk.AutoConcurrency(max=value),
         count(high=1_000_000)),
    Spec("AutoConcurrency", "initial", lambda value: lk.AutoConcurrency(initial=value),
         count(high=256)),
    Spec("AutoConcurrency", "backoff", lambda value: lk.AutoConcurrency(backoff=value),
         fraction(open_ends=True)),
    Spec("ResourceLimits", "max_cpu_percent",
         lambda value: lk.ResourceLimits(max_cpu_percent=value), number(strict=True, high=100)),
    Spec("ResourceLimits", "max_memory_mb",
         lambda value: lk.ResourceLimits(max_memory_mb=value), number(strict=True)),
    Spec("ResourceLimits", "check_every", lambda value: lk.ResourceLimits(check_every=value),
         seconds(high=86_400)),
    # Policies.
    Spec("Retry", "attempts", lambda value: lk.Retry(attempts=value), count(high=1_000_000)),
    Spec("Retry", "initial", lambda value: lk.Retry(initial=value),
         seconds(zero_ok=True, high=86_400)),
    Spec("Retry", "backoff", lambda value: lk.Retry(backoff=value), number(low=1.0)),
    Spec("Retry", "max_delay", lambda value: lk.Retry(max_delay=value),
         seconds(zero_ok=True, high=86_400)),
    Spec("Retry", "jitter", lambda value: lk.Retry(jitter=value), fraction()),
    Spec("Retry", "retry_on", lambda value: lk.Retry(retry_on=value),
         st.one_of(st.integers(), st.text(max_size=3), st.just(()), st.just((int,)))),
    Spec("Retry", "retry_if_result", lambda value: lk.Retry(retry_if_result=value),
         st.one_of(st.integers(), st.text(max_size=3))),
    Spec("RateLimit", "rate", lambda value: lk.RateLimit(value), number(strict=True)),
    Spec("RateLimit", "per", lambda value: lk.RateLimit(1.0, per=value), seconds(high=86_400)),
    Spec("RateLimit", "burst", lambda value: lk.RateLimit(1.0, burst=value),
         count(high=1_000_000_000)),
    Spec("RateLimit", "jitter", lambda value: lk.RateLimit(1.0, jitter=value),
         seconds(zero_ok=True, high=86_400)),
    # GPU pool.
    Spec("GPUPool", "max_parallel", lambda value: lk.GPUPool(static_fleet(1), value), count()),
    Spec("GPUPool", "poll_interval",
         lambda value: lk.GPUPool(static_fleet(1), poll_interval=value), seconds(high=86_400)),
    Spec("GPUPool", "inventory", lambda value: lk.GPUPool(value),
         instances_of_the_wrong_kind(lk.StaticInventory)),
    Spec("GPUPool", "clock", lambda value: lk.GPUPool(static_fleet(1), clock=value),
         instances_of_the_wrong_kind(FakeClock)),
    Spec("GPUPool.acquire", "gpus", acquire("gpus"), count(low=0, high=65_536)),
    Spec("GPUPool.acquire", "min_memory_mb", acquire("min_memory_mb"), number()),
    Spec("GPUPool.acquire", "timeout", acquire("timeout"), seconds(zero_ok=True)),
    # Sandboxes (nothing starts: the options are checked in the constructors).
    Spec("SandboxPool", "max_size", lambda value: lk.SandboxPool(lk.LocalSandbox, max_size=value),
         count(high=100_000)),
    Spec("SandboxPool", "prewarm",
         lambda value: lk.SandboxPool(lk.LocalSandbox, max_size=4, prewarm=value),
         count(low=0, high=4)),
    Spec("SandboxPool", "min_size",
         lambda value: lk.SandboxPool(lk.LocalSandbox, max_size=4, min_size=value),
         count(low=0, high=4)),
    Spec("SandboxPool", "max_idle",
         lambda value: lk.SandboxPool(lk.LocalSandbox, max_size=4, max_idle=value), seconds()),
    Spec("SandboxPool", "factory", lambda value: lk.SandboxPool(value, max_size=4),
         not_callable()),
    Spec("LocalSandbox", "memory_mb", lambda value: lk.LocalSandbox(memory_mb=value),
         number(low=1.0, high=16 * 1024 * 1024).filter(lambda v: v != 1.0)),
    Spec("LocalSandbox", "cpus", lambda value: lk.LocalSandbox(cpus=value),
         number(low=0.01, high=4096).filter(lambda v: v != 0.01)),
    Spec("LocalSandbox", "max_output", lambda value: lk.LocalSandbox(max_output=value),
         count()),
    Spec("LocalSandbox", "env", lambda value: lk.LocalSandbox(env=value),
         st.one_of(st.integers(), st.text(min_size=1, max_size=3), st.just({1: "x"}),
                   st.just({"": "x"}), st.just({"A=B": "x"}), st.just({"A\0": "x"})),
         described=True),  # a bad name is shown alone: the values may be secrets
    # Commands: refused before the sandbox starts (no process, nothing to close).
    Spec("LocalSandbox.run", "cmd", lambda value: bounded(lk.LocalSandbox().run(value)),
         st.one_of(st.none(), st.integers(), st.binary(max_size=3),
                   st.text(max_size=3).map(lambda text: text + "\0"))),
    Spec("LocalSandbox.run", "timeout",
         lambda value: bounded(lk.LocalSandbox().run("true", timeout=value)),
         seconds().filter(lambda value: value is not None)),
    Spec("LocalSandbox.run", "max_output",
         lambda value: bounded(lk.LocalSandbox().run("true", max_output=value)),
         count().filter(lambda value: value is not None)),
    Spec("FakeSandbox.run", "cmd", lambda value: bounded(FakeSandbox().run(value)),
         st.one_of(st.none(), st.integers(), st.just("echo \0"))),
    Spec("E2BSandbox", "timeout", lambda value: lk.E2BSandbox(timeout=value, api_key="k"),
         count(high=86_400)),
    Spec("E2BSandbox", "create_rate",
         lambda value: lk.E2BSandbox(create_rate=value, api_key="k"), number(strict=True)),
    Spec("E2BSandbox", "template", lambda value: lk.E2BSandbox(template=value, api_key="k"),
         st.one_of(st.just(""), st.integers(), st.lists(st.text(), max_size=1))),
    # Experiments.
    Spec("Experiment", "fn", lambda value: lk.Experiment("x", value), not_callable()),
    Spec("Experiment", "name", lambda value: lk.Experiment(value, instance),
         st.one_of(st.just(""), st.integers(), st.none())),
    Spec("Experiment", "params", lambda value: lk.Experiment("x", instance, params=value),
         st.one_of(st.integers(), st.text(min_size=1, max_size=3),
                   st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=1))),
    Spec("Experiment", "needs_sandbox",
         lambda value: lk.Experiment("x", instance, needs_sandbox=value), not_bool()),
    Spec("run_experiment", "instances", experiment_option("instances"),
         count(high=1024, also=("auto",))),
    Spec("run_experiment", "duration", experiment_option("duration"), seconds(high=86_400)),
    Spec("run_experiment", "gpus_per_instance", experiment_option("gpus_per_instance"),
         count(low=0, high=1024)),
    Spec("run_experiment", "sample_every", experiment_option("sample_every"),
         seconds(high=86_400)),
    Spec("run_experiment", "heartbeat_every", experiment_option("heartbeat_every"),
         seconds(high=86_400)),
    Spec("run_experiment", "max_instances", experiment_option("max_instances"),
         count(high=1024)),
    Spec("run_experiment", "target_rel_half_width",
         experiment_option("target_rel_half_width", instances="auto"),
         number(strict=True, high=10.0)),
    Spec("run_experiment", "resume", experiment_option("resume"), not_bool()),
    Spec("run_experiment", "auto_metric", experiment_option("auto_metric"),
         st.one_of(st.just(""), st.integers(), st.lists(st.text(), max_size=1))),
    Spec("run_experiment", "sandbox_pool", experiment_option("sandbox_pool"),
         instances_of_the_wrong_kind(lk.LocalSandbox, lk.SandboxPool)),
    Spec("run_experiment", "gpu_pool", experiment_option("gpu_pool"),
         instances_of_the_wrong_kind(lk.GPUPool, static_fleet(1))),
    Spec("run_experiment", "store", experiment_option("store"),
         instances_of_the_wrong_kind(lk.Store)),
    Spec("run_experiment", "experiment", lambda value: bounded(lk.run_experiment(value)),
         st.one_of(st.none(), st.integers(), st.just(instance))),
    Spec("run_experiment", "timeout", experiment_option("timeout"), seconds()),
    # The store (refused before the file is opened: the path's folder does not exist).
    Spec("Store", "timeout", lambda value: lk.Store(NOWHERE, timeout=value),
         seconds(zero_ok=True, high=86_400)),
    Spec("Store", "batch_rows", lambda value: lk.Store(NOWHERE, batch_rows=value),
         count(high=1_000_000)),
    Spec("Store", "flush_interval", lambda value: lk.Store(NOWHERE, flush_interval=value),
         seconds(high=86_400)),
    Spec("Store", "checkpoint_interval",
         lambda value: lk.Store(NOWHERE, checkpoint_interval=value), seconds(high=86_400)),
    Spec("Store", "read_only", lambda value: lk.Store(NOWHERE, read_only=value), not_bool()),
    Spec("Store", "resume_wait", lambda value: lk.Store(NOWHERE, resume_wait=value),
         seconds(zero_ok=True, high=86_400)),
    Spec("Store", "synchronous", lambda value: lk.Store(NOWHERE, synchronous=value),
         st.one_of(st.integers(), st.text(max_size=3), st.none())),
    Spec("Store", "path", lambda value: lk.Store(value),
         st.one_of(st.just(""), st.just(":memory:"), st.integers(), st.none())),
    # Sweeps and races.
    Spec("sweep", "max_parallel", sweep_option("max_parallel"), count(high=1024)),
    Spec("sweep", "n_trials", sweep_option("n_trials"), count()),
    Spec("sweep", "instances", sweep_option("instances"),
         count(high=1024, also=("auto", "race"))),
    Spec("sweep", "max_instances", sweep_option("max_instances"), count(high=1024)),
    Spec("sweep", "direction", sweep_option("direction"),
         st.one_of(st.integers(), st.text(max_size=3))),
    Spec("sweep", "resume", sweep_option("resume"), not_bool()),
    Spec("sweep", "store", sweep_option("store"), instances_of_the_wrong_kind(lk.Store)),
    Spec("sweep", "objective", sweep_option("objective"), st.one_of(st.none(), st.integers())),
    Spec("Race", "initial", lambda value: lk.Race(initial=value, max_instances=1024),
         count(low=1, high=1024)),
    Spec("Race", "budget", lambda value: lk.Race(budget=value), count()),
    Spec("Race", "max_instances", lambda value: lk.Race(max_instances=value),
         count(low=2, high=1024)),
    Spec("Race", "confidence", lambda value: lk.Race(confidence=value), fraction(open_ends=True)),
    Spec("Race", "min_effect", lambda value: lk.Race(min_effect=value), number()),
    # Averaging.
    Spec("average_timelines", "step", lambda value: lk.average_timelines([TIMELINE], step=value),
         seconds()),
    Spec("average_timelines", "method",
         lambda value: lk.average_timelines([TIMELINE], method=value),
         st.one_of(st.integers(), st.text(max_size=3).filter(lambda text: text != "sum"))),
    Spec("average_timelines", "max_gap",
         lambda value: lk.average_timelines([TIMELINE], max_gap=value),
         # math.inf is allowed (bridge everything), and a dict names its own metrics.
         st.one_of(BOOLS, st.sampled_from([NAN, -INF]), st.floats(max_value=0.0),
                   st.text(max_size=4), st.lists(st.integers(), max_size=2))),
    Spec("average_timelines", "timelines[0]['t']",
         lambda value: lk.average_timelines([pd.DataFrame({"t": [value, 1.0], "x": [1, 2]})]),
         st.one_of(NONFINITE, st.floats(max_value=-1e-12, allow_infinity=False)), described=True),
    Spec("average_timelines", "timelines[0]['x']",
         lambda value: lk.average_timelines(
             [pd.DataFrame({"t": [0.0, 1.0, 1.0], "x": [0.0, 1.0, value]})]),
         st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: v != 1.0),
         described=True),
    Spec("average_timelines", "timelines", lambda value: lk.average_timelines(value),
         st.one_of(st.integers(), st.just([]), st.just(TIMELINE)), described=True),
    Spec("average_summaries", "summaries", lambda value: lk.average_summaries(value),
         st.one_of(st.none(), st.integers(), st.just([]), st.just({"a": 1})), described=True),
    Spec("detect_outliers", "threshold",
         lambda value: lk.detect_outliers([TIMELINE] * 3, threshold=value), number(strict=True)),
    Spec("detect_outliers", "min_relative",
         lambda value: lk.detect_outliers([TIMELINE] * 3, min_relative=value), number()),
    Spec("detect_outliers", "data", lambda value: lk.detect_outliers(value),
         st.one_of(st.none(), st.integers(), st.just(TIMELINE)), described=True),
    # Statistics.
    Spec("stats.mean", "confidence", lambda value: stats.mean(VALUES, value),
         fraction(open_ends=True)),
    Spec("stats.median", "confidence", lambda value: stats.median(VALUES, value),
         fraction(open_ends=True)),
    Spec("stats.iqm", "confidence", lambda value: stats.iqm(VALUES, value),
         fraction(open_ends=True)),
    Spec("stats.mean", "values", stats.mean,
         st.one_of(st.none(), st.integers(), st.text(max_size=3),
                   st.lists(st.booleans(), min_size=2, max_size=4)), described=True),
    Spec("compare", "confidence", lambda value: lk.compare(VALUES, VALUES, confidence=value),
         fraction(open_ends=True)),
    Spec("compare", "min_effect", lambda value: lk.compare(VALUES, VALUES, min_effect=value),
         number()),
    Spec("compare", "direction", lambda value: lk.compare(VALUES, VALUES, direction=value),
         st.one_of(st.integers(), st.text(max_size=3), st.none())),
    Spec("compare", "metric", lambda value: lk.compare(VALUES, VALUES, metric=value),
         st.one_of(st.just(""), st.integers(), st.lists(st.text(), max_size=1))),
    Spec("instances_needed", "rel_half_width",
         lambda value: lk.instances_needed(VALUES, rel_half_width=value), number(strict=True)),
    Spec("instances_needed", "confidence",
         lambda value: lk.instances_needed(VALUES, confidence=value), fraction(open_ends=True)),
    Spec("stats.power", "n_a", lambda value: stats.power(1.0, 1.0, 1.0, value), count(low=2)),
    Spec("stats.power", "std_a", lambda value: stats.power(1.0, value, 1.0, 5), number()),
    Spec("stats.power", "difference", lambda value: stats.power(value, 1.0, 1.0, 5),
         st.one_of(BOOLS, NONFINITE, WRONG_TYPES)),
    Spec("stats.instances_per_side", "difference",
         lambda value: stats.instances_per_side(value, 1.0), number(strict=True)),
]  # fmt: skip


@pytest.mark.parametrize("spec", SPECS, ids=[f"{s.name}:{s.option}" for s in SPECS])
@settings(
    max_examples=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=st.data())
def test_a_bad_value_is_a_config_error_naming_the_option(spec: Spec, data: st.DataObject) -> None:
    value = data.draw(spec.bad, label=spec.option)
    with pytest.raises(ConfigError) as caught:
        spec.call(value)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.option == spec.option, str(error)
    assert str(error).startswith(f"{spec.option}=")
    assert "expected" in str(error)  # says what is allowed
    if not spec.described:
        assert str(error).startswith(f"{spec.option}={value!r} ")  # shows the value


# The cases the issue found (a bool taken as a number, hangs, silent acceptance),
# each pinned by name.
ISSUE_CASES = [
    ("timeout", lambda: lk.Runner(timeout=True)),
    ("batch_size", lambda: lk.Runner(batch_size=True)),
    ("attempts", lambda: lk.Retry(attempts=True)),
    ("rate", lambda: lk.RateLimit(True)),
    ("burst", lambda: lk.RateLimit(1.0, burst=True)),
    ("gpus", lambda: acquire("gpus")(True)),
    ("max_size", lambda: lk.SandboxPool(lk.LocalSandbox, max_size=True)),
    ("prewarm", lambda: lk.SandboxPool(lk.LocalSandbox, max_size=2, prewarm=True)),
    ("max_parallel", lambda: lk.GPUPool(static_fleet(1), max_parallel=2.5)),
    ("per", lambda: lk.RateLimit(1.0, per=INF)),
    ("priority", lambda: bounded(lk.run_parallel(identity, [1, 2], priority=[NAN, 1.0]))),
    ("fn", lambda: lk.run_parallel_sync(None, [1])),
    ("sandbox_pool", lambda: bounded(lk.run_experiment(EXPERIMENT, sandbox_pool=lk.LocalSandbox))),
    ("batch_delay", lambda: bounded(lk.run_parallel(identity, [1, 2], batch_size=1,
                                                    batch_delay=INF))),
    ("jitter", lambda: lk.RateLimit(1.0, jitter=INF)),
    ("batch_rows", lambda: lk.Store(NOWHERE, batch_rows=2.5)),
    ("flush_interval", lambda: lk.Store(NOWHERE, flush_interval=INF)),
    ("initial", lambda: lk.Retry(initial=INF)),
    ("cmd", lambda: bounded(lk.LocalSandbox().run(None))),  # type: ignore[arg-type]
    ("cmd", lambda: bounded(lk.LocalSandbox().run("echo a\0b"))),
    ("env['A']", lambda: bounded(lk.LocalSandbox().run("true", env={"A": "x\0y"}))),
    ("env['A']", lambda: lk.LocalSandbox(env={"A": "x\0y"})),
    ("timeout", lambda: bounded(lk.LocalSandbox().run("true", timeout="1"))),  # type: ignore[arg-type]
    ("factory", lambda: bounded(_session_of(lambda: None))),
    ("timelines[0]['t']", lambda: lk.average_timelines([pd.DataFrame({"t": [-1.0, 0.0],
                                                                      "x": [1.0, 2.0]})])),
    ("timelines[0]['x']", lambda: lk.average_timelines([pd.DataFrame({"t": [0.0, 0.0],
                                                                      "x": [1.0, 2.0]})])),
]  # fmt: skip


async def _session_of(factory: Callable[[], Any]) -> None:
    async with lk.SandboxPool(factory, max_size=1) as pool, pool.session():
        pass


@pytest.mark.parametrize(("option", "call"), ISSUE_CASES, ids=[c[0] for c in ISSUE_CASES])
def test_the_cases_the_issue_found_are_refused(option: str, call: Callable[[], Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        call()
    assert caught.value.option == option


def test_negative_and_repeated_times_name_the_timeline_and_the_rows() -> None:
    late = pd.DataFrame({"t": [0.0, 1.0, -0.5], "x": [1.0, 2.0, 3.0]}, index=[10, 11, 12])
    with pytest.raises(ConfigError, match=r"-0\.5 at row 12"):
        lk.average_timelines([TIMELINE, late])
    twice = pd.DataFrame({"t": [0.0, 2.0, 2.0], "x": [1.0, 2.0, 7.0]})
    with pytest.raises(ConfigError, match=r"timelines\[1\]\['x'\]=values 2\.0 and 7\.0 at t=2\.0 "
                                          r"\(rows 1 and 2\)"):  # fmt: skip
        lk.average_timelines([TIMELINE, twice])


def test_rows_sharing_a_time_without_a_conflict_still_average() -> None:
    # A sampler's row beside ctx.record's at the same instant, and a repeated value.
    shared = pd.DataFrame({"t": [0.0, 1.0, 1.0, 2.0], "x": [0.0, 1.0, NAN, 2.0],
                           "cpu": [NAN, NAN, 5.0, 6.0]})  # fmt: skip
    repeated = pd.DataFrame({"t": [0.0, 1.0, 1.0, 2.0], "x": [0.0, 1.0, 1.0, 2.0]})
    out = lk.average_timelines([shared, repeated], step=1.0)
    assert out["x"].tolist() == [0.0, 1.0, 2.0]
    assert out["cpu"].tolist()[1:] == [5.0, 6.0]


def test_good_values_at_the_edges_are_accepted() -> None:
    # The bounds themselves are allowed: the checks refuse only what lies beyond.
    retry = lk.Retry(attempts=1, initial=0, max_delay=86_400, jitter=1.0, backoff=1)
    assert (retry.attempts, retry.max_delay, retry.jitter) == (1, 86_400, 1.0)
    limit = lk.RateLimit(1, per=86_400, burst=1_000_000_000, jitter=0)
    assert (limit.per, limit.burst) == (86_400, 1_000_000_000)
    runner = lk.Runner(
        max_concurrency=1_000_000, batch_size=sys.maxsize, batch_delay=86_400, timeout=1e9
    )
    assert runner.concurrency == 1_000_000 and runner.options.batch_size == sys.maxsize
    options = ExperimentOptions(
        instances=1024, gpus_per_instance=0, duration=86_400, sample_every=86_400
    )
    assert (options.instances, options.duration) == (1024, 86_400)
    race = lk.Race(initial=1, max_instances=1024, confidence=0.5)
    assert (race.max_instances, race.confidence) == (1024, 0.5)
    pool = lk.GPUPool(static_fleet(1), max_parallel=10**9, poll_interval=86_400)
    assert pool.max_parallel == 10**9


@pytest.mark.parametrize("value", [True, INF, NAN, 0, -1.0, "3"])
async def test_a_pool_session_timeout_is_checked_when_the_session_opens(value: Any) -> None:
    async with lk.SandboxPool(FakeSandbox, max_size=1) as pool:
        with pytest.raises(ConfigError) as caught:
            async with pool.session(timeout=value):
                pass
        assert caught.value.option == "timeout"
        assert pool.stats().total_created == 0  # refused before a sandbox started


@pytest.mark.parametrize("value", [True, 2.5, -1, "2"])
async def test_prewarm_takes_a_count(value: Any) -> None:
    async with lk.SandboxPool(FakeSandbox, max_size=2) as pool:
        with pytest.raises(ConfigError) as caught:
            await pool.prewarm(value)
        assert caught.value.option == "n" and pool.stats().total_created == 0
