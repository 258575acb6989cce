"""The runner-wide concurrency cap."""

from __future__ import annotations

from labkit.waitqueue import WaitQueue

__all__ = ("Slots",)


class Slots:
    """The runner-wide concurrency cap: a counter with a fair FIFO of waiters.

    Cheaper than ``asyncio.Semaphore`` on the uncontended path, which is the only
    path a single ``map`` call takes (it never runs more workers than slots): the
    pipeline takes a slot inline when ``free > 0 and not waiters``.
    """

    __slots__ = ("_waiters", "free", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._waiters: WaitQueue[None, None] = WaitQueue(returned=lambda _: self.release())

    def resize(self, size: int) -> None:
        """Change the cap; above the new cap, holders finish before anyone else starts."""
        self.free += size - self.size
        self.size = size
        while self.free > 0 and self._waiters.hand_first(None):
            self.free -= 1

    async def acquire(self) -> None:
        """Take a slot, waiting in arrival order when none is free."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        await self._waiters.wait(None)

    def release(self) -> None:
        """Give a slot back: to the first waiter, else to the free count."""
        if self.free >= 0 and self._waiters.hand_first(None):  # below 0 the cap shrank
            return
        self.free += 1
