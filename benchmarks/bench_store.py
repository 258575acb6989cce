"""Store write throughput and commit latency, against raw sqlite3 in the same run.

1. Sustained: 8 instances each record 1,000 samples/s (two metrics) for a few
   seconds through ``Store.sample``; reports the samples/s committed and how far
   the writer lagged behind.
2. Capacity: the same kind of rows pushed as fast as possible through
   ``Store.sample``, against raw ``sqlite3`` ``executemany`` of the same rows (one
   row per sample, numeric columns, WAL, synchronous=NORMAL, BEGIN IMMEDIATE per
   100 rows) on a separate file.
3. Commit latency: how long ``await store.finish_instance(...)`` takes for an
   instance with a 1,000-sample timeline, idle and while the sustained load runs,
   with synchronous NORMAL and FULL.
4. A long timeline: one instance records 2.9 M samples through ``Store.sample``
   (yielding to the loop every 2,000, as a busy instance does), then finishes with
   that timeline; reports the RSS the store added per recorded sample (at its peak)
   and the worst stall of a 10 ms ticker on the loop, against the same loop
   appending to a bare ``SampleLog`` (what recording costs without a store). Each
   runs in a fresh process, so that neither reuses memory the other freed.

Run: ``python benchmarks/bench_store.py``. Not a test: numbers depend on the disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import multiprocessing
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from labkit.results import InstanceResult
from labkit.samplelog import SampleLog
from labkit.store import Store

INSTANCES = 8
RATE = 1000  # samples per second per instance
SECONDS = 4.0
CAPACITY_SAMPLES = 200_000
FINISHES = 30
LONG_SAMPLES = 2_900_000


def timeline(n: int = 1000) -> pd.DataFrame:
    t = np.arange(n) / 1000.0
    return pd.DataFrame({"t": t, "cpu": 50 + 10 * np.sin(t), "memory": 100 + t})


async def produce(store: Store, experiment_id: str, index: int, seconds: float) -> int:
    """Record RATE samples/s, 10 at a time every 10 ms, on the event loop like ctx.record."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    tick = 0
    while (now := loop.time()) - start < seconds:
        due = int((now - start) * RATE)
        while sent < due:
            t = sent / RATE
            store.sample(experiment_id, index, t, {"cpu": 50.0 + t, "memory": 100.0})
            sent += 1
        tick += 1
        await asyncio.sleep(max(start + tick * 0.01 - loop.time(), 0))
    return sent


async def finish_latencies(
    store: Store, experiment_id: str, count: int, every: float, first_index: int
) -> list[float]:
    """Finish ``count`` instances one after another; the seconds each commit took."""
    frame = timeline()
    latencies = []
    for k in range(count):
        result = InstanceResult(
            index=first_index + k, ok=True, error=None, timeline=frame, summary={"cpu_peak": 60.0}
        )
        started = time.perf_counter()
        await store.finish_instance(experiment_id, result)
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(every)
    return latencies


def begin(store: Store, name: str) -> str:
    experiment_id, _ = store.begin(name=name, params={}, instances=10_000, config={}, resume=False)
    return experiment_id


async def sustained(path: Path) -> tuple[float, float, float, int, list[float]]:
    with Store(path) as store:
        experiment_id = begin(store, "sustained")
        peak_pending = 0

        async def watch() -> None:
            nonlocal peak_pending
            while True:
                peak_pending = max(peak_pending, store.stats().pending_samples)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        # The finishes run beside the producers and end before they do.
        finisher = asyncio.create_task(
            finish_latencies(store, experiment_id, FINISHES, 0.8 * SECONDS / FINISHES, INSTANCES)
        )
        started = time.perf_counter()
        sent = await asyncio.gather(
            *(produce(store, experiment_id, i, SECONDS) for i in range(INSTANCES))
        )
        produced_at = time.perf_counter()
        await asyncio.to_thread(store.flush)
        committed_at = time.perf_counter()
        latencies = await finisher
        watcher.cancel()
        written = store.stats().samples_written
    assert written == sum(sent), (written, sum(sent))
    offered = sum(sent) / (produced_at - started)
    committed = written / (committed_at - started)
    return offered, committed, committed_at - produced_at, peak_pending, latencies


def capacity_store(path: Path) -> float:
    with Store(path) as store:
        experiment_id = begin(store, "capacity")
        started = time.perf_counter()
        for n in range(CAPACITY_SAMPLES):
            store.sample(experiment_id, n % INSTANCES, n / 8000, {"cpu": 50.0, "memory": 100.0})
        store.flush()
        elapsed = time.perf_counter() - started
        assert store.stats().samples_written == CAPACITY_SAMPLES
    return CAPACITY_SAMPLES / elapsed


def capacity_raw(path: Path) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(
        "CREATE TABLE samples (experiment_id TEXT, instance INTEGER, t REAL, cpu REAL, memory REAL)"
    )
    rows = [("e", n % INSTANCES, n / 8000, 50.0, 100.0) for n in range(CAPACITY_SAMPLES)]
    started = time.perf_counter()
    for k in range(0, len(rows), 100):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?)", rows[k : k + 100])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return CAPACITY_SAMPLES / elapsed


async def idle_latencies(path: Path, synchronous: str) -> list[float]:
    with Store(path, synchronous=synchronous) as store:  # type: ignore[arg-type]
        experiment_id = begin(store, f"idle-{synchronous}")
        return await finish_latencies(store, experiment_id, FINISHES, 0.0, 0)


async def long_timeline(path: Path | None) -> tuple[float, float]:
    """Record LONG_SAMPLES samples of one instance (into a store at ``path``, or a
    bare SampleLog); the peak RSS added per sample (B) and the worst loop stall (s)."""
    offsets = np.arange(LONG_SAMPLES, dtype=float) * 0.001
    frame = pd.DataFrame({"t": offsets, "loss": offsets * 2.0})
    values = offsets.tolist()
    store = None if path is None else Store(path)
    log = SampleLog()
    if store is not None:
        experiment_id = begin(store, "long")
        record: Callable[[float], None] = lambda t: store.sample(  # noqa: E731
            experiment_id, 0, t, {"loss": t}
        )
    else:
        record = lambda t: log.append(t, {"loss": t})  # noqa: E731
    process = psutil.Process()
    gc.collect()
    before = peak = process.memory_info().rss
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.002)

    worst = 0.0

    async def tick() -> None:
        nonlocal worst
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            worst, last = max(worst, now - last), now

    watcher = threading.Thread(target=watch)
    watcher.start()
    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    for step, t in enumerate(values):
        record(t)
        if step % 2000 == 0:
            await asyncio.sleep(0)
    if store is not None:
        result = InstanceResult(index=0, ok=True, error=None, timeline=frame)
        await store.finish_instance(experiment_id, result)
    ticker.cancel()
    done.set()
    watcher.join()
    per_sample = (max(peak, process.memory_info().rss) - before) / LONG_SAMPLES
    if store is not None:
        store.close()
    return per_sample, worst


def in_fresh_process(path: Path | None) -> tuple[float, float]:
    """:func:`long_timeline` in a new interpreter."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_long_timeline, path).result()


def _long_timeline(path: Path | None) -> tuple[float, float]:
    return asyncio.run(long_timeline(path))


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (
        f"median {statistics.median(values) * 1000:6.2f} ms, p95 {p95 * 1000:6.2f} ms, "
        f"max {max(values) * 1000:6.2f} ms"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        offered, rate, lag, peak, loaded = asyncio.run(sustained(root / "sustained.db"))
        store_rate = capacity_store(root / "capacity.db")
        raw_rate = capacity_raw(root / "raw.db")
        idle_normal = asyncio.run(idle_latencies(root / "normal.db", "normal"))
        idle_full = asyncio.run(idle_latencies(root / "full.db", "full"))
        bare_rss, bare_stall = in_fresh_process(None)
        long_rss, long_stall = in_fresh_process(root / "long.db")

    print(f"sustained: {INSTANCES} instances x {RATE} samples/s for {SECONDS:.0f} s")
    print(f"  offered            {offered:>10,.0f} samples/s (target {INSTANCES * RATE:,})")
    print(f"  committed          {rate:>10,.0f} samples/s  ({rate / offered:.2f}x offered)")
    print(f"  writer lag at end  {lag * 1000:>10.1f} ms, peak buffered {peak:,} samples")
    print(f"capacity ({CAPACITY_SAMPLES:,} samples, 2 metrics each)")
    print(f"  raw executemany    {raw_rate:>10,.0f} rows/s   (baseline)")
    print(f"  Store.sample       {store_rate:>10,.0f} samples/s ({store_rate / raw_rate:.2f}x raw)")
    print(f"  headroom           {store_rate / offered:>10.1f}x the sustained load")
    print("finish_instance commit latency (1,000-sample timeline)")
    print(f"  idle, NORMAL       {ms(idle_normal)}")
    print(f"  idle, FULL         {ms(idle_full)}")
    print(f"  under load, NORMAL {ms(loaded)}")
    print(f"a long timeline ({LONG_SAMPLES:,} samples of one instance, recorded then finished)")
    print(
        f"  bare SampleLog     {bare_rss:>6.1f} B/sample peak RSS, worst loop stall "
        f"{bare_stall * 1000:5.0f} ms (baseline)"
    )
    print(
        f"  Store              {long_rss:>6.1f} B/sample peak RSS, worst loop stall "
        f"{long_stall * 1000:5.0f} ms ({long_stall / bare_stall:.1f}x baseline)"
    )


if __name__ == "__main__":
    main()
