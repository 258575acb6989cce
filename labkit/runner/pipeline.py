"""One task's way through the runner: admit, rate-limit, attempt, decide, record.

:class:`TaskPipeline` holds what every task of a runner shares (the slots, the
limiter, the guard, the retry policy, the counters, the event bus) and runs one
task through these steps:

1. **admit**: take a concurrency slot, then (with ``limits``) wait for the host;
2. **rate-limit**: wait for the limiter's start (every attempt is a start);
3. **attempt**: call the function, bounded by ``timeout`` (see
   :mod:`labkit.executors` for what a timeout does per kind of call);
4. **decide**: accept the value, or retry after a backoff (or the wait a
   refusing service asked for), or give up; a refusal also slows an adaptive
   rate limit;
5. **record**: the one place that finishes a :class:`TaskResult`, updates the
   counters and emits the task's last event.

The task's :class:`TaskResult` is the attempt state that travels through the steps
(as tenacity's ``RetryCallState`` does): one object per task, finished in place.
Waiting for a slot, the guard or the limiter is never task time.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator, MutableSequence
from typing import Any

from labkit.adaptive import ConcurrencyController
from labkit.clock import Clock
from labkit.errors import ConfigError, ResourceUnavailable, ResultRejected, TaskTimeout
from labkit.events import ConcurrencyEvent, EventBus, TaskEvent, TaskEventKind
from labkit.executors import AttemptExpired, Invoker
from labkit.guard import ResourceGuard, cost_of
from labkit.policies import RateLimiter, is_rejection, retry_after_of
from labkit.runner.inputs import Feed
from labkit.runner.options import RunOptions
from labkit.runner.records import TaskResult
from labkit.runner.slots import Slots

__all__ = ("Crew", "Results", "TaskPipeline")

Results = MutableSequence[Any] | dict[int, Any]
"""Where recorded results go: a list indexed by position, or a dict for lazy inputs."""


class Crew:
    """Starts workers as items arrive: never more workers than items pulled.

    A worker that still may add one pulls the next item ahead and starts a worker
    for it; once ``cap`` workers run, or the input is exhausted, it adds no more.

    Args:
        start: Starts one worker with its first ``(index, item)``.
        cap: The most workers.
    """

    __slots__ = ("_start", "cap", "size")

    def __init__(self, start: Callable[[tuple[int, Any]], object], cap: int) -> None:
        self._start = start
        self.cap = cap
        self.size = 0

    def add(self, pair: tuple[int, Any]) -> None:
        """Start a worker for ``pair``."""
        self.size += 1
        self._start(pair)

    def offer(self, following: tuple[int, Any] | None) -> None:
        """Start a worker for the item pulled ahead, unless there is none."""
        if following is None:
            self.cap = self.size  # the input is exhausted: start no more
        else:
            self.add(following)


class TaskPipeline:
    """The steps every task of one runner goes through, and the counters they keep.

    Args:
        options: The runner's validated options.
        slots: The concurrency cap.
        limiter: The rate limiter, if any.
        guard: The resource guard, if any.
        controller: The adaptive concurrency controller, if any.
        bus: Where events go.
        rng: The random source for backoff jitter.
    """

    __slots__ = (
        "_bus",
        "_clock",
        "_controller",
        "_cost",
        "_guard",
        "_keep",
        "_limiter",
        "_now",
        "_reject",
        "_retry",
        "_rng",
        "_routes",
        "_timeout",
        "done",
        "failed",
        "held",
        "peak",
        "queued",
        "retries",
        "running",
        "slots",
        "throttled",
    )

    def __init__(
        self,
        options: RunOptions,
        *,
        slots: Slots,
        limiter: RateLimiter | None,
        guard: ResourceGuard | None,
        controller: ConcurrencyController | None,
        bus: EventBus,
        rng: random.Random,
    ) -> None:
        self.slots = slots
        self._clock: Clock = options.clock
        self._now = options.clock.now
        self._retry = options.retry
        self._reject: Callable[[Any], bool] | None = (
            options.retry.retry_if_result if options.retry is not None else None
        )
        self._timeout = options.timeout
        self._keep = options.keep_items
        self._cost = options.cost
        self._limiter = limiter
        self._guard = guard
        self._controller = controller
        self._bus = bus
        self._routes = bus.routes_of(TaskEvent)
        self._rng = rng
        self.queued = self.held = self.throttled = self.running = 0
        self.done = self.failed = self.retries = self.peak = 0

    # -- the steps ---------------------------------------------------------------------

    async def work(
        self,
        invoker: Invoker,
        pair: tuple[int, Any] | None,
        pairs: Iterator[tuple[int, Any]] | Feed,
        results: Results,
        crew: Crew | None = None,
    ) -> None:
        """A worker: run ``pair``, then every pair it pulls from ``pairs``, one by one.

        Each task is counted in ``queued`` before it gets here. This is the hot path
        (a few microseconds per task): the steps that cost nothing when their
        feature is off (admission by the guard, the rate limit, the retry decision)
        are entered only when on, and a task needs no coroutine of its own.

        Args:
            invoker: The function to run.
            pair: The first ``(index, item)``, pulled by whoever started this worker.
            pairs: Where the next ones come from: an iterator pulled on the loop,
                or a :class:`Feed` (a user's iterable that may block).
            results: Where each task's result is recorded.
            crew: Starts more workers as items arrive (one per item pulled ahead).
        """
        record = self.record
        feed, iterator = (pairs, iter(())) if isinstance(pairs, Feed) else (None, pairs)
        while pair is not None:
            if crew is not None:
                if crew.size < crew.cap:
                    crew.offer(next(iterator, None) if feed is None else await feed.next())
                else:
                    crew = None  # full: nothing more to check for this worker
            result: TaskResult[Any] = TaskResult(pair[0], pair[1], False, None, None, 0)
            try:
                await self._run(invoker, result)
            finally:
                record(result, results)  # 5. record
            pair = next(iterator, None) if feed is None else await feed.next()

    async def _run(self, invoker: Invoker, result: TaskResult[Any]) -> None:
        """One task's steps 1 to 4: admit, rate-limit, attempt, decide (again while a
        retry says so); its outcome is written on ``result``."""
        slots = self.slots
        limiter = self._limiter
        timeout = self._timeout
        reject = self._reject
        index, item = result.index, result.item
        reserved = 0.0
        admitted = False
        try:
            # 1. admit
            if slots.free > 0 and not slots._waiters:
                slots.free -= 1
            else:
                await slots.acquire()
            admitted = True
            self.queued -= 1
            if self._guard is not None:
                reserved = await self._admit(result)  # < 0: refused, the result says why
            while reserved >= 0:
                # 2. rate-limit
                if limiter is not None:
                    await self._rate_limit(result)
                # 3. attempt
                attempt = self._begin(result)
                try:
                    if timeout is None:
                        value = await invoker.run(item)
                    else:
                        value = await invoker.timed(item, timeout)
                except AttemptExpired as expired:
                    error: Exception = TaskTimeout(index, attempt, timeout or 0.0)
                    error.__cause__ = expired
                except Exception as raised:
                    error = raised
                else:
                    if reject is None or not reject(value):
                        result.ok = True
                        result.value = value
                        result.error = None
                        break
                    result.value = value
                    error = ResultRejected(index, attempt, value)
                finally:
                    self.running -= 1
                # 4. decide
                result.error = error
                if limiter is not None and limiter.policy.adaptive and is_rejection(error):
                    limiter.rejected()
                if self._retry is None or not await self._decide(result, error):
                    break
        except asyncio.CancelledError as cancelled:
            result.error = cancelled
            raise
        finally:
            if admitted:
                self._let_go(reserved)
            else:
                self.queued -= 1

    def _begin(self, result: TaskResult[Any]) -> int:
        """An attempt starts now: count it, stamp it, announce it; its number."""
        attempt = result.attempts = result.attempts + 1
        start = self._now()
        if attempt == 1:
            result.started = start
        running = self.running = self.running + 1
        if running > self.peak:
            self.peak = running
        if route := self._routes["started"]:
            event = TaskEvent("started", result.index, start, attempt, None, 0.0, 0.0)
            self._bus.deliver(route, event)
        return attempt

    def _let_go(self, reserved: float) -> None:
        """Give back an admitted task's slot and the memory it reserved (MB)."""
        if reserved > 0:
            self._guard.release(reserved)  # type: ignore[union-attr]
        slots = self.slots
        if slots._waiters:
            slots.release()
        else:
            slots.free += 1

    async def _admit(self, result: TaskResult[Any]) -> float:
        """Wait for the host; the memory reserved (MB), or -1 when the task is refused."""
        guard = self._guard
        assert guard is not None
        try:
            needed = cost_of(self._cost, result.item)
        except ConfigError as refusal:
            result.error = refusal
            return -1.0
        self.held += 1
        try:
            pressured = await guard.admit(needed, result.index)
        except ResourceUnavailable as refusal:
            result.error = refusal
            return -1.0
        finally:
            self.held -= 1
        if pressured and self._controller is not None:
            self.apply_limit(self._controller.pressure(self._clock.now()))
        return needed

    async def _rate_limit(self, result: TaskResult[Any]) -> None:
        limiter = self._limiter
        assert limiter is not None
        self.throttled += 1
        began = self._clock.now()
        try:
            await limiter.acquire()
        finally:
            self.throttled -= 1
        if result.attempts:  # a retry's wait for the limiter is not task time
            result.duration -= self._clock.now() - began

    async def _decide(self, result: TaskResult[Any], error: BaseException) -> bool:
        """True to try again (after the backoff, slept here), False to give up."""
        retry = self._retry
        assert retry is not None
        if not retry.should_retry(error, result.attempts):
            return False
        delay = retry.delay(result.attempts, self._rng, retry_after_of(error))
        self.retries += 1
        if route := self._bus.route(TaskEvent, "retrying"):
            self._bus.deliver(
                route,
                TaskEvent(
                    "retrying", result.index, self._clock.now(), result.attempts, error, delay
                ),
            )
        self.running += 1  # the backoff belongs to the task's run
        try:
            await self._clock.sleep(delay)
        finally:
            self.running -= 1
        return True

    # -- recording ---------------------------------------------------------------------

    def record(self, result: TaskResult[Any], results: Results) -> None:
        """Finish ``result`` (its end, its duration, its item), count it and announce it.

        The one place a task's outcome is written: every path of every task ends here.
        """
        finished = result.finished = self._now()
        attempts = result.attempts
        if attempts:
            # duration holds minus the retries' limiter waits until now (see _rate_limit)
            duration = result.duration = result.duration + finished - result.started
        else:
            result.started = finished
            duration = 0.0
        ok = result.ok
        if ok:
            self.done += 1
            kind: TaskEventKind = "succeeded"
        else:
            self.failed += 1
            kind = "cancelled" if isinstance(result.error, asyncio.CancelledError) else "failed"
        keep = self._keep
        if keep is not True and (keep is False or ok):
            result.item = None
        index = result.index
        results[index] = result
        if route := self._routes[kind]:
            event = TaskEvent(kind, index, finished, attempts, result.error, 0.0, duration)
            self._bus.deliver(route, event)
        if self._controller is not None and attempts:
            self.apply_limit(self._controller.completed(finished))

    def record_unstarted(
        self, index: int, item: Any, error: BaseException, results: Results
    ) -> TaskResult[Any]:
        """Record a queued task that will never start (cancelled, or a dependency failed)."""
        self.queued -= 1
        result: TaskResult[Any] = TaskResult(index, item, False, None, error, 0)
        self.record(result, results)
        return result

    def apply_limit(self, change: tuple[int, float, str] | None) -> None:
        """Move the concurrency limit as the adaptive controller decided."""
        if change is None:
            return
        limit, throughput, reason = change
        previous = self.slots.size
        self.slots.resize(limit)
        if self._bus:
            self._bus.emit(ConcurrencyEvent(self._clock.now(), limit, previous, throughput, reason))
