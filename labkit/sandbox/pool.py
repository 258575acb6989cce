"""SandboxPool: started sandboxes kept warm and handed out one session at a time.

Starting a sandbox is the slow part (a temporary directory locally, a VM boot on
E2B), so the pool keeps returned sandboxes, resets them, and hands them to the
next session. Sessions that find no idle sandbox wait in FIFO order for the next
sandbox to come free, whether one a session returned or one the pool started.

Sizing policy. The pool steers its live sandboxes towards a *target size*::

    target_size = clamp(busy + waiting + headroom, min_size, max_size)

where ``busy`` counts sandboxes in a session and ``waiting`` the queued sessions.

- Growth: whenever a session has to wait, the pool starts enough sandboxes to reach
  the target, all at once and in the background, so ``n`` waiters cost one start
  time, not ``n``. A started sandbox goes to the first waiter; if a returned one
  served that waiter sooner, the new one stays idle for the next session.
- Headroom, ahead of demand: one session waiting says little, but when two or more
  wait at once, arrivals outpace the pool, and ``headroom`` rises to the number
  waiting (4 waiters on an empty pool start 8 sandboxes: 4 for them, 4 for whoever
  comes next), never past ``max_size``.
- Shrinking: a sandbox idle for ``max_idle`` seconds is closed, and each such
  expiry lowers the headroom by one (an idle sandbox that long was not needed).
  Expiry stops at ``min_size`` live sandboxes, which the pool starts when it opens
  and starts again when one is replaced.

Live sandboxes above the target (after ``prewarm()``, or once a burst is over) are
not closed early; they leave through idle expiry. ``capacity()`` tells a caller how
many sessions could start now without queueing behind others.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from labkit._checks import check, is_int, is_real
from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import ConfigError, SandboxClosed, SandboxTimeout
from labkit.sandbox.base import Sandbox
from labkit.waitqueue import WaitQueue

__all__ = ("SandboxFactory", "SandboxPool", "SandboxPoolStats")

log = logging.getLogger("labkit.sandbox")

_MAX_SIZE = 100_000  # live sandboxes one pool may hold: more is a typo, not a fleet

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
        starting: Sandboxes being created, started or closed now.
        waiting: Sessions queued for a sandbox.
        total_created: Sandboxes the factory made, ever.
        total_reused: Sessions that got a sandbox a previous session had used.
        hits: Sessions served by an already started sandbox (prewarmed, started
            ahead of demand, or returned).
        misses: Sessions that had to wait for a new sandbox to start.
        replaced: Sandboxes thrown away because they were unhealthy or their reset
            failed (their slot goes to a new one).
        expired: Idle sandboxes closed after ``max_idle`` seconds unused.
        avg_startup_ms: Mean time to create and start one sandbox, in milliseconds
            (0.0 before the first).
        reuse_rate: ``hits / (hits + misses)``, 0.0 before the first session.
        min_size: The floor idle expiry keeps.
        target_size: The live sandboxes the pool is steering towards now:
            ``busy + waiting + headroom``, within ``[min_size, max_size]`` (see the
            module's sizing policy).
        vanished: Idle sandboxes found gone at session start (their ``probe()``
            said so, as for an E2B VM deleted early) and replaced.
        cost_usd: US dollars spent so far: each sandbox's ``price_per_second``
            (E2B's rates, see :mod:`labkit.sandbox.cost`; 0 for local ones) times
            the seconds from its start to its close, or to now while it lives.
        abandoned: Sessions still held by code its caller gave up on (a sync
            instance past its timeout, still running in its thread): the sandbox
            goes back when that code really ends (:meth:`SandboxPool.mark_abandoned`).
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
    min_size: int = 0
    target_size: int = 0
    vanished: int = 0
    cost_usd: float = 0.0
    abandoned: int = 0


class _Entry:
    """A sandbox the pool owns, with its bookkeeping."""

    __slots__ = ("idle_since", "price", "sandbox", "sessions", "started")

    def __init__(self, sandbox: Sandbox, started: float) -> None:
        self.sandbox = sandbox
        self.sessions = 0
        self.idle_since = 0.0
        self.started = started
        self.price = float(getattr(sandbox, "price_per_second", 0.0))


class SandboxPool:
    """A pool of started sandboxes, reused across sessions, that grows and shrinks.

    ::

        async with lk.SandboxPool(lk.LocalSandbox, min_size=2, max_size=16) as pool:
            n = int(pool.capacity() * 0.8)  # size a batch to 80% of what is free
            async with pool.session() as sb:
                result = await sb.run("python train.py")

    A session gets an idle sandbox when there is one (a *hit*); otherwise it waits,
    first come, first served, while the pool starts sandboxes for the waiters
    concurrently within ``max_size`` (a *miss* when the session then gets a new
    one), plus some headroom when several wait at once; the module docstring spells
    out the sizing policy. When a session ends, however it ends (an error, a
    cancellation mid-command), the sandbox is reset (processes killed, directory
    emptied) before anyone else gets it; a sandbox that is unhealthy or whose reset
    fails is closed and replaced. Idle sandboxes unused for ``max_idle`` seconds are
    closed, down to ``min_size``. ``close()`` closes every sandbox, busy ones
    included, so nothing outlives the pool.

    Args:
        factory: Makes a sandbox: a class such as :class:`labkit.LocalSandbox`, or
            any callable returning a sandbox or an awaitable of one. The pool calls
            ``start()`` on what it returns.
        max_size: The most sandboxes alive at once (>= 1).
        prewarm: Sandboxes started by ``async with pool`` or the first
            ``session()`` (<= ``max_size``).
        min_size: Sandboxes kept live once the pool is open: started with the
            prewarmed ones, never expired, started again after a replacement
            (<= ``max_size``).
        max_idle: Seconds an idle sandbox is kept before it is closed (while more
            than ``min_size`` are live); ``None`` keeps it until ``close()``.
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
        min_size: int = 0,
        max_idle: float | None = 60.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        _check_options(factory, max_size, prewarm, min_size, max_idle, clock)
        self._factory = factory
        self._max_size = max_size
        self._min_size = min_size
        self._prewarm_target = max(prewarm, min_size)
        self._prewarmed = self._prewarm_target == 0
        self._max_idle = max_idle
        self._clock = clock
        self._idle: deque[_Entry] = deque()  # oldest first; reuse takes the newest
        self._active: set[_Entry] = set()
        self._abandoned: set[Sandbox] = set()
        self._handed: set[_Entry] = set()  # given to a waiter that has not resumed yet
        # Starts, resets and retirements in flight: close() waits for them.
        self._transitions: set[asyncio.Future[Any]] = set()
        # A sandbox handed to a session that left in the same instant goes back.
        self._waiters: WaitQueue[None, _Entry] = WaitQueue(returned=self._take_back)
        self._live = 0  # idle + active + handed + starting + closing
        self._headroom = 0
        self._closed = False
        self._reaper: asyncio.Task[None] | None = None
        self._created = self._reused = self._hits = self._misses = 0
        self._replaced = self._expired = self._vanished = 0
        self._startup_total = 0.0
        self._spent = 0.0  # USD of sandboxes already closed

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"SandboxPool(max_size={s.max_size}, target_size={s.target_size}, "
            f"active={s.active}, idle={s.idle}, waiting={s.waiting}, closed={self._closed})"
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

    @property
    def factory(self) -> Callable[[], Sandbox | Awaitable[Sandbox]]:
        """What makes this pool's sandboxes (a class such as :class:`LocalSandbox`)."""
        return self._factory

    def stats(self) -> SandboxPoolStats:
        """A snapshot of sizes and counters (see :class:`SandboxPoolStats`)."""
        sessions = self._hits + self._misses
        return SandboxPoolStats(
            max_size=self._max_size,
            pool_size=self._live,
            active=self._busy(),
            idle=len(self._idle),
            starting=self._starting(),
            waiting=len(self._waiters),
            total_created=self._created,
            total_reused=self._reused,
            hits=self._hits,
            misses=self._misses,
            replaced=self._replaced,
            expired=self._expired,
            avg_startup_ms=1000.0 * self._startup_total / self._created if self._created else 0.0,
            reuse_rate=self._hits / sessions if sessions else 0.0,
            min_size=self._min_size,
            target_size=self._target_size(),
            vanished=self._vanished,
            cost_usd=self._spent + sum(self._running_cost(e) for e in self._entries()),
            abandoned=sum(entry.sandbox in self._abandoned for entry in self._active),
        )

    def mark_abandoned(self, sandbox: Sandbox) -> None:
        """Count ``sandbox``'s session as held by code its caller gave up on.

        The session stays open (no one else gets the sandbox) while that code can
        still run, and :meth:`stats` counts it in ``abandoned`` until it ends.
        """
        if any(entry.sandbox is sandbox for entry in self._active):
            self._abandoned.add(sandbox)

    def _entries(self) -> list[_Entry]:
        return [*self._idle, *self._handed, *self._active]

    def _running_cost(self, entry: _Entry) -> float:
        return entry.price * max(0.0, self._clock.now() - entry.started) if entry.price else 0.0

    def _bill(self, entry: _Entry) -> None:
        """Add a closed sandbox's cost to the total."""
        self._spent += self._running_cost(entry)
        entry.price = 0.0

    def capacity(self) -> int:
        """How many sessions could start right now without queueing behind others.

        Idle sandboxes plus the room left under ``max_size`` to start new ones; the
        sessions already waiting hold the slots of the starts made for them, so they
        are not free. 0 once closed. Sandboxes starting as headroom are not counted
        until they are up. A batch can size itself to what is free instead of piling
        up in the queue::

            n = int(pool.capacity() * 0.8)  # leave 20% for other users of the pool
            await asyncio.gather(*(job(pool, item) for item in items[:n]))

        It is a snapshot: other sessions may take the capacity before yours start.
        """
        if self._closed:
            return 0
        # Waiters need no subtracting: every waiter either has a start in flight (its
        # slot is in _live) or waits because the pool is full (no room to count).
        return len(self._idle) + self._max_size - self._live

    # -- sessions -------------------------------------------------------------------

    @asynccontextmanager
    async def session(self, timeout: float | None = None) -> AsyncIterator[Sandbox]:
        """Borrow a started sandbox for the duration of the block.

        A sandbox with a ``probe()`` coroutine (``E2BSandbox`` has one) is probed
        before it is handed out; one found gone is replaced, as an unhealthy one is.

        Args:
            timeout: Seconds to wait for a sandbox (on the pool's clock); ``None``
                waits as long as it takes. The block itself is not limited.

        Yields:
            A started, clean sandbox, for this session only.

        Raises:
            ConfigError: ``timeout`` is not ``None`` or a finite number > 0 (a bool
                is refused), or the factory returned something that is not a
                sandbox (``None``): the message names the factory and what it gave.
            SandboxTimeout: No sandbox came free within ``timeout``; the message
                names the pool's size and its active and waiting sessions.
            SandboxClosed: The pool is closed (or closes while this session waits).
            Exception: Whatever the factory or the sandbox's ``start()`` raised when a
                sandbox started for this session failed (for E2B: SandboxAuthError,
                SandboxRateLimited, SandboxStartError).
        """
        check(
            timeout is None or (is_real(timeout) and timeout > 0),
            "timeout",
            timeout,
            "None (wait for ever) or a finite number of seconds > 0",
        )
        await self._ensure_prewarmed()
        if timeout is None:
            entry = await self._acquire()
        else:
            entry = await self._acquire_within(timeout)
        try:
            yield entry.sandbox
        finally:
            await self._release(entry)

    async def prewarm(self, n: int) -> int:
        """Start up to ``n`` more idle sandboxes now, concurrently, within ``max_size``.

        Returns:
            How many were started.

        Raises:
            ConfigError: ``n`` is not an int (a bool is refused) or is negative.
            SandboxClosed: The pool is closed.
            Exception: The first error of a failed start, after the others finished.
        """
        check(is_int(n) and n >= 0, "n", n, "an int >= 0 (more than max_size starts max_size)")
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
                self._live -= 1
            else:
                self._put_idle(outcome)
        if errors:
            self._grow()  # sessions that waited on these starts get their own
            raise errors[0]
        return count

    async def _ensure_prewarmed(self) -> None:
        if not self._prewarmed:
            self._prewarmed = True
            await self.prewarm(self._prewarm_target)

    async def _acquire_within(self, timeout: float) -> _Entry:
        expired = False
        try:
            async with self._clock.timeout(timeout):
                try:
                    return await self._acquire()
                except asyncio.CancelledError:
                    expired = True  # the timeout's cancellation, turned into TimeoutError
                    raise
        except TimeoutError:
            if not expired:
                raise  # a TimeoutError of the factory's own, not the wait's
            raise SandboxTimeout(
                timeout,
                max_size=self._max_size,
                pool_size=self._live,
                active=self._busy(),
                waiting=len(self._waiters),
            ) from None

    async def _acquire(self) -> _Entry:
        self._check_open()
        front = False
        while True:
            if self._idle:  # never while sessions wait: _put_idle serves them first
                entry, waited = self._idle.pop(), False
            else:
                entry, waited = await self._wait_turn(front=front), True
            fresh = waited and not entry.sessions  # started for this very session
            if entry.sandbox.healthy and (fresh or await self._probe(entry)):
                break
            # Died while idle: close it in the background and wait again at the head
            # of the queue, so its replacement cannot go to a later session.
            self._replaced += 1
            self._spawn(self._retire(entry))
            front = True
        if waited and not entry.sessions:
            self._misses += 1
        else:
            self._hits += 1
            if entry.sessions:
                self._reused += 1
        entry.sessions += 1
        self._active.add(entry)
        return entry

    async def _probe(self, entry: _Entry) -> bool:
        """Ask a sandbox that can tell (``probe()``) whether it still exists."""
        probe = getattr(entry.sandbox, "probe", None)
        if probe is None:
            return True
        try:
            alive = bool(await probe())
        except asyncio.CancelledError:
            self._put_idle(entry)  # as good as before; the next session probes again
            raise
        except Exception as exc:
            log.warning("probing sandbox %s failed; it is replaced: %r", entry.sandbox.id, exc)
            alive = False
        if not alive:
            self._vanished += 1
        return alive

    async def _wait_turn(self, *, front: bool) -> _Entry:
        turn = self._waiters.park(None, front=front)
        if len(self._waiters) >= 2:  # arrivals outpace the pool: start ahead of them
            self._headroom = max(self._headroom, len(self._waiters))
        self._grow()
        entry = await self._waiters.wait_for(turn)
        if entry not in self._handed:  # close() took it meanwhile
            raise SandboxClosed("the sandbox pool was closed")
        self._handed.discard(entry)
        return entry

    # -- sizing ---------------------------------------------------------------------

    def _busy(self) -> int:
        return len(self._active) + len(self._handed)

    def _starting(self) -> int:
        """Slots held by starts (and closes) in flight."""
        return self._live - self._busy() - len(self._idle)

    def _target_size(self) -> int:
        demand = self._busy() + len(self._waiters) + self._headroom
        return min(self._max_size, max(self._min_size, demand))

    def _grow(self) -> None:
        """Start, concurrently and in the background, what the target lacks."""
        if self._closed:
            return
        for _ in range(self._target_size() - self._live):
            self._live += 1
            self._spawn(self._start_one())

    async def _start_one(self) -> None:
        """Start a sandbox in a slot already reserved; it goes to a waiter or idles."""
        try:
            entry = await self._create()
        except Exception as exc:
            self._live -= 1
            if self._closed:
                return
            if len(self._waiters) > self._starting():
                # A waiter is left with no sandbox coming: it gets the error, as it
                # would have starting its own. No retry here: a failing factory must
                # not spin.
                self._fail_first_waiter(exc)
            else:
                log.warning("starting a sandbox ahead of demand failed: %r", exc)
            return
        except BaseException:
            self._live -= 1
            raise
        self._put_idle(entry)

    async def _create(self) -> _Entry:
        """Make and start one sandbox; the caller has already reserved its slot."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._transitions.add(done)
        began = self._clock.now()
        sandbox: Sandbox | None = None
        try:
            made = self._factory()
            given = await made if inspect.isawaitable(made) else made
            if not all(callable(getattr(given, name, None)) for name in ("start", "run", "close")):
                raise ConfigError(
                    "factory",
                    self._factory,
                    f"a callable returning a sandbox (this one returned {given!r})",
                )
            sandbox = given
            await sandbox.start()
            self._created += 1
            self._startup_total += self._clock.now() - began
            if self._closed:
                raise SandboxClosed("the sandbox pool was closed while a sandbox started")
            return _Entry(sandbox, self._clock.now())
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
        self._abandoned.discard(entry.sandbox)
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
        """Close ``entry``, then free its slot (a waiter or ``min_size`` may refill it)."""
        await _close_quietly(entry.sandbox)
        self._bill(entry)
        self._live -= 1
        self._grow()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task that close() waits for."""
        task = asyncio.get_running_loop().create_task(work)
        self._transitions.add(task)
        task.add_done_callback(self._transitions.discard)

    async def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task that close() waits for and cancellation cannot cut."""
        task = asyncio.ensure_future(work)
        self._transitions.add(task)
        task.add_done_callback(self._transitions.discard)
        await asyncio.shield(task)

    def _take_back(self, entry: _Entry) -> None:
        """A sandbox handed to a session that gave up in that instant: pass it on."""
        if entry in self._handed:
            self._handed.discard(entry)
            self._put_idle(entry)

    def _put_idle(self, entry: _Entry) -> None:
        """Give ``entry`` to the first waiter, or keep it idle."""
        self._handed.add(entry)
        if self._waiters.hand_first(entry):
            return
        self._handed.discard(entry)
        entry.idle_since = self._clock.now()
        self._idle.append(entry)
        self._start_reaper()

    def _fail_first_waiter(self, exc: Exception) -> None:
        self._waiters.fail_first(exc)

    # -- idle expiry ----------------------------------------------------------------

    def _start_reaper(self) -> None:
        if self._max_idle is None or (self._reaper is not None and not self._reaper.done()):
            return
        self._reaper = asyncio.get_running_loop().create_task(
            self._reap(self._max_idle), name="labkit-sandbox-pool-reaper"
        )

    async def _reap(self, max_idle: float) -> None:
        # Stops at min_size; the next sandbox to go idle starts it again.
        while self._idle and not self._closed and self._live > self._min_size:
            oldest = self._idle[0]
            wait = oldest.idle_since + max_idle - self._clock.now()
            if wait > 0:
                await self._clock.sleep(wait)
                continue
            self._idle.popleft()
            self._expired += 1
            # Kept no higher than the idle ones left, so the target never rises above
            # the live count and the expiry cannot trigger a start.
            self._headroom = max(0, min(self._headroom - 1, len(self._idle)))
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
        self._waiters.fail_all(lambda: SandboxClosed("the sandbox pool was closed"))
        while self._transitions:
            await asyncio.wait(set(self._transitions))
        entries = [*self._idle, *self._handed, *self._active]
        self._idle.clear()
        self._handed.clear()
        self._active.clear()
        self._live -= len(entries)
        await asyncio.gather(*(_close_quietly(e.sandbox) for e in entries))
        for entry in entries:
            self._bill(entry)

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxClosed("the sandbox pool is closed")


async def _close_quietly(sandbox: Sandbox) -> None:
    """Close ``sandbox``; a failure to close is logged, never raised over the real error."""
    try:
        await sandbox.close()
    except Exception as exc:
        log.warning("closing sandbox %s failed: %r", getattr(sandbox, "id", "?"), exc)


def _check_options(
    factory: Any, max_size: Any, prewarm: Any, min_size: Any, max_idle: Any, clock: Any
) -> None:
    """Check :class:`SandboxPool`'s options.

    Raises:
        ConfigError: Naming the first option out of range.
    """
    check(callable(factory), "factory", factory, "a callable returning a sandbox")
    check(
        is_int(max_size) and 1 <= max_size <= _MAX_SIZE,
        "max_size",
        max_size,
        f"an int from 1 to {_MAX_SIZE:,}",
    )
    check(
        is_int(prewarm) and 0 <= prewarm <= max_size,
        "prewarm",
        prewarm,
        f"an int from 0 to max_size ({max_size})",
    )
    check(
        is_int(min_size) and 0 <= min_size <= max_size,
        "min_size",
        min_size,
        f"an int from 0 to max_size ({max_size})",
    )
    check(
        max_idle is None or (is_real(max_idle) and max_idle > 0),
        "max_idle",
        max_idle,
        "None or a finite number of seconds > 0",
    )
    check(
        isinstance(clock, Clock) and not isinstance(clock, type),
        "clock",
        clock,
        "a labkit.Clock instance",
    )
