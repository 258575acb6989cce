"""Pooled LocalSandboxes against a fresh LocalSandbox per session.

200 sessions, 4 at a time, each running ``true``: once through a SandboxPool of 4
pre-warmed sandboxes (reset between sessions), once creating, using and closing a
new LocalSandbox per session (the baseline, measured in the same run). Prints the
pool's hit latency (time to get a sandbox on a hit), the cost of a session outside
its command for both, the speedup and the pool's reuse rate.

    python benchmarks/bench_sandbox_pool.py
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from labkit.sandbox import LocalSandbox, Sandbox, SandboxPool

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


async def main() -> None:
    async with SandboxPool(LocalSandbox, max_size=4, prewarm=4) as pool:
        await measure(pool.session)  # warm-up: steady state, not first use
        warm = pool.stats()
        pool_total, pool_acquire, pool_overhead = await measure(pool.session)
        stats = pool.stats()
    base_total, base_acquire, base_overhead = await measure(fresh_session)

    hits = stats.hits - warm.hits
    sessions = hits + stats.misses - warm.misses
    print(f"{SESSIONS} sessions running `true`, {CONCURRENCY} at a time")
    print(
        f"pool of 4 pre-warmed: {pool_total:.3f} s total, "
        f"hit latency p50 {ms(pool_acquire, 50)}, p95 {ms(pool_acquire, 95)}"
    )
    print(
        f"fresh per session:    {base_total:.3f} s total, "
        f"start latency p50 {ms(base_acquire, 50)}, p95 {ms(base_acquire, 95)}"
    )
    print(
        f"session overhead outside the command (p50): pool {ms(pool_overhead, 50)}, "
        f"fresh {ms(base_overhead, 50)}"
    )
    print(f"speedup (total time, fresh / pool):        {base_total / pool_total:.2f}x")
    print(
        "speedup (getting a sandbox, p50):           "
        f"{statistics.median(base_acquire) / statistics.median(pool_acquire):.1f}x"
    )
    print(
        "speedup (session overhead, p50):            "
        f"{statistics.median(base_overhead) / statistics.median(pool_overhead):.2f}x"
    )
    print(
        f"reuse rate at steady state: {hits / sessions:.1%} ({hits} hits of {sessions} sessions; "
        f"over the pool's life {stats.reuse_rate:.1%}, {stats.total_created} sandboxes created, "
        f"avg startup {stats.avg_startup_ms:.2f} ms)"
    )
    assert hits / sessions >= 0.9, "reuse rate below 90%"


if __name__ == "__main__":
    asyncio.run(main())
