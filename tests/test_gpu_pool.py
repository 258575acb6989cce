"""GPUPool logic on a StaticInventory with a FakeClock: no GPU, no real waiting."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import random

import pandas as pd
import pytest

from labkit.errors import ConfigError, GPUTimeout, GPUUnavailable
from labkit.gpu import GPU, GPUAllocation, GPUPool, StaticInventory, score, static_fleet
from labkit.testing import FakeClock


async def settle() -> None:
    """Let every runnable task take its next steps."""
    for _ in range(10):
        await asyncio.sleep(0)


def make_pool(
    n: int = 4, *, max_parallel: int | None = None, autojump: bool = False
) -> tuple[GPUPool, StaticInventory, FakeClock]:
    inventory = static_fleet(n, memory_mb=80_000)
    clock = FakeClock(autojump=autojump)
    return GPUPool(inventory, max_parallel, clock=clock), inventory, clock


# --- inventory and devices -------------------------------------------------------------


def test_static_fleet_has_distinct_stable_uuids() -> None:
    fleet = static_fleet(8)
    uuids = [gpu.uuid for gpu in fleet.devices()]
    assert len(set(uuids)) == 8
    assert all(u.startswith("GPU-") for u in uuids)
    assert uuids == [gpu.uuid for gpu in static_fleet(8).devices()]
    assert fleet[3].name == "NVIDIA H100 80GB HBM3"
    assert fleet[3].memory_used_mb == 0


def test_static_inventory_set_simulates_load_and_validates() -> None:
    fleet = static_fleet(2, memory_mb=1000)
    updated = fleet.set(1, memory_free_mb=250, utilization=0.5)
    assert fleet[1] == updated
    assert (updated.memory_free_mb, updated.memory_used_mb, updated.utilization) == (250, 750, 0.5)
    assert fleet[0].memory_free_mb == 1000
    with pytest.raises(ConfigError, match="memory_free_mb"):
        fleet.set(0, memory_free_mb=2000)
    with pytest.raises(ConfigError, match="utilization"):
        fleet.set(0, utilization=55.0)
    with pytest.raises(ConfigError, match="uuid"):
        fleet.set(0, uuid="GPU-other")
    with pytest.raises(ConfigError, match="index"):
        fleet.set(7, utilization=0.1)


def test_static_inventory_rejects_duplicate_uuids() -> None:
    with pytest.raises(ConfigError, match="unique UUIDs"):
        StaticInventory([GPU(0, "GPU-a"), GPU(1, "GPU-a")])


# --- choice ----------------------------------------------------------------------------


def test_score_weights_free_memory_and_idleness() -> None:
    assert score(GPU(0, "GPU-a", "", 100, 100, 0.0)) == pytest.approx(1.0)
    assert score(GPU(0, "GPU-a", "", 100, 0, 1.0)) == pytest.approx(0.0)
    assert score(GPU(0, "GPU-a", "", 100, 50, 0.25)) == pytest.approx(0.6 * 0.5 + 0.4 * 0.75)
    # Unknown utilization counts as idle, unknown memory as none free.
    assert score(GPU(0, "MIG-a", "", 100, 100, None)) == pytest.approx(1.0)
    assert score(GPU(0, "GPU-a", "", None, None, 0.0)) == pytest.approx(0.4)


@pytest.mark.asyncio
async def test_acquire_takes_the_highest_scoring_gpus_first() -> None:
    pool, fleet, _ = make_pool(3)
    fleet.set(0, memory_free_mb=8_000, utilization=0.0)  # 0.06 + 0.40 = 0.46
    fleet.set(1, memory_free_mb=80_000, utilization=0.9)  # 0.60 + 0.04 = 0.64
    fleet.set(2, memory_free_mb=64_000, utilization=0.1)  # 0.48 + 0.36 = 0.84
    async with pool.acquire(gpus=2) as alloc:
        assert alloc.indices == (2, 1)
        assert alloc.uuids == (fleet[2].uuid, fleet[1].uuid)
        async with pool.acquire(gpus=1) as rest:
            assert rest.indices == (0,)


@pytest.mark.asyncio
async def test_min_memory_skips_gpus_without_enough_free_memory() -> None:
    pool, fleet, _ = make_pool(3)
    fleet.set(0, memory_free_mb=10_000)
    fleet.set(1, memory_free_mb=30_000, utilization=1.0)
    fleet.set(2, memory_free_mb=20_000)
    alloc = await pool.acquire(gpus=1, min_memory_mb=25_000)
    assert alloc.indices == (1,)  # the only one with enough memory, busy or not
    pool.release(alloc)


@pytest.mark.asyncio
async def test_unknown_free_memory_never_meets_a_memory_minimum() -> None:
    fleet = StaticInventory([GPU(0, "GPU-a", "", None, None, None), GPU(1, "GPU-b", "", 100, 60)])
    pool = GPUPool(fleet, clock=FakeClock())
    alloc = await pool.acquire(gpus=1, min_memory_mb=50)
    assert alloc.indices == (1,)
    with pytest.raises(GPUUnavailable, match="min_memory_mb=50"):
        await pool.acquire(gpus=2, min_memory_mb=50)
    any_gpu = await pool.acquire(gpus=1)  # without a minimum, unknown memory is fine
    assert any_gpu.indices == (0,)


# --- impossible and invalid requests ---------------------------------------------------


@pytest.mark.asyncio
async def test_impossible_requests_fail_at_once() -> None:
    pool, _, clock = make_pool(2)
    with pytest.raises(GPUUnavailable, match=r"gpus=3 .*2 GPU"):
        await pool.acquire(gpus=3)
    with pytest.raises(GPUUnavailable, match=r"min_memory_mb=90000 .*largest: 80000 MB"):
        await pool.acquire(gpus=1, min_memory_mb=90_000)
    assert clock.now() == 0.0
    assert pool.stats().queue_length == 0


@pytest.mark.asyncio
async def test_impossible_even_while_busy_fails_instead_of_queueing() -> None:
    pool, _, _ = make_pool(2)
    async with pool.acquire(gpus=2):
        with pytest.raises(GPUUnavailable):
            await pool.acquire(gpus=3)
        assert pool.stats().queue_length == 0


def test_invalid_options_raise_config_error_naming_the_option() -> None:
    pool, _, _ = make_pool(2)
    with pytest.raises(ConfigError, match="gpus=-1"):
        pool.acquire(gpus=-1)
    with pytest.raises(ValueError, match="min_memory_mb=-5"):
        pool.acquire(gpus=1, min_memory_mb=-5)
    with pytest.raises(ConfigError, match="timeout=-1"):
        pool.acquire(timeout=-1)
    with pytest.raises(ConfigError, match="max_parallel=0"):
        GPUPool(static_fleet(1), max_parallel=0)


@pytest.mark.asyncio
async def test_empty_fleet_serves_zero_gpu_requests_only() -> None:
    pool = GPUPool(StaticInventory([]), clock=FakeClock())
    async with pool.acquire(gpus=0, owner="cpu-job") as alloc:
        assert alloc.indices == () and alloc.uuids == ()
        assert alloc.env == {"CUDA_VISIBLE_DEVICES": ""}
        assert pool.stats().active == 1
    assert pool.stats().active == 0
    with pytest.raises(GPUUnavailable, match="gpus=0"):
        await pool.acquire(gpus=1)


# --- allocations -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_allocation_is_frozen_hashable_and_carries_env() -> None:
    pool, fleet, _ = make_pool(4)
    first = await pool.acquire(gpus=2, owner="run-1")
    second = await pool.acquire(gpus=1)
    assert first.env == {"CUDA_VISIBLE_DEVICES": f"{fleet[0].uuid},{fleet[1].uuid}"}
    assert first.owner == "run-1" and len(first) == 2
    assert len({first, second, first}) == 2
    assert first != second
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.owner = "someone else"  # type: ignore[misc]
    env = first.env
    env["OTHER"] = "1"
    assert "OTHER" not in first.env


@pytest.mark.asyncio
async def test_request_can_be_awaited_only_once() -> None:
    pool, _, _ = make_pool(2)
    request = pool.acquire()
    alloc = await request
    with pytest.raises(RuntimeError, match="already awaited"):
        await request
    pool.release(alloc)


@pytest.mark.asyncio
async def test_two_step_acquire_holds_until_release() -> None:
    pool, _, _ = make_pool(1)
    alloc = await pool.acquire(gpus=1)
    assert pool.stats().gpus_allocated == 1
    with pytest.raises(GPUTimeout):
        await pool.acquire(gpus=1, timeout=0)
    pool.release(alloc)
    assert pool.stats().gpus_allocated == 0
    again = await pool.acquire(gpus=1, timeout=0)
    assert again.indices == alloc.indices and again != alloc


@pytest.mark.asyncio
async def test_double_and_stale_release_do_nothing() -> None:
    pool, _, _ = make_pool(1)
    old = await pool.acquire()
    pool.release(old)
    new = await pool.acquire()  # same GPU, same owner: a different allocation
    pool.release(old)
    assert pool.stats().gpus[0].allocation_id == new.id
    foreign = GPUAllocation(id=new.id, indices=new.indices, uuids=new.uuids)
    pool.release(foreign)
    assert pool.stats().gpus_allocated == 1
    async with pool.acquire(gpus=0) as zero:
        pool.release(zero)  # explicit release inside the block is harmless
    pool.release(new)
    assert pool.stats().gpus_allocated == 0


# --- fairness --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fifo_head_is_never_overtaken_by_a_request_that_fits() -> None:
    pool, _, _ = make_pool(2)
    held = await pool.acquire(gpus=1)
    big = asyncio.create_task(pool.acquire(gpus=2).__aenter__())
    await settle()
    small = asyncio.create_task(pool.acquire(gpus=1).__aenter__())
    await settle()
    # One GPU is free and `small` would fit, but `big` came first.
    assert not big.done() and not small.done()
    assert pool.stats().queue_length == 2
    pool.release(held)
    await settle()
    assert big.done() and not small.done()
    pool.release(big.result())
    await settle()
    assert small.done()
    pool.release(small.result())


@pytest.mark.asyncio
async def test_large_request_is_not_starved_by_a_stream_of_small_ones() -> None:
    pool, _, clock = make_pool(4, autojump=True)
    order: list[str] = []

    async def job(name: str, gpus: int, hold: float) -> None:
        async with pool.acquire(gpus=gpus, owner=name):
            order.append(name)
            await clock.sleep(hold)

    async def stream() -> None:
        # 1-GPU jobs arriving every 0.25 s: from t=1 on, each would fit into a freed GPU.
        for i in range(3, 20):
            await clock.sleep(0.25)
            tg.create_task(job(f"s{i}", 1, 0.5))

    async with asyncio.TaskGroup() as tg:
        for i in range(3):
            tg.create_task(job(f"s{i}", 1, 1.0 + i))
        await settle()
        tg.create_task(job("big", 4, 1.0))
        await settle()
        tg.create_task(stream())
    assert order.index("big") == 3
    assert pool.stats().allocations == 21


@pytest.mark.asyncio
async def test_no_gpu_is_ever_held_twice_under_many_contenders() -> None:
    pool, fleet, clock = make_pool(8, autojump=True)
    rng = random.Random(7)
    holding: dict[str, str] = {}
    peak = 0

    async def contender(name: str) -> None:
        nonlocal peak
        gpus = rng.choice([1, 1, 1, 2, 3, 8])
        async with pool.acquire(gpus=gpus, owner=name) as alloc:
            assert len(set(alloc.uuids)) == gpus
            for uuid in alloc.uuids:
                assert uuid not in holding, f"{uuid} held by {holding[uuid]} and {name}"
                holding[uuid] = name
            peak = max(peak, len(holding))
            try:
                await clock.sleep(rng.uniform(0.1, 3.0))
                if rng.random() < 0.2:
                    raise RuntimeError("instance failed")  # must still release
            finally:
                for uuid in alloc.uuids:
                    del holding[uuid]

    results = await asyncio.gather(*(contender(f"c{i}") for i in range(48)), return_exceptions=True)
    failures = [r for r in results if r is not None]
    assert failures and all(str(r) == "instance failed" for r in failures)
    stats = pool.stats()
    assert stats.allocations == 48
    assert stats.gpus_allocated == 0 and stats.active == 0 and stats.queue_length == 0
    assert peak == 8
    assert len(fleet) == 8


# --- timeouts, cancellation, errors ----------------------------------------------------


@pytest.mark.asyncio
async def test_timeout_raises_gpu_timeout_and_leaves_the_queue() -> None:
    pool, _, clock = make_pool(1)
    held = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire(timeout=5.0).__aenter__())
    await settle()
    clock.advance(4.9)
    await settle()
    assert not waiter.done()
    clock.advance(0.2)
    await settle()
    with pytest.raises(GPUTimeout, match=r"timeout=5\.0") as info:
        waiter.result()
    assert isinstance(info.value, TimeoutError)
    stats = pool.stats()
    assert (stats.timeouts, stats.queue_length, stats.gpus_allocated) == (1, 0, 1)
    pool.release(held)
    assert pool.stats().gpus_allocated == 0


@pytest.mark.asyncio
async def test_timeout_zero_takes_only_what_is_free_now() -> None:
    pool, _, _ = make_pool(2)
    alloc = await pool.acquire(gpus=2, timeout=0)
    with pytest.raises(GPUTimeout, match="timeout=0"):
        await pool.acquire(gpus=1, timeout=0)
    assert pool.stats().timeouts == 1
    pool.release(alloc)


@pytest.mark.asyncio
async def test_cancelled_waiter_leaves_the_queue_and_wakes_the_next() -> None:
    pool, _, _ = make_pool(2)
    held = await pool.acquire(gpus=1)
    blocked_head = asyncio.create_task(pool.acquire(gpus=2).__aenter__())
    await settle()
    behind = asyncio.create_task(pool.acquire(gpus=1, owner="behind").__aenter__())
    await settle()
    assert pool.stats().queue_length == 2 and not behind.done()
    blocked_head.cancel()
    await settle()
    assert blocked_head.cancelled()
    assert behind.done() and behind.result().owner == "behind"
    stats = pool.stats()
    assert (stats.queue_length, stats.cancelled, stats.gpus_allocated) == (0, 1, 2)
    pool.release(held)
    pool.release(behind.result())


@pytest.mark.asyncio
async def test_waiter_cancelled_in_the_instant_it_is_served_gives_the_gpus_back() -> None:
    pool, _, _ = make_pool(1)
    held = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire().__aenter__())
    await settle()
    pool.release(held)  # the waiter's future now holds an allocation...
    waiter.cancel()  # ...but the waiter is cancelled before it can see it
    await settle()
    assert waiter.cancelled()
    stats = pool.stats()
    assert (stats.gpus_allocated, stats.active, stats.queue_length) == (0, 0, 0)


@pytest.mark.asyncio
async def test_block_that_raises_releases_its_gpus() -> None:
    pool, _, _ = make_pool(2)
    with pytest.raises(ZeroDivisionError):
        async with pool.acquire(gpus=2):
            assert pool.stats().gpus_allocated == 2
            1 / 0  # noqa: B018
    assert pool.stats().gpus_allocated == 0


@pytest.mark.asyncio
async def test_cancelled_holder_releases_its_gpus() -> None:
    pool, _, clock = make_pool(2)

    async def hold() -> None:
        async with pool.acquire(gpus=2):
            await clock.sleep(100)

    holder = asyncio.create_task(hold())
    await settle()
    assert pool.stats().gpus_allocated == 2
    holder.cancel()
    await settle()
    assert holder.cancelled()
    assert pool.stats().gpus_allocated == 0


# --- capacity changes, max_parallel ----------------------------------------------------


@pytest.mark.asyncio
async def test_waiter_on_memory_is_served_when_a_poll_sees_memory_freed() -> None:
    pool, fleet, clock = make_pool(1)
    fleet.set(0, memory_free_mb=1_000, utilization=0.9)  # another user's job
    waiter = asyncio.create_task(pool.acquire(min_memory_mb=40_000).__aenter__())
    await settle()
    clock.advance(1.0)
    await settle()
    assert not waiter.done()
    fleet.set(0, memory_free_mb=79_000, utilization=0.0)  # that job ended
    clock.advance(1.0)
    await settle()
    assert waiter.done() and waiter.result().indices == (0,)
    assert 1.0 in clock.sleeps  # polled on the injected clock
    assert pool.stats().mean_wait_s == pytest.approx(2.0)
    pool.release(waiter.result())


@pytest.mark.asyncio
async def test_refresh_serves_waiters_without_waiting_for_a_poll() -> None:
    pool, fleet, _ = make_pool(1)
    fleet.set(0, memory_free_mb=0)
    waiter = asyncio.create_task(pool.acquire(min_memory_mb=1).__aenter__())
    await settle()
    fleet.set(0, memory_free_mb=50_000)
    pool.refresh()
    await settle()
    assert waiter.done()
    pool.release(waiter.result())


@pytest.mark.asyncio
async def test_polling_stops_when_nobody_waits() -> None:
    pool, _, clock = make_pool(1)
    held = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire().__aenter__())
    await settle()
    assert clock.pending == 1  # the poll
    pool.release(held)
    await settle()
    assert waiter.done()
    clock.advance(1.0)  # fire the cancelled poll's timer, if any is left
    await settle()
    assert clock.pending == 0
    pool.release(waiter.result())


@pytest.mark.asyncio
async def test_max_parallel_caps_concurrent_allocations() -> None:
    pool, _, _ = make_pool(8, max_parallel=2)
    a = await pool.acquire(gpus=1)
    b = await pool.acquire(gpus=0)
    third = asyncio.create_task(pool.acquire(gpus=1).__aenter__())
    await settle()
    assert not third.done()
    assert pool.stats().active == 2 and pool.stats().max_parallel == 2
    pool.release(b)
    await settle()
    assert third.done()
    pool.release(a)
    pool.release(third.result())


# --- stats -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stats_and_snapshot_show_owners_queue_and_waits() -> None:
    pool, fleet, clock = make_pool(2)
    fleet.set(1, memory_free_mb=20_000, utilization=0.5)
    first = await pool.acquire(gpus=1, owner="inst-0")
    second = await pool.acquire(gpus=1, owner="inst-1")
    waiter = asyncio.create_task(pool.acquire(gpus=1, owner="inst-2").__aenter__())
    await settle()
    stats = pool.stats()
    assert stats.queue_length == 1
    assert [g.owner for g in stats.gpus] == ["inst-0", "inst-1"]
    assert stats.gpus[1].memory_used_mb == 60_000
    assert stats.gpus[1].utilization == 0.5
    assert stats.gpus[0].allocated
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.queue_length = 0  # type: ignore[misc]
    clock.advance(3.0)
    pool.release(first)
    await settle()
    stats = pool.stats()
    assert stats.allocations == 3
    assert stats.max_wait_s == pytest.approx(3.0)
    assert stats.mean_wait_s == pytest.approx(1.0)
    assert stats.gpus[0].owner == "inst-2"
    frame = pd.DataFrame(pool.snapshot())
    assert list(frame["owner"]) == ["inst-2", "inst-1"]
    assert list(frame["allocated"]) == [True, True]
    assert {"index", "uuid", "name", "memory_free_mb", "utilization", "score"} <= set(frame)
    pool.release(second)
    pool.release(waiter.result())
    assert pool.stats().gpus_allocated == 0


@pytest.mark.asyncio
async def test_stats_survive_an_unreadable_inventory() -> None:
    class Flaky:
        def __init__(self) -> None:
            self.fail = False
            self.fleet = static_fleet(2)

        def devices(self) -> tuple[GPU, ...]:
            if self.fail:
                raise GPUUnavailable("GPU has fallen off the bus")
            return self.fleet.devices()

    inventory = Flaky()
    pool = GPUPool(inventory, clock=FakeClock())
    alloc = await pool.acquire(owner="x")
    inventory.fail = True
    stats = pool.stats()
    assert len(stats.gpus) == 2 and stats.gpus[0].owner == "x"
    pool.release(alloc)  # serving the (empty) queue must not raise either
    assert pool.stats().gpus_allocated == 0


# --- real clock, several event loops ---------------------------------------------------


@pytest.mark.asyncio
async def test_timeout_on_the_real_clock() -> None:
    pool = GPUPool(static_fleet(1))
    async with pool.acquire():
        with pytest.raises(GPUTimeout):
            await pool.acquire(timeout=0.01)
    assert pool.stats().timeouts == 1 and pool.stats().queue_length == 0


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_pool_outlives_an_event_loop_closed_with_a_waiter() -> None:
    pool = GPUPool(static_fleet(1))

    async def take() -> GPUAllocation:
        return await pool.acquire()

    held = asyncio.run(take())
    loop = asyncio.new_event_loop()
    abandoned = loop.create_task(take())
    for _ in range(5):
        loop.run_until_complete(asyncio.sleep(0))
    assert pool.stats().queue_length == 1
    loop.close()  # torn down without cancelling the waiter
    pool.release(held)
    assert pool.stats().queue_length == 0
    again = asyncio.run(take())  # a fresh loop is served, not stuck behind the dead waiter
    assert again.indices == (0,)
    assert not abandoned.done()
    del abandoned
    gc.collect()  # closes the dead waiter's coroutine: its cleanup must not raise
    assert pool.stats().active == 1


# --- the pool as an async context manager ----------------------------------------------


async def test_async_with_pool_closes_it_failing_waiters_and_refusing_new_requests() -> None:
    from labkit.errors import GPUPoolClosed

    inventory = static_fleet(2, memory_mb=80_000)
    async with GPUPool(inventory, max_parallel=3, clock=FakeClock()) as pool:
        held = await pool.acquire(gpus=2, owner="a")
        waiting = asyncio.ensure_future(pool.acquire(gpus=1, owner="b"))
        await settle()
        assert pool.stats().queue_length == 1
        assert not pool.closed
    assert pool.closed
    with pytest.raises(GPUPoolClosed, match="closed while a request for 1 GPU"):
        await waiting
    assert pool.stats().queue_length == 0
    with pytest.raises(GPUPoolClosed, match="no new requests"):
        await pool.acquire(gpus=0)
    # Allocations held across the close still give their GPUs back.
    assert pool.stats().gpus_allocated == 2
    pool.release(held)
    assert pool.stats().gpus_allocated == 0
    pool.close()  # twice is harmless


async def test_acquire_block_inside_a_closing_pool_releases_cleanly() -> None:
    inventory = static_fleet(1, memory_mb=80_000)
    async with GPUPool(inventory, clock=FakeClock()) as pool, pool.acquire(gpus=1) as alloc:
        pool.close()
        assert len(alloc) == 1
    assert pool.stats().active == 0
