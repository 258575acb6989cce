"""Runner overhead against hand-written asyncio baselines, measured in one run.

1. 20,000 tasks that ``await asyncio.sleep(0)`` and return a small dict, at
   max_concurrency=64, against (a) 64 worker coroutines pulling from a shared
   iterator and (b) ``asyncio.gather`` over a ``Semaphore(64)``. labkit runs with
   its results, stats and events on (every event created and delivered to a
   subscriber, three per task, and a retry policy that never fires). Goal: <= 2x
   (a) and <= 0.5x (b). A subscriber that does real work (counting events by kind)
   adds its own cost on top; that line is printed too. A typed watcher that reads
   one kind of event (finished tasks) makes the runner build only that kind: goal
   <= 2x (a), as for the run with no subscriber at all. The same run under a
   RateLimit far above the achieved rate measures the limiter's own cost: goal
   <= 1.2x the unlimited run. The "floor" line is (a) plus only what that line
   keeps and announces (a TaskResult and three TaskEvents per task, through
   ``EventBus.deliver``), written by hand: no implementation of the events line
   can be cheaper, and labkit's own machinery is its ratio to the floor.
2. 10,240 tasks of ``asyncio.sleep(0.01)`` at max_concurrency 64, 256 and 1024
   against the ideal ``ceil(N/k) * 10 ms``. Goal: within 1.1x, 1.2x, 1.3x.
3. Peak memory (tracemalloc) of a lazy run of 200,000 items: it must grow with the
   concurrency and the stored results, not with pending tasks.

Each timing is the best of several repetitions. Run: ``python benchmarks/bench_runner.py``.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
import tracemalloc

import labkit as lk

N = 20_000
K = 64
REPEAT = 7


async def tiny(i: int) -> dict[str, int]:
    await asyncio.sleep(0)
    return {"i": i}


async def baseline_workers() -> float:
    items = iter(range(N))
    out: list[object] = [None] * N

    async def worker() -> None:
        for i in items:
            out[i] = await tiny(i)

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(K):
            group.create_task(worker())
    return time.perf_counter() - start


async def baseline_semaphore() -> float:
    semaphore = asyncio.Semaphore(K)

    async def one(i: int) -> dict[str, int]:
        async with semaphore:
            return await tiny(i)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(N)))
    return time.perf_counter() - start


async def floor_events() -> float:
    """The floor for the "events on" line: what (a) costs once it keeps what labkit
    keeps and announces what labkit announces, written by hand with nothing else.

    Each task gets a TaskResult (start, end, duration), the counters labkit keeps
    (queued, running, peak, done) and three TaskEvents ("queued" up front, "started",
    "succeeded") built with their constructor and delivered through
    ``EventBus.deliver`` to a subscriber that counts them. No slots, retry, limiter,
    guard or report: whatever labkit costs above this line is its own machinery.
    """
    bus = lk.EventBus()
    seen = 0

    def noop(event: lk.TaskEvent) -> None:
        nonlocal seen
        seen += 1

    bus.subscribe(noop)
    deliver, subscribers = bus.deliver, bus.route(lk.TaskEvent)
    now = time.monotonic
    pairs = enumerate(range(N))
    out: list[lk.TaskResult[dict[str, int]] | None] = [None] * N
    queued = running = peak = done = 0

    async def worker() -> None:
        nonlocal queued, running, peak, done
        for index, item in pairs:
            result: lk.TaskResult[dict[str, int]] = lk.TaskResult(index, item, False)
            queued -= 1
            result.started = start = now()
            running += 1
            if running > peak:
                peak = running
            deliver(subscribers, lk.TaskEvent("started", index, start, 1, None, 0.0, 0.0))
            try:
                result.value = await tiny(item)
                result.ok = True
            finally:
                running -= 1
            result.finished = finished = now()
            duration = result.duration = finished - start
            done += 1
            out[index] = result
            deliver(subscribers, lk.TaskEvent("succeeded", index, finished, 1, None, 0.0, duration))

    start = time.perf_counter()
    began = now()
    queued = N
    for index in range(N):
        deliver(subscribers, lk.TaskEvent("queued", index, began, 0, None, 0.0, 0.0))
    async with asyncio.TaskGroup() as group:
        for _ in range(K):
            group.create_task(worker())
    elapsed = time.perf_counter() - start
    assert seen == 3 * N and done == N and peak == K
    return elapsed


async def labkit_run(events: str, rate_limit: lk.RateLimit | None = None) -> float:
    """events: "" (no subscriber), "noop" (a subscriber that does nothing: labkit's own
    cost of creating and delivering every event) or "count" (a subscriber counting
    events by kind, as a progress bar would: adds the subscriber's own work)."""
    counts: collections.Counter[str] = collections.Counter()
    seen = 0

    def count(event: lk.TaskEvent) -> None:
        counts[event.kind] += 1

    def noop(event: lk.TaskEvent) -> None:
        nonlocal seen
        seen += 1

    class Finished(lk.events.Watcher):
        def on_task_succeeded(self, event: lk.TaskEvent) -> None:
            counts[event.kind] += 1

    subscriber = {"": None, "noop": noop, "count": count, "watch": Finished()}[events]
    start = time.perf_counter()
    report = await lk.run_parallel(
        tiny,
        range(N),
        max_concurrency=K,
        retry=lk.Retry(attempts=3) if events else None,
        on_event=subscriber,
        rate_limit=rate_limit,
    )
    elapsed = time.perf_counter() - start
    assert report.stats.completed == N and report.values[-1] == {"i": N - 1}
    assert report.stats.peak_concurrency == K
    if events == "count":
        assert counts["succeeded"] == N and counts["queued"] == N, counts
    if events == "watch":
        assert counts == {"succeeded": N}, counts
    if events == "noop":
        assert seen == 3 * N
    return elapsed


async def overhead() -> None:
    # Interleaved rounds, best of each: a load spike from elsewhere on the machine
    # then hits every variant alike instead of skewing one ratio.
    variants = {
        "a": baseline_workers,
        "b": baseline_semaphore,
        "floor": floor_events,
        "plain": lambda: labkit_run(""),
        "full": lambda: labkit_run("noop"),
        "counted": lambda: labkit_run("count"),
        "watched": lambda: labkit_run("watch"),
        "limited": lambda: labkit_run("noop", lk.RateLimit(100_000_000, burst=K)),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(REPEAT):
        for name, run in variants.items():
            times[name].append(await run())
    a, b, floor, plain, full, counted, watched, limited = (min(times[name]) for name in variants)
    us = 1e6 / N
    print(f"1. {N} tiny tasks at max_concurrency={K} (best of {REPEAT}, µs per task)")
    print(f"   (a) workers on a shared iterator      {a * us:6.2f}")
    print(f"   (b) gather over a Semaphore           {b * us:6.2f}")
    print(
        f"   labkit, results+stats, no subscriber  {plain * us:6.2f}   "
        f"{plain / a:.2f}x (a) [goal <= 2]"
    )
    print(
        f"   labkit, a watcher of finished tasks   {watched * us:6.2f}   "
        f"{watched / a:.2f}x (a) [goal <= 2]"
    )
    print(
        f"   labkit, results+stats+events+retry    {full * us:6.2f}   "
        f"{full / a:.2f}x (a) [goal <= 2]   {full / b:.2f}x (b) [goal <= 0.5]"
    )
    print(
        f"     the floor for that line, by hand    {floor * us:6.2f}   "
        f"{floor / a:.2f}x (a); labkit is {full / floor:.2f}x the floor"
    )
    print(
        f"     same, subscriber counting by kind   {counted * us:6.2f}   "
        f"{counted / a:.2f}x (a)   {counted / b:.2f}x (b)"
    )
    print(
        f"     same, under a RateLimit far above  {limited * us:6.2f}   "
        f"{limited / full:.2f}x the unlimited run [goal <= 1.2]"
    )


async def sleeping() -> None:
    n = 10_240
    print(f"2. {n} tasks of asyncio.sleep(0.01) against ceil(N/k) x 10 ms")
    print("   (raw: the same work as k bare worker coroutines, the floor asyncio itself sets)")

    async def nap(_: int) -> None:
        await asyncio.sleep(0.01)

    async def raw(k: int) -> None:
        items = iter(range(n))

        async def worker() -> None:
            for i in items:
                await nap(i)

        async with asyncio.TaskGroup() as group:
            for _ in range(k):
                group.create_task(worker())

    for k, goal in ((64, 1.1), (256, 1.2), (1024, 1.3)):
        ideal = math.ceil(n / k) * 0.01
        labkit_times, raw_times = [], []
        for _ in range(3):
            start = time.perf_counter()
            await raw(k)
            raw_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            await lk.run_parallel(nap, range(n), max_concurrency=k)
            labkit_times.append(time.perf_counter() - start)
        best, floor = min(labkit_times), min(raw_times)
        print(
            f"   k={k:5d}: labkit {best:.3f} s = {best / ideal:.3f}x ideal [goal <= {goal}]"
            f"   raw {floor:.3f} s = {floor / ideal:.3f}x ideal"
        )


async def memory() -> None:
    print("3. peak traced memory of a lazy run (generator input), by size")
    for n in (50_000, 200_000):
        tracemalloc.start()
        report = await lk.run_parallel(tiny, (i for i in range(n)), max_concurrency=K)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert report.stats.completed == n
        print(f"   {n:7d} items: {peak / 1e6:6.1f} MB peak, {peak / n:5.0f} B per stored result")


def main() -> None:
    asyncio.run(overhead())
    asyncio.run(sleeping())
    asyncio.run(memory())


if __name__ == "__main__":
    main()
