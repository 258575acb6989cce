"""The parallel runner: many calls at once, under control.

A run pulls items from its input with at most ``max_concurrency`` long-lived worker
coroutines (no task per pending item, so memory grows with the concurrency and the
stored results, not with the input), applies the rate limit and the retry policy
to every attempt, bounds each attempt with ``timeout``, and records one
:class:`TaskResult` per item, in input order. A failing item is a result, never an
exception of the run.

Cancelling the task that awaits a run cancels every in-flight attempt and waits for
their ``finally`` blocks; the partial report stays readable as
``Runner.last_report``. From sync code, Ctrl-C during :func:`run_parallel_sync`
does the same and raises :class:`labkit.errors.RunInterrupted` with the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import random
from collections import deque
from collections.abc import (
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
    Sized,
)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from labkit.adaptive import AutoConcurrency, ConcurrencyController
from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import (
    ConfigError,
    DependencyFailed,
    ResourceUnavailable,
    TaskFailed,
    TaskTimeout,
    check,
)
from labkit.events import ConcurrencyEvent, EventBus, TaskEvent, Unsubscribe
from labkit.executors import Backend, Call
from labkit.guard import Cost, HostProbe, ResourceGuard, ResourceLimits, cost_of
from labkit.loop import run_sync
from labkit.policies import RateLimit, RateLimiter, Retry

if TYPE_CHECKING:
    import pandas as pd

__all__ = (
    "RunOptions",
    "RunReport",
    "RunStats",
    "Runner",
    "RunnerStats",
    "TaskHandle",
    "TaskResult",
    "parallel_map",
    "run_parallel",
    "run_parallel_sync",
)

T = TypeVar("T")
R = TypeVar("R")

Priority = Callable[[Any], float] | Sequence[float]
_Results = list[Any] | dict[int, Any]
_NO_OUTCOME = (None, 0.0, 0.0)  # a TaskEvent's error, delay and duration when there are none


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """Every option of a run; see :func:`run_parallel` for their meaning.

    Raises:
        ConfigError: If an option is out of range (the message names it).
    """

    max_concurrency: int | str | AutoConcurrency = 8
    timeout: float | None = None
    retry: Retry | None = None
    rate_limit: RateLimit | None = None
    batch_size: int | None = None
    batch_delay: float = 0.0
    priority: Priority | None = None
    executor: Any = "async"
    on_event: Callable[[TaskEvent], object] | EventBus | None = None
    clock: Clock = SYSTEM_CLOCK
    rng: random.Random | None = None
    limits: ResourceLimits | None = None
    cost: Cost | None = None
    probe: HostProbe | None = None

    def __post_init__(self) -> None:
        auto = self.max_concurrency == "auto" or isinstance(self.max_concurrency, AutoConcurrency)
        check(
            auto
            or (
                isinstance(self.max_concurrency, int)
                and not isinstance(self.max_concurrency, bool)
                and self.max_concurrency >= 1
            ),
            "max_concurrency",
            self.max_concurrency,
            "an integer >= 1, 'auto', or a labkit.AutoConcurrency",
        )
        check(
            self.timeout is None or (isinstance(self.timeout, int | float) and self.timeout > 0),
            "timeout",
            self.timeout,
            "None or seconds > 0",
        )
        check(
            self.retry is None or isinstance(self.retry, Retry),
            "retry",
            self.retry,
            "None or a labkit.Retry",
        )
        check(
            self.rate_limit is None or isinstance(self.rate_limit, RateLimit),
            "rate_limit",
            self.rate_limit,
            "None or a labkit.RateLimit",
        )
        check(
            self.batch_size is None or (isinstance(self.batch_size, int) and self.batch_size >= 1),
            "batch_size",
            self.batch_size,
            "None or an integer >= 1",
        )
        check(self.batch_delay >= 0, "batch_delay", self.batch_delay, "seconds >= 0")
        check(
            self.priority is None or callable(self.priority) or isinstance(self.priority, Sequence),
            "priority",
            self.priority,
            "None, a callable item -> number, or one number per item",
        )
        check(
            self.on_event is None or callable(self.on_event) or isinstance(self.on_event, EventBus),
            "on_event",
            self.on_event,
            "None, a callable taking an event, or a labkit.EventBus",
        )
        check(isinstance(self.clock, Clock), "clock", self.clock, "a labkit.Clock")
        check(
            self.limits is None or isinstance(self.limits, ResourceLimits),
            "limits",
            self.limits,
            "None or a labkit.ResourceLimits",
        )
        check(
            self.cost is None or callable(self.cost) or isinstance(self.cost, Mapping),
            "cost",
            self.cost,
            "None, a mapping like {'memory_mb': 2048}, or a callable item -> mapping",
        )
        if isinstance(self.cost, Mapping):
            cost_of(self.cost, None)  # validates the keys now

    @property
    def auto(self) -> AutoConcurrency | None:
        """The adaptive policy, when ``max_concurrency`` is ``"auto"`` or one."""
        if isinstance(self.max_concurrency, AutoConcurrency):
            return self.max_concurrency
        return AutoConcurrency() if self.max_concurrency == "auto" else None

    @property
    def worker_cap(self) -> int:
        """The most tasks that may ever run at once."""
        auto = self.auto
        return auto.max if auto is not None else int(self.max_concurrency)  # type: ignore[arg-type]


@dataclass(slots=True)
class TaskResult(Generic[T]):
    """What happened to one item.

    Attributes:
        index: The item's position in the input.
        item: The item itself (for ``submit``, the positional arguments).
        ok: True when an attempt returned a value.
        value: That value (``None`` when not ok).
        error: The last attempt's exception when not ok (``asyncio.CancelledError``
            for a task cancelled before it finished).
        attempts: Attempts made, the first included (0 if it never started).
        started: When the first attempt began, in seconds on the runner's clock.
        finished: When the last attempt ended, same clock.
    """

    index: int
    item: Any
    ok: bool
    value: T | None = None
    error: BaseException | None = None
    attempts: int = 1
    started: float = 0.0
    finished: float = 0.0

    @property
    def duration(self) -> float:
        """Seconds from the first attempt's start to the last attempt's end."""
        return self.finished - self.started

    @property
    def cancelled(self) -> bool:
        """True when the task was cancelled before it finished."""
        return isinstance(self.error, asyncio.CancelledError)


@dataclass(frozen=True, slots=True)
class RunStats:
    """Totals of one finished run.

    Attributes:
        submitted: Items in the run.
        completed: Items that succeeded (``completed + failed == submitted``).
        failed: Items that failed, timed out or were cancelled.
        retries: Extra attempts over all items.
        total_time: Seconds from the run's start to its end.
        avg_time: Mean duration of the items that started, in seconds.
        throughput: Finished items per second of ``total_time``.
        success_rate: ``completed / submitted`` (1.0 for an empty run).
        peak_concurrency: The most attempts in flight at once.
    """

    submitted: int
    completed: int
    failed: int
    retries: int
    total_time: float
    avg_time: float
    throughput: float
    success_rate: float
    peak_concurrency: int


@dataclass(frozen=True, slots=True)
class RunnerStats:
    """A live snapshot of a :class:`Runner`, for monitors and progress bars.

    Attributes:
        queued: Items accepted and not yet started.
        running: Items started and not yet finished (their backoff waits included).
        done: Items that succeeded.
        failed: Items that failed or were cancelled.
        retries: Extra attempts so far.
        throughput: Finished items per second since the runner's first item.
        peak_concurrency: The most items running at once.
        elapsed: Seconds since the runner's first item.
        max_concurrency: The concurrency limit now (it moves with ``"auto"``).
        held_back: Starts the resource guard made wait.
        held_seconds: Seconds those starts waited, summed.
        held_reason: Why starts wait right now (``"cpu"``, ``"memory"``), or None.
    """

    queued: int
    running: int
    done: int
    failed: int
    retries: int
    throughput: float
    peak_concurrency: int
    elapsed: float
    max_concurrency: int
    held_back: int = 0
    held_seconds: float = 0.0
    held_reason: str | None = None


@dataclass(slots=True)
class RunReport(Generic[T]):
    """The outcome of a run: one :class:`TaskResult` per item, in input order."""

    results: list[TaskResult[T]]
    stats: RunStats
    _values: list[T] | None = field(default=None, repr=False)

    @property
    def values(self) -> list[T]:
        """The values of the items that succeeded, in input order."""
        if self._values is None:
            self._values = [r.value for r in self.results if r.ok]  # type: ignore[misc]
        return self._values

    @property
    def errors(self) -> list[BaseException]:
        """The exceptions of the items that failed, in input order."""
        return [r.error for r in self.results if not r.ok and r.error is not None]

    @property
    def failures(self) -> list[TaskResult[T]]:
        """The results of the items that failed, in input order."""
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        """True when every item succeeded."""
        return self.stats.failed == 0

    def raise_for_errors(self) -> None:
        """Raise an ``ExceptionGroup`` of :class:`TaskFailed` if any item failed.

        Each member's ``__cause__`` is the item's own exception.
        """
        failures = self.failures
        if not failures:
            return
        members = []
        for result in failures:
            error = result.error or RuntimeError("failed without an exception")
            member = TaskFailed(result.index, result.item, error)
            member.__cause__ = error
            members.append(member)
        raise ExceptionGroup(f"{len(members)} of {len(self.results)} tasks failed", members)

    def to_frame(self) -> pd.DataFrame:
        """One row per item: index, item, ok, value, error (text), attempts, times (s)."""
        import pandas as pd

        return pd.DataFrame(
            {
                "index": [r.index for r in self.results],
                "item": [r.item for r in self.results],
                "ok": [r.ok for r in self.results],
                "value": [r.value for r in self.results],
                "error": [
                    None if r.error is None else f"{type(r.error).__name__}: {r.error}"
                    for r in self.results
                ],
                "attempts": [r.attempts for r in self.results],
                "started": [r.started for r in self.results],
                "finished": [r.finished for r in self.results],
                "duration": [r.duration for r in self.results],
            }
        )

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"RunReport(submitted={s.submitted}, completed={s.completed}, failed={s.failed}, "
            f"retries={s.retries}, total_time={s.total_time:.3f}s)"
        )


class _Slots:
    """The runner-wide concurrency cap: a counter with a FIFO of waiters.

    Cheaper than ``asyncio.Semaphore`` on the uncontended path, which is the only
    path a single ``map`` call takes (it never runs more workers than slots).
    """

    __slots__ = ("_waiters", "free", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def resize(self, size: int) -> None:
        """Change the cap; above the new cap, holders finish before anyone else starts."""
        self.free += size - self.size
        self.size = size
        while self.free > 0 and self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                self.free -= 1
                future.set_result(None)

    async def acquire(self) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            elif future in self._waiters:
                self._waiters.remove(future)
            raise

    def release(self) -> None:
        if self.free >= 0:  # below zero, the cap shrank: this slot is gone
            while self._waiters:
                future = self._waiters.popleft()
                if not future.done():
                    future.set_result(None)
                    return
        self.free += 1


class TaskHandle(Generic[T]):
    """A task started with :meth:`Runner.submit`; ``await handle`` gives its TaskResult."""

    __slots__ = ("_task", "index", "label")

    def __init__(
        self, index: int, task: asyncio.Task[TaskResult[T]], label: str | None = None
    ) -> None:
        self.index = index
        self.label = label
        """The task's name in a :func:`labkit.run_graph` graph, else None."""
        self._task = task

    def __await__(self) -> Generator[Any, None, TaskResult[T]]:
        return asyncio.shield(self._task).__await__()

    def done(self) -> bool:
        return self._task.done()

    def result(self) -> TaskResult[T]:
        """The TaskResult of a finished task.

        Raises:
            asyncio.InvalidStateError: If the task has not finished yet.
        """
        return self._task.result()

    def cancel(self) -> bool:
        """Cancel the task; its result then carries a ``CancelledError``."""
        return self._task.cancel()

    def __repr__(self) -> str:
        state = "done" if self._task.done() else "pending"
        return f"<TaskHandle index={self.index} {state}>"


class Runner:
    """Runs calls in parallel under a concurrency cap, retries, timeouts and a rate limit.

    One runner's cap, rate limit and statistics are shared by everything it runs:
    several ``map`` calls and ``submit``-ted tasks at once never exceed
    ``max_concurrency`` together. Use it as ``async with Runner(...) as runner:``
    so that its pools are closed and its submitted tasks awaited at the end.

    Args:
        **options: The options of :class:`RunOptions` (see :func:`run_parallel`).

    Raises:
        ConfigError: If an option is out of range.
    """

    def __init__(self, **options: Any) -> None:
        unknown = set(options) - set(RunOptions.__dataclass_fields__)
        if unknown:
            name = sorted(unknown)[0]
            raise ConfigError(
                name, options[name], f"one of {', '.join(RunOptions.__dataclass_fields__)}"
            )
        self.options = opts = RunOptions(**options)
        self._clock = opts.clock
        self._rng = opts.rng or random.Random()
        self._backend = Backend(opts.executor, opts.worker_cap)
        self._limiter = (
            RateLimiter(opts.rate_limit, clock=opts.clock, rng=self._rng)
            if opts.rate_limit
            else None
        )
        auto = opts.auto
        self._controller = ConcurrencyController(auto) if auto is not None else None
        self._slots = _Slots(self._controller.limit if self._controller else opts.worker_cap)
        if isinstance(opts.on_event, EventBus):
            self._bus = opts.on_event  # share the caller's bus: its routes stay exact
        else:
            self._bus = EventBus()
            if opts.on_event is not None:
                self._bus.subscribe(opts.on_event)
        self._guard = (
            ResourceGuard(opts.limits, probe=opts.probe, clock=opts.clock, bus=self._bus)
            if opts.limits is not None
            else None
        )
        self._submitted_tasks: set[asyncio.Task[Any]] = set()
        self._submit_counter = itertools.count()
        self.last_report: RunReport[Any] | None = None
        """The latest ``map``'s report; after a cancellation, what had finished by then."""
        self._queued = self._running = self._done = self._failed = 0
        self._retries = self._peak = 0
        self._first_start: float | None = None

    # -- observation -------------------------------------------------------------------

    def subscribe(self, callback: Callable[[Any], object]) -> Unsubscribe:
        """Receive every event from now on; returns an unsubscriber.

        Events are :class:`TaskEvent` records, plus :class:`labkit.events.GuardEvent`
        when ``limits`` hold starts back and :class:`labkit.events.ConcurrencyEvent`
        when ``max_concurrency="auto"`` moves the limit.
        """
        return self._bus.subscribe(callback)

    @property
    def concurrency(self) -> int:
        """The concurrency limit in force now."""
        return self._slots.size

    def stats(self) -> RunnerStats:
        """A frozen snapshot of the runner's counters."""
        elapsed = 0.0 if self._first_start is None else self._clock.now() - self._first_start
        finished = self._done + self._failed
        guard = self._guard
        return RunnerStats(
            queued=self._queued,
            running=self._running,
            done=self._done,
            failed=self._failed,
            retries=self._retries,
            throughput=finished / elapsed if elapsed > 0 else 0.0,
            peak_concurrency=self._peak,
            elapsed=elapsed,
            max_concurrency=self._slots.size,
            held_back=guard.held_starts if guard else 0,
            held_seconds=guard.held_seconds if guard else 0.0,
            held_reason=guard.reason if guard else None,
        )

    # -- running -----------------------------------------------------------------------

    async def map(
        self,
        fn: Callable[[Any], Awaitable[T]] | Callable[[Any], T],
        items: Iterable[Any],
        *,
        priority: Priority | None = None,
    ) -> RunReport[T]:
        """Call ``fn(item)`` for every item; returns the report in input order.

        Args:
            fn: An async or sync function of one item.
            items: Any iterable; it is consumed lazily unless a priority needs it whole.
            priority: Overrides the runner's ``priority`` for this call.
        """
        call = self._backend.make_call(fn)
        return await self._run(call, items, priority or self.options.priority)

    async def map_kwargs(
        self,
        fn: Callable[..., Awaitable[T]] | Callable[..., T],
        kwargs_list: Iterable[dict[str, Any]],
        *,
        priority: Priority | None = None,
    ) -> RunReport[T]:
        """Call ``fn(**kwargs)`` for every mapping in ``kwargs_list``."""
        call = self._backend.make_call(fn, mode="kwargs")
        return await self._run(call, kwargs_list, priority or self.options.priority)

    def submit(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        depends_on: Iterable[TaskHandle[Any]] = (),
        **kwargs: Any,
    ) -> TaskHandle[Any]:
        """Start ``fn(*args, **kwargs)`` under this runner's cap, retries and limits.

        Must be called with an event loop running. Returns at once; ``await`` the
        handle for the :class:`TaskResult` (its ``item`` is ``args``).

        Args:
            fn: An async or sync function.
            *args: Its positional arguments.
            depends_on: Handles that must succeed first. If one fails or is
                cancelled, ``fn`` is not run and the result's error is a
                :class:`labkit.errors.DependencyFailed` naming it.
            **kwargs: Its keyword arguments (``depends_on`` is taken by labkit).
        """
        return self._submit(fn, args, kwargs, tuple(depends_on), None)

    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        depends_on: tuple[TaskHandle[Any], ...],
        label: str | None,
    ) -> TaskHandle[Any]:
        index = next(self._submit_counter)
        call = self._backend.make_call(functools.partial(fn, *args, **kwargs), mode="none")
        results: dict[int, TaskResult[Any]] = {}
        self._queued += 1
        self._emit_queued(index)

        async def run_one() -> TaskResult[Any]:
            # This task is the submitted unit: its cancellation becomes its result.
            for dependency in depends_on:
                outcome = await dependency
                if not outcome.ok:
                    name = dependency.label if dependency.label is not None else dependency.index
                    return self._not_run(index, args, DependencyFailed(name, outcome.error))
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker(call, iter(((index, args),)), results, counted_queue=True)
            result = results.get(index)
            if result is None:  # cancelled while waiting for a slot
                cancelled = asyncio.CancelledError("cancelled before it started")
                return self._not_run(index, args, cancelled)
            return result

        task = asyncio.get_running_loop().create_task(run_one(), name=f"labkit-task-{index}")
        self._submitted_tasks.add(task)
        task.add_done_callback(self._submitted_tasks.discard)
        return TaskHandle(index, task, label)

    def _not_run(self, index: int, item: Any, error: BaseException) -> TaskResult[Any]:
        self._queued -= 1
        self._failed += 1
        now = self._clock.now()
        if self._bus:
            self._bus.emit(TaskEvent("failed", index, now, 0, error))
        return TaskResult(index, item, False, None, error, 0, now, now)

    async def __aenter__(self) -> Runner:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        await self.aclose(cancel=exc is not None)

    async def aclose(self, *, cancel: bool = False) -> None:
        """Wait for submitted tasks (or cancel them) and shut the runner's pools down."""
        pending = list(self._submitted_tasks)
        try:
            if cancel:
                for task in pending:
                    task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            self._backend.close(cancel=cancel)

    # -- internals ---------------------------------------------------------------------

    def _emit_queued(self, index: int) -> None:
        if self._bus.route(TaskEvent):
            self._bus.emit(TaskEvent("queued", index, self._clock.now()))

    def _order(
        self, items: Iterable[Any], priority: Priority | None
    ) -> tuple[Iterator[tuple[int, Any]], int | None]:
        if priority is None:
            size = len(items) if isinstance(items, Sized) else None
            return enumerate(items), size
        materialized = list(items)
        if callable(priority):
            keys = [priority(item) for item in materialized]
        else:
            check(
                len(priority) == len(materialized),
                "priority",
                f"{len(priority)} values",
                f"one value per item ({len(materialized)})",
            )
            keys = list(priority)
        order = _stable_descending(keys)
        return ((i, materialized[i]) for i in order), len(materialized)

    async def _run(
        self, call: Call, items: Iterable[Any], priority: Priority | None
    ) -> RunReport[Any]:
        opts = self.options
        clock = self._clock
        start = clock.now()
        if self._first_start is None:
            self._first_start = start
        order, size = self._order(items, priority)
        # A list when the size is known (no ordering pass at the end), else a dict.
        results: _Results = [None] * size if size is not None else {}
        retries_before = self._retries
        peak_before, self._peak = self._peak, self._running
        if size is not None:
            self._queued += size
            if self._bus.route(TaskEvent):
                emit = self._bus.emit
                make_event = tuple.__new__
                for index in range(size):
                    emit(make_event(TaskEvent, ("queued", index, start, 0, *_NO_OUTCOME)))
        counted_queue = size is not None
        try:
            if opts.batch_size is None:
                await self._drain(call, order, size, results, counted_queue)
            else:
                for number, batch in enumerate(_chunks(order, opts.batch_size)):
                    if number and opts.batch_delay:
                        await clock.sleep(opts.batch_delay)
                    await self._drain(call, iter(batch), len(batch), results, counted_queue)
        except asyncio.CancelledError:
            if size is not None:
                self._queued -= sum(1 for r in results if r is None)
            self.last_report = self._report(results, start, retries_before, self._peak)
            raise
        finally:
            run_peak = self._peak
            self._peak = max(peak_before, run_peak)
        report = self._report(results, start, retries_before, run_peak)
        self.last_report = report
        return report

    def _report(
        self, results: _Results, start: float, retries_before: int, peak: int
    ) -> RunReport[Any]:
        end = self._clock.now()
        if isinstance(results, dict):
            total = max(results) + 1 if results else 0
            slots: list[TaskResult[Any] | None] = [results.get(i) for i in range(total)]
        else:
            slots = results
        ordered: list[TaskResult[Any]] = slots  # type: ignore[assignment]
        completed = started = 0
        busy = 0.0
        for index, result in enumerate(slots):
            if result is None:  # only after a cancellation: it never started
                never = asyncio.CancelledError("cancelled before it started")
                ordered[index] = TaskResult(index, None, False, None, never, 0, end, end)
                continue
            if result.ok:
                completed += 1
            if result.attempts:
                started += 1
                busy += result.finished - result.started
        total = len(ordered)
        elapsed = end - start
        stats = RunStats(
            submitted=total,
            completed=completed,
            failed=total - completed,
            retries=self._retries - retries_before,
            total_time=elapsed,
            avg_time=busy / started if started else 0.0,
            throughput=started / elapsed if elapsed > 0 else 0.0,
            success_rate=completed / total if total else 1.0,
            peak_concurrency=peak,
        )
        return RunReport(ordered, stats)

    async def _drain(
        self,
        call: Call,
        order: Iterator[tuple[int, Any]],
        size: int | None,
        results: _Results,
        counted_queue: bool,
    ) -> None:
        cap = self.options.worker_cap
        workers = cap if size is None else min(cap, size)
        if workers == 0:
            return
        async with asyncio.TaskGroup() as group:
            for _ in range(workers):
                group.create_task(self._worker(call, order, results, counted_queue))

    async def _worker(
        self,
        call: Call,
        order: Iterator[tuple[int, Any]],
        results: _Results,
        counted_queue: bool,
    ) -> None:
        """Pull items from ``order`` until it is empty; store one TaskResult per item.

        This is the hot path (a few microseconds per item): everything is bound to
        locals and the uncontended slot is taken without awaiting.
        """
        clock = self._clock
        now = clock.now
        slots = self._slots
        waiters = slots._waiters
        retry = self.options.retry
        timeout = self.options.timeout
        limiter = self._limiter
        bus = self._bus
        guard = self._guard
        cost = self.options.cost
        controller = self._controller
        make_event = tuple.__new__
        route = bus.route
        routes = bus.routes
        for index, item in order:
            if not counted_queue:
                self._queued += 1
            if slots.free > 0 and not waiters:
                slots.free -= 1
            else:
                await slots.acquire()
            self._queued -= 1
            self._running += 1
            if self._running > self._peak:
                self._peak = self._running
            attempts = 0
            started = now()
            admitted = 0.0
            try:
                if guard is not None:
                    try:
                        needed = cost_of(cost, item)
                        if await guard.admit(needed, index) and controller is not None:
                            self._apply_limit(controller.pressure(now()))
                        admitted = needed
                    except (ConfigError, ResourceUnavailable) as refusal:
                        self._record_refusal(results, index, item, refusal, started)
                        continue
                    started = now()  # waiting for the host is not part of the task
                while True:
                    attempts += 1
                    if limiter is not None:
                        await limiter.acquire()
                    if (subscribers := routes.get(TaskEvent)) is None:
                        subscribers = route(TaskEvent)
                    if subscribers:
                        # Delivered inline (this runs per attempt); EventBus.emit does the same.
                        event = make_event(
                            TaskEvent,
                            (
                                "started",
                                index,
                                started if attempts == 1 else now(),
                                attempts,
                                *_NO_OUTCOME,
                            ),
                        )
                        for callback in subscribers:
                            try:
                                callback(event)
                            except Exception:
                                bus.report(callback)
                    try:
                        if timeout is None:
                            value = await call(item)
                        else:
                            attempt_start = now()
                            try:
                                async with clock.timeout(timeout):
                                    value = await call(item)
                            except TimeoutError as exc:
                                if now() - attempt_start < timeout:
                                    raise  # the function's own TimeoutError
                                raise TaskTimeout(index, attempts, timeout) from exc
                    except Exception as error:
                        if retry is not None and retry.should_retry(error, attempts):
                            delay = retry.delay(attempts, self._rng)
                            self._retries += 1
                            if route(TaskEvent):
                                bus.emit(
                                    TaskEvent("retrying", index, now(), attempts, error, delay)
                                )
                            await clock.sleep(delay)
                            continue
                        finished = now()
                        results[index] = TaskResult(
                            index, item, False, None, error, attempts, started, finished
                        )
                        self._failed += 1
                        if route(TaskEvent):
                            bus.emit(
                                TaskEvent(
                                    "failed",
                                    index,
                                    finished,
                                    attempts,
                                    error,
                                    0.0,
                                    finished - started,
                                )
                            )
                        break
                    finished = now()
                    results[index] = TaskResult(
                        index, item, True, value, None, attempts, started, finished
                    )
                    self._done += 1
                    if (subscribers := routes.get(TaskEvent)) is None:
                        subscribers = route(TaskEvent)
                    if subscribers:
                        event = make_event(
                            TaskEvent,
                            ("succeeded", index, finished, attempts, None, 0.0, finished - started),
                        )
                        for callback in subscribers:
                            try:
                                callback(event)
                            except Exception:
                                bus.report(callback)
                    break
            except asyncio.CancelledError as exc:
                finished = now()
                results[index] = TaskResult(
                    index, item, False, None, exc, attempts, started, finished
                )
                self._failed += 1
                if route(TaskEvent):
                    bus.emit(TaskEvent("cancelled", index, finished, attempts, exc))
                raise
            finally:
                self._running -= 1
                if admitted:
                    guard.release(admitted)  # type: ignore[union-attr]
                if waiters:
                    slots.release()
                else:
                    slots.free += 1
            if controller is not None:
                self._apply_limit(controller.completed(now()))

    def _record_refusal(
        self,
        results: _Results,
        index: int,
        item: Any,
        error: BaseException,
        started: float,
    ) -> None:
        finished = self._clock.now()
        results[index] = TaskResult(index, item, False, None, error, 0, started, finished)
        self._failed += 1
        if self._bus:
            self._bus.emit(TaskEvent("failed", index, finished, 0, error))

    def _apply_limit(self, change: tuple[int, float, str] | None) -> None:
        if change is None:
            return
        limit, throughput, reason = change
        previous = self._slots.size
        self._slots.resize(limit)
        if self._bus:
            self._bus.emit(ConcurrencyEvent(self._clock.now(), limit, previous, throughput, reason))


def _stable_descending(keys: Sequence[float]) -> list[int]:
    """Indices by key, highest first, ties in input order."""
    return sorted(range(len(keys)), key=lambda i: -keys[i])


def _chunks(order: Iterator[tuple[int, Any]], size: int) -> Iterator[list[tuple[int, Any]]]:
    while batch := list(itertools.islice(order, size)):
        yield batch


async def run_parallel(
    fn: Callable[[Any], Awaitable[T]] | Callable[[Any], T],
    items: Iterable[Any],
    *,
    max_concurrency: int | str | AutoConcurrency = 8,
    timeout: float | None = None,
    retry: Retry | None = None,
    rate_limit: RateLimit | None = None,
    batch_size: int | None = None,
    batch_delay: float = 0.0,
    priority: Priority | None = None,
    executor: Any = "async",
    on_event: Callable[[TaskEvent], object] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    rng: random.Random | None = None,
    limits: ResourceLimits | None = None,
    cost: Cost | None = None,
    probe: HostProbe | None = None,
) -> RunReport[T]:
    """Run ``fn`` over ``items`` in parallel; one TaskResult per item, in input order.

    Args:
        fn: An async function, or a sync one (run in a thread pool sized to the cap,
            or a process pool with ``executor="process"``; never on the event loop).
        items: The inputs; consumed lazily unless ``priority`` needs them all.
        max_concurrency: The most items in flight at once (>= 1), or ``"auto"`` /
            a :class:`labkit.AutoConcurrency` to let the runner find the level with
            the most throughput.
        timeout: Seconds each attempt may take; a timed-out attempt is cancelled and
            counts as a ``TimeoutError`` (:class:`labkit.errors.TaskTimeout`),
            retried if ``retry.retry_on`` allows.
        retry: The retry policy; ``None`` means one attempt.
        rate_limit: A token bucket on attempt starts, retries included.
        batch_size: Run the items in batches of this many, each batch finishing
            before the next starts.
        batch_delay: Seconds to pause between batches.
        priority: A callable ``item -> number`` or one number per item; higher
            starts first, ties in input order.
        executor: ``"async"`` (default), ``"thread"``, ``"process"``, a
            ``concurrent.futures.Executor``, or a ``distributed.Client`` /
            :class:`labkit.DaskExecutor` to run every attempt as one Dask task.
        on_event: Called with every :class:`labkit.events.TaskEvent`.
        clock: The clock for backoff, rate limits, timeouts and timestamps.
        rng: The random source for jitter (seed it for repeatable runs).
        limits: Host limits (:class:`labkit.ResourceLimits`): no item starts while
            the host's CPU or memory is over them.
        cost: What each item needs, ``{"memory_mb": 2048}`` or a callable
            ``item -> mapping``; with ``limits``, an item starts only when that much
            memory is free, and it stays reserved until the item ends.
        probe: Where host readings come from (default psutil; tests pass a fake).

    Returns:
        The :class:`RunReport`. A failing item is a result, never an exception of
        this call; use ``report.raise_for_errors()`` to raise.

    Raises:
        ConfigError: If an option is out of range, before anything runs.
        asyncio.CancelledError: If the caller is cancelled; every in-flight attempt
            is cancelled and awaited first.
    """
    async with Runner(
        max_concurrency=max_concurrency,
        timeout=timeout,
        retry=retry,
        rate_limit=rate_limit,
        batch_size=batch_size,
        batch_delay=batch_delay,
        priority=priority,
        executor=executor,
        on_event=on_event,
        clock=clock,
        rng=rng,
        limits=limits,
        cost=cost,
        probe=probe,
    ) as runner:
        return await runner.map(fn, items)


def run_parallel_sync(
    fn: Callable[[Any], Awaitable[T]] | Callable[[Any], T],
    items: Iterable[Any],
    **options: Any,
) -> RunReport[T]:
    """:func:`run_parallel` for sync code: a script, or a Jupyter cell.

    Inside a running event loop (Jupyter) the run happens on that same loop, so
    live widgets keep updating.

    Raises:
        ConfigError: If an option is out of range.
        labkit.errors.RunInterrupted: On Ctrl-C, after every in-flight attempt was
            cancelled and awaited; its ``report`` holds what had finished.
    """
    runner = Runner(**options)

    async def main() -> RunReport[T]:
        async with runner:
            return await runner.map(fn, items)

    try:
        return run_sync(main())
    except KeyboardInterrupt as exc:
        from labkit.errors import RunInterrupted

        if runner.last_report is None or isinstance(exc, RunInterrupted):
            raise
        raise RunInterrupted(runner.last_report) from exc


@overload
def parallel_map(fn: Callable[[Any], Any], /) -> Callable[[Iterable[Any]], RunReport[Any]]: ...
@overload
def parallel_map(
    fn: None = None, /, **options: Any
) -> Callable[[Callable[[Any], Any]], Callable[[Iterable[Any]], RunReport[Any]]]: ...
def parallel_map(fn: Callable[[Any], Any] | None = None, /, **options: Any) -> Any:
    """Decorator: calling the function with a list runs it over the list in parallel.

    ``@parallel_map(max_concurrency=4)`` (or bare ``@parallel_map``) on a function of
    one item gives a function of an iterable that returns a :class:`RunReport`,
    through :func:`run_parallel_sync` (so it works inside Jupyter too). The original
    function stays reachable as ``.__wrapped__``.

    Raises:
        ConfigError: If an option is out of range (at decoration time).
    """
    Runner(**options)  # validates every option now, not at the first call

    def decorate(function: Callable[[Any], Any]) -> Callable[[Iterable[Any]], RunReport[Any]]:
        @functools.wraps(function)
        def over(items: Iterable[Any]) -> RunReport[Any]:
            return run_parallel_sync(function, items, **options)

        return over

    return decorate(fn) if fn is not None else decorate
