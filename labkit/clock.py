"""Time as labkit sees it: an injectable clock.

Everything in labkit that waits (backoff, rate limits, GPU queue timeouts, sampling)
asks a :class:`Clock` instead of calling ``time`` or ``asyncio.sleep`` directly, so
tests can pass :class:`labkit.testing.FakeClock` and run in milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

__all__ = ("Clock", "SystemClock", "SYSTEM_CLOCK")


@runtime_checkable
class Clock(Protocol):
    """What labkit needs from a clock. Times are seconds (floats)."""

    def now(self) -> float:
        """Seconds on a monotonic scale; only differences are meaningful."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock (``<= 0`` just yields to the loop)."""
        ...

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        """A block that is cancelled after ``seconds`` and then raises ``TimeoutError``.

        ``None`` means no limit.
        """
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` and the event loop's own timers."""

    __slots__ = ()

    # The builtin itself, not a method wrapping it: the runner reads it per task.
    now = staticmethod(time.monotonic)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()
"""The shared real clock, used wherever no clock is injected."""
