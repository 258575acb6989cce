"""One fair FIFO wait queue, with hand-over on cancellation (trio's ``ParkingLot``).

The runner's concurrency slots, the GPU pool and the sandbox pool all park callers
until something is free and hand it to them in arrival order. The tricky part is
the same everywhere: a waiter can be cancelled (or time out) in the very instant it
is handed something, and then that thing must go back, or it leaks. That logic lives
here once.

A :class:`WaitQueue` is a ``deque`` of :class:`Parked` entries, so ``not queue`` and
``len(queue)`` cost what a deque's do on the hot path. Entries leave the queue when
they are served, fail, or give up: a queue never holds a dead entry for long.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ("Parked", "WaitQueue")

P = TypeVar("P")
V = TypeVar("V")


class Parked(Generic[P, V]):
    """One parked caller: what it asked for (``payload``) and the future it waits on."""

    __slots__ = ("future", "payload")

    def __init__(self, payload: P, future: asyncio.Future[V]) -> None:
        self.payload = payload
        self.future = future

    @property
    def live(self) -> bool:
        """Still waiting, on a loop that still runs (a closed notebook loop cannot wake)."""
        return not self.future.done() and not self.future.get_loop().is_closed()


class WaitQueue(deque[Parked[P, V]]):
    """Callers parked in arrival order; values handed to the first in line.

    Args:
        returned: Called with a value that was handed to a waiter in the same
            instant it gave up (cancelled or timed out), so that the value is not lost
            (a slot released, a GPU allocation released, a sandbox put back).
        left: Called after a waiter gave up without being served: it may have been
            holding back the ones behind it (a strict FIFO's head).
    """

    def __init__(
        self,
        *,
        returned: Callable[[V], object] | None = None,
        left: Callable[[], object] | None = None,
    ) -> None:
        super().__init__()
        self._returned = returned
        self._left = left

    async def wait(self, payload: P, *, front: bool = False) -> V:
        """Park until a value is handed over; returns it (:meth:`park` then :meth:`wait_for`).

        Args:
            payload: What this caller waits for (read by whoever serves the queue).
            front: Queue at the head instead of the tail (a caller that was already
                served once and must try again keeps its turn).

        Raises:
            BaseException: Whatever the server failed the waiter with (see
                :meth:`fail_first`, :meth:`fail_all`), or the cancellation.
        """
        return await self.wait_for(self.park(payload, front=front))

    def park(self, payload: P, *, front: bool = False) -> Parked[P, V]:
        """Queue a waiter now (so that it counts at once); then ``await wait_for(it)``."""
        entry: Parked[P, V] = Parked(payload, asyncio.get_running_loop().create_future())
        if front:
            self.appendleft(entry)
        else:
            self.append(entry)
        return entry

    async def wait_for(self, entry: Parked[P, V]) -> V:
        """Wait for the value handed to ``entry``; if the caller leaves first, the
        entry leaves the queue, and a value handed in that instant is ``returned``."""
        try:
            return await entry.future
        except BaseException:
            self._give_up(entry)
            raise

    def _give_up(self, entry: Parked[P, V]) -> None:
        future = entry.future
        if future.done() and not future.cancelled():
            if future.exception() is None and self._returned is not None:
                self._returned(future.result())  # served as it left: hand it back
            return
        try:
            self.remove(entry)
        except ValueError:
            return
        if not future.get_loop().is_closed():
            future.cancel()
        if self._left is not None:
            self._left()

    def prune(self) -> bool:
        """Drop dead entries from the head; whether anyone is still waiting."""
        while self:
            future = self[0].future
            if not future.done() and not future.get_loop().is_closed():
                return True
            self.popleft()
        return False

    def first(self) -> Parked[P, V] | None:
        """The first live waiter (dead ones ahead of it are dropped), or None."""
        while self:
            entry = self[0]
            future = entry.future
            if not future.done() and not future.get_loop().is_closed():
                return entry
            self.popleft()
        return None

    def hand_first(self, value: V) -> bool:
        """Give ``value`` to the first live waiter; False when nobody waits."""
        while self:
            future = self.popleft().future
            if not future.done() and not future.get_loop().is_closed():
                future.set_result(value)
                return True
        return False

    def fail_first(self, error: BaseException) -> bool:
        """Fail the first live waiter with ``error``; False when nobody waits."""
        while self:
            entry = self.popleft()
            if entry.live:
                entry.future.set_exception(error)
                return True
        return False

    def fail_all(self, error: Callable[[], BaseException]) -> int:
        """Fail every live waiter with a fresh ``error()``; returns how many."""
        failed = 0
        while self:
            entry = self.popleft()
            if entry.live:
                entry.future.set_exception(error())
                failed += 1
        return failed

    def payloads(self) -> list[Any]:
        """The payloads of the waiters, first in line first."""
        return [entry.payload for entry in self]
