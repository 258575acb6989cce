"""Threads for sync calls, where a call that overran its timeout never blocks the next.

A thread cannot be stopped from outside. ``concurrent.futures.ThreadPoolExecutor``
keeps a fixed number of threads, so a call that timed out keeps its thread and every
later call (a retry of the same item included) queues behind it: its own timeout then
runs out while it waits, and it counts as an attempt that never ran.

:class:`ElasticThreadPool` starts a new thread whenever no idle one is there, so a
call starts at once; the runner's concurrency cap, not the pool, bounds how many run.
A call that timed out is *abandoned*: it runs to its end in its thread, is counted
(:attr:`ElasticThreadPool.abandoned`), and holds no concurrency slot. Threads are
daemons, so an abandoned call never keeps the interpreter from exiting, and
:meth:`ElasticThreadPool.shutdown` never waits for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ("ElasticThreadPool", "ThreadCall")

_IDLE_EXIT_S = 30.0  # an idle thread beyond the first few exits after this many seconds
_KEEP_IDLE = 4  # threads that stay however long they are idle


class ThreadCall:
    """One call handed to the pool, seen from the event loop.

    ``started`` resolves when a thread begins the call and ``done`` with its outcome;
    both are futures of the loop that submitted it.
    """

    __slots__ = ("_cancelled", "_loop", "abandoned", "arg", "done", "fn", "started")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fn: Callable[[Any], Any], arg: Any, signal: bool
    ) -> None:
        self._loop = loop
        self.fn = fn
        self.arg = arg
        self.done: asyncio.Future[Any] = loop.create_future()
        self.started: asyncio.Future[None] | None = loop.create_future() if signal else None
        self.abandoned = False
        self._cancelled = False

    def cancel(self) -> bool:
        """Drop the call if no thread has begun it; True when it was dropped."""
        if self.started is not None and self.started.done():
            return False
        self._cancelled = True
        return True

    def run_in_thread(self) -> Callable[[], None] | None:
        """Run in a worker thread; returns what the loop must do with the outcome."""
        if self._cancelled:
            return None
        if self.started is not None:
            self._loop.call_soon_threadsafe(_resolve, self.started, None)
        try:
            value = self.fn(self.arg)
        except BaseException as error:  # handed to the awaiting task, never lost
            return functools.partial(_fail, self.done, error)
        return functools.partial(_resolve, self.done, value)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class ElasticThreadPool:
    """Daemon threads that grow on demand, for sync calls driven from an event loop.

    Args:
        name: The prefix of the threads' names.
    """

    def __init__(self, name: str = "labkit") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[ThreadCall | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0
        self._started = 0
        self._closed = False
        self.abandoned = 0
        """Calls still running in a thread after their timeout ran out."""

    @property
    def threads(self) -> int:
        """Worker threads alive now."""
        return self._threads

    def submit(self, fn: Callable[[Any], Any], arg: Any, *, signal_start: bool) -> ThreadCall:
        """Queue ``fn(arg)``; a thread begins it at once (a new one if none is idle).

        Must be called on the event loop's thread.

        Args:
            fn: A sync function of one argument.
            arg: Its argument.
            signal_start: Resolve ``call.started`` when a thread begins the call (for a
                timeout that counts from the call's start, not from its submission).

        Raises:
            RuntimeError: If the pool was shut down.
        """
        if self._closed:
            raise RuntimeError("the thread pool is shut down")
        call = ThreadCall(asyncio.get_running_loop(), fn, arg, signal_start)
        with self._lock:
            start_one = self._idle == 0
            if start_one:
                self._threads += 1
            else:
                self._idle -= 1
        self._jobs.put(call)
        if start_one:
            self._started += 1
            name = f"{self._name}-{self._started}"
            threading.Thread(target=self._serve, name=name, daemon=True).start()
        return call

    def abandon(self, call: ThreadCall) -> None:
        """Count ``call`` as abandoned until its thread ends it (loop thread only)."""
        if call.abandoned or call.done.done():
            return
        call.abandoned = True
        self.abandoned += 1

        def settled(future: asyncio.Future[Any]) -> None:
            self.abandoned -= 1
            if not future.cancelled():
                future.exception()  # retrieved: nobody awaits an abandoned outcome

        call.done.add_done_callback(settled)

    def shutdown(self) -> None:
        """Let idle threads exit and refuse new calls; never waits for a running call."""
        self._closed = True
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)

    def _serve(self) -> None:
        jobs = self._jobs
        while True:
            try:
                call = jobs.get(timeout=_IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:
                    if self._threads > _KEEP_IDLE and self._idle > 0:
                        self._threads -= 1
                        self._idle -= 1
                        return
                continue
            if call is None:
                with self._lock:
                    self._threads -= 1
                    self._idle = max(self._idle - 1, 0)
                return
            settle = call.run_in_thread()
            with self._lock:  # idle before the loop hears of it: the next call reuses us
                self._idle += 1
            if settle is not None:
                # A closed loop raises RuntimeError: nobody waits for this outcome then.
                with contextlib.suppress(RuntimeError):
                    call._loop.call_soon_threadsafe(settle)
            del call, settle
