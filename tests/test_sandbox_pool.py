"""SandboxPool with FakeSandbox and FakeClock, plus one run with real LocalSandboxes."""

from __future__ import annotations

import asyncio

import psutil
import pytest

from labkit.errors import ConfigError, SandboxClosed, SandboxStartError, SandboxTimeout
from labkit.sandbox import FakeSandbox, LocalSandbox, SandboxPool, SandboxPoolStats
from labkit.testing import FakeClock

pytestmark = pytest.mark.asyncio


class Factory:
    """Makes FakeSandboxes on a clock and keeps them for inspection."""

    def __init__(self, clock: FakeClock, **options: object) -> None:
        self.clock = clock
        self.options = options
        self.made: list[FakeSandbox] = []

    def __call__(self) -> FakeSandbox:
        sb = FakeSandbox(clock=self.clock, **self.options)  # type: ignore[arg-type]
        self.made.append(sb)
        return sb


async def dies(pid: int) -> bool:
    """Gone (or a zombie: this container's init does not reap) within a second."""
    for _ in range(100):
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        await asyncio.sleep(0.01)
    return False


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_size"):
        SandboxPool(FakeSandbox, max_size=0)
    with pytest.raises(ConfigError, match="prewarm"):
        SandboxPool(FakeSandbox, max_size=2, prewarm=3)
    with pytest.raises(ConfigError, match="max_idle"):
        SandboxPool(FakeSandbox, max_size=2, max_idle=0)


async def test_hits_misses_reuse_and_startup_time() -> None:
    clock = FakeClock(autojump=True)
    factory = Factory(clock, start_latency=0.25)
    async with SandboxPool(factory, max_size=2, clock=clock) as pool:
        async with pool.session() as first:
            await first.run("echo 1")
            assert pool.stats().active == 1
        async with pool.session() as second:
            assert second is first
            assert factory.made[0].resets == 1 and not factory.made[0].dirty
        stats = pool.stats()
        assert isinstance(stats, SandboxPoolStats)
        assert (stats.hits, stats.misses, stats.total_created, stats.total_reused) == (1, 1, 1, 1)
        assert stats.reuse_rate == 0.5
        assert stats.avg_startup_ms == pytest.approx(250.0)
        assert (stats.pool_size, stats.idle, stats.active) == (1, 1, 0)
    assert factory.made[0].closed


async def test_prewarmed_sandboxes_are_hits() -> None:
    clock = FakeClock(autojump=True)
    factory = Factory(clock)
    async with SandboxPool(factory, max_size=3, prewarm=2, clock=clock) as pool:
        assert pool.stats().idle == 2 and len(factory.made) == 2
        assert await pool.prewarm(5) == 1  # capped by max_size
        async with pool.session(), pool.session():
            pass
        stats = pool.stats()
        assert (stats.hits, stats.misses, stats.total_reused, stats.total_created) == (2, 0, 0, 3)
        assert stats.reuse_rate == 1.0


async def test_max_size_caps_live_sandboxes_and_waiters_are_served_fifo() -> None:
    clock = FakeClock()
    factory = Factory(clock)
    pool = SandboxPool(factory, max_size=2, clock=clock)
    order: list[int] = []
    release = asyncio.Event()

    async def user(i: int) -> None:
        async with pool.session() as sb:
            order.append(i)
            await sb.run(f"job {i}")
            await release.wait()

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(user(i)))
        await settle()  # queue them in a known order
    assert order == [0, 1]
    stats = pool.stats()
    assert (stats.active, stats.waiting, stats.pool_size) == (2, 3, 2)
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert len(factory.made) == 2
    stats = pool.stats()
    assert (stats.hits, stats.misses, stats.total_reused) == (3, 2, 3)
    await pool.close()


async def test_unhealthy_sandbox_is_replaced() -> None:
    clock = FakeClock(autojump=True)
    factory = Factory(clock)
    async with SandboxPool(factory, max_size=1, clock=clock) as pool:
        async with pool.session() as sb:
            pass
        factory.made[0].crash()  # died while idle
        async with pool.session() as sb:
            assert sb is factory.made[1]
            sb.crash()  # dies during the session
        async with pool.session() as sb:
            assert sb is factory.made[2]
        stats = pool.stats()
        assert stats.replaced == 2 and stats.total_created == 3 and stats.pool_size == 1
        assert factory.made[0].closed and factory.made[1].closed


async def test_failed_reset_replaces_and_frees_the_slot() -> None:
    clock = FakeClock(autojump=True)
    factory = Factory(clock)
    async with SandboxPool(factory, max_size=1, clock=clock) as pool:
        async with pool.session() as sb:
            assert isinstance(sb, FakeSandbox)
            sb.reset_error = OSError("disk full")
        assert factory.made[0].closed
        assert pool.stats().replaced == 1 and pool.stats().pool_size == 0
        async with pool.session() as sb:
            assert sb is factory.made[1]


async def test_failed_start_frees_the_slot_for_the_next_session() -> None:
    clock = FakeClock(autojump=True)
    factory = Factory(clock, start_error=SandboxStartError("no capacity"))
    pool = SandboxPool(factory, max_size=1, clock=clock)
    with pytest.raises(SandboxStartError):
        async with pool.session():
            pass
    assert pool.stats().pool_size == 0 and factory.made[0].closed
    factory.options.clear()
    async with pool.session() as sb:
        assert (await sb.run("true")).ok
    await pool.close()


async def test_a_session_reset_after_an_error_inside() -> None:
    clock = FakeClock(autojump=True)
    factory = Factory(clock)
    async with SandboxPool(factory, max_size=1, clock=clock) as pool:
        with pytest.raises(RuntimeError):
            async with pool.session() as sb:
                await sb.write_file("x", "1")
                raise RuntimeError("instance failed")
        assert factory.made[0].resets == 1 and not factory.made[0].dirty
        assert pool.stats().idle == 1


async def test_idle_sandboxes_expire_after_max_idle() -> None:
    clock = FakeClock()
    factory = Factory(clock)
    pool = SandboxPool(factory, max_size=2, max_idle=60.0, clock=clock)
    async with pool.session(), pool.session():
        pass
    assert pool.stats().idle == 2
    clock.advance(59.0)
    await settle()
    assert pool.stats().idle == 2
    async with pool.session() as used:  # the most recently returned: its idle time restarts
        pass
    clock.advance(1.5)
    await settle()
    stats = pool.stats()
    assert (stats.idle, stats.expired, stats.pool_size) == (1, 1, 1)
    assert [sb.closed for sb in factory.made] == [sb is not used for sb in factory.made]
    clock.advance(60.0)
    await settle()
    assert pool.stats().idle == 0 and all(sb.closed for sb in factory.made)
    await pool.close()


async def test_cancelled_session_is_reset_before_reuse() -> None:
    clock = FakeClock()
    factory = Factory(clock, latency=100.0)
    pool = SandboxPool(factory, max_size=1, clock=clock)

    async def user() -> None:
        async with pool.session() as sb:
            await sb.run("long")

    task = asyncio.create_task(user())
    await settle()
    assert factory.made[0].running == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    sb = factory.made[0]
    assert sb.cancelled_runs == 1 and sb.resets == 1 and not sb.dirty
    assert pool.stats().idle == 1
    await pool.close()
    assert sb.closed


async def test_close_after_cancellation_leaves_nothing_running() -> None:
    clock = FakeClock()
    factory = Factory(clock, latency=100.0)
    pool = SandboxPool(factory, max_size=3, clock=clock)

    async def user() -> None:
        async with pool.session() as sb:
            await sb.run("long")

    tasks = [asyncio.create_task(user()) for _ in range(5)]
    await settle()
    assert pool.stats().active == 3 and pool.stats().waiting == 2
    for task in tasks:
        task.cancel()
    await pool.close()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError | SandboxClosed) for r in results)
    assert len(factory.made) == 3
    assert all(sb.closed and sb.running == 0 for sb in factory.made)
    assert pool.stats().pool_size == 0
    with pytest.raises(SandboxClosed):
        async with pool.session():
            pass


async def test_close_while_sessions_run_closes_their_sandboxes() -> None:
    clock = FakeClock()
    factory = Factory(clock, latency=100.0)
    pool = SandboxPool(factory, max_size=1, clock=clock)
    started = asyncio.Event()

    async def user() -> None:
        async with pool.session() as sb:
            started.set()
            await sb.run("long")

    task = asyncio.create_task(user())
    waiter = asyncio.create_task(user())
    await started.wait()
    await pool.close()
    assert factory.made[0].closed
    with pytest.raises(SandboxClosed):
        await waiter
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert factory.made[0].running == 0 and len(factory.made) == 1


async def test_async_factory_and_cancelled_waiter_keeps_fifo() -> None:
    clock = FakeClock(autojump=True)
    made: list[FakeSandbox] = []

    async def factory() -> FakeSandbox:
        await clock.sleep(0.5)
        made.append(FakeSandbox(clock=clock))
        return made[-1]

    pool = SandboxPool(factory, max_size=1, clock=clock)
    gate = asyncio.Event()
    served: list[str] = []

    async def user(name: str) -> None:
        async with pool.session():
            served.append(name)
            await gate.wait()

    first = asyncio.create_task(user("first"))
    await asyncio.sleep(0.01)
    quitter = asyncio.create_task(user("quitter"))
    last = asyncio.create_task(user("last"))
    await settle()
    quitter.cancel()
    gate.set()
    await asyncio.gather(first, last, return_exceptions=True)
    assert quitter.cancelled()
    assert served == ["first", "last"]
    assert pool.stats().avg_startup_ms == pytest.approx(500.0)
    await pool.close()


async def test_real_local_sandboxes_are_reused_and_cleaned_up() -> None:
    paths = set()
    async with SandboxPool(LocalSandbox, max_size=2, prewarm=2) as pool:

        async def job(i: int) -> tuple[str, str]:
            async with pool.session() as sb:
                assert isinstance(sb, LocalSandbox)
                paths.add(sb.path)
                leftover = (await sb.run("ls")).stdout
                await sb.write_file(f"out{i}.txt", str(i))
                await sb.run("sleep 30 & echo $! > bg.pid")
                pid = (await sb.read_file("bg.pid")).decode().strip()
                return leftover, pid

        outcomes = await asyncio.gather(*(job(i) for i in range(6)))
        stats = pool.stats()
        assert stats.total_created == 2 and stats.hits == 6 and stats.total_reused == 4
        assert all(leftover == "" for leftover, _ in outcomes)  # each session starts clean
        pids = [int(pid) for _, pid in outcomes]
    assert len(paths) == 2 and all(p is not None and not p.exists() for p in paths)
    for pid in pids:
        assert await dies(pid)


# -- auto-scaling: target size, growth ahead of demand, min_size, capacity -----------


class Holders:
    """Sessions that enter the pool, note when and with what, and stay until released."""

    def __init__(self, pool: SandboxPool, clock: FakeClock) -> None:
        self.pool = pool
        self.clock = clock
        self.release = asyncio.Event()
        self.entered: list[float] = []
        self.got: list[FakeSandbox] = []
        self.tasks: list[asyncio.Task[None]] = []

    def add(self, n: int = 1) -> None:
        self.tasks += [asyncio.create_task(self._hold()) for _ in range(n)]

    async def _hold(self) -> None:
        async with self.pool.session() as sb:
            assert isinstance(sb, FakeSandbox)
            self.entered.append(self.clock.now())
            self.got.append(sb)
            await self.release.wait()

    async def finish(self) -> list[object]:
        self.release.set()
        return await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_min_size_is_validated() -> None:
    with pytest.raises(ConfigError, match="min_size"):
        SandboxPool(FakeSandbox, max_size=2, min_size=3)
    with pytest.raises(ConfigError, match="min_size"):
        SandboxPool(FakeSandbox, max_size=2, min_size=-1)


async def test_waiting_sessions_get_sandboxes_started_concurrently() -> None:
    clock = FakeClock()
    factory = Factory(clock, start_latency=1.0)
    pool = SandboxPool(factory, max_size=4, clock=clock)
    t0 = clock.now()
    users = Holders(pool, clock)
    users.add(4)
    await settle()
    stats = pool.stats()
    assert (stats.waiting, stats.starting, stats.target_size) == (4, 4, 4)
    assert clock.sleeps == [1.0] * 4  # four starts in flight at once
    clock.advance(1.0)  # one start time serves all four: serial starts would serve one
    await settle()
    assert users.entered == [t0 + 1.0] * 4
    stats = pool.stats()
    assert (stats.active, stats.waiting, stats.misses, stats.total_created) == (4, 0, 4, 4)
    await users.finish()
    await pool.close()


async def test_one_waiting_session_starts_one_sandbox() -> None:
    clock = FakeClock()
    factory = Factory(clock, start_latency=1.0)
    pool = SandboxPool(factory, max_size=8, clock=clock)
    users = Holders(pool, clock)
    users.add()
    await settle()
    assert (pool.stats().target_size, pool.stats().pool_size) == (1, 1)
    assert pool.capacity() == 7  # its start holds one slot; the waiter is not counted twice
    clock.advance(1.0)
    await settle()
    assert len(factory.made) == 1 and pool.stats().idle == 0
    await users.finish()
    await pool.close()


async def test_a_burst_of_waiters_starts_headroom_ahead_of_demand() -> None:
    clock = FakeClock()
    factory = Factory(clock, start_latency=1.0)
    pool = SandboxPool(factory, max_size=8, clock=clock)
    users = Holders(pool, clock)
    users.add(4)
    await settle()
    stats = pool.stats()
    assert (stats.waiting, stats.starting, stats.target_size) == (4, 8, 8)
    clock.advance(1.0)
    await settle()
    stats = pool.stats()
    assert (stats.active, stats.idle, stats.misses) == (4, 4, 4)
    users.add()  # the next arrival finds a sandbox already started
    await settle()
    stats = pool.stats()
    assert (stats.active, stats.hits, stats.total_created, stats.starting) == (5, 1, 8, 0)
    await users.finish()
    await pool.close()


async def test_headroom_never_exceeds_max_size() -> None:
    clock = FakeClock()
    factory = Factory(clock, start_latency=1.0)
    pool = SandboxPool(factory, max_size=5, clock=clock)
    users = Holders(pool, clock)
    users.add(4)
    await settle()
    assert (pool.stats().pool_size, pool.stats().target_size) == (5, 5)
    clock.advance(1.0)
    await settle()
    assert len(factory.made) == 5 and pool.stats().idle == 1
    await users.finish()
    await pool.close()


async def test_a_returned_sandbox_serves_a_waiter_before_its_start_ends() -> None:
    clock = FakeClock()
    factory = Factory(clock, start_latency=10.0)
    pool = SandboxPool(factory, max_size=2, clock=clock)
    first = Holders(pool, clock)
    first.add()
    await settle()
    clock.advance(10.0)
    await settle()
    assert first.got == [factory.made[0]]
    second = Holders(pool, clock)
    second.add()
    await settle()
    assert pool.stats().starting == 1  # a second sandbox is on its way
    clock.advance(1.0)
    await first.finish()
    await settle()
    # Served by the returned sandbox 9 s before the new one is up.
    assert second.got == [factory.made[0]] and second.entered == [first.entered[0] + 1.0]
    assert pool.stats().starting == 1 and pool.stats().hits == 1
    clock.advance(9.0)
    await settle()
    stats = pool.stats()
    assert (stats.idle, stats.active, stats.pool_size, stats.misses) == (1, 1, 2, 1)
    await second.finish()
    await pool.close()


async def test_idle_sandboxes_shrink_back_to_min_size() -> None:
    clock = FakeClock()
    factory = Factory(clock)
    pool = SandboxPool(factory, max_size=4, min_size=1, max_idle=30.0, clock=clock)
    async with pool:
        users = Holders(pool, clock)
        users.add(5)
        await settle()
        assert (pool.stats().active, pool.stats().waiting, pool.stats().pool_size) == (4, 1, 4)
        await users.finish()
        await settle()
        stats = pool.stats()
        assert (stats.idle, stats.target_size) == (4, 4)
        clock.advance(31.0)
        await settle()
        stats = pool.stats()
        assert (stats.idle, stats.pool_size, stats.expired) == (1, 1, 3)
        assert (stats.target_size, stats.min_size) == (1, 1)
        kept = [sb for sb in factory.made if not sb.closed]
        assert len(kept) == 1
        clock.advance(300.0)  # min_size is kept however long it idles
        await settle()
        assert pool.stats().idle == 1 and not kept[0].closed and len(factory.made) == 4
        before = pool.stats()
        async with pool.session() as sb:
            assert sb is kept[0]
        after = pool.stats()
        assert (after.hits, after.misses) == (before.hits + 1, before.misses)
    assert kept[0].closed


async def test_min_size_is_started_on_open_and_refilled() -> None:
    clock = FakeClock(autojump=True)
    factory = Factory(clock, start_latency=0.5)
    async with SandboxPool(factory, max_size=4, min_size=2, clock=clock) as pool:
        stats = pool.stats()
        assert (stats.idle, stats.pool_size, stats.target_size) == (2, 2, 2)
        async with pool.session() as sb:
            sb.crash()
        await asyncio.sleep(0.01)  # the replacement starts in the background
        stats = pool.stats()
        assert (stats.replaced, stats.idle, stats.pool_size, stats.total_created) == (1, 2, 2, 3)
        assert stats.misses == 0


async def test_capacity_before_while_and_after_sessions() -> None:
    clock = FakeClock()
    factory = Factory(clock)
    pool = SandboxPool(factory, max_size=3, prewarm=1, clock=clock)
    assert pool.capacity() == 3
    async with pool:
        assert pool.stats().idle == 1 and pool.capacity() == 3
        users = Holders(pool, clock)
        users.add(2)
        await settle()
        assert pool.capacity() == 1
        assert int(pool.capacity() * 0.8) == 0  # the 80% rule holds off at one free
        users.add(3)
        await settle()
        assert (pool.stats().active, pool.stats().waiting) == (3, 2)
        assert pool.capacity() == 0
        await users.finish()
        await settle()
        assert pool.stats().idle == 3 and pool.capacity() == 3
    assert pool.capacity() == 0


async def test_a_batch_sized_by_capacity_is_served_in_one_start_time() -> None:
    clock = FakeClock()
    factory = Factory(clock, start_latency=1.0)
    pool = SandboxPool(factory, max_size=10, prewarm=2, clock=clock)
    busy = Holders(pool, clock)
    busy.add(1)
    await settle()
    clock.advance(1.0)
    await settle()
    assert pool.stats().active == 1 and pool.capacity() == 9
    n = int(pool.capacity() * 0.8)
    batch = Holders(pool, clock)
    batch.add(n)
    await settle()
    stats = pool.stats()
    # The idle one serves at once; the other six start together, with headroom.
    assert n == 7 and (stats.active, stats.waiting, stats.starting) == (2, 6, 8)
    clock.advance(1.0)
    await settle()
    stats = pool.stats()
    assert (stats.active, stats.waiting, stats.idle) == (8, 0, 2)
    assert max(batch.entered) == busy.entered[0] + 1.0
    assert pool.capacity() == 2
    await busy.finish()
    await batch.finish()
    await pool.close()


async def test_failing_starts_fail_their_waiters_without_retrying() -> None:
    clock = FakeClock(autojump=True)
    factory = Factory(clock, start_latency=1.0, start_error=SandboxStartError("no capacity"))
    pool = SandboxPool(factory, max_size=6, clock=clock)

    async def user() -> None:
        async with pool.session():
            pass

    async with clock.timeout(100.0):  # a pool retrying in a loop never lets them fail
        results = await asyncio.gather(*(user() for _ in range(3)), return_exceptions=True)
        await clock.sleep(10.0)
    assert all(isinstance(r, SandboxStartError) for r in results)
    assert len(factory.made) == 6  # 3 for the waiters, 3 headroom; nothing retried
    assert all(sb.closed for sb in factory.made)
    assert pool.stats().pool_size == 0 and pool.stats().waiting == 0
    await pool.close()


async def test_a_cancelled_waiter_leaves_its_sandbox_to_the_pool() -> None:
    clock = FakeClock()
    factory = Factory(clock, start_latency=5.0)
    pool = SandboxPool(factory, max_size=2, clock=clock)
    users = Holders(pool, clock)
    users.add()
    await settle()
    users.tasks[0].cancel()
    await asyncio.gather(*users.tasks, return_exceptions=True)
    assert pool.stats().waiting == 0 and pool.stats().starting == 1
    assert pool.capacity() == 1  # the slot of the start in flight is not free
    clock.advance(5.0)
    await settle()
    stats = pool.stats()
    assert (stats.idle, stats.pool_size) == (1, 1) and pool.capacity() == 2
    async with pool.session() as sb:
        assert sb is factory.made[0]
    await pool.close()


# -- session timeout, vanished sandboxes, cost ------------------------------------------


async def test_session_timeout_names_size_active_and_waiting() -> None:
    clock = FakeClock()
    pool = SandboxPool(Factory(clock), max_size=1, clock=clock)
    async with pool.session():
        blocked = asyncio.create_task(pool.session(timeout=100.0).__aenter__())
        await settle()
        timing_out = asyncio.create_task(pool.session(timeout=5.0).__aenter__())
        await settle()
        assert pool.stats().waiting == 2
        clock.advance(5.0)
        with pytest.raises(SandboxTimeout) as info:
            await timing_out
        assert isinstance(info.value, TimeoutError)
        error = info.value
        assert (error.timeout, error.max_size, error.pool_size) == (5.0, 1, 1)
        assert (error.active, error.waiting) == (1, 1)
        assert "pool size 1 of max_size 1, 1 active, 1 other sessions waiting" in str(error)
        assert pool.stats().waiting == 1  # the timed-out session left the queue
    sb = await blocked  # the earlier waiter still gets the sandbox, in its turn
    assert sb is not None
    await pool.close()
    with pytest.raises(ConfigError, match="timeout"):
        async with pool.session(timeout=0):
            pass


async def test_session_timeout_does_not_fire_on_a_hit() -> None:
    clock = FakeClock()
    pool = SandboxPool(Factory(clock), max_size=1, prewarm=1, clock=clock)
    async with pool, pool.session(timeout=0.001) as sb:
        clock.advance(10.0)  # the block itself is not limited
        assert (await sb.run("true")).ok


class Vanishing(FakeSandbox):
    """A FakeSandbox whose backing VM can disappear while it idles (probe says so)."""

    __slots__ = ("gone", "probes")

    def __init__(self, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.gone = False
        self.probes = 0

    async def probe(self) -> bool:
        self.probes += 1
        return not self.gone


async def test_a_vanished_sandbox_is_detected_at_session_start_and_replaced() -> None:
    clock = FakeClock()
    made: list[Vanishing] = []

    def factory() -> Vanishing:
        made.append(Vanishing(clock=clock))
        return made[-1]

    async with SandboxPool(factory, max_size=1, prewarm=1, clock=clock) as pool:
        made[0].gone = True
        async with pool.session() as sb:
            assert sb is made[1]
        stats = pool.stats()
        assert (stats.vanished, stats.replaced, stats.total_created) == (1, 1, 2)
        assert made[0].closed and made[0].probes == 1
        async with pool.session() as sb:
            assert sb is made[1] and made[1].probes == 1  # probed each time it is handed out


class Priced(FakeSandbox):
    __slots__ = ()
    price_per_second = 0.001


async def test_stats_count_the_dollars_spent_while_sandboxes_live() -> None:
    clock = FakeClock()
    pool = SandboxPool(lambda: Priced(clock=clock), max_size=2, max_idle=60.0, clock=clock)
    async with pool.session(), pool.session():
        clock.advance(10.0)
        assert pool.stats().cost_usd == pytest.approx(2 * 10 * 0.001)
    clock.advance(61.0)  # both idle past max_idle: closed, no longer billed
    await settle()
    assert pool.stats().pool_size == 0
    spent = pool.stats().cost_usd
    assert spent == pytest.approx(2 * 71 * 0.001)
    clock.advance(1000.0)
    assert pool.stats().cost_usd == pytest.approx(spent)
    await pool.close()
    async with SandboxPool(Factory(clock), max_size=1, clock=clock) as free:
        async with free.session():
            clock.advance(5.0)
        assert free.stats().cost_usd == 0.0  # sandboxes without a price cost nothing
