"""Where a call runs: on the event loop, in a thread, or in a process.

The runner turns the user's function into a *call*: a one-argument function that
returns an awaitable. Async functions are awaited on the running loop; sync
functions never block the loop: they run in a thread pool sized to the
concurrency cap (``executor="async"`` or ``"thread"``), in a process pool
(``executor="process"``, for CPU-bound work; the function and items must pickle),
or in a ``concurrent.futures.Executor`` the caller passes in. A
``distributed.Client`` (or a :class:`labkit.cluster.DaskExecutor`) sends every
call to a Dask cluster as one task (:mod:`labkit.cluster`).
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

from labkit.errors import ConfigError

if TYPE_CHECKING:
    from labkit.cluster import DaskBackend

__all__ = ("ExecutorKind", "Backend", "is_async_callable", "is_dask_client", "make_backend")

ExecutorKind = str
Call = Callable[[Any], Awaitable[Any]]
_NAMES = ("async", "thread", "process")


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """True for ``async def`` functions, partials of them and objects with ``async __call__``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - looking for an async __call__
    )


def is_dask_client(obj: object) -> bool:
    """True for a ``distributed.Client`` (or a subclass), without importing ``distributed``."""
    return any(
        cls.__name__ == "Client" and cls.__module__.partition(".")[0] == "distributed"
        for cls in type(obj).__mro__
    )


def _is_dask_executor(obj: object) -> bool:
    cls = type(obj)
    return cls.__name__ == "DaskExecutor" and cls.__module__ == "labkit.cluster"


class Backend:
    """The executor a run uses, and the pools it owns.

    Pools are created on first use and shut down by :meth:`close`; a pool passed in
    by the caller is never shut down by labkit, nor is a Dask client.

    Raises:
        ConfigError: ``executor`` is none of the accepted kinds.
        MissingDependency: ``executor`` is a Dask client or executor and
            ``distributed`` cannot be imported.
    """

    def __init__(self, executor: Any, max_workers: int) -> None:
        self.spec = executor
        self._max_workers = max_workers
        self._owned: concurrent.futures.Executor | None = None
        self._external: concurrent.futures.Executor | None = None
        self._dask: DaskBackend | None = None
        if is_dask_client(executor) or _is_dask_executor(executor):
            from labkit.cluster import DaskBackend

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

    def _pool(self) -> concurrent.futures.Executor:
        if self._external is not None:
            return self._external
        if self._owned is None:
            if self.spec == "process":
                workers = min(self._max_workers, os.cpu_count() or 1)
                # 'spawn' avoids forking a process that holds an event loop and threads.
                context = multiprocessing.get_context("spawn")
                self._owned = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
            else:
                self._owned = concurrent.futures.ThreadPoolExecutor(
                    self._max_workers, thread_name_prefix="labkit"
                )
        return self._owned

    def make_call(self, fn: Callable[..., Any], *, mode: str = "item") -> Call:
        """Wrap ``fn`` as a call of one argument that returns an awaitable.

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
            return self._dask.make_call(fn, mode=mode)
        if is_async_callable(fn):
            if self.spec == "process":
                raise ConfigError(
                    "executor",
                    "process",
                    "a sync function (async functions run on the event loop, not in processes)",
                )
            if mode == "kwargs":
                return lambda kwargs: fn(**kwargs)
            if mode == "none":
                return lambda _: fn()
            return fn

        target: Callable[[Any], Any] = fn
        if mode == "kwargs":
            target = functools.partial(_apply_kwargs, fn)
        elif mode == "none":
            target = functools.partial(_ignore_argument, fn)

        def call(item: Any) -> Awaitable[Any]:
            return asyncio.get_running_loop().run_in_executor(self._pool(), target, item)

        return call

    def close(self, *, cancel: bool = False) -> None:
        """Shut the owned pool down; with ``cancel``, drop queued work and stop processes.

        A running thread cannot be killed: it finishes its current call and then exits.
        Worker processes are terminated. A Dask client stays open.
        """
        if self._dask is not None:
            self._dask.close(cancel=cancel)
        pool, self._owned = self._owned, None
        if pool is None:
            return
        if cancel and isinstance(pool, concurrent.futures.ProcessPoolExecutor):
            processes = list(getattr(pool, "_processes", {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.terminate()
            for process in processes:
                process.join(timeout=5)
            return
        pool.shutdown(wait=not cancel, cancel_futures=cancel)


def _apply_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    return fn(**kwargs)


def _ignore_argument(fn: Callable[[], Any], _: Any) -> Any:
    return fn()


def make_backend(executor: Any, max_workers: int) -> Backend:
    """Validate ``executor`` and build its backend."""
    return Backend(executor, max_workers)
