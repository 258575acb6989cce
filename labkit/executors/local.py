"""Where a call runs: on the event loop, in a thread, or in a process; and how its
timeout is kept there.

The runner turns the user's function into an :class:`~labkit.executors.base.Invoker`:
two ways to run one attempt, without a timeout (``run``) and with one (``timed``).
:class:`Backend` builds it for every kind of executor; a Dask client or
:class:`~labkit.executors.dask.DaskExecutor` it hands to
:class:`~labkit.executors.dask.DaskBackend`. What a timeout does depends on where
the call runs:

- **async functions** run on the loop; at the timeout the attempt is cancelled (its
  ``finally`` blocks run) and raises :class:`AttemptExpired`.
- **sync functions** (``executor="async"`` or ``"thread"``) run in an
  :class:`~labkit.threadpool.ElasticThreadPool`: a call starts at once, and its
  timeout counts from when its thread begins it. A thread cannot be stopped: at the
  timeout the attempt ends, the call is *abandoned* (it runs on to its end in its
  thread, is counted, and holds no concurrency slot), and a retry starts in another
  thread at once.
- **processes** (``executor="process"``) come from a ``pebble.ProcessPool``: the
  timeout counts from when a worker process begins the call, and at the timeout that
  worker is killed and replaced, so the call really stops.
- **an Executor you pass** gets the call at once; its timeout counts from
  submission, and a timed-out call keeps running there (labkit cannot stop it).
- **Dask** (a ``distributed.Client`` or :class:`~labkit.executors.dask.DaskExecutor`)
  runs every call as one task (:mod:`labkit.executors.dask`); the timeout counts from
  submission.

A sync function that returns an awaitable (``lambda x: work(x)``) has that awaitable
awaited on the loop, within the same timeout, wherever it ran.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import multiprocessing
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import ConfigError
from labkit.executors.base import AttemptExpired, Call, Invoker, is_async_callable, within
from labkit.executors.dask import DaskBackend, DaskExecutor, is_dask_client
from labkit.threadpool import ElasticThreadPool, ThreadCall

if TYPE_CHECKING:
    import pebble

__all__ = ("Backend",)

_NAMES = ("async", "thread", "process")


class Backend:
    """The executor a run uses, and the pools it owns.

    Pools are created on first use and shut down by :meth:`aclose`; a pool passed in
    by the caller is never shut down by labkit, nor is a Dask client.

    Args:
        executor: ``"async"``, ``"thread"``, ``"process"``, a
            ``concurrent.futures.Executor``, a ``distributed.Client`` or a
            :class:`~labkit.executors.dask.DaskExecutor`.
        max_workers: The most calls that run at once (the runner's cap).
        clock: The clock timeouts are kept on.

    Raises:
        ConfigError: ``executor`` is none of the accepted kinds.
        MissingDependency: ``executor`` is a Dask client or executor and
            ``distributed`` cannot be imported.
    """

    def __init__(self, executor: Any, max_workers: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self.spec = executor
        self._max_workers = max_workers
        self._clock = clock
        self._threads: ElasticThreadPool | None = None
        self._processes: pebble.ProcessPool | None = None
        self._external: concurrent.futures.Executor | None = None
        self._dask: DaskBackend | None = None
        if isinstance(executor, DaskExecutor) or is_dask_client(executor):
            self._dask = DaskBackend(executor)
        elif isinstance(executor, concurrent.futures.Executor):
            self._external = executor
        elif not isinstance(executor, str) or executor not in _NAMES:
            raise ConfigError(
                "executor",
                executor,
                "'async', 'thread', 'process', a concurrent.futures.Executor "
                "or a distributed.Client",
            )

    @property
    def kind(self) -> str:
        if self._dask is not None:
            return "dask"
        return "external" if self._external is not None else str(self.spec)

    @property
    def abandoned(self) -> int:
        """Sync calls still running in a thread after their attempt's timeout."""
        return self._threads.abandoned if self._threads is not None else 0

    def make_call(self, fn: Callable[..., Any], *, mode: str = "item") -> Invoker:
        """Wrap ``fn`` as an :class:`Invoker` of one argument.

        Args:
            fn: The user's function, async or sync.
            mode: How the argument is passed: ``"item"`` as ``fn(item)``,
                ``"kwargs"`` as ``fn(**item)``, ``"none"`` as ``fn()`` (the argument
                is ignored; for calls whose arguments are already bound).

        Raises:
            ConfigError: An async function with ``executor="process"``, or a Dask
                client that is closed or whose event loop does not run.
        """
        if self._dask is not None:
            run = self._dask.make_call(fn, mode=mode)
            return Invoker(run, functools.partial(within, self._clock, run))
        if is_async_callable(fn):
            if self.spec == "process":
                raise ConfigError(
                    "executor",
                    "process",
                    "a sync function (async functions run on the event loop, not in processes)",
                )
            if mode == "kwargs":
                run = _kwargs_adapter(fn)
            elif mode == "none":
                run = _no_argument_adapter(fn)
            else:
                run = fn
            return Invoker(run, functools.partial(within, self._clock, run))

        target: Callable[[Any], Any] = fn
        if mode == "kwargs":
            target = functools.partial(_apply_kwargs, fn)
        elif mode == "none":
            target = functools.partial(_ignore_argument, fn)
        if self.spec == "process" and self._external is None:
            return self._process_invoker(target)
        if self._external is not None:
            return self._external_invoker(target)
        return self._thread_invoker(target)

    # -- the kinds of call -------------------------------------------------------------

    def _thread_invoker(self, target: Callable[[Any], Any]) -> Invoker:
        clock = self._clock

        def pool() -> ElasticThreadPool:
            if self._threads is None:
                self._threads = ElasticThreadPool("labkit")
            return self._threads

        async def run(arg: Any) -> Any:
            threads = pool()
            call = threads.submit(target, arg, signal_start=False)
            value = await _outcome(threads, call)
            return await value if inspect.isawaitable(value) else value

        async def timed(arg: Any, seconds: float) -> Any:
            threads = pool()
            call = threads.submit(target, arg, signal_start=True)
            assert call.started is not None
            try:
                await asyncio.shield(call.started)  # waiting for a thread is not the call's time
            except BaseException:
                if not call.cancel():
                    threads.abandon(call)
                raise
            start = clock.now()
            try:
                async with clock.timeout(seconds):
                    value = await _outcome(threads, call)
            except TimeoutError as exc:
                if call.done.done():
                    raise  # the function's own TimeoutError
                raise AttemptExpired from exc
            if inspect.isawaitable(value):
                return await within(clock, _awaited, value, seconds - (clock.now() - start))
            return value

        return Invoker(run, timed)

    def _process_invoker(self, target: Callable[[Any], Any]) -> Invoker:
        def pool() -> pebble.ProcessPool:
            if self._processes is None:
                try:
                    import pebble
                except ImportError as exc:  # pragma: no cover - a core dependency
                    from labkit.errors import MissingDependency

                    raise MissingDependency("pebble", "all", 'executor="process"') from exc
                workers = min(self._max_workers, os.cpu_count() or 1)
                # 'spawn' avoids forking a process that holds an event loop and threads.
                self._processes = pebble.ProcessPool(
                    workers, context=multiprocessing.get_context("spawn")
                )
            return self._processes

        async def run(arg: Any) -> Any:
            return await asyncio.wrap_future(pool().schedule(target, args=(arg,)))

        async def timed(arg: Any, seconds: float) -> Any:
            future = pool().schedule(target, args=(arg,), timeout=seconds)
            try:
                return await asyncio.wrap_future(future)
            except TimeoutError as exc:
                if exc.args[:1] == ("Task timeout",):  # pebble killed the worker
                    raise AttemptExpired from exc
                raise

        return Invoker(run, timed)

    def _external_invoker(self, target: Callable[[Any], Any]) -> Invoker:
        executor = self._external

        async def run(arg: Any) -> Any:
            value = await asyncio.get_running_loop().run_in_executor(executor, target, arg)
            return await value if inspect.isawaitable(value) else value

        return Invoker(run, functools.partial(within, self._clock, run))

    # -- shutting down -----------------------------------------------------------------

    async def aclose(self, *, cancel: bool = False) -> None:
        """Shut the owned pools down without blocking the loop.

        Threads are never waited for: a sync call still running (abandoned, or
        cancelled with ``cancel``) ends in its daemon thread. Worker processes are
        stopped (killed with ``cancel``) and joined in a helper thread. A Dask client
        stays open.
        """
        if self._dask is not None:
            self._dask.close(cancel=cancel)
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown()
        processes, self._processes = self._processes, None
        if processes is not None:
            if cancel:
                processes.stop()  # type: ignore[no-untyped-call]
            else:
                processes.close()  # type: ignore[no-untyped-call]
            await asyncio.to_thread(processes.join)


async def _outcome(threads: ElasticThreadPool, call: ThreadCall) -> Any:
    """The call's value; if the waiter leaves first, the call is dropped or abandoned."""
    try:
        return await asyncio.shield(call.done)
    except BaseException:
        if not call.done.done() and not call.cancel():
            threads.abandon(call)
        raise


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _kwargs_adapter(fn: Callable[..., Awaitable[Any]]) -> Call:
    return lambda kwargs: fn(**kwargs)


def _no_argument_adapter(fn: Callable[[], Awaitable[Any]]) -> Call:
    return lambda _: fn()


def _apply_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    return fn(**kwargs)


def _ignore_argument(fn: Callable[[], Any], _: Any) -> Any:
    return fn()
