"""GPUPool acquire+release cycles per second against asyncio.Semaphore(8), same run.

An 8-GPU static fleet; one request at a time (uncontended), then 64 tasks competing
(each holds its GPU across one event-loop turn, so the queue is always busy). The
semaphore does the same cycles without choosing, scoring or recording anything: the
ratio is the price of the pool's decisions.

    python benchmarks/bench_gpu_pool.py
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any

from labkit.gpu import GPUPool, static_fleet

GPUS = 8
CONTENDERS = 64
UNCONTENDED_CYCLES = 20_000
CYCLES_PER_CONTENDER = 300
REPEATS = 5

Lease = Callable[[], AbstractAsyncContextManager[object]]
Scenario = Callable[[Lease], Coroutine[Any, Any, None]]


async def uncontended(lease: Lease) -> None:
    for _ in range(UNCONTENDED_CYCLES):
        async with lease():
            pass


async def contended(lease: Lease) -> None:
    async def contender() -> None:
        for _ in range(CYCLES_PER_CONTENDER):
            async with lease():
                await asyncio.sleep(0)

    await asyncio.gather(*(contender() for _ in range(CONTENDERS)))


def best_rates(scenario: Scenario) -> tuple[float, float]:
    """Cycles per second of (GPUPool, Semaphore), best of REPEATS, each on a fresh object.

    The two alternate, so a neighbour's load on this machine hits both alike.
    """
    cycles = UNCONTENDED_CYCLES if scenario is uncontended else CONTENDERS * CYCLES_PER_CONTENDER
    best = {pool_lease: float("inf"), semaphore_lease: float("inf")}
    for _ in range(REPEATS):
        for make in best:
            lease = make()
            start = time.perf_counter()
            asyncio.run(scenario(lease))
            best[make] = min(best[make], time.perf_counter() - start)
    return cycles / best[pool_lease], cycles / best[semaphore_lease]


def pool_lease() -> Lease:
    pool = GPUPool(static_fleet(GPUS))
    return lambda: pool.acquire(gpus=1)


def semaphore_lease() -> Lease:
    semaphore = asyncio.Semaphore(GPUS)
    return lambda: semaphore


def main() -> None:
    print(f"{GPUS}-GPU static fleet, best of {REPEATS}; cycle = acquire + release")
    print(f"{'scenario':<24}{'GPUPool/s':>12}{'Semaphore/s':>14}{'µs/cycle':>10}{'ratio':>8}")
    scenarios: tuple[tuple[str, Scenario], ...] = (
        ("uncontended", uncontended),
        (f"{CONTENDERS} contenders", contended),
    )
    for label, scenario in scenarios:
        pool_rate, sem_rate = best_rates(scenario)
        print(
            f"{label:<24}{pool_rate:>12,.0f}{sem_rate:>14,.0f}"
            f"{1e6 / pool_rate:>10.1f}{sem_rate / pool_rate:>7.1f}x"
        )
    print("ratio = Semaphore rate / GPUPool rate (how many times slower the pool is)")


if __name__ == "__main__":
    main()
