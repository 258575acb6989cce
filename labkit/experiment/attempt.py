"""One attempt of one instance, and the bookkeeping every attempt shares.

:class:`InstanceLedger` keeps what each instance's last attempt left behind (one
attempt counter per instance) and does what every attempt does, wherever it runs:
reset, report ``failed`` or ``finished``, commit the finished instance to the
store, build its :class:`~labkit.results.InstanceResult`. :class:`LocalAttempt`
is an attempt on this machine, as an async context manager that holds the GPU
allocation, the sandbox session and the sampler for the attempt's life; the Dask
attempt (:mod:`labkit.experiment.dask`) uses the same bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from labkit.clock import Clock
from labkit.errors import TaskTimeout
from labkit.events import EventBus, InstanceEvent, TimelineEvent
from labkit.executors.base import AttemptExpired, is_async_callable, within
from labkit.experiment.context import InstanceContext
from labkit.experiment.spec import Experiment, InstanceFunction, summary_figures
from labkit.results import ExperimentRecorder, InstanceResult, error_text
from labkit.samplelog import SampleLog
from labkit.sampling import ResourceSampler
from labkit.seeds import instance_seed
from labkit.threadpool import ElasticThreadPool

if TYPE_CHECKING:
    from labkit.gpu import GPUAllocation, GPUPool
    from labkit.sandbox.pool import SandboxPool

__all__ = (
    "AttemptRecord",
    "InstanceCaller",
    "InstanceLedger",
    "LocalAttempt",
    "LocalInstances",
    "call_here",
    "instance_threads",
)


@dataclass(slots=True)
class AttemptRecord:
    """What the last attempt of one instance left behind, for its result."""

    attempts: int = 0
    started: float | None = None
    finished: float | None = None
    gpu_uuids: tuple[str, ...] = ()
    sandbox_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    log: SampleLog = field(default_factory=SampleLog)
    """The attempt's samples: its timeline."""


@dataclass(slots=True, kw_only=True)
class InstanceLedger:
    """The instances of one run: their attempts, events and store records."""

    experiment: Experiment
    clock: Clock
    bus: EventBus
    recorder: ExperimentRecorder | None = None
    seed: int = 0
    """The run's base seed: instance ``i`` gets ``instance_seed(seed, i)``."""
    experiment_id: str | None = None
    records: dict[int, AttemptRecord] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """Failures of the store while instances finished; they end up in the result's notes."""

    def begin(self, index: int) -> AttemptRecord:
        """A new attempt of ``index``: count it and forget what the last one left."""
        record = self.records.setdefault(index, AttemptRecord())
        record.attempts += 1
        record.started = record.finished = None
        record.gpu_uuids = ()
        record.sandbox_id = None
        record.extra = {}
        record.log = SampleLog()
        return record

    def started(self, index: int, gpus: tuple[str, ...] = (), at: float | None = None) -> float:
        """Note once that the attempt runs (resources held); returns when it started.

        Reports ``started``, then the attempt's log (a :class:`TimelineEvent`).

        Args:
            index: The instance.
            gpus: The GPUs it holds, if not noted yet.
            at: When it started (s, on the run's clock); default: now.
        """
        record = self.records[index]
        if record.started is None:
            record.started = self.clock.now() if at is None else at
            record.gpu_uuids = record.gpu_uuids or gpus
            self.emit(InstanceEvent("started", index, record.started))
            self.emit(TimelineEvent(index, record.started, record.log))
            if self.recorder is not None and self.experiment_id is not None:
                self.recorder.follow(self.experiment_id, index, record.log)
        return record.started

    def emit(self, event: Any) -> None:
        """Announce ``event`` to whoever reads its kind."""
        self.bus.emit(event)

    def sample_forwarder(self, index: int) -> Callable[[float, Mapping[str, float]], None] | None:
        """What turns each sample of ``index`` into a ``sample`` event, or ``None``
        when no watcher reads them (samples then travel in the log alone)."""
        if not self.bus.route(InstanceEvent, "sample"):
            return None
        emit, now = self.bus.emit, self.clock.now

        def forward(offset: float, values: Mapping[str, float]) -> None:
            emit(InstanceEvent("sample", index, now(), offset, metrics=values))

        return forward

    def failed(self, index: int, error: BaseException) -> None:
        """The attempt raised (the runner may retry it)."""
        record = self.records[index]
        now = self.clock.now()
        record.finished = now
        offset = 0.0 if record.started is None else now - record.started
        if self.recorder is not None and self.experiment_id is not None:
            self.recorder.follow(self.experiment_id, index, None)  # code may run on: not its rows
        self.emit(InstanceEvent("failed", index, now, offset, message=describe(error)))

    async def finished(self, index: int, value: Any) -> None:
        """The attempt returned ``value``: report it and commit the instance.

        The store commits before the instance counts as done, so a crash after
        this point never loses it (resume then loads it instead of rerunning). A
        store that cannot record it does not fail the instance: the failure goes
        to the result's notes.
        """
        record = self.records[index]
        started = self.started(index)
        record.finished = self.clock.now()
        record.extra = _extra_summary(value)
        if self.recorder is not None:
            # Committed first: a run cancelled after "finished" was said never
            # leaves that instance out of the store.
            await self.record(self.result(index, None))
        self.emit(InstanceEvent("finished", index, record.finished, record.finished - started))

    async def record(self, result: InstanceResult) -> None:
        """Commit an instance's result to the store, if there is one."""
        if self.recorder is None or self.experiment_id is None:
            return
        try:
            await self.recorder.finish_instance(self.experiment_id, result)
        except Exception as exc:
            self.notes.append(
                f"instance {result.index} was not recorded in the store: {error_text(exc)}"
            )

    def result(self, index: int, error: BaseException | None) -> InstanceResult:
        """The instance's result from its last attempt (``error`` set when it failed)."""
        record = self.records.get(index, AttemptRecord())
        timeline = record.log.frame()
        summary = summary_figures(timeline, self.experiment.summarize)
        summary.update(record.extra)
        return InstanceResult(
            index=index,
            ok=error is None,
            error=None if error is None else describe(error),
            timeline=timeline,
            summary=summary,
            started=record.started,
            finished=record.finished,
            gpu_uuids=record.gpu_uuids,
            sandbox_id=record.sandbox_id,
            attempts=max(record.attempts, 1),
            seed=instance_seed(self.seed, index),
        )


class LocalAttempt:
    """One attempt of one instance on this machine, as an async context manager.

    Entering acquires the instance's GPUs and sandbox session, builds its
    :class:`InstanceContext` (:attr:`ctx`), reports ``started`` and starts the
    sandbox's sampler; exiting reports ``failed`` if the block raised, then stops
    the sampler and gives the sandbox and GPUs back, however the block ends.

    A lease lasts as long as the code that uses it: when the instance's function
    still runs after the attempt ended (a sync function past its timeout, which a
    thread cannot stop), :meth:`runs_on` keeps the GPUs and the sandbox held until
    it really ends, and the pools count them as ``abandoned`` meanwhile. From the
    attempt's end on, what that code records reaches its own log only: no event,
    no store, never the next attempt's timeline.

    Args:
        instances: The run's bookkeeping.
        index: The instance.
        params: The experiment's parameters.
        duration: ``ctx.duration`` (s).
        gpus: GPUs to hold, from ``gpu_pool``.
        gpu_pool: Where GPUs come from (needed when ``gpus`` > 0).
        sandbox_pool: Where the sandbox comes from, or ``None`` for none.
        sample_every: Seconds between the sandbox's resource samples.
    """

    __slots__ = (
        "_allocation",
        "_current",
        "_runs_on",
        "_sandbox",
        "_stack",
        "ctx",
        "duration",
        "gpu_pool",
        "gpus",
        "index",
        "instances",
        "params",
        "sample_every",
        "sandbox_pool",
    )

    ctx: InstanceContext
    """The instance's context, once entered."""

    def __init__(
        self,
        instances: InstanceLedger,
        index: int,
        *,
        params: Mapping[str, Any],
        duration: float | None,
        gpus: int,
        gpu_pool: GPUPool | None,
        sandbox_pool: SandboxPool | None,
        sample_every: float,
    ) -> None:
        self.instances = instances
        self.index = index
        self.params = params
        self.duration = duration
        self.gpus = gpus
        self.gpu_pool = gpu_pool
        self.sandbox_pool = sandbox_pool
        self.sample_every = sample_every
        self._stack = contextlib.AsyncExitStack()
        self._current = True
        self._runs_on: asyncio.Future[Any] | None = None
        self._allocation: GPUAllocation | None = None
        self._sandbox: Any = None

    async def __aenter__(self) -> LocalAttempt:
        book = self.instances
        record = book.begin(self.index)
        stack = self._stack
        await stack.__aenter__()
        try:
            env: dict[str, str] = {}
            if self.gpus:
                assert self.gpu_pool is not None
                allocation = await stack.enter_async_context(
                    self.gpu_pool.acquire(
                        gpus=self.gpus, owner=f"{book.experiment.name}[{self.index}]"
                    )
                )
                self._allocation = allocation
                env.update(allocation.env)
                record.gpu_uuids = tuple(allocation.uuids)
            else:
                # Without GPUs, hide them: an instance must not use a GPU it was not given.
                env["CUDA_VISIBLE_DEVICES"] = ""
            sandbox = None
            if self.sandbox_pool is not None:
                sandbox = await stack.enter_async_context(self.sandbox_pool.session())
                self._sandbox = sandbox
            record.sandbox_id = _sandbox_id(sandbox)
            forward = book.sample_forwarder(self.index)
            self.ctx = ctx = InstanceContext(
                index=self.index,
                seed=instance_seed(book.seed, self.index),
                params=self.params,
                duration=self.duration,
                env=env,
                gpus=record.gpu_uuids,
                sandbox=sandbox,
                attempt=record.attempts,
                clock=book.clock,
                emit=self._while_current(book.emit),
                forward=self._while_current(forward) if forward is not None else None,
                sample_log=record.log,
            )
            book.started(self.index, at=ctx.started)
            if sandbox is not None:
                await stack.enter_async_context(
                    ResourceSampler(sandbox, ctx.record, every=self.sample_every, clock=book.clock)
                )
        except BaseException as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _while_current(self, fn: Callable[..., None]) -> Callable[..., None]:
        """``fn``, silenced once this attempt has ended (its code may run on)."""

        def forward(*args: Any) -> None:
            if self._current:
                fn(*args)

        return forward

    def runs_on(self, done: asyncio.Future[Any]) -> None:
        """The instance's code runs on after this attempt ends, until ``done`` resolves:
        keep its GPUs and sandbox held until then (counted as abandoned by the pools)."""
        self._runs_on = done
        if self._allocation is not None and self.gpu_pool is not None:
            self.gpu_pool.mark_abandoned(self._allocation)
        if self._sandbox is not None and self.sandbox_pool is not None:
            self.sandbox_pool.mark_abandoned(self._sandbox)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._current = False
        if exc is not None:
            self.instances.failed(self.index, exc)
        runs_on = self._runs_on
        if runs_on is None or runs_on.done():
            await self._stack.__aexit__(exc_type, exc, tb)
            return
        stack = self._stack

        def release(_: asyncio.Future[Any]) -> None:
            task = asyncio.get_running_loop().create_task(stack.aclose())
            _RELEASING.add(task)
            task.add_done_callback(_RELEASING.discard)

        runs_on.add_done_callback(release)


_RELEASING: set[asyncio.Task[None]] = set()
"""Releases of leases whose code ended after its attempt (kept until they finish)."""

_THREADS: list[ElasticThreadPool] = []


def instance_threads() -> ElasticThreadPool:
    """The threads sync instance functions run in (one pool per process, grown on demand)."""
    if not _THREADS:
        _THREADS.append(ElasticThreadPool("labkit-instance"))
    return _THREADS[0]


async def call_here(
    fn: InstanceFunction, attempt: LocalAttempt, timeout: float | None, clock: Clock
) -> Any:
    """Call the instance function in this process: awaited if async, else in a thread.

    The ``timeout`` (s) counts from when the function begins (a sync one: when its
    thread begins it). A sync function past it cannot be stopped: the attempt ends
    with :class:`AttemptExpired`, and the function runs on in its thread, holding
    the attempt's GPUs and sandbox until it ends (:meth:`LocalAttempt.runs_on`).

    Raises:
        AttemptExpired: ``timeout`` ran out.
    """
    ctx = attempt.ctx
    if is_async_callable(fn):
        if timeout is None:
            return await fn(ctx)
        return await within(clock, fn, ctx, timeout)
    threads = instance_threads()
    call = threads.submit(fn, ctx, signal_start=True)
    assert call.started is not None
    try:
        await asyncio.shield(call.started)
        start = clock.now()
        try:
            async with clock.timeout(timeout):
                value = await asyncio.shield(call.done)
        except TimeoutError as exc:
            if call.done.done():
                raise  # the function's own TimeoutError
            raise AttemptExpired from exc
    finally:
        if not call.done.done() and not call.cancel():
            threads.abandon(call)
            attempt.runs_on(call.done)
    if inspect.isawaitable(value):
        left = None if timeout is None else timeout - (clock.now() - start)
        return await (_awaited(value) if left is None else within(clock, _awaited, value, left))
    return value


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def describe(error: BaseException) -> str:
    """An error's one-line text for results and events."""
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


InstanceCaller = Callable[[InstanceFunction, LocalAttempt, "float | None", Clock], Awaitable[Any]]
"""How an attempt calls the instance function: :func:`call_here`, or in a worker process."""


@dataclass(slots=True, kw_only=True)
class LocalInstances:
    """The attempts of one run's instances on this machine (see :class:`LocalAttempt`).

    ``timeout`` (s) bounds each attempt's function from when it begins: waiting for
    GPUs, a sandbox or a worker is not run time. An attempt past it fails with
    :class:`~labkit.errors.TaskTimeout`, as a runner's timeout does.
    """

    instances: InstanceLedger
    duration: float | None
    gpus: int
    gpu_pool: GPUPool | None
    sandbox_pool: SandboxPool | None
    sample_every: float
    timeout: float | None = None
    caller: InstanceCaller = call_here

    async def instance(self, index: int) -> Any:
        """One attempt of instance ``index``: hold its resources, run it, sample it."""
        book = self.instances
        experiment = book.experiment
        async with LocalAttempt(
            book,
            index,
            params=experiment.params or {},
            duration=self.duration,
            gpus=self.gpus,
            gpu_pool=self.gpu_pool,
            sandbox_pool=self.sandbox_pool,
            sample_every=self.sample_every,
        ) as attempt:
            try:
                value = await self.caller(experiment.fn, attempt, self.timeout, book.clock)
            except AttemptExpired as expired:
                raise TaskTimeout(index, attempt.ctx.attempt, self.timeout or 0.0) from expired
        await book.finished(index, value)
        return value
