"""Adaptive concurrency against the best fixed level, measured in one run.

A simulated service keeps a flat latency up to 20 concurrent calls and slows with
the square of the overload beyond that, so its throughput peaks at exactly 20. A
sweep of fixed ``max_concurrency`` levels finds the best one; then the same work
runs with ``max_concurrency="auto"`` (no tuning). Goal: auto >= 0.9x the best fixed
level's throughput. Real clock, real event loop; every configuration is run
``REPEAT`` times, interleaved, and its best run counts, so that noise from the
rest of the machine hits the fixed levels and ``auto`` alike.

Run: ``python benchmarks/bench_adaptive.py``
"""

from __future__ import annotations

import asyncio
import time

import labkit as lk

CAPACITY = 20
LATENCY = 0.02  # seconds per call at or under capacity
TASKS = 4_000
REPEAT = 3


class Service:
    def __init__(self) -> None:
        self.in_flight = 0

    async def call(self, _: int) -> None:
        self.in_flight += 1
        overload = max(1.0, self.in_flight / CAPACITY)
        try:
            await asyncio.sleep(LATENCY * overload**2)
        finally:
            self.in_flight -= 1


async def throughput(max_concurrency: object) -> tuple[float, int]:
    runner = lk.Runner(max_concurrency=max_concurrency)
    start = time.perf_counter()
    report = await runner.map(Service().call, range(TASKS))
    elapsed = time.perf_counter() - start
    assert report.stats.completed == TASKS
    return TASKS / elapsed, runner.concurrency


async def main() -> None:
    ideal = CAPACITY / LATENCY
    print(f"simulated service: capacity {CAPACITY}, latency {LATENCY * 1e3:.0f} ms, {TASKS} tasks")
    print(f"ideal throughput at the capacity: {ideal:.0f} tasks/s")
    levels: tuple[object, ...] = (10, 15, 20, 25, 30, "auto")
    runs: dict[object, list[float]] = {level: [] for level in levels}
    finals: list[int] = []
    for _ in range(REPEAT):
        for level in levels:
            rate, final = await throughput(level)
            runs[level].append(rate)
            if level == "auto":
                finals.append(final)
    sweep = {level: max(rates) for level, rates in runs.items() if level != "auto"}
    for level, rate in sweep.items():
        print(f"  fixed max_concurrency={level!s:>4}: {rate:7.1f} tasks/s (best of {REPEAT})")
    best_level = max(sweep, key=sweep.__getitem__)
    auto = max(runs["auto"])
    print(
        f"  max_concurrency='auto': {auto:7.1f} tasks/s (best of {REPEAT}; final limits {finals})"
    )
    print(f"auto / best fixed (level {best_level}): {auto / sweep[best_level]:.3f}x [goal >= 0.9]")


if __name__ == "__main__":
    asyncio.run(main())
