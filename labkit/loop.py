"""The one bridge from sync code to labkit's async core.

:func:`run_sync` runs a coroutine to completion from code that is not async:

- with no event loop running (a script), in a fresh loop (``asyncio.Runner``),
  where Ctrl-C cancels the coroutine, lets its cleanup run, then raises
  ``KeyboardInterrupt``;
- inside a running loop (a Jupyter cell), on that same loop, made re-entrant with
  ``nest_asyncio2``, so widgets bound to the kernel's loop keep updating while the
  cell blocks. Without ``nest_asyncio2`` the coroutine runs on a private loop in a
  worker thread instead (it still finishes; live widgets then pause).

When Ctrl-C ends a run here, :func:`run_sync` also installs (once) the hook that
makes an uncaught :class:`~labkit.errors.RunInterrupted` end the process as Ctrl-C
does: with the normal shutdown and death by SIGINT (shell status 130).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from labkit.errors import RunInterrupted

__all__ = ("install_interrupt_exit", "run_sync", "running_loop")

T = TypeVar("T")

_GRACE_S = 1.0  # after a second Ctrl-C, how long the leftover tasks get to end


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or ``None`` outside one."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion and return its result, from sync code.

    Raises:
        KeyboardInterrupt: On Ctrl-C, after the coroutine was cancelled and its
            ``finally`` blocks ran. A :class:`~labkit.errors.RunInterrupted` made of it
            and left uncaught then ends the process as Ctrl-C does (status 130).
        BaseException: Whatever the coroutine raised.
    """
    try:
        loop = running_loop()
        if loop is None:
            if threading.current_thread() is not threading.main_thread():
                with asyncio.Runner() as runner:
                    return runner.run(coro)
            return _run_interruptible(coro)
        return _run_nested(loop, coro)
    except KeyboardInterrupt:
        install_interrupt_exit()
        raise


def install_interrupt_exit() -> None:
    """Make an uncaught RunInterrupted end the process as Ctrl-C does (status 130).

    Python gives status 130 only to a bare ``KeyboardInterrupt`` left uncaught; a
    subclass exits with 1. The hook chains the current ``sys.excepthook``: for a
    RunInterrupted it prints the traceback as usual, runs the normal shutdown
    (non-daemon threads, ``atexit``), flushes the standard streams and ends the
    process with SIGINT, the way the interpreter does for a KeyboardInterrupt.
    Installed once; every other exception goes to the previous hook alone.
    """
    previous = sys.excepthook
    if isinstance(previous, _InterruptExit):
        return
    sys.excepthook = _InterruptExit(previous)


class _InterruptExit:
    """The ``sys.excepthook`` of :func:`install_interrupt_exit`."""

    def __init__(self, previous: Any) -> None:
        self._previous = previous

    def __call__(
        self, kind: type[BaseException], error: BaseException, tb: TracebackType | None
    ) -> None:
        self._previous(kind, error, tb)
        if not issubclass(kind, RunInterrupted):
            return
        shutdown = getattr(threading, "_shutdown", None)
        if callable(shutdown):
            shutdown()  # join non-daemon threads, as interpreter shutdown would
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, OSError, ValueError):
                stream.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


def _run_interruptible(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` in a fresh loop where Ctrl-C is an event of the loop, never an
    exception raised at a random point inside it (which can leave asyncio's own
    bookkeeping half done, so that the cleanup then waits forever).

    The first Ctrl-C cancels ``coro`` and lets its cleanup run; a second one stops
    waiting for that cleanup (remaining tasks get one more cancel and a short grace
    period); either way ``KeyboardInterrupt`` is raised here afterwards.
    """
    loop = asyncio.new_event_loop()
    task = loop.create_task(coro)
    interrupts = 0

    def on_sigint() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            task.cancel()
        else:
            loop.stop()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if interrupts:
                raise KeyboardInterrupt from None
            raise
        except RuntimeError:
            if interrupts > 1 and not task.done():
                raise KeyboardInterrupt from None  # the second Ctrl-C stopped the loop
            raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        _close(loop)


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left, give it a moment, and close ``loop``."""
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for leftover in pending:
            leftover.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=_GRACE_S))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _run_nested(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    try:
        import nest_asyncio2
    except ImportError:
        return _run_in_thread(coro)
    nest_asyncio2.apply(loop)
    task = loop.create_task(coro)
    try:
        return loop.run_until_complete(task)
    except KeyboardInterrupt:
        # The interrupt landed in the loop's machinery, not in the task: cancel the
        # task and let its cleanup run before passing the interrupt on.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
            loop.run_until_complete(task)
        raise


def _run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="labkit-loop") as pool:
        return pool.submit(asyncio.run, coro).result()
