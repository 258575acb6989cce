"""Instances in worker processes (``executor="process"``) against joblib's loky backend.

Three lines, each a ratio of wall times measured in the same run, the pools warm
(each is used once before timing: a warm pool is what a notebook has after its
first run):

1. **CPU-bound**: 12 instances of pure-Python work (about 0.3 s each) on all cores.
   labkit's process executor against ``joblib.Parallel(n_jobs=-1, backend="loky")``
   (goal: within 1.1x), and against a sequential loop (goal: at most 0.6x on 2 cores).
2. **Per-instance cost** of the process path for trivial instances: 200 instances
   that return at once. What the process path adds per instance (labkit's time per
   instance with ``executor="process"`` less its time with the thread path: the
   experiment's own bookkeeping, events and result are the same on both) against
   loky's time per task (goal: within 2x); the raw times are printed too, and loky
   with ``batch_size=1`` (one task per message, as labkit sends one instance per
   message: joblib batches trivial tasks by default).
3. **The thread path** (the default executor) on the same trivial instances, against
   a bare ``asyncio.to_thread`` per instance: the default path is unchanged.

Rounds interleave the contenders so that machine noise hits them alike; each line
prints the median of its rounds. Needs ``joblib`` (``pip install joblib``).

Run: ``python benchmarks/bench_process_instances.py``  (about 1 min on 2 cores)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from joblib import Parallel, delayed

from labkit.executors.workers import available_cores, shared_pool
from labkit.experiment import Experiment, InstanceContext, run_experiment

INSTANCES = 12
WORK = 3_000_000  # loop iterations: about 0.3 s of pure Python on these machines
TRIVIAL = 200
ROUNDS = 5


def work(seed: int) -> int:
    total = seed
    for step in range(WORK):
        total = (total * 31 + step) % 1_000_003
    return total


def instance(ctx: InstanceContext) -> dict[str, int]:
    return {"total": work(ctx.index)}


def trivial(ctx: InstanceContext) -> int:
    return ctx.index


def trivial_task(index: int) -> int:
    return index


def seconds(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def labkit(fn: Callable[[InstanceContext], Any], n: int, executor: str) -> None:
    result = asyncio.run(run_experiment(Experiment("bench", fn), instances=n, executor=executor))
    assert result.ok, result.summary["errors"]


def loky(fn: Callable[[int], Any], n: int, batch_size: int | str = "auto") -> None:
    Parallel(n_jobs=-1, backend="loky", batch_size=batch_size)(
        delayed(fn)(index) for index in range(n)
    )


def sequential() -> None:
    for index in range(INSTANCES):
        work(index)


def threads_bare() -> None:
    async def main() -> None:
        await asyncio.gather(*(asyncio.to_thread(trivial_task, k) for k in range(TRIVIAL)))

    asyncio.run(main())


def main() -> None:
    cores = available_cores()
    print(f"{cores} cores, {INSTANCES} CPU-bound instances, {ROUNDS} interleaved rounds")
    # Warm both pools and check the work's size.
    labkit(instance, cores, "process")
    loky(work, cores)
    one = seconds(lambda: work(0))
    print(f"one instance's work: {one:.3f} s")

    cpu: dict[str, list[float]] = {"labkit": [], "loky": [], "loop": []}
    for _ in range(ROUNDS):
        cpu["labkit"].append(seconds(lambda: labkit(instance, INSTANCES, "process")))
        cpu["loky"].append(seconds(lambda: loky(work, INSTANCES)))
        cpu["loop"].append(seconds(sequential))
    median = {name: statistics.median(times) for name, times in cpu.items()}
    print("\n1. CPU-bound, wall time (median):")
    for name, value in median.items():
        print(f"   {name:>7}: {value:.3f} s")
    print(f"   labkit / loky:       {median['labkit'] / median['loky']:.3f}  (goal <= 1.1)")
    print(f"   labkit / sequential: {median['labkit'] / median['loop']:.3f}  (goal <= 0.6)")

    small: dict[str, list[float]] = {
        "labkit": [],
        "loky": [],
        "loky1": [],
        "threads": [],
        "bare": [],
    }
    for _ in range(ROUNDS):
        small["labkit"].append(seconds(lambda: labkit(trivial, TRIVIAL, "process")) / TRIVIAL)
        small["loky"].append(seconds(lambda: loky(trivial_task, TRIVIAL)) / TRIVIAL)
        small["loky1"].append(seconds(lambda: loky(trivial_task, TRIVIAL, 1)) / TRIVIAL)
        small["threads"].append(seconds(lambda: labkit(trivial, TRIVIAL, "thread")) / TRIVIAL)
        small["bare"].append(seconds(threads_bare) / TRIVIAL)
    per = {name: statistics.median(times) * 1e3 for name, times in small.items()}
    print(f"\n2. per trivial instance ({TRIVIAL} instances, warm pools), ms (median):")
    added = per["labkit"] - per["threads"]
    print(f"   labkit process: {per['labkit']:.3f} ms, labkit thread: {per['threads']:.3f} ms")
    print(f"   the process path adds {added:.3f} ms; loky: {per['loky']:.3f} ms per task")
    print(f"   process path / loky: {added / per['loky']:.3f}  (goal <= 2.0)")
    print(
        f"   loky one task a message (batch_size=1, as labkit sends one instance): "
        f"{per['loky1']:.3f} ms per task; process path / that: {added / per['loky1']:.3f}"
    )
    print("\n3. the thread path, per trivial instance, ms (median):")
    print(
        f"   labkit thread: {per['threads']:.3f} ms, bare asyncio.to_thread: {per['bare']:.3f} ms"
    )
    print(f"   labkit thread / bare: {per['threads'] / per['bare']:.3f}")
    print(f"\nworkers alive: {shared_pool().stats().workers}, pid {os.getpid()}")


if __name__ == "__main__":
    main()
