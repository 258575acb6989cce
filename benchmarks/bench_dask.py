"""What running on Dask costs, against the local executors, measured in one run.

1. Per-task overhead: 2,000 trivial tasks (``return i``) through labkit on a local
   thread pool and on a LocalCluster of 2 worker processes (1 thread each), at
   max_concurrency 16 (throughput: wall time / tasks), and 200 of them one at a
   time (round trip: what a single task waits beyond its own work).
2. Speedup: 200 tasks that each sleep ``--duration`` seconds (0.5 s by default;
   ``--quick`` uses 0.05 s) on the same 2 workers at max_concurrency 4, against the
   ideal ``200 * duration / 2``.

Timings of part 1 are the best of ``--repeat`` runs. Run:
``python benchmarks/bench_dask.py`` (about a minute) or with ``--quick``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from distributed import Client, LocalCluster

import labkit as lk

N = 2_000
SERIAL = 200
SLEEPERS = 200
WORKERS = 2


def trivial(i: int) -> int:
    return i


def sleeper(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def best_of(repeat: int, run: object, items: int) -> float:
    """Seconds per task of the fastest of ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        report = await run()  # type: ignore[operator]
        elapsed = time.perf_counter() - start
        assert report.ok and len(report.results) == items
        best = min(best, elapsed)
    return best / items


async def main(duration: float, repeat: int) -> None:
    start = time.perf_counter()
    async with (
        LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            asynchronous=True,
        ) as cluster,
        Client(cluster, asynchronous=True) as client,
    ):
        print(f"cluster of {WORKERS} workers ready in {time.perf_counter() - start:.2f} s")

        def run_on(executor: object, items: int, cap: int) -> object:
            return lambda: lk.run_parallel(
                trivial, range(items), max_concurrency=cap, executor=executor
            )

        await lk.run_parallel(trivial, range(50), executor=client)  # warm the workers
        print(f"\n1. per-task overhead, {N:,} trivial tasks (throughput, max_concurrency 16)")
        local = await best_of(repeat, run_on("thread", N, 16), N)
        dask = await best_of(repeat, run_on(client, N, 16), N)
        print(f"   local threads   {local * 1e3:8.3f} ms/task")
        print(f"   dask            {dask * 1e3:8.3f} ms/task   ({dask / local:,.0f}x local)")
        print(f"   {SERIAL} tasks one at a time (round trip, max_concurrency 1)")
        local_serial = await best_of(repeat, run_on("thread", SERIAL, 1), SERIAL)
        dask_serial = await best_of(repeat, run_on(client, SERIAL, 1), SERIAL)
        print(f"   local threads   {local_serial * 1e3:8.3f} ms/task")
        print(
            f"   dask            {dask_serial * 1e3:8.3f} ms/task   "
            f"({dask_serial / local_serial:,.0f}x local)"
        )

        ideal = SLEEPERS * duration / WORKERS
        print(f"\n2. {SLEEPERS} tasks of {duration} s on {WORKERS} workers (max_concurrency 4)")
        start = time.perf_counter()
        report = await lk.run_parallel(
            sleeper, [duration] * SLEEPERS, max_concurrency=4, executor=client
        )
        wall = time.perf_counter() - start
        assert report.ok
        print(f"   ideal {ideal:.2f} s, measured {wall:.2f} s: {wall / ideal:.3f}x the ideal")
        print(
            f"   speedup over one worker: {SLEEPERS * duration / wall:.2f}x "
            f"(ideal {WORKERS}x); {1e3 * (wall - ideal) * WORKERS / SLEEPERS:.2f} ms "
            "lost per task on each worker"
        )


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tasks of 0.05 s in part 2")
    parser.add_argument("--duration", type=float, default=None, help="seconds per task, part 2")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions in part 1")
    args = parser.parse_args(argv)
    duration = args.duration if args.duration is not None else (0.05 if args.quick else 0.5)
    asyncio.run(main(duration, args.repeat))


if __name__ == "__main__":
    cli()
