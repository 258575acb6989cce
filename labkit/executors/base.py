"""The vocabulary every executor shares: a call, an invoker, an expired attempt.

:class:`Invoker` is what the runner runs attempts with: two ways to run one
attempt, without a timeout (``run``) and with one (``timed``). The local kinds
(:mod:`labkit.executors.local`) and Dask (:mod:`labkit.executors.dask`) each
build theirs from these parts.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from labkit.clock import Clock

__all__ = ("AttemptExpired", "Call", "Invoker", "is_async_callable", "within")

Call = Callable[[Any], Awaitable[Any]]


class AttemptExpired(Exception):
    """An attempt's own timeout ran out (never the function's own ``TimeoutError``)."""


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """True for ``async def`` functions, partials of them and objects with ``async __call__``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - looking for an async __call__
    )


class Invoker:
    """One function, ready to run attempts: ``await run(arg)`` or ``await timed(arg, s)``.

    ``timed`` raises :class:`AttemptExpired` when the attempt's own ``s`` seconds ran
    out; the function's own ``TimeoutError`` passes through unchanged.
    """

    __slots__ = ("run", "timed")

    def __init__(self, run: Call, timed: Callable[[Any, float], Awaitable[Any]]) -> None:
        self.run = run
        self.timed = timed


async def within(clock: Clock, run: Call, arg: Any, seconds: float) -> Any:
    """``await run(arg)`` bounded by ``seconds`` on ``clock``; AttemptExpired past it.

    Raises:
        AttemptExpired: ``seconds`` ran out.
    """
    start = clock.now()
    try:
        async with clock.timeout(max(seconds, 0.0)):
            return await run(arg)
    except TimeoutError as exc:
        if clock.now() - start < seconds:
            raise  # the function's own TimeoutError
        raise AttemptExpired from exc
