"""Overhead of run_experiment around 8 instances of a 2 s workload.

The baseline is the same workload run bare with asyncio.gather, measured in the
same process; the ratio (labkit wall time / bare wall time) should stay below 1.1.
Two workloads:

- in-process: 20 steps of 0.1 s, each recording one sample (labkit: ctx.record,
  events, timeline, averaging; bare: appending to a list);
- sandbox: ``sleep 2`` in a LocalSandbox subprocess (labkit: a sandbox pool, the
  resource sampler every second, averaging; bare: 8 LocalSandboxes created,
  run and closed by hand).

Run: ``python benchmarks/bench_experiment.py``  (about 30 s)
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from labkit.experiment import Experiment, InstanceContext, run_experiment
from labkit.sandbox.local import LocalSandbox

INSTANCES = 8
STEPS = 20
STEP_S = 0.1
REPEATS = 3


async def steps(record: Callable[..., Any]) -> None:
    for step in range(STEPS):
        record(x=float(step))
        await asyncio.sleep(STEP_S)


async def bare_in_process() -> None:
    samples: list[dict[str, float]] = []
    await asyncio.gather(*(steps(lambda **m: samples.append(m)) for _ in range(INSTANCES)))


async def labkit_in_process() -> None:
    async def fn(ctx: InstanceContext) -> None:
        await steps(ctx.record)

    result = await run_experiment(Experiment("bench", fn), instances=INSTANCES)
    assert result.ok, result.summary["errors"]


async def bare_sandbox() -> None:
    async def one() -> None:
        sandbox = LocalSandbox()
        try:
            await sandbox.run(f"sleep {STEPS * STEP_S}", timeout=30)
        finally:
            await sandbox.close()

    await asyncio.gather(*(one() for _ in range(INSTANCES)))


async def labkit_sandbox() -> None:
    async def fn(ctx: InstanceContext) -> None:
        assert ctx.sandbox is not None
        await ctx.sandbox.run(f"sleep {STEPS * STEP_S}", timeout=30)

    experiment = Experiment("bench-sandbox", fn, needs_sandbox=True)
    result = await run_experiment(experiment, instances=INSTANCES, sample_every=1.0)
    assert result.ok, result.summary["errors"]


async def timed(fn: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def main() -> None:
    print(f"{INSTANCES} instances x {STEPS * STEP_S:g} s workload, median of {REPEATS} runs")
    print(f"{'workload':<12} {'bare (s)':>9} {'labkit (s)':>11} {'ratio':>7}")
    for name, bare, wrapped in (
        ("in-process", bare_in_process, labkit_in_process),
        ("sandbox", bare_sandbox, labkit_sandbox),
    ):
        await wrapped()  # warm-up: imports, first subprocess
        bare_times, labkit_times = [], []
        for _ in range(REPEATS):
            # Interleaved so that load from elsewhere on the machine hits both alike.
            bare_times.append(await timed(bare))
            labkit_times.append(await timed(wrapped))
        b, w = statistics.median(bare_times), statistics.median(labkit_times)
        print(f"{name:<12} {b:>9.3f} {w:>11.3f} {w / b:>6.3f}x")


if __name__ == "__main__":
    asyncio.run(main())
