"""Experiments: one function run as N parallel instances, measured and averaged.

An :class:`Experiment` names a function ``fn(ctx)``; :func:`run_experiment` runs it
as ``instances`` parallel instances through the runner (so its retry, timeout,
rate limit and events apply). Each instance holds its GPU allocation and sandbox
session for its whole life and gives them back whatever happens, cancellation
included. What an instance measures (``ctx.record``, plus the sandbox's cpu and
memory from the sampler) becomes its timeline; the instances that succeeded are
averaged into one :class:`~labkit.results.ExperimentResult`, and the failures are
kept beside them.

Instance-level events (:class:`InstanceEvent`) go to ``on_event`` together with
the runner's :class:`~labkit.events.TaskEvent`, so a progress bar or a widget can
follow every instance live.

With a Dask executor, the instances run on a cluster's workers instead: each
attempt is one task, its samples stream back as the worker records them, and
everything else (the runner, the events, the store, the averaging) stays here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import math
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import pandas as pd

from labkit.clock import SYSTEM_CLOCK, Clock, SystemClock
from labkit.errors import check
from labkit.events import EventBus
from labkit.executors import is_async_callable, is_dask_client
from labkit.results import ExperimentRecorder, ExperimentResult, InstanceResult, error_text
from labkit.sampling import ResourceSampler
from labkit.timeline import instances_needed, summarize_timeline

if TYPE_CHECKING:
    from labkit.cluster import DaskBackend
    from labkit.gpu import GPUPool
    from labkit.sandbox.base import Sandbox
    from labkit.sandbox.pool import SandboxPool

__all__ = (
    "E2B_PRICE_PER_GIB_SECOND",
    "E2B_PRICE_PER_VCPU_SECOND",
    "MAX_INSTANCES",
    "MAX_DURATION",
    "Experiment",
    "InstanceContext",
    "InstanceEvent",
    "InstanceEventKind",
    "estimate_cost",
    "run_experiment",
)

MAX_INSTANCES = 1024
"""The most instances one run may ask for (and the cap of ``instances="auto"``)."""

MAX_DURATION = 24 * 3600.0
"""The longest ``duration`` accepted, in seconds: E2B's longest sandbox life (Pro plan)."""

E2B_PRICE_PER_VCPU_SECOND = 0.000014
"""E2B's published compute price, USD per vCPU per second (e2b.dev pricing, August 2026)."""

E2B_PRICE_PER_GIB_SECOND = 0.0000045
"""E2B's published memory price, USD per GiB of RAM per second (e2b.dev pricing, August 2026)."""

InstanceEventKind = Literal["started", "sample", "log", "finished", "failed"]


class InstanceEvent(NamedTuple):
    """One step in an instance's life, for progress bars and widgets.

    Attributes:
        kind: ``started`` (an attempt began, resources held), ``sample`` (a
            timeline sample: ``metrics``), ``log`` (``ctx.log``: ``message``),
            ``finished`` (the function returned) or ``failed`` (an attempt raised:
            ``message`` holds the error; the runner may still retry).
        instance: The instance's index.
        time: When it happened, in seconds on the run's clock.
        offset: Seconds since the instance's attempt started (the timeline's ``t``).
        metrics: The sample's values, for ``sample``.
        message: The log line or the error text.
    """

    kind: InstanceEventKind
    instance: int
    time: float
    offset: float = 0.0
    metrics: Mapping[str, float] | None = None
    message: str | None = None


InstanceFunction = Callable[["InstanceContext"], Any]


@dataclass(frozen=True, slots=True)
class Experiment:
    """A function to run as several parallel instances.

    Args:
        name: A short name, used in reports and the store.
        fn: ``async def fn(ctx)`` or a plain ``def fn(ctx)`` (run in a thread),
            given an :class:`InstanceContext`. If it returns a mapping, its values
            join the instance's summary (``{"recovery_time": 2.5}``); any other
            value that is not ``None`` is kept as ``summary["value"]``.
        params: Parameters every instance receives as ``ctx.params``.
        needs_sandbox: When true and ``run_experiment`` is given no
            ``sandbox_pool``, each instance gets a ``LocalSandbox`` (a real
            subprocess in a temporary directory) from a pool made for the run.
        description: One line for reports.

    Raises:
        ConfigError: ``name`` is empty or ``fn`` is not callable.
    """

    name: str
    fn: InstanceFunction
    params: Mapping[str, Any] | None = field(default=None, kw_only=True)
    needs_sandbox: bool = field(default=False, kw_only=True)
    description: str = field(default="", kw_only=True)

    def __post_init__(self) -> None:
        check(isinstance(self.name, str) and bool(self.name), "name", self.name, "a non-empty str")
        check(callable(self.fn), "fn", self.fn, "a function taking an InstanceContext")
        object.__setattr__(self, "params", MappingProxyType(dict(self.params or {})))

    def with_params(self, **params: Any) -> Experiment:
        """A copy with ``params`` merged over this experiment's own."""
        return replace(self, params={**(self.params or {}), **params})


class InstanceContext:
    """What one instance's function sees: its index, parameters, resources, and a recorder.

    Attributes:
        index: The instance's number, from 0.
        params: The experiment's parameters (read-only).
        duration: How long the instance is meant to run, in seconds, or ``None``.
        env: Environment for anything the instance starts: the GPU allocation's
            ``CUDA_VISIBLE_DEVICES`` (set to empty when it holds no GPU).
        gpus: UUIDs of the GPUs this instance holds.
        sandbox: The sandbox session it holds, or ``None``.
        attempt: Which attempt this is (1 unless the runner retried).
    """

    __slots__ = (
        "_clock",
        "_emit",
        "_lines",
        "_loop",
        "_loop_thread",
        "_recorder",
        "_samples",
        "_started",
        "attempt",
        "duration",
        "env",
        "gpus",
        "index",
        "params",
        "sandbox",
    )

    def __init__(
        self,
        *,
        index: int,
        params: Mapping[str, Any],
        duration: float | None,
        env: Mapping[str, str],
        gpus: Sequence[str],
        sandbox: Sandbox | None,
        attempt: int,
        clock: Clock,
        emit: Callable[[InstanceEvent], None],
        recorder: Callable[[int, float, Mapping[str, float]], None] | None,
    ) -> None:
        self.index = index
        self.params: Mapping[str, Any] = MappingProxyType(dict(params))
        self.duration = duration
        self.env: dict[str, str] = dict(env)
        self.gpus: tuple[str, ...] = tuple(gpus)
        self.sandbox = sandbox
        self.attempt = attempt
        self._clock = clock
        self._emit = emit
        self._recorder = recorder
        self._samples: list[tuple[float, dict[str, float]]] = []
        self._lines: list[str] = []
        self._started = clock.now()
        # On a Dask worker a sync function runs in the task thread with no loop at
        # all; its samples are then published straight from that thread.
        self._loop: asyncio.AbstractEventLoop | None = _running_loop()
        self._loop_thread = threading.get_ident()

    @property
    def elapsed(self) -> float:
        """Seconds since this instance started."""
        return self._clock.now() - self._started

    @property
    def remaining(self) -> float | None:
        """Seconds left of ``duration`` (never negative), or ``None`` without one."""
        if self.duration is None:
            return None
        return max(self.duration - self.elapsed, 0.0)

    async def sleep(self, seconds: float) -> None:
        """Wait on the run's clock (a test's ``FakeClock`` makes this instant)."""
        await self._clock.sleep(seconds)

    def record(self, **metrics: float) -> None:
        """Add one timeline sample, stamped with the seconds since the instance started.

        Args:
            **metrics: Numeric values by metric name (``cpu=41.5, errors=2``).
                ``errors`` counts the errors since the previous sample.

        Raises:
            ConfigError: A value is not a real number, or a name is ``t``.
        """
        self.record_at(self.elapsed, **metrics)

    def record_at(self, t: float, /, **metrics: float) -> None:
        """Add one timeline sample at offset ``t``: for values measured elsewhere, read late.

        Args:
            t: Seconds since the instance started when the values were measured.
            **metrics: Numeric values by metric name, as for :meth:`record`.

        Raises:
            ConfigError: ``t`` is not a finite number, a value is not a real
                number, or a name is ``t``.
        """
        check(_finite(t), "t", t, "a finite number of seconds")
        values: dict[str, float] = {}
        for name, value in metrics.items():
            check(name != "t", "metric name", name, "any name but 't' (the time column)")
            check(
                isinstance(value, int | float | np.integer | np.floating)
                and not isinstance(value, bool),
                name,
                value,
                "a real number",
            )
            values[name] = float(value)
        if not values:
            return
        offset = float(t)
        self._samples.append((offset, values))
        self._deliver(
            InstanceEvent("sample", self.index, self._clock.now(), offset, metrics=values)
        )
        if self._recorder is not None:
            self._call_on_loop(self._recorder, self.index, offset, values)

    def log(self, *parts: object) -> None:
        """Note a line about this instance (joined like ``print``); it goes to ``on_event``."""
        line = " ".join(str(part) for part in parts)
        self._lines.append(line)
        self._deliver(
            InstanceEvent("log", self.index, self._clock.now(), self.elapsed, message=line)
        )

    @property
    def logs(self) -> tuple[str, ...]:
        """Every line logged so far."""
        return tuple(self._lines)

    def timeline(self) -> pd.DataFrame:
        """The samples so far as a DataFrame: ``t`` and one column per metric."""
        return _samples_to_frame(self._samples)

    def _deliver(self, event: InstanceEvent) -> None:
        self._call_on_loop(self._emit, event)

    def _call_on_loop(self, fn: Callable[..., object], *args: Any) -> None:
        # A sync instance function runs in a worker thread; subscribers and the
        # store expect to be called on the event loop's thread.
        if self._loop is None or threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def __repr__(self) -> str:
        return f"InstanceContext(index={self.index}, attempt={self.attempt}, gpus={self.gpus})"


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _samples_to_frame(samples: Sequence[tuple[float, Mapping[str, float]]]) -> pd.DataFrame:
    if not samples:
        return pd.DataFrame({"t": np.array([], dtype=float)})
    frame = pd.DataFrame.from_records([{"t": t, **values} for t, values in samples])
    # Samples from the sampler and from the function interleave; keep time order.
    return frame.sort_values("t", kind="stable", ignore_index=True).astype(float)


def estimate_cost(
    *,
    instances: int,
    duration: float,
    vcpus: float = 2.0,
    memory_gib: float = 0.5,
    price_per_vcpu_second: float = E2B_PRICE_PER_VCPU_SECOND,
    price_per_gib_second: float = E2B_PRICE_PER_GIB_SECOND,
) -> float:
    """What a run would cost in E2B sandboxes, in US dollars.

    E2B bills each running sandbox per second for the vCPUs and RAM its template
    allocates, whatever it actually uses: ``(vcpus * price_per_vcpu_second +
    memory_gib * price_per_gib_second) * seconds``. The defaults are E2B's
    published rates as of August 2026 (e2b.dev/pricing and the docs page "How do I
    calculate the price of a sandbox?"): USD 0.000014 per vCPU-second and USD
    0.0000045 per GiB-second, for the default template of 2 vCPUs and 512 MiB.
    Prices change: pass your own when they do.

    Args:
        instances: Sandboxes that run at the same time (one per instance).
        duration: Seconds each runs.
        vcpus: vCPUs per sandbox.
        memory_gib: RAM per sandbox, in GiB.
        price_per_vcpu_second: USD per vCPU per second.
        price_per_gib_second: USD per GiB per second.

    Returns:
        The estimated cost in USD.

    Raises:
        ConfigError: A value is negative (or ``instances`` is below 1).
    """
    check(isinstance(instances, int) and instances >= 1, "instances", instances, "an int >= 1")
    for option, value in (
        ("duration", duration),
        ("vcpus", vcpus),
        ("memory_gib", memory_gib),
        ("price_per_vcpu_second", price_per_vcpu_second),
        ("price_per_gib_second", price_per_gib_second),
    ):
        check(_finite(value) and value >= 0, option, value, "a finite number >= 0")
    per_second = vcpus * price_per_vcpu_second + memory_gib * price_per_gib_second
    return instances * duration * per_second


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(slots=True)
class _Attempt:
    """What the last attempt of one instance left behind, for its result."""

    context: InstanceContext | None = None
    started: float | None = None
    finished: float | None = None
    gpu_uuids: tuple[str, ...] = ()
    sandbox_id: str | None = None
    attempts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    """Timeline samples of an attempt that ran on a Dask worker (``context`` is ``None``)."""


@dataclass(slots=True, kw_only=True)
class _Run:
    """One call of run_experiment: its options and what the instances left."""

    experiment: Experiment
    duration: float | None
    gpus_per_instance: int
    gpu_pool: GPUPool | None
    sandbox_pool: SandboxPool | None
    recorder: ExperimentRecorder | None
    experiment_id: str | None
    sample_every: float
    clock: Clock
    emit: Callable[[Any], None]
    remote: Callable[[Any], Awaitable[Any]] | None = None
    attempts: dict[int, _Attempt] = field(default_factory=dict)

    async def instance(self, index: int) -> Any:
        """One attempt of one instance: hold its resources, run it, sample it."""
        attempt = self.attempts.setdefault(index, _Attempt())
        attempt.attempts += 1
        attempt.context = None
        attempt.extra = {}
        owner = f"{self.experiment.name}[{index}]"
        async with contextlib.AsyncExitStack() as stack:
            env: dict[str, str] = {}
            uuids: tuple[str, ...] = ()
            if self.gpus_per_instance:
                assert self.gpu_pool is not None
                allocation = await stack.enter_async_context(
                    self.gpu_pool.acquire(gpus=self.gpus_per_instance, owner=owner)
                )
                env.update(allocation.env)
                uuids = tuple(allocation.uuids)
            else:
                # Without GPUs, hide them: an instance must not use a GPU it was not given.
                env["CUDA_VISIBLE_DEVICES"] = ""
            sandbox = None
            if self.sandbox_pool is not None:
                sandbox = await stack.enter_async_context(self.sandbox_pool.session())
            attempt.gpu_uuids = uuids
            attempt.sandbox_id = _sandbox_id(sandbox)
            ctx = InstanceContext(
                index=index,
                params=self.experiment.params or {},
                duration=self.duration,
                env=env,
                gpus=uuids,
                sandbox=sandbox,
                attempt=attempt.attempts,
                clock=self.clock,
                emit=self.emit,
                recorder=self._sample if self.recorder is not None else None,
            )
            attempt.context = ctx
            attempt.started = ctx._started
            attempt.finished = None
            self.emit(InstanceEvent("started", index, attempt.started))
            try:
                if sandbox is not None:
                    await stack.enter_async_context(
                        ResourceSampler(
                            sandbox, ctx.record, every=self.sample_every, clock=self.clock
                        )
                    )
                value = await _call(self.experiment.fn, ctx)
            except BaseException as exc:
                now = self.clock.now()
                attempt.finished = now
                self.emit(
                    InstanceEvent(
                        "failed", index, now, now - attempt.started, message=_describe(exc)
                    )
                )
                raise
        attempt.finished = self.clock.now()
        attempt.extra = _extra_summary(value)
        self.emit(
            InstanceEvent("finished", index, attempt.finished, attempt.finished - attempt.started)
        )
        if self.recorder is not None and self.experiment_id is not None:
            # Committed before the instance counts as done, so a crash after this
            # point never loses it (resume then loads it instead of rerunning).
            await self.recorder.finish_instance(self.experiment_id, self.result(index, None))
        return value

    async def remote_instance(self, index: int) -> Any:
        """One attempt of one instance as a task on a Dask worker.

        The worker streams the attempt's start, samples and log lines back
        (:meth:`on_message`) and returns its value with every sample it recorded;
        the returned samples, not the streamed ones, make the final timeline.
        """
        assert self.remote is not None
        attempt = self.attempts.setdefault(index, _Attempt())
        attempt.attempts += 1
        attempt.context = None
        attempt.extra = {}
        attempt.samples = []
        attempt.gpu_uuids = ()
        attempt.started = attempt.finished = None
        try:
            value, samples, gpus = await self.remote((index, attempt.attempts))
        except BaseException as exc:
            now = self.clock.now()
            attempt.finished = now
            offset = 0.0 if attempt.started is None else now - attempt.started
            self.emit(InstanceEvent("failed", index, now, offset, message=_describe(exc)))
            raise
        # Started messages arrive before the result; this only covers a lost one.
        started = self._remote_started(attempt, index, gpus)
        attempt.samples = [(float(t), dict(metrics)) for t, metrics in samples]
        attempt.gpu_uuids = tuple(gpus)
        attempt.finished = self.clock.now()
        attempt.extra = _extra_summary(value)
        self.emit(InstanceEvent("finished", index, attempt.finished, attempt.finished - started))
        if self.recorder is not None and self.experiment_id is not None:
            await self.recorder.finish_instance(self.experiment_id, self.result(index, None))
        return value

    def on_message(self, message: Mapping[str, Any]) -> None:
        """Handle one message a worker published for this run, on the caller's loop."""
        index = int(message["i"])
        attempt = self.attempts.get(index)
        if attempt is None or attempt.attempts != message["a"] or attempt.finished is not None:
            # From an attempt that has ended here (timed out, retried) but still
            # runs on its worker: it must not leak into the current timeline.
            return
        kind = message["kind"]
        if kind == "started":
            self._remote_started(attempt, index, message.get("gpus", ()))
        elif kind == "sample":
            offset = float(message["t"])
            metrics = {str(name): float(value) for name, value in message["m"].items()}
            attempt.samples.append((offset, metrics))
            self.emit(InstanceEvent("sample", index, self.clock.now(), offset, metrics=metrics))
            if self.recorder is not None:
                self._sample(index, offset, metrics)
        elif kind == "log":
            self.emit(
                InstanceEvent(
                    "log", index, self.clock.now(), float(message["t"]), message=message["log"]
                )
            )

    def _remote_started(self, attempt: _Attempt, index: int, gpus: Sequence[str]) -> float:
        """Note that the attempt runs on its worker (once); returns when it started."""
        if attempt.started is None:
            attempt.started = self.clock.now()
            attempt.gpu_uuids = tuple(gpus)
            self.emit(InstanceEvent("started", index, attempt.started))
        return attempt.started

    def _sample(self, index: int, t: float, metrics: Mapping[str, float]) -> None:
        assert self.recorder is not None and self.experiment_id is not None
        self.recorder.sample(self.experiment_id, index, t, metrics)

    def result(self, index: int, error: BaseException | None) -> InstanceResult:
        """The instance's result from its last attempt (``error`` set when it failed)."""
        attempt = self.attempts.get(index, _Attempt())
        ctx = attempt.context
        timeline = ctx.timeline() if ctx is not None else _samples_to_frame(attempt.samples)
        summary: dict[str, Any] = {"error_count": 0, **summarize_timeline(timeline)}
        summary.update(attempt.extra)
        return InstanceResult(
            index=index,
            ok=error is None,
            error=None if error is None else _describe(error),
            timeline=timeline,
            summary=summary,
            started=attempt.started,
            finished=attempt.finished,
            gpu_uuids=attempt.gpu_uuids,
            sandbox_id=attempt.sandbox_id,
            attempts=max(attempt.attempts, 1),
        )


def _describe(error: BaseException) -> str:
    if isinstance(error, asyncio.CancelledError):
        return "CancelledError: the instance was cancelled"
    return error_text(error)


def _sandbox_id(sandbox: Any) -> str | None:
    if sandbox is None:
        return None
    for name in ("sandbox_id", "id", "name"):
        value = getattr(sandbox, name, None)
        if isinstance(value, str):
            return value
    return f"{type(sandbox).__name__}@{id(sandbox):x}"


def _extra_summary(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(key): item for key, item in value.items()}
    return {"value": value}


async def _call(fn: InstanceFunction, ctx: InstanceContext) -> Any:
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):
        return await fn(ctx)
    # A sync function runs in a thread so it cannot block the other instances.
    result = await asyncio.to_thread(fn, ctx)
    if inspect.isawaitable(result):
        return await result
    return result


# -- instances on a Dask worker ---------------------------------------------------------
#
# These run in a worker's process, so they are module-level (they pickle by name) and
# receive only plain data: the function, its parameters and the run's topic.

_Job = tuple[int, int]
"""What the caller sends per attempt: the instance's index and the attempt's number."""

_Outcome = tuple[Any, list[tuple[float, dict[str, float]]], tuple[str, ...]]
"""What a worker returns: the function's value, every sample it recorded, its GPUs."""


def _worker_context(
    job: _Job, params: Mapping[str, Any], duration: float | None, gpus: int, topic: str
) -> InstanceContext:
    """The instance's context on a worker: samples and log lines go out on ``topic``."""
    from labkit.cluster import publish

    index, number = job
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus:
        # The worker was pinned to its GPUs (gpu_cluster, or by hand) before it started.
        env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
        uuids = tuple(uuid for uuid in (visible or "").split(",") if uuid)
    else:
        env, uuids = {"CUDA_VISIBLE_DEVICES": ""}, ()

    def emit(event: InstanceEvent) -> None:
        head = {"i": index, "a": number, "t": event.offset}
        if event.kind == "sample":
            publish(topic, {**head, "kind": "sample", "m": dict(event.metrics or {})})
        elif event.kind == "log":
            publish(topic, {**head, "kind": "log", "log": event.message})

    ctx = InstanceContext(
        index=index,
        params=params,
        duration=duration,
        env=env,
        gpus=uuids,
        sandbox=None,
        attempt=number,
        clock=SYSTEM_CLOCK,
        emit=emit,
        recorder=None,
    )
    publish(topic, {"i": index, "a": number, "kind": "started", "gpus": list(uuids)})
    return ctx


async def _remote_async(
    fn: InstanceFunction,
    params: Mapping[str, Any],
    duration: float | None,
    gpus: int,
    topic: str,
    job: _Job,
) -> _Outcome:
    """An async instance function's attempt, in the worker's loop for this task."""
    ctx = _worker_context(job, params, duration, gpus, topic)
    value = await fn(ctx)
    return value, list(ctx._samples), ctx.gpus


def _remote_sync(
    fn: InstanceFunction,
    params: Mapping[str, Any],
    duration: float | None,
    gpus: int,
    topic: str,
    job: _Job,
) -> _Outcome:
    """A sync instance function's attempt, in the worker's task thread."""
    ctx = _worker_context(job, params, duration, gpus, topic)
    value = fn(ctx)
    if inspect.isawaitable(value):
        value = asyncio.run(_await(value))
    return value, list(ctx._samples), ctx.gpus


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _cluster_options(
    executor: Any,
    gpus_per_instance: int,
    experiment: Experiment,
    gpu_pool: GPUPool | None,
    sandbox_pool: SandboxPool | None,
    clock: Clock | None,
) -> Any:
    """Check what a run on Dask cannot take; return the ``DaskExecutor`` to submit with."""
    from labkit.cluster import DaskExecutor

    on_dask = "with a Dask executor"
    check(
        gpu_pool is None,
        "gpu_pool",
        gpu_pool,
        f"None {on_dask}: the cluster's workers own their GPUs (ask with gpus_per_instance)",
    )
    check(
        sandbox_pool is None,
        "sandbox_pool",
        sandbox_pool,
        f"None {on_dask}: instances run in the workers' processes",
    )
    check(
        not experiment.needs_sandbox,
        "needs_sandbox",
        experiment.needs_sandbox,
        f"False {on_dask}: instances run in the workers' processes",
    )
    check(
        clock is None or isinstance(clock, SystemClock),
        "clock",
        clock,
        f"None or the system clock {on_dask}: workers stamp samples in real time",
    )
    if not isinstance(executor, DaskExecutor):
        return DaskExecutor(executor, gpus=gpus_per_instance)
    check(
        gpus_per_instance in (0, executor.gpus) or executor.gpus == 0,
        "gpus_per_instance",
        gpus_per_instance,
        f"0 or {executor.gpus} (the DaskExecutor's gpus)",
    )
    if gpus_per_instance:
        return replace(executor, gpus=gpus_per_instance)
    return executor


async def run_experiment(
    experiment: Experiment,
    *,
    instances: int | Literal["auto"] = 1,
    duration: float | None = None,
    gpus_per_instance: int = 0,
    gpu_pool: GPUPool | None = None,
    sandbox_pool: SandboxPool | None = None,
    store: ExperimentRecorder | None = None,
    resume: bool = False,
    sample_every: float = 1.0,
    on_event: Callable[[Any], object] | EventBus | None = None,
    clock: Clock | None = None,
    target_rel_half_width: float = 0.05,
    max_instances: int = 32,
    auto_metric: str | None = None,
    **runner_options: Any,
) -> ExperimentResult:
    """Run ``experiment`` as parallel instances and average what they measured.

    Every option is checked before anything starts. Instances run through a
    :class:`labkit.Runner` (``runner_options`` such as ``timeout``, ``retry`` and
    ``rate_limit`` go to it; ``max_concurrency`` defaults to all instances at once).
    Each instance holds ``gpus_per_instance`` GPUs from ``gpu_pool`` and a sandbox
    session from ``sandbox_pool`` for its whole life, and gives them back however
    it ends. A failing instance is a recorded result, not an exception: the result
    averages those that succeeded and keeps the failures (``summary["num_failed"]``,
    ``summary["errors"]``); when none succeeded, ``result.all_failed`` is true.

    With ``instances="auto"``, a pilot of 3 instances runs first; then instances
    are added until the confidence interval of ``auto_metric``'s mean is within
    ``target_rel_half_width`` of the mean (``timeline.instances_needed``) or
    ``max_instances`` have run.

    With ``executor=`` a ``distributed.Client`` or a
    :class:`labkit.cluster.DaskExecutor`, every attempt of an instance is one task
    on the Dask cluster, and the runner's cap, retries, timeouts and events stay
    here as for a local run. ``experiment.fn`` (and what it returns) must pickle
    and labkit must be importable on the workers. Each instance's ``ctx.record``
    samples are stamped on its worker and streamed back while it runs
    (:func:`labkit.cluster.publish`), so ``on_event`` sees ``sample`` and ``log``
    events live and ``store`` records them; the final timeline is the one the
    worker returns. The cluster's workers own their GPUs: ``gpus_per_instance``
    becomes the Dask resource ``{"GPU": n}`` (start GPU workers with
    :func:`labkit.cluster.gpu_cluster`), ``ctx.gpus`` and ``ctx.env`` come from the
    worker's ``CUDA_VISIBLE_DEVICES``, and an instance that no worker can place
    fails with ``GPUUnavailable``. A local ``gpu_pool``, a sandbox and a test clock
    do not travel to workers and are refused.

    Args:
        experiment: What to run.
        instances: How many instances (1 to :data:`MAX_INSTANCES`), or ``"auto"``.
        duration: How long each instance is meant to run, in seconds
            (``ctx.duration``); at most :data:`MAX_DURATION`. Enforce a hard limit
            with ``timeout=``.
        gpus_per_instance: GPUs each instance holds; needs a fleet that has them.
            Without ``gpu_pool``, a ``GPUPool()`` over this machine's GPUs is used.
        gpu_pool: Where GPUs come from.
        sandbox_pool: Where sandboxes come from; none means the instances run in
            this process (unless the experiment ``needs_sandbox``: then local ones).
        store: Records the run (``labkit.Store`` or any ``ExperimentRecorder``).
        resume: With ``store``, load the instances a previous run of the same
            experiment, parameters and instance count finished, and run only the rest.
        sample_every: Seconds between resource samples of an instance's sandbox.
        on_event: A callback, or an :class:`~labkit.events.EventBus`, given every
            :class:`InstanceEvent` and the runner's ``TaskEvent``.
        clock: The clock for timestamps and sampling (tests pass a ``FakeClock``).
        target_rel_half_width: For ``"auto"``: the wanted 95 % confidence
            half-width of the mean, relative to the mean (0.05 is 5 %).
        max_instances: For ``"auto"``: the cap on instances run.
        auto_metric: For ``"auto"``: the summary figure to estimate (default:
            ``cpu_peak``, else ``memory_peak``, else the first numeric figure).
        **runner_options: Passed to :class:`labkit.Runner`, except ``executor``:
            ``None`` (instances run on this event loop, a sync function in a
            thread), a ``distributed.Client`` or a
            :class:`labkit.cluster.DaskExecutor` (instances run on the cluster).

    Returns:
        The :class:`~labkit.results.ExperimentResult`.

    Raises:
        ConfigError: An option is out of range (before anything starts), such as
            ``instances`` below 1 or above the cap, or more GPUs per instance than
            the fleet has; with a Dask executor, ``gpu_pool``, ``sandbox_pool``,
            an experiment that ``needs_sandbox``, a clock other than the system's,
            or ``gpus_per_instance`` unlike the ``DaskExecutor``'s ``gpus``.
        asyncio.CancelledError: The caller was cancelled; every instance was
            cancelled and gave its GPUs and sandbox back.
    """
    check(isinstance(experiment, Experiment), "experiment", experiment, "a labkit.Experiment")
    adaptive = instances == "auto"
    if adaptive:
        check(
            isinstance(max_instances, int) and 1 <= max_instances <= MAX_INSTANCES,
            "max_instances",
            max_instances,
            f"an int from 1 to {MAX_INSTANCES}",
        )
        check(
            _finite(target_rel_half_width) and target_rel_half_width > 0,
            "target_rel_half_width",
            target_rel_half_width,
            "a fraction > 0 (0.05 means 5 %)",
        )
    else:
        check(
            isinstance(instances, int)
            and not isinstance(instances, bool)
            and 1 <= instances <= MAX_INSTANCES,
            "instances",
            instances,
            f"an int from 1 to {MAX_INSTANCES} (the cap), or 'auto'",
        )
    planned = max_instances if adaptive else int(instances)
    check(
        duration is None or (_finite(duration) and 0 < duration <= MAX_DURATION),
        "duration",
        duration,
        f"seconds > 0 and <= {MAX_DURATION:.0f} (the longest sandbox life), or None",
    )
    check(_finite(sample_every) and sample_every > 0, "sample_every", sample_every, "seconds > 0")
    check(
        isinstance(gpus_per_instance, int) and gpus_per_instance >= 0,
        "gpus_per_instance",
        gpus_per_instance,
        "an int >= 0",
    )
    executor = runner_options.pop("executor", None)
    cluster: Any = None
    if executor is not None:
        check(
            _on_dask(executor),
            "executor",
            executor,
            "None (instances run on the event loop, a sync function in a thread), "
            "a distributed.Client or a labkit.cluster.DaskExecutor",
        )
        # The cluster's workers own their GPUs: no local fleet to check against; a
        # request no worker can meet fails each instance with GPUUnavailable.
        cluster = _cluster_options(
            executor, gpus_per_instance, experiment, gpu_pool, sandbox_pool, clock
        )
        gpus_per_instance = cluster.gpus
    elif gpus_per_instance:
        if gpu_pool is None:
            from labkit.gpu import GPUPool

            gpu_pool = GPUPool()
        fleet = _fleet_size(gpu_pool)
        check(
            gpus_per_instance <= fleet,
            "gpus_per_instance",
            gpus_per_instance,
            f"at most {fleet} (the GPUs in this fleet)",
        )
    clock = clock or SYSTEM_CLOCK
    bus = on_event if isinstance(on_event, EventBus) else EventBus()
    if on_event is not None and not isinstance(on_event, EventBus):
        check(callable(on_event), "on_event", on_event, "a callable or an EventBus")
        bus.subscribe(on_event)
    runner_options.setdefault("max_concurrency", planned)
    from labkit.runner import Runner

    # Built here so that bad runner options fail before anything starts.
    runner = Runner(on_event=bus, clock=clock, **runner_options)

    params = dict(experiment.params or {})
    config: dict[str, Any] = {
        "instances": "auto" if adaptive else planned,
        "duration": duration,
        "gpus_per_instance": gpus_per_instance,
        "sample_every": sample_every,
        "sandbox": None,
        **{f"runner.{key}": _config_value(value) for key, value in runner_options.items()},
    }
    if adaptive:
        config.update(target_rel_half_width=target_rel_half_width, max_instances=max_instances)

    backend: DaskBackend | None = None
    remote: Callable[[Any], Awaitable[Any]] | None = None
    topic = f"labkit-exp-{uuid.uuid4().hex}"  # this run's samples, and no other's
    if cluster is not None:
        from labkit.cluster import DaskBackend

        config["executor"] = "dask"
        backend = DaskBackend(cluster)
        on_worker = _remote_async if is_async_callable(experiment.fn) else _remote_sync
        # Each attempt is one Dask task; the runner here keeps the cap, retries,
        # timeouts and events, as for any call it makes.
        remote = backend.make_call(
            functools.partial(on_worker, experiment.fn, params, duration, gpus_per_instance, topic),
            name=experiment.name,
        )

    experiment_id: str | None = None
    done: dict[int, InstanceResult] = {}
    if store is not None:
        experiment_id, done = store.begin(
            name=experiment.name, params=params, instances=planned, config=config, resume=resume
        )

    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(runner)
        if sandbox_pool is None and experiment.needs_sandbox:
            from labkit.sandbox.local import LocalSandbox
            from labkit.sandbox.pool import SandboxPool

            sandbox_pool = SandboxPool(LocalSandbox, max_size=planned)
            stack.push_async_callback(sandbox_pool.close)
        if sandbox_pool is not None:
            config["sandbox"] = type(sandbox_pool).__name__
        run = _Run(
            experiment=experiment,
            duration=duration,
            gpus_per_instance=gpus_per_instance,
            gpu_pool=gpu_pool,
            sandbox_pool=sandbox_pool,
            recorder=store,
            experiment_id=experiment_id,
            sample_every=sample_every,
            clock=clock,
            emit=bus.emit,
            remote=remote,
        )
        if backend is not None:
            from labkit.cluster import subscribe

            stack.callback(backend.close)
            stack.callback(subscribe(backend.executor.client, topic, run.on_message))
        results = dict(done)

        async def run_indices(indices: Sequence[int]) -> None:
            todo = [index for index in indices if index not in results]
            if not todo:
                return
            report = await runner.map(run.instance if remote is None else run.remote_instance, todo)
            for task in report.results:
                index = int(task.item)
                if task.ok:
                    result = run.result(index, None)
                else:
                    result = run.result(index, task.error or RuntimeError("unknown error"))
                    if store is not None and experiment_id is not None:
                        await store.finish_instance(experiment_id, result)
                results[index] = replace(result, attempts=max(task.attempts, 1))

        if adaptive:
            await run_indices(range(min(3, max_instances)))
            while len(results) < max_instances:
                needed = _instances_needed(
                    list(results.values()), auto_metric, target_rel_half_width
                )
                succeeded = sum(result.ok for result in results.values())
                if needed is None or needed <= succeeded:
                    break
                more = min(needed - succeeded, max_instances - len(results))
                start = len(results)
                await run_indices(range(start, start + more))
            config["instances_run"] = len(results)
        else:
            await run_indices(range(planned))

    result = ExperimentResult.build(
        experiment.name, params, list(results.values()), config, experiment_id=experiment_id
    )
    if store is not None and experiment_id is not None:
        await store.finish(experiment_id, result)
    return result


def _instances_needed(
    results: Sequence[InstanceResult], metric: str | None, rel_half_width: float
) -> int | None:
    """How many successful instances the target needs, or None when it cannot be told."""
    summaries = [result.summary for result in results if result.ok]
    if not summaries:
        return None
    if metric is None:
        candidates = [
            key
            for key, value in summaries[0].items()
            if _finite(value) and key not in {"error_count"}
        ]
        preferred = [key for key in ("cpu_peak", "memory_peak") if key in candidates]
        if not (preferred or candidates):
            return None
        metric = (preferred or candidates)[0]
    values = [float(summary[metric]) for summary in summaries if _finite(summary.get(metric))]
    if len(values) < 2:
        return None
    return int(instances_needed(values, rel_half_width=rel_half_width))


def _on_dask(executor: Any) -> bool:
    from labkit.cluster import DaskExecutor

    return is_dask_client(executor) or isinstance(executor, DaskExecutor)


def _fleet_size(pool: GPUPool) -> int:
    return len(pool.stats().gpus)


def _config_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)
