"""SandboxPool with FakeSandbox and FakeClock, plus one run with real LocalSandboxes."""

from __future__ import annotations

import asyncio

import psutil
import pytest

from labkit.errors import ConfigError, SandboxClosed, SandboxStartError
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
