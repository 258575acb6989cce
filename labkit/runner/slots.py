"""The runner-wide concurrency cap."""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ("Slots",)


class Slots:
    """The runner-wide concurrency cap: a counter with a FIFO of waiters.

    Cheaper than ``asyncio.Semaphore`` on the uncontended path, which is the only
    path a single ``map`` call takes (it never runs more workers than slots).
    """

    __slots__ = ("_waiters", "free", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def resize(self, size: int) -> None:
        """Change the cap; above the new cap, holders finish before anyone else starts."""
        self.free += size - self.size
        self.size = size
        while self.free > 0 and self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                self.free -= 1
                future.set_result(None)

    async def acquire(self) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            elif future in self._waiters:
                self._waiters.remove(future)
            raise

    def release(self) -> None:
        if self.free >= 0:  # below zero, the cap shrank: this slot is gone
            while self._waiters:
                future = self._waiters.popleft()
                if not future.done():
                    future.set_result(None)
                    return
        self.free += 1
