"""Pooled LocalSandboxes against a fresh LocalSandbox per session, caps off and on.

200 sessions, 4 at a time, each running ``true``: once through a SandboxPool of 4
pre-warmed sandboxes (reset between sessions), once creating, using and closing a
new LocalSandbox per session (the baseline, measured in the same run). Prints the
pool's hit latency (time to get a sandbox on a hit), the cost of a session outside
its command for both, the speedup and the pool's reuse rate; then the same pool
with caps (``memory_mb=256, cpus=1``: cgroups where writable), and the cost of one
``run("true")`` through the sandbox's supervisor against a bare
``asyncio.create_subprocess_shell("true")`` (the floor, same run).

    python benchmarks/bench_sandbox_pool.py
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from labkit.sandbox import LocalSandbox, Sandbox, SandboxFactory, SandboxPool

SESSIONS = 200
CONCURRENCY = 4


@asynccontextmanager
async def fresh_session() -> AsyncIterator[Sandbox]:
    async with LocalSandbox() as sb:
        yield sb


async def measure(
    session: Callable[[], AbstractAsyncContextManager[Sandbox]],
) -> tuple[float, list[float], list[float]]:
    """Total seconds, then per session: seconds to get a sandbox, seconds outside `true`."""
    acquire: list[float] = []
    overhead: list[float] = []
    remaining = iter(range(SESSIONS))

    async def worker() -> None:
        for _ in remaining:
            began = time.perf_counter()
            async with session() as sb:
                got = time.perf_counter()
                result = await sb.run("true")
                assert result.ok, result
                ran = time.perf_counter() - got
            acquire.append(got - began)
            overhead.append(time.perf_counter() - began - ran)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - began, acquire, overhead


def ms(values: list[float], q: float) -> str:
    return f"{1000 * statistics.quantiles(values, n=100)[int(q) - 1]:.3f} ms"


async def pooled(factory: SandboxFactory, label: str) -> float:
    """Run the pool half; print it; return the hit latency p50 in seconds."""
    async with SandboxPool(factory, max_size=4, prewarm=4) as pool:
        await measure(pool.session)  # warm-up: steady state, not first use
        warm = pool.stats()
        total, acquire, overhead = await measure(pool.session)
        stats = pool.stats()
    hits = stats.hits - warm.hits
    sessions = hits + stats.misses - warm.misses
    print(
        f"pool of 4 pre-warmed, {label}: {total:.3f} s total, "
        f"hit latency p50 {ms(acquire, 50)}, p95 {ms(acquire, 95)}, "
        f"session overhead p50 {ms(overhead, 50)}"
    )
    print(
        f"  reuse rate at steady state: {hits / sessions:.1%} ({hits} hits of {sessions}; "
        f"{stats.total_created} sandboxes created, avg startup {stats.avg_startup_ms:.2f} ms)"
    )
    assert hits == sessions, f"reuse rate below 100% ({label})"
    return statistics.median(acquire)


async def per_command() -> tuple[list[float], list[float]]:
    """Seconds per `true`: through a LocalSandbox, and a bare subprocess (the floor)."""
    sandboxed: list[float] = []
    bare: list[float] = []
    async with LocalSandbox() as sb:
        for _ in range(SESSIONS):
            began = time.perf_counter()
            await sb.run("true")
            sandboxed.append(time.perf_counter() - began)
            began = time.perf_counter()
            proc = await asyncio.create_subprocess_shell("true")
            await proc.wait()
            bare.append(time.perf_counter() - began)
    return sandboxed, bare


async def main() -> None:
    print(f"{SESSIONS} sessions running `true`, {CONCURRENCY} at a time")
    hit_off = await pooled(LocalSandbox, "no caps")
    capped = functools.partial(LocalSandbox, memory_mb=256, cpus=1)
    hit_on = await pooled(capped, "memory_mb=256, cpus=1")
    base_total, base_acquire, base_overhead = await measure(fresh_session)
    print(
        f"fresh per session:    {base_total:.3f} s total, "
        f"start latency p50 {ms(base_acquire, 50)}, p95 {ms(base_acquire, 95)}, "
        f"session overhead p50 {ms(base_overhead, 50)}"
    )
    print(
        "speedup (getting a sandbox, p50, no caps): "
        f"{statistics.median(base_acquire) / hit_off:.1f}x"
    )
    sandboxed, bare = await per_command()
    print(
        f"one run('true'): p50 {ms(sandboxed, 50)} through the supervisor, "
        f"{ms(bare, 50)} for a bare create_subprocess_shell "
        f"({statistics.median(sandboxed) / statistics.median(bare):.2f}x)"
    )
    assert hit_off < 0.001 and hit_on < 0.001, "hit latency p50 of 1 ms or more"


if __name__ == "__main__":
    asyncio.run(main())
