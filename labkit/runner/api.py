"""The functional API: run_parallel, run_parallel_sync and the parallel_map decorator."""

from __future__ import annotations

import functools
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, TypeVar, overload

from labkit.adaptive import AutoConcurrency
from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import ConfigError, RunInterrupted
from labkit.events import TaskEvent
from labkit.guard import Cost, HostProbe, ResourceLimits
from labkit.loop import run_sync
from labkit.policies import RateLimit, Retry
from labkit.runner.core import Runner
from labkit.runner.options import Priority
from labkit.runner.records import RunReport

__all__ = ("parallel_map", "run_parallel", "run_parallel_sync")

T = TypeVar("T")


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
    keep_items: bool | Literal["failed"] = True,
) -> RunReport[T]:
    """Run ``fn`` over ``items`` in parallel; one TaskResult per item, in input order.

    Args:
        fn: An async function, or a sync one (run in a thread, or a process with
            ``executor="process"``; never on the event loop). A sync function that
            returns an awaitable (``lambda x: work(x)``) has it awaited.
        items: The inputs; consumed lazily unless ``priority`` needs them all.
        max_concurrency: The most items in flight at once (>= 1), or ``"auto"`` /
            a :class:`labkit.AutoConcurrency` to let the runner find the level with
            the most throughput.
        timeout: Seconds each attempt may take, counted from when the call starts
            running (never while it waits for a slot, the limiter or a thread). A
            timed-out attempt fails with :class:`labkit.errors.TaskTimeout` (a
            ``TimeoutError``), retried if ``retry.retry_on`` allows. An async call is
            cancelled; a process call's worker is killed and replaced; a thread
            cannot be stopped, so a sync call is abandoned (it runs on in its thread,
            counted in ``Runner.stats().abandoned``, holding no slot).
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
        keep_items: ``True`` keeps every item on its :class:`TaskResult`; ``False``
            keeps none (``item`` is ``None``), so a long run over large payloads
            holds only its results; ``"failed"`` keeps only the failed ones' items.

    Returns:
        The :class:`RunReport`. A failing item is a result, never an exception of
        this call; use ``report.raise_for_errors()`` to raise.

    Raises:
        ConfigError: If an option is out of range, before anything runs.
        labkit.errors.ItemsFailed: If ``items`` raised part-way; its ``report`` holds
            every result of the items pulled before.
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
        keep_items=keep_items,
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
            cancelled and awaited; its ``report`` holds what had finished. A second
            Ctrl-C cuts that cleanup short but still raises it with the report. Left
            uncaught, it ends a script with exit status 130, as Ctrl-C does.
    """
    runner = Runner(**options)

    async def main() -> RunReport[T]:
        async with runner:
            return await runner.map(fn, items)

    try:
        return run_sync(main())
    except RunInterrupted:
        raise
    except KeyboardInterrupt as exc:
        # A second Ctrl-C may cut the run's own cleanup short, never the report.
        report = runner.report_so_far()
        if report is None:
            raise
        raise RunInterrupted(report) from exc


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
    if fn is not None and not callable(fn):
        raise ConfigError("fn", fn, "a function of one item (or no argument: @parallel_map(...))")
    Runner(**options)  # validates every option now, not at the first call

    def decorate(function: Callable[[Any], Any]) -> Callable[[Iterable[Any]], RunReport[Any]]:
        @functools.wraps(function)
        def over(items: Iterable[Any]) -> RunReport[Any]:
            return run_parallel_sync(function, items, **options)

        return over

    return decorate(fn) if fn is not None else decorate
