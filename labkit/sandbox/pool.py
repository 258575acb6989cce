"""SandboxPool: started sandboxes kept warm and handed out one session at a time.

Starting a sandbox is the slow part (a temporary directory locally, a VM boot on
E2B), so the pool keeps returned sandboxes, resets them, and hands them to the
next session. Sessions that find no idle sandbox and no room to start one wait in
FIFO order.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import SandboxClosed, check
from labkit.sandbox.base import Sandbox

__all__ = ("SandboxFactory", "SandboxPool", "SandboxPoolStats")

log = logging.getLogger("labkit.sandbox")

SandboxFactory = Callable[[], Sandbox | Awaitable[Sandbox]]
"""Makes a new, possibly not yet started, sandbox: ``LocalSandbox`` itself qualifies."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxPoolStats:
    """A snapshot of a :class:`SandboxPool`.

    Attributes:
        max_size: The cap on live sandboxes.
        pool_size: Live sandboxes: ``active + idle + starting``.
        active: Sandboxes in a session now.
        idle: Started sandboxes waiting for a session.
        starting: Sandboxes being created or started now.
        waiting: Sessions queued for a sandbox.
        total_created: Sandboxes the factory made, ever.
        total_reused: Sessions that got a sandbox a previous session had used.
        hits: Sessions served by an already started sandbox (prewarmed or returned).
        misses: Sessions that had to start a new sandbox.
        replaced: Sandboxes thrown away because they were unhealthy or their reset
            failed (their slot goes to a new one).
        expired: Idle sandboxes closed after ``max_idle`` seconds unused.
        avg_startup_ms: Mean time to create and start one sandbox, in milliseconds
            (0.0 before the first).
        reuse_rate: ``hits / (hits + misses)``, 0.0 before the first session.
    """

    max_size: int
    pool_size: int
    active: int
    idle: int
    starting: int
    waiting: int
    total_created: int
    total_reused: int
    hits: int
    misses: int
    replaced: int
    expired: int
    avg_startup_ms: float
    reuse_rate: float


class _Entry:
    """A sandbox the pool owns, with its bookkeeping."""

    __slots__ = ("idle_since", "sandbox", "sessions")

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.sessions = 0
        self.idle_since = 0.0


_CREATE = None
"""What a waiter receives instead of an entry: a free slot, start your own sandbox."""


class SandboxPool:
    """A pool of started sandboxes, reused across sessions.

    ::

        async with lk.SandboxPool(lk.LocalSandbox, max_size=4, prewarm=4) as pool:
            async with pool.session() as sb:
                result = await sb.run("python train.py")

    A session gets an idle sandbox when there is one (a *hit*), else starts a new
    one while fewer than ``max_size`` are live (a *miss*), else waits; waiting
    sessions are served first come, first served. When a session ends, however it
    ends (an error, a cancellation mid-command), the sandbox is reset (processes
    killed, directory emptied) before anyone else gets it; a sandbox that is
    unhealthy or whose reset fails is closed and replaced. Idle sandboxes unused for
    ``max_idle`` seconds are closed. ``close()`` closes every sandbox, busy ones
    included, so nothing outlives the pool.

    Args:
        factory: Makes a sandbox: a class such as :class:`labkit.LocalSandbox`, or
            any callable returning a sandbox or an awaitable of one. The pool calls
            ``start()`` on what it returns.
        max_size: The most sandboxes alive at once (>= 1).
        prewarm: Sandboxes started by ``async with pool`` or the first
            ``session()`` (<= ``max_size``).
        max_idle: Seconds an idle sandbox is kept before it is closed; ``None``
            keeps it until ``close()``.
        clock: The clock for idle expiry and startup times.

    Raises:
        ConfigError: An option is out of range.
    """

    def __init__(
        self,
        factory: SandboxFactory,
        *,
        max_size: int,
        prewarm: int = 0,
        max_idle: float | None = 60.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        check(callable(factory), "factory", factory, "a callable returning a sandbox")
        check(isinstance(max_size, int) and max_size >= 1, "max_size", max_size, "an int >= 1")
        check(
            isinstance(prewarm, int) and 0 <= prewarm <= max_size,
            "prewarm",
            prewarm,
            f"an int from 0 to max_size ({max_size})",
        )
        check(max_idle is None or max_idle > 0, "max_idle", max_idle, "None or seconds > 0")
        self._factory = factory
        self._max_size = max_size
        self._prewarm_target = prewarm
        self._prewarmed = prewarm == 0
        self._max_idle = max_idle
        self._clock = clock
        self._idle: deque[_Entry] = deque()  # oldest first; reuse takes the newest
        self._active: set[_Entry] = set()
        self._handed: set[_Entry] = set()  # given to a waiter that has not resumed yet
        # Starts, resets and retirements in flight: close() waits for them.
        self._transitions: set[asyncio.Future[None]] = set()
        self._waiters: deque[asyncio.Future[_Entry | None]] = deque()
        self._live = 0  # idle + active + starting (including slots handed to waiters)
        self._closed = False
        self._reaper: asyncio.Task[None] | None = None
        self._created = self._reused = self._hits = self._misses = 0
        self._replaced = self._expired = 0
        self._startup_total = 0.0

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"SandboxPool(max_size={s.max_size}, active={s.active}, idle={s.idle}, "
            f"waiting={s.waiting}, closed={self._closed})"
        )

    async def __aenter__(self) -> Self:
        await self._ensure_prewarmed()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """``True`` once :meth:`close` was called."""
        return self._closed

    def stats(self) -> SandboxPoolStats:
        """A snapshot of sizes and counters (see :class:`SandboxPoolStats`)."""
        sessions = self._hits + self._misses
        return SandboxPoolStats(
            max_size=self._max_size,
            pool_size=self._live,
            active=len(self._active) + len(self._handed),
            idle=len(self._idle),
            starting=self._live - len(self._active) - len(self._handed) - len(self._idle),
            waiting=len(self._waiters),
            total_created=self._created,
            total_reused=self._reused,
            hits=self._hits,
            misses=self._misses,
            replaced=self._replaced,
            expired=self._expired,
            avg_startup_ms=1000.0 * self._startup_total / self._created if self._created else 0.0,
            reuse_rate=self._hits / sessions if sessions else 0.0,
        )

    # -- sessions -------------------------------------------------------------------

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Sandbox]:
        """Borrow a started sandbox for the duration of the block.

        Yields:
            A started, clean sandbox, for this session only.

        Raises:
            SandboxClosed: The pool is closed (or closes while this session waits).
            Exception: Whatever the factory or the sandbox's ``start()`` raised when a
                new one had to be started (for E2B: SandboxAuthError,
                SandboxRateLimited, SandboxStartError).
        """
        await self._ensure_prewarmed()
        entry = await self._acquire()
        try:
            yield entry.sandbox
        finally:
            await self._release(entry)

    async def prewarm(self, n: int) -> int:
        """Start up to ``n`` more idle sandboxes now, concurrently, within ``max_size``.

        Returns:
            How many were started.

        Raises:
            ConfigError: ``n`` is negative.
            SandboxClosed: The pool is closed.
            Exception: The first error of a failed start, after the others finished.
        """
        check(isinstance(n, int) and n >= 0, "n", n, "an int >= 0")
        self._check_open()
        count = min(n, self._max_size - self._live)
        if count <= 0:
            return 0
        self._live += count
        outcomes = await asyncio.gather(
            *(self._create() for _ in range(count)), return_exceptions=True
        )
        errors: list[BaseException] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                errors.append(outcome)
                self._free_slot()
            else:
                self._put_idle(outcome)
        if errors:
            raise errors[0]
        return count

    async def _ensure_prewarmed(self) -> None:
        if not self._prewarmed:
            self._prewarmed = True
            await self.prewarm(self._prewarm_target)

    async def _acquire(self) -> _Entry:
        self._check_open()
        handed: _Entry | None
        if self._waiters:
            handed = await self._wait_turn()
        elif self._idle:
            handed = self._idle.pop()
        elif self._live < self._max_size:
            self._live += 1
            handed = _CREATE
        else:
            handed = await self._wait_turn()

        if handed is not _CREATE and not handed.sandbox.healthy:
            # Keep its slot for the replacement: freeing it could let a later
            # session take it first.
            self._replaced += 1
            try:
                await _close_quietly(handed.sandbox)
            except BaseException:
                self._free_slot()
                raise
            handed = _CREATE
        if handed is _CREATE:
            self._misses += 1
            try:
                self._check_open()
                entry = await self._create()
            except BaseException:
                self._free_slot()
                raise
        else:
            entry = handed
            self._hits += 1
            if entry.sessions:
                self._reused += 1
        entry.sessions += 1
        self._active.add(entry)
        return entry

    async def _wait_turn(self) -> _Entry | None:
        waiter: asyncio.Future[_Entry | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            handed = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Served just as we were cancelled: pass the sandbox or slot on.
                handed = waiter.result()
                if handed is _CREATE:
                    self._free_slot()
                elif handed in self._handed:
                    self._handed.discard(handed)
                    self._put_idle(handed)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        if handed is not _CREATE:
            if handed not in self._handed:  # close() took it meanwhile
                raise SandboxClosed("the sandbox pool was closed")
            self._handed.discard(handed)
        return handed

    async def _create(self) -> _Entry:
        """Make and start one sandbox; the caller has already reserved its slot."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._transitions.add(done)
        began = self._clock.now()
        sandbox: Sandbox | None = None
        try:
            made = self._factory()
            sandbox = await made if inspect.isawaitable(made) else made
            await sandbox.start()
            self._created += 1
            self._startup_total += self._clock.now() - began
            if self._closed:
                raise SandboxClosed("the sandbox pool was closed while a sandbox started")
            return _Entry(sandbox)
        except BaseException:
            if sandbox is not None:
                await _close_quietly(sandbox)
            raise
        finally:
            self._transitions.discard(done)
            done.set_result(None)

    async def _release(self, entry: _Entry) -> None:
        if entry not in self._active:  # close() took it
            return
        self._active.discard(entry)
        # Reset even after a failed or cancelled session: a killed command can leave
        # files and background processes behind. The reset runs as its own task, so
        # a second cancellation cannot leave a half-reset sandbox in the idle list,
        # and close() waits for it.
        await self._in_background(self._recycle(entry))

    async def _recycle(self, entry: _Entry) -> None:
        sandbox = entry.sandbox
        clean = False
        if sandbox.healthy:
            try:
                await sandbox.reset()
                clean = sandbox.healthy
            except Exception as exc:
                log.warning("sandbox %s failed to reset and is replaced: %r", sandbox.id, exc)
        if clean and not self._closed:
            self._put_idle(entry)
            return
        if not clean:
            self._replaced += 1
        await self._retire(entry)

    async def _retire(self, entry: _Entry) -> None:
        await _close_quietly(entry.sandbox)
        self._free_slot()

    async def _in_background(self, work: Awaitable[None]) -> None:
        """Run ``work`` as a task that close() waits for and cancellation cannot cut."""
        task = asyncio.ensure_future(work)
        self._transitions.add(task)
        task.add_done_callback(self._transitions.discard)
        await asyncio.shield(task)

    def _put_idle(self, entry: _Entry) -> None:
        """Give ``entry`` to the first waiter, or keep it idle."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._handed.add(entry)
                waiter.set_result(entry)
                return
        entry.idle_since = self._clock.now()
        self._idle.append(entry)
        self._start_reaper()

    def _free_slot(self) -> None:
        """A live sandbox is gone: let the first waiter start one, or shrink."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(_CREATE)
                return
        self._live -= 1

    # -- idle expiry ----------------------------------------------------------------

    def _start_reaper(self) -> None:
        if self._max_idle is None or (self._reaper is not None and not self._reaper.done()):
            return
        self._reaper = asyncio.get_running_loop().create_task(
            self._reap(self._max_idle), name="labkit-sandbox-pool-reaper"
        )

    async def _reap(self, max_idle: float) -> None:
        while self._idle and not self._closed:
            oldest = self._idle[0]
            wait = oldest.idle_since + max_idle - self._clock.now()
            if wait > 0:
                await self._clock.sleep(wait)
                continue
            self._idle.popleft()
            self._expired += 1
            await self._in_background(self._retire(oldest))

    # -- shutdown -------------------------------------------------------------------

    async def close(self) -> None:
        """Close every sandbox, idle and busy, and refuse new sessions.

        Waiting sessions get :class:`~labkit.errors.SandboxClosed`; sessions still
        running find their sandbox closed (their commands are killed). Starts and
        resets in flight are waited for and their sandboxes closed before this
        returns. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(SandboxClosed("the sandbox pool was closed"))
        while self._transitions:
            await asyncio.wait(set(self._transitions))
        entries = [*self._idle, *self._handed, *self._active]
        self._idle.clear()
        self._handed.clear()
        self._active.clear()
        self._live -= len(entries)
        await asyncio.gather(*(_close_quietly(e.sandbox) for e in entries))

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxClosed("the sandbox pool is closed")


async def _close_quietly(sandbox: Sandbox) -> None:
    """Close ``sandbox``; a failure to close is logged, never raised over the real error."""
    try:
        await sandbox.close()
    except Exception as exc:
        log.warning("closing sandbox %s failed: %r", getattr(sandbox, "id", "?"), exc)
