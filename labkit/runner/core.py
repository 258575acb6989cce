"""The Runner: many calls at once under one cap, one rate limit and one set of counters."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import random
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator
from typing import Any, Generic, TypeVar

from labkit.adaptive import ConcurrencyController
from labkit.errors import ConfigError, DependencyFailed, ItemsFailed
from labkit.events import TaskEvent, Unsubscribe, Watcher, as_bus
from labkit.executors import Backend, Invoker
from labkit.guard import ResourceGuard
from labkit.policies import RateLimiter
from labkit.runner.inputs import Feed, Input, ordered_input
from labkit.runner.options import Priority, RunOptions
from labkit.runner.pipeline import Crew, Results, TaskPipeline
from labkit.runner.records import RunnerStats, RunReport, RunStats, TaskResult
from labkit.runner.slots import Slots

__all__ = ("Runner", "TaskHandle")

T = TypeVar("T")

_NOT_STARTED = "cancelled before it started"


class TaskHandle(Generic[T]):
    """A task started with :meth:`Runner.submit`; ``await handle`` gives its TaskResult."""

    __slots__ = ("_task", "index", "label")

    def __init__(
        self, index: int, task: asyncio.Task[TaskResult[T]], label: str | None = None
    ) -> None:
        self.index = index
        self.label = label
        """The task's name given to ``submit(label=)`` (a :func:`labkit.run_graph` node)."""
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


class _Run:
    """The state of one ``map`` while it runs: enough to report on it at any moment."""

    __slots__ = ("input", "peak_before", "results", "retries_before", "start")

    def __init__(self, run_input: Input, results: Results, start: float, retries: int) -> None:
        self.input = run_input
        self.results = results
        self.start = start
        self.retries_before = retries
        self.peak_before = 0


class Runner:
    """Runs calls in parallel under a concurrency cap, retries, timeouts and a rate limit.

    One runner's cap, rate limit and statistics are shared by everything it runs:
    several ``map`` calls and ``submit``-ted tasks at once never exceed
    ``max_concurrency`` together. Use it as ``async with Runner(...) as runner:``
    so that its pools are closed and its submitted tasks awaited at the end.

    Workers are started as items arrive: a run never has more worker coroutines
    than items pulled from its input, however high ``max_concurrency`` is.

    Args:
        **options: The options of :class:`RunOptions` (see :func:`labkit.run_parallel`).

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
        rng = opts.rng or random.Random()
        self._backend = Backend(opts.executor, opts.worker_cap, opts.clock)
        auto = opts.auto
        controller = ConcurrencyController(auto) if auto is not None else None
        self._bus = as_bus(opts.on_event)  # a caller's bus is shared: its routes stay exact
        self._guard = (
            ResourceGuard(opts.limits, probe=opts.probe, clock=opts.clock, bus=self._bus)
            if opts.limits is not None
            else None
        )
        self._pipeline = TaskPipeline(
            opts,
            slots=Slots(controller.limit if controller else opts.worker_cap),
            limiter=RateLimiter(opts.rate_limit, clock=opts.clock, rng=rng)
            if opts.rate_limit
            else None,
            guard=self._guard,
            controller=controller,
            bus=self._bus,
            rng=rng,
        )
        self._submitted_tasks: set[asyncio.Task[Any]] = set()
        self._submit_counter = itertools.count()
        self._current: _Run | None = None
        self.last_report: RunReport[Any] | None = None
        """The latest ``map``'s report; after a cancellation, what had finished by then."""
        self._first_start: float | None = None

    # -- observation -------------------------------------------------------------------

    def subscribe(self, watcher: Watcher | Callable[[Any], object]) -> Unsubscribe:
        """Deliver events to ``watcher`` (a :class:`~labkit.events.Watcher` or a
        callable) from now on; returns an unsubscriber.

        Events are :class:`TaskEvent` records, plus :class:`labkit.events.GuardEvent`
        when ``limits`` hold starts back and :class:`labkit.events.ConcurrencyEvent`
        when ``max_concurrency="auto"`` moves the limit.
        """
        return self._bus.subscribe(watcher)

    @property
    def concurrency(self) -> int:
        """The concurrency limit in force now."""
        return self._pipeline.slots.size

    def stats(self) -> RunnerStats:
        """A frozen snapshot of the runner's counters."""
        p = self._pipeline
        elapsed = 0.0 if self._first_start is None else self._clock.now() - self._first_start
        finished = p.done + p.failed
        guard = self._guard
        return RunnerStats(
            queued=p.queued,
            running=p.running,
            done=p.done,
            failed=p.failed,
            retries=p.retries,
            throughput=finished / elapsed if elapsed > 0 else 0.0,
            peak_concurrency=p.peak,
            elapsed=elapsed,
            max_concurrency=p.slots.size,
            held_back=guard.held_starts if guard else 0,
            held_seconds=guard.held_seconds if guard else 0.0,
            held_reason=guard.reason if guard else None,
            held=p.held,
            throttled=p.throttled,
            abandoned=self._backend.abandoned,
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
            fn: An async or sync function of one item (a sync one that returns an
                awaitable has it awaited).
            items: Any iterable; it is consumed lazily unless a priority needs it whole.
            priority: Overrides the runner's ``priority`` for this call.

        Raises:
            ItemsFailed: ``items`` raised part-way; the items pulled before ran to
                their end and their results are on the error's ``report``.
        """
        _check_callable(fn)
        _check_iterable("items", items)
        invoker = self._backend.make_call(fn)
        return await self._run(invoker, items, priority or self.options.priority)

    async def map_kwargs(
        self,
        fn: Callable[..., Awaitable[T]] | Callable[..., T],
        kwargs_list: Iterable[dict[str, Any]],
        *,
        priority: Priority | None = None,
    ) -> RunReport[T]:
        """Call ``fn(**kwargs)`` for every mapping in ``kwargs_list``."""
        _check_callable(fn)
        _check_iterable("kwargs_list", kwargs_list)
        invoker = self._backend.make_call(fn, mode="kwargs")
        return await self._run(invoker, kwargs_list, priority or self.options.priority)

    def submit(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        depends_on: Iterable[TaskHandle[Any]] = (),
        label: str | None = None,
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
                :class:`labkit.errors.DependencyFailed` naming it (by label if it
                has one, else by index).
            label: A name for the task, kept on its handle.
            **kwargs: Its keyword arguments (``depends_on`` and ``label`` are
                labkit's).
        """
        dependencies = _checked_submission(fn, depends_on, label)
        pipeline = self._pipeline
        index = next(self._submit_counter)
        invoker = self._backend.make_call(functools.partial(fn, *args, **kwargs), mode="none")
        results: dict[int, TaskResult[Any]] = {}
        pipeline.queued += 1
        self._mark_start()
        self._emit_queued(index)

        async def run_one() -> TaskResult[Any]:
            # This task is the submitted unit: its cancellation becomes its result.
            try:
                failed = await _first_failed(dependencies)
                if failed is not None:
                    return pipeline.record_unstarted(index, args, failed, results)
            except asyncio.CancelledError:
                cancelled = asyncio.CancelledError(_NOT_STARTED)
                return pipeline.record_unstarted(index, args, cancelled, results)
            with contextlib.suppress(asyncio.CancelledError):  # recorded by the pipeline
                await pipeline.work(invoker, (index, args), iter(()), results)
            return results[index]

        task = asyncio.get_running_loop().create_task(run_one(), name=f"labkit-task-{index}")
        self._submitted_tasks.add(task)
        task.add_done_callback(self._submitted_tasks.discard)
        return TaskHandle(index, task, label)

    async def __aenter__(self) -> Runner:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        await self.aclose(cancel=exc is not None)

    async def aclose(self, *, cancel: bool = False) -> None:
        """Wait for submitted tasks (or cancel them) and shut the runner's pools down.

        Never blocks the event loop: a sync call still running in a thread (one that
        timed out) is left to end there; worker processes are joined off the loop.
        """
        pending = list(self._submitted_tasks)
        try:
            if cancel:
                for task in pending:
                    task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            await self._backend.aclose(cancel=cancel)

    def report_so_far(self) -> RunReport[Any] | None:
        """The running ``map``'s report as it stands (unfinished items as cancelled),
        or the last report when none runs. Safe to call at any moment, e.g. from a
        Ctrl-C handler that cut the run's own cleanup short."""
        current = self._current
        if current is None:
            return self.last_report
        return self._report(current, self._pipeline.peak, fill=False)

    # -- internals ---------------------------------------------------------------------

    def _mark_start(self) -> None:
        if self._first_start is None:
            self._first_start = self._clock.now()

    def _emit_queued(self, index: int) -> None:
        if route := self._bus.route(TaskEvent, "queued"):
            self._bus.deliver(route, TaskEvent("queued", index, self._clock.now()))

    async def _run(
        self, invoker: Invoker, items: Iterable[Any], priority: Priority | None
    ) -> RunReport[Any]:
        opts = self.options
        pipeline = self._pipeline
        start = self._clock.now()
        self._mark_start()
        try:
            run_input = ordered_input(items, priority)
        except ConfigError:
            raise
        except Exception as broken:  # materialising the items for the priority pass
            empty = _Run(Input((), 0, None), [], start, pipeline.retries)
            raise ItemsFailed(self._report(empty, 0, fill=True), broken) from broken
        size = run_input.size
        # A list when the size is known (no ordering pass at the end), else a dict.
        results: Results = [None] * size if size is not None else {}
        current = _Run(run_input, results, start, pipeline.retries)
        current.peak_before, pipeline.peak = pipeline.peak, pipeline.running
        previous, self._current = self._current, current
        if size is not None:
            pipeline.queued += size
            if route := self._bus.route(TaskEvent, "queued"):
                deliver = self._bus.deliver
                for index in range(size):
                    deliver(route, TaskEvent("queued", index, start, 0, None, 0.0, 0.0))
        counted = size is not None
        feed = Feed(run_input.pairs, _count_into(pipeline, counted)) if run_input.threaded else None
        try:
            pairs: Iterator[tuple[int, Any]] | Feed = run_input.pairs if feed is None else feed
            if opts.batch_size is None:
                await self._drain(invoker, pairs, counted or feed is not None, results)
            else:
                number = 0
                while batch := await _take(pairs, opts.batch_size):
                    if number and opts.batch_delay:
                        await self._clock.sleep(opts.batch_delay)
                    number += 1
                    await self._drain(invoker, iter(batch), counted or feed is not None, results)
        except asyncio.CancelledError:
            self.last_report = self._report(current, pipeline.peak, fill=True)
            raise
        finally:
            if feed is not None:
                feed.close()
            run_peak = pipeline.peak
            pipeline.peak = max(current.peak_before, run_peak)
            self._current = previous
        report = self._report(current, run_peak, fill=True)
        self.last_report = report
        if run_input.error is not None:
            raise ItemsFailed(report, run_input.error) from run_input.error
        return report

    async def _drain(
        self,
        invoker: Invoker,
        pairs: Iterator[tuple[int, Any]] | Feed,
        counted: bool,
        results: Results,
    ) -> None:
        """Run every ``(index, item)`` of ``pairs``, starting workers as items arrive.

        ``counted``: the items are in ``queued`` already (the input's size was
        known), or are counted as they are pulled (a :class:`Feed`).
        """
        first = await pairs.next() if isinstance(pairs, Feed) else next(pairs, None)
        if first is None:
            return
        pipeline = self._pipeline
        pulled: Iterator[tuple[int, Any]] | Feed = pairs
        if not counted:
            assert not isinstance(pairs, Feed)
            pulled = _counting(pairs, pipeline)
        async with asyncio.TaskGroup() as group:

            def start(pair: tuple[int, Any]) -> None:
                group.create_task(pipeline.work(invoker, pair, pulled, results, crew))

            crew = Crew(start, self.options.worker_cap)
            if not counted:
                pipeline.queued += 1
            crew.add(first)

    def _report(self, current: _Run, peak: int, *, fill: bool) -> RunReport[Any]:
        """The report of ``current``; ``fill`` also records never-started items as
        cancelled (counted as failed), else they are only shown so."""
        pipeline = self._pipeline
        end = self._clock.now()
        results = current.results
        if isinstance(results, dict):
            total = max(results) + 1 if results else 0
            slots: list[TaskResult[Any] | None] = [results.get(i) for i in range(total)]
        else:
            slots = list(results)
        completed = started = 0
        busy = 0.0
        for index, result in enumerate(slots):
            if result is None:  # only after a cancellation (or Ctrl-C): it never started
                never = asyncio.CancelledError(_NOT_STARTED)
                item = current.input.item(index)
                if fill:
                    result = pipeline.record_unstarted(index, item, never, results)
                else:
                    result = TaskResult(index, item, False, None, never, 0, end, end)
                slots[index] = result
            if result.ok:
                completed += 1
            if result.attempts:
                started += 1
                busy += result.duration
        total = len(slots)
        elapsed = end - current.start
        stats = RunStats(
            submitted=total,
            completed=completed,
            failed=total - completed,
            retries=pipeline.retries - current.retries_before,
            total_time=elapsed,
            avg_time=busy / started if started else 0.0,
            throughput=started / elapsed if elapsed > 0 else 0.0,
            success_rate=completed / total if total else 1.0,
            peak_concurrency=peak,
        )
        return RunReport(slots, stats)  # type: ignore[arg-type]


def _count_into(pipeline: TaskPipeline, counted: bool) -> Callable[[tuple[int, Any]], None]:
    """What a Feed calls with each pair pulled: count it in ``queued`` unless it is."""

    def count(_: tuple[int, Any]) -> None:
        if not counted:
            pipeline.queued += 1

    return count


async def _take(pairs: Iterator[tuple[int, Any]] | Feed, size: int) -> list[tuple[int, Any]]:
    """The next ``size`` pairs (fewer at the end): a batch."""
    if not isinstance(pairs, Feed):
        return list(itertools.islice(pairs, size))
    batch: list[tuple[int, Any]] = []
    while len(batch) < size and (pair := await pairs.next()) is not None:
        batch.append(pair)
    return batch


def _counting(pairs: Iterator[tuple[int, Any]], pipeline: TaskPipeline) -> Iterator[Any]:
    """``pairs``, counting each one pulled into ``queued`` (an input of unknown size)."""
    for pair in pairs:
        pipeline.queued += 1
        yield pair


def _check_callable(fn: object) -> None:
    if not callable(fn):
        raise ConfigError("fn", fn, "a function (async or sync) or another callable")


def _check_iterable(option: str, value: object) -> None:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ConfigError(option, value, "an iterable (a list, a range, a generator...)")


def _checked_submission(
    fn: Any, depends_on: Iterable[TaskHandle[Any]], label: str | None
) -> tuple[TaskHandle[Any], ...]:
    """Check :meth:`Runner.submit`'s function, dependencies and label; the dependencies.

    Raises:
        ConfigError: Naming the first that is wrong.
    """
    _check_callable(fn)
    _check_iterable("depends_on", depends_on)
    dependencies = tuple(depends_on)
    for dependency in dependencies:
        if not isinstance(dependency, TaskHandle):
            raise ConfigError("depends_on", dependency, "handles returned by runner.submit()")
    if label is not None and not isinstance(label, str):
        raise ConfigError("label", label, "None or a str")
    return dependencies


async def _first_failed(dependencies: Iterable[TaskHandle[Any]]) -> DependencyFailed | None:
    """Wait for each dependency in turn; the error naming the first that failed (by label
    if it has one, else by index), or ``None`` when all succeeded."""
    for dependency in dependencies:
        outcome = await dependency
        if not outcome.ok:
            name = dependency.label if dependency.label is not None else dependency.index
            return DependencyFailed(name, outcome.error)
    return None
