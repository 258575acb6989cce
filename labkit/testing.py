"""Fakes for labkit's tests and for users' own tests.

Inject them instead of patching: :class:`FakeClock` replaces real time, a
:class:`labkit.StaticInventory` replaces NVML, ``FakeSandbox`` replaces a sandbox.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from labkit.gpu.inventory import static_fleet
from labkit.sandbox.fake import FakeSandbox

__all__ = ("FakeClock", "FakeSandbox", "static_fleet")


class FakeClock:
    """A virtual clock in the spirit of trio's ``MockClock``.

    Time only moves when :meth:`advance` is called, or, with ``autojump=True``, as
    soon as every task on the loop is blocked waiting on this clock: the clock then
    jumps straight to the earliest deadline. A test of a 30 s backoff thus takes
    microseconds and still sees exactly 30 s pass.

    Args:
        start: The initial reading, in seconds.
        autojump: Jump to the next deadline whenever the loop is otherwise idle.
            Leave it off when work runs in threads: a thread's completion is not
            visible to the idle check, so time could jump ahead of it.
    """

    def __init__(self, start: float = 0.0, *, autojump: bool = False) -> None:
        self._now = float(start)
        self._autojump = autojump
        self._seq = itertools.count()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._jump_scheduled = False
        self.sleeps: list[float] = []
        """Every positive duration passed to :meth:`sleep`, in call order (seconds)."""

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing every timer that falls due in order."""
        if seconds < 0:
            raise ValueError(f"seconds={seconds!r} is not allowed: expected a value >= 0")
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            deadline, _, fire = heapq.heappop(self._timers)
            self._now = max(self._now, deadline)
            fire()
        self._now = target

    @property
    def pending(self) -> int:
        """How many timers (sleeps and timeouts) are waiting on this clock."""
        return len(self._timers)

    def next_deadline(self) -> float | None:
        """The earliest pending deadline, or ``None`` when nothing waits."""
        return self._timers[0][0] if self._timers else None

    def _add_timer(self, seconds: float, fire: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (self._now + seconds, next(self._seq), fire))
        if self._autojump and not self._jump_scheduled:
            self._jump_scheduled = True
            asyncio.get_running_loop().call_soon(self._jump_when_idle, 0)

    def _jump_when_idle(self, quiet_rounds: int) -> None:
        loop = asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)
        busy = ready is None or len(ready) > 0
        # A few consecutive idle hops make sure callbacks scheduled by the previous
        # hop (future callbacks, task steps) have all run before time moves.
        if busy or quiet_rounds < 3:
            loop.call_soon(self._jump_when_idle, 0 if busy else quiet_rounds + 1)
            return
        self._jump_scheduled = False
        deadline = self.next_deadline()
        if deadline is not None:
            self.advance(max(deadline - self._now, 0.0))
            if self._timers and not self._jump_scheduled:
                self._jump_scheduled = True
                loop.call_soon(self._jump_when_idle, 0)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        self.sleeps.append(seconds)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        self._add_timer(seconds, wake)
        await future

    @asynccontextmanager
    async def timeout(self, seconds: float | None) -> AsyncIterator[None]:
        if seconds is None:
            yield
            return
        task = asyncio.current_task()
        assert task is not None, "FakeClock.timeout() must run inside a task"
        state = {"expired": False, "active": True}

        def expire() -> None:
            if state["active"]:
                state["expired"] = True
                task.cancel()

        self._add_timer(seconds, expire)
        try:
            yield
        except asyncio.CancelledError as exc:
            if state["expired"] and task.uncancel() == 0:
                raise TimeoutError(f"timed out after {seconds} s") from exc
            raise
        finally:
            state["active"] = False

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r}, pending={self.pending})"
