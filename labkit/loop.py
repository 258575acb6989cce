"""The one bridge from sync code to labkit's async core.

:func:`run_sync` runs a coroutine to completion from code that is not async:

- with no event loop running (a script), in a fresh loop (``asyncio.Runner``),
  where Ctrl-C cancels the coroutine, lets its cleanup run, then raises
  ``KeyboardInterrupt``;
- inside a running loop (a Jupyter cell), on that same loop, made re-entrant with
  ``nest_asyncio2``, so widgets bound to the kernel's loop keep updating while the
  cell blocks. Without ``nest_asyncio2`` the coroutine runs on a private loop in a
  worker thread instead (it still finishes; live widgets then pause).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ("run_sync",)

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion and return its result, from sync code.

    Raises:
        KeyboardInterrupt: On Ctrl-C, after the coroutine was cancelled and its
            ``finally`` blocks ran.
        BaseException: Whatever the coroutine raised.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        with asyncio.Runner() as runner:
            return runner.run(coro)
    return _run_nested(loop, coro)


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
