"""Instances on a Dask cluster: each attempt is one task on a worker.

The caller keeps the runner (cap, retries, timeouts, events), the store and the
averaging; a worker runs one attempt and streams its start, samples and log lines
back on the run's topic (:func:`labkit.cluster.publish`) while it runs. The
bookkeeping is the local path's own (:class:`~labkit.experiment.attempt.InstanceLedger`).

Dask runs a task again on another worker when the worker running it goes away (a
Slurm job that reached its walltime or was preempted or cancelled). Each run of an
attempt on a worker carries a token of its own: when a new run of an attempt
starts, what the lost run recorded is dropped (the live view starts the instance's
line again), only the new run's samples count, and the result's notes say which
instance ran again. An attempt whose runs lost their worker :data:`MAX_LOST_RUNS`
times fails with :class:`~labkit.errors.WorkerLost` rather than running again
forever (an instance longer than a job's walltime would never end).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from labkit._checks import check
from labkit.clock import SYSTEM_CLOCK, Clock, SystemClock
from labkit.errors import WorkerLost
from labkit.events import InstanceEvent
from labkit.executors import is_async_callable, is_dask_client
from labkit.experiment.attempt import InstanceLedger
from labkit.experiment.context import InstanceContext
from labkit.experiment.spec import Experiment, InstanceFunction
from labkit.samplelog import SampleLog

if TYPE_CHECKING:
    from labkit.cluster import DaskExecutor
    from labkit.gpu import GPUPool
    from labkit.sandbox.pool import SandboxPool

__all__ = ("MAX_LOST_RUNS", "DaskInstances", "cluster_executor", "on_dask")

MAX_LOST_RUNS = 3
"""Runs of one attempt that may lose their worker; the next loss fails the attempt."""


def on_dask(executor: Any) -> bool:
    """Whether ``executor`` sends instances to a Dask cluster."""
    from labkit.cluster import DaskExecutor

    return is_dask_client(executor) or isinstance(executor, DaskExecutor)


def cluster_executor(
    executor: Any,
    gpus_per_instance: int,
    experiment: Experiment,
    gpu_pool: GPUPool | None,
    sandbox_pool: SandboxPool | None,
    clock: Clock | None,
) -> DaskExecutor:
    """Check what a run on Dask cannot take; return the ``DaskExecutor`` to submit with.

    Raises:
        ConfigError: A local ``gpu_pool`` or ``sandbox_pool``, an experiment that
            ``needs_sandbox``, a clock other than the system's, or
            ``gpus_per_instance`` unlike the ``DaskExecutor``'s ``gpus``.
    """
    from labkit.cluster import DaskExecutor

    on = "with a Dask executor"
    check(
        gpu_pool is None,
        "gpu_pool",
        gpu_pool,
        f"None {on}: the cluster's workers own their GPUs (ask with gpus_per_instance)",
    )
    check(
        sandbox_pool is None,
        "sandbox_pool",
        sandbox_pool,
        f"None {on}: instances run in the workers' processes",
    )
    check(
        not experiment.needs_sandbox,
        "needs_sandbox",
        experiment.needs_sandbox,
        f"False {on}: instances run in the workers' processes",
    )
    check(
        clock is None or isinstance(clock, SystemClock),
        "clock",
        clock,
        f"None or the system clock {on}: workers stamp samples in real time",
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


class DaskInstances:
    """The attempts of one run's instances as tasks on a Dask cluster.

    Use as an async context manager around the run: it subscribes to the run's
    topic on entering and lets go of the subscription and the backend on exit.

    Args:
        instances: The run's bookkeeping.
        executor: From :func:`cluster_executor`.
        duration: ``ctx.duration`` (s).
    """

    def __init__(self, instances: InstanceLedger, executor: DaskExecutor, duration: float | None):
        from labkit.cluster import DaskBackend

        self.instances = instances
        self.executor = executor
        self._topic = f"labkit-exp-{uuid.uuid4().hex}"  # this run's samples, and no other's
        self._backend = DaskBackend(executor)
        experiment = instances.experiment
        on_worker = _remote_async if is_async_callable(experiment.fn) else _remote_sync
        self._duration = duration
        self._worker_fn = functools.partial(
            on_worker,
            experiment.fn,
            dict(experiment.params or {}),
            duration,
            executor.gpus,
            self._topic,
        )
        self._remote: Callable[[Any], Awaitable[Any]] | None = None
        self._stack = contextlib.ExitStack()
        self._runs: dict[int, str] = {}
        """The run (on a worker) of each instance's attempt whose messages count."""
        self._lost_runs: dict[int, int] = {}
        self._forwarders: dict[int, Callable[[float, Mapping[str, float]], None] | None] = {}
        """Per running attempt: what turns its streamed samples into events, if read."""
        self._cut_off: dict[int, asyncio.Future[None]] = {}
        """Per running attempt: fails when its runs lost their worker too often."""

    async def __aenter__(self) -> DaskInstances:
        from labkit.cluster import subscribe

        # Each attempt is one Dask task; the runner here keeps the cap, retries,
        # timeouts and events, as for any call it makes.
        self._remote = self._backend.make_call(self._worker_fn, name=self.instances.experiment.name)
        self._stack.callback(self._backend.close)
        self._stack.callback(subscribe(self.executor.client, self._topic, self.on_message))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stack.close()

    async def instance(self, index: int) -> Any:
        """One attempt of one instance as a task on a worker.

        The returned samples, not the streamed ones, make the final timeline.
        """
        assert self._remote is not None, "enter DaskInstances before running instances"
        book = self.instances
        record = book.begin(index)
        self._runs.pop(index, None)
        self._lost_runs[index] = 0
        cut_off = self._cut_off[index] = asyncio.get_running_loop().create_future()
        remote = asyncio.ensure_future(self._remote((index, record.attempts)))
        try:
            await asyncio.wait({remote, cut_off}, return_when=asyncio.FIRST_COMPLETED)
            if not remote.done():
                cut_off.result()  # raises WorkerLost; the task is cancelled below
            value, log, gpus = remote.result()
        except BaseException as exc:
            if not remote.done():
                remote.cancel()  # which cancels the task on the cluster
                await asyncio.wait({remote})
            book.failed(index, exc)
            raise
        finally:
            del self._cut_off[index]
            cut_off.cancel()
        # Started messages arrive before the result; this only covers a lost one.
        book.started(index, tuple(gpus))
        record.log = log
        record.gpu_uuids = tuple(gpus)
        await book.finished(index, value)
        return value

    def on_message(self, message: Mapping[str, Any]) -> None:
        """Handle one message a worker published for this run, on the caller's loop."""
        book = self.instances
        index = int(message["i"])
        record = book.records.get(index)
        if record is None or record.attempts != message["a"] or record.finished is not None:
            # From an attempt that has ended here (timed out, retried) but still
            # runs on its worker: it must not leak into the current timeline.
            return
        kind = message["kind"]
        clock = book.clock
        run = str(message["r"])
        if kind == "started":
            current = self._runs.setdefault(index, run)
            if current != run:
                self._run_again(index, run)
            book.started(index, tuple(message.get("gpus", ())))
            self._forwarders[index] = book.sample_forwarder(index)
        elif self._runs.get(index) != run:
            return  # a lost run's late message
        elif kind == "sample":
            offset = float(message["t"])
            metrics = {str(name): float(value) for name, value in message["m"].items()}
            record.log.append(offset, metrics)
            if forward := self._forwarders.get(index):
                forward(offset, metrics)
        elif kind == "log":
            book.emit(
                InstanceEvent(
                    "log", index, clock.now(), float(message["t"]), message=message["log"]
                )
            )

    def _run_again(self, index: int, run: str) -> None:
        """Dask started the attempt of ``index`` again (its worker was lost): keep
        only the new run, and say so in the result's notes."""
        book = self.instances
        record = book.records[index]
        self._runs[index] = run
        self._lost_runs[index] += 1
        if self._lost_runs[index] >= MAX_LOST_RUNS:
            cut_off = self._cut_off.get(index)
            if cut_off is not None and not cut_off.done():
                cut_off.set_exception(
                    WorkerLost(
                        f"instance {index} lost the worker running it {MAX_LOST_RUNS} times "
                        "in a row: each run was cut off (a Slurm job's walltime or "
                        "preemption, or workers that die). Give each job more time than "
                        "an instance needs (walltime minus retire_before), or look for "
                        "what kills the workers"
                    )
                )
            return
        record.log = SampleLog()
        record.started = None  # started() reports the new run and its log
        book.notes.append(
            f"instance {index} ran again from its start on another worker: the worker "
            "running it was lost (a Slurm job's walltime, preemption or cancellation, "
            "or a worker that died); only the new run is kept"
        )


# -- on the worker ----------------------------------------------------------------------
#
# These run in a worker's process, so they are module-level (they pickle by name) and
# receive only plain data: the function, its parameters and the run's topic.

_Job = tuple[int, int]
"""What the caller sends per attempt: the instance's index and the attempt's number."""

_Outcome = tuple[Any, SampleLog, tuple[str, ...]]
"""What a worker returns: the function's value, every sample it recorded, its GPUs."""


def _worker_context(
    job: _Job, params: Mapping[str, Any], duration: float | None, gpus: int, topic: str
) -> tuple[InstanceContext, SampleLog]:
    """The instance's context on a worker, and the log it records into: samples and
    log lines also go out on ``topic``."""
    from labkit.cluster import publish

    index, number = job
    run = uuid.uuid4().hex  # this run of the attempt: Dask may start it again elsewhere
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus:
        # The worker was pinned to its GPUs (gpu_cluster, or by hand) before it started.
        env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
        uuids = tuple(uuid for uuid in (visible or "").split(",") if uuid)
    else:
        env, uuids = {"CUDA_VISIBLE_DEVICES": ""}, ()
    log = SampleLog()

    head = {"i": index, "a": number, "r": run}

    def forward(offset: float, values: Mapping[str, float]) -> None:
        publish(topic, {**head, "t": offset, "kind": "sample", "m": dict(values)})

    def emit(event: InstanceEvent) -> None:
        if event.kind == "log":
            publish(topic, {**head, "t": event.offset, "kind": "log", "log": event.message})

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
        sample_log=log,
        forward=forward,
    )
    publish(topic, {"i": index, "a": number, "r": run, "kind": "started", "gpus": list(uuids)})
    return ctx, log


async def _remote_async(
    fn: InstanceFunction,
    params: Mapping[str, Any],
    duration: float | None,
    gpus: int,
    topic: str,
    job: _Job,
) -> _Outcome:
    """An async instance function's attempt, in the worker's loop for this task."""
    ctx, log = _worker_context(job, params, duration, gpus, topic)
    value = await fn(ctx)
    return value, log, ctx.gpus


def _remote_sync(
    fn: InstanceFunction,
    params: Mapping[str, Any],
    duration: float | None,
    gpus: int,
    topic: str,
    job: _Job,
) -> _Outcome:
    """A sync instance function's attempt, in the worker's task thread."""
    ctx, log = _worker_context(job, params, duration, gpus, topic)
    value = fn(ctx)
    if inspect.isawaitable(value):
        value = asyncio.run(_await(value))
    return value, log, ctx.gpus


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
