"""The runner's promises under real conditions: sync functions under timeouts, broken
inputs, stalls, large payloads, cancels and interrupts."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

import labkit as lk
from labkit.errors import ItemsFailed, ResultRejected, TaskTimeout
from labkit.executors.workers import shared_pool
from labkit.testing import FakeClock

# -- sync functions under a timeout ------------------------------------------------------


async def test_a_retry_of_a_timed_out_sync_call_runs_at_once_and_succeeds() -> None:
    calls: dict[int, int] = {}
    lock = threading.Lock()

    def fetch(i: int) -> int:
        with lock:
            calls[i] = calls.get(i, 0) + 1
            first = calls[i] == 1
        if i < 8 and first:
            time.sleep(1.0)  # the first call of items 0-7 hangs past the timeout
        return i

    runner = lk.Runner(
        max_concurrency=8, timeout=0.2, retry=lk.Retry(attempts=3, initial=0.01, jitter=0)
    )
    async with runner:
        report = await runner.map(fetch, range(40))
        abandoned_during = runner.stats().abandoned
    assert report.stats.failed == 0 and report.values == list(range(40))
    # every counted attempt reached the function: 40 first calls and 8 retries
    assert sum(r.attempts for r in report.results) == sum(calls.values()) == 48
    assert all(isinstance(r, lk.TaskResult) for r in report.results)
    assert abandoned_during <= 8


async def test_a_timed_out_sync_call_never_blocks_the_loop_or_the_close() -> None:
    ended = threading.Event()

    def stuck(_: int) -> None:
        time.sleep(2.0)
        ended.set()

    gaps: list[float] = []
    stop = False

    async def heartbeat() -> None:
        last = time.monotonic()
        while not stop:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    report = await lk.run_parallel(stuck, range(2), timeout=0.2)
    finished_before_threads = not ended.is_set()
    stop = True
    await beat
    assert finished_before_threads  # the run (and its aclose) did not wait for the threads
    assert all(isinstance(r.error, TaskTimeout) for r in report.results)
    assert max(gaps) < 1.0  # the loop kept turning while the 2 s calls ran


async def test_abandoned_calls_are_counted_and_hold_no_slot() -> None:
    release = threading.Event()

    def slow(i: int) -> int:
        if i == 0:
            release.wait(10)
        return i

    async with lk.Runner(max_concurrency=1, timeout=0.1) as runner:
        report = await runner.map(slow, range(4))
        assert runner.stats().abandoned == 1
        # item 0 timed out; items 1-3 ran on the one slot while item 0's thread hung
        assert [r.ok for r in report.results] == [False, True, True, True]
        release.set()
        for _ in range(200):
            if runner.stats().abandoned == 0:
                break
            await asyncio.sleep(0.01)
        assert runner.stats().abandoned == 0


def _sleep_forever(_: int) -> int:
    time.sleep(60)
    return os.getpid()


async def test_process_timeout_kills_the_worker_process() -> None:
    me = psutil.Process()
    report = await lk.run_parallel(_sleep_forever, [0], executor="process", timeout=1.0)
    assert isinstance(report.results[0].error, TaskTimeout)
    assert report.results[0].duration < 30  # stopped at the timeout, not after 60 s
    warm = set(shared_pool().pids())  # experiments' warm workers, kept across runs on purpose
    workers = [
        p
        for p in me.children(recursive=True)
        if "resource_tracker" not in " ".join(p.cmdline()) and p.pid not in warm
    ]
    assert workers == []  # the worker was killed; the pool was joined at close


# -- sync callables that return awaitables ------------------------------------------------


async def _double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


async def test_a_sync_callable_returning_a_coroutine_has_it_awaited_everywhere() -> None:
    report = await lk.run_parallel(lambda x: _double(x), range(4))
    assert report.values == [0, 2, 4, 6]
    timed = await lk.run_parallel(lambda x: _double(x), range(4), timeout=5.0)
    assert timed.values == [0, 2, 4, 6]
    async with lk.Runner() as runner:
        handle = runner.submit(lambda: _double(5))
        assert (await handle).value == 10
    graph = await lk.run_graph({"a": (lambda: _double(1), []), "b": (lambda a: _double(a), ["a"])})
    assert graph["b"].value == 4


# -- broken inputs -------------------------------------------------------------------------


async def test_an_items_iterator_that_raises_keeps_every_finished_result() -> None:
    def items() -> Iterator[int]:
        yield from range(5)
        raise OSError("the source went away")

    with pytest.raises(ItemsFailed) as caught:
        await lk.run_parallel(_double, items(), max_concurrency=2)
    report = caught.value.report
    assert report.values == [0, 2, 4, 6, 8] and report.stats.completed == 5
    assert isinstance(caught.value.__cause__, OSError) and caught.value.pulled == 5


async def test_an_iterator_that_raises_before_a_priority_pass_loses_nothing() -> None:
    def items() -> Iterator[int]:
        yield 1
        raise OSError("gone")

    with pytest.raises(ItemsFailed) as caught:
        await lk.run_parallel(_double, items(), priority=lambda x: x)
    assert caught.value.report.results == []


# -- rate limits -----------------------------------------------------------------------


def _most_in_any_window(starts: list[float], window: float) -> int:
    starts = sorted(starts)
    best = 0
    j = 0
    for i, t in enumerate(starts):
        while starts[j] < t - window - 1e-12:
            j += 1
        best = max(best, i - j + 1)
    return best


async def test_rate_limit_holds_gcras_bound_after_a_loop_stall() -> None:
    starts: list[float] = []
    stalled = False

    async def work(i: int) -> None:
        nonlocal stalled
        starts.append(time.monotonic())
        if i == 15 and not stalled:
            stalled = True
            time.sleep(0.1)  # noqa: ASYNC251 - blocks the loop on purpose: waiters wake late

    await lk.run_parallel(
        work, range(80), max_concurrency=32, rate_limit=lk.RateLimit(200, burst=10)
    )
    for window in (0.001, 0.01, 0.05, 0.2):
        # at most burst + rate*T in any window T (plus one for the window's edge)
        assert _most_in_any_window(starts, window) <= 10 + 200 * window + 1, window


async def test_rate_limit_on_a_fake_clock_reserves_at_wake_up() -> None:
    clock = FakeClock(autojump=True)
    starts: list[float] = []

    async def work(_: int) -> None:
        starts.append(clock.now())

    limit = lk.RateLimit(100, burst=5)
    report = await lk.run_parallel(
        work, range(50), max_concurrency=50, rate_limit=limit, clock=clock
    )
    assert report.stats.completed == 50
    for window in (0.0, 0.01, 0.1):
        assert _most_in_any_window(starts, window) <= 5 + 100 * window + 1e-9


async def test_waiting_for_the_rate_limiter_is_not_task_time_nor_running() -> None:
    clock = FakeClock(autojump=True)
    seen: list[lk.RunnerStats] = []
    runner = lk.Runner(max_concurrency=4, rate_limit=lk.RateLimit(1, burst=1), clock=clock)

    async def work(_: int) -> None:
        seen.append(runner.stats())

    async with runner:
        report = await runner.map(work, range(4))
    assert [r.duration for r in report.results] == [0.0] * 4
    assert report.stats.avg_time == 0.0
    # while one runs, the others wait for the limiter: throttled, not running
    assert all(s.running == 1 for s in seen) and max(s.throttled for s in seen) >= 2


# -- workers and memory -----------------------------------------------------------------


async def test_unsized_inputs_start_no_more_workers_than_items() -> None:
    before = len(asyncio.all_tasks())
    peak = 0

    async def work(i: int) -> int:
        nonlocal peak
        peak = max(peak, len(asyncio.all_tasks()) - before)
        await asyncio.sleep(0)
        return i

    report = await lk.run_parallel(work, (i for i in range(3)), max_concurrency=10**6)
    assert report.values == [0, 1, 2]
    assert peak <= 3


async def test_keep_items_false_holds_results_not_payloads() -> None:
    n, size = 400, 100_000

    def payloads() -> Iterator[bytes]:
        for i in range(n):
            yield bytes([i % 256]) * size

    async def length(data: bytes) -> int:
        return len(data)

    gc.collect()
    tracemalloc.start()
    report = await lk.run_parallel(length, payloads(), max_concurrency=8, keep_items=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert report.values == [size] * n and all(r.item is None for r in report.results)
    assert peak < n * size / 10  # a few payloads in flight, not all 40 MB


async def test_keep_items_failed_keeps_only_the_failures_items() -> None:
    async def odd_fails(i: int) -> int:
        if i % 2:
            raise ValueError(i)
        return i

    report = await lk.run_parallel(odd_fails, range(4), keep_items="failed")
    assert [r.item for r in report.results] == [None, 1, None, 3]


# -- retries on results ---------------------------------------------------------------------


async def test_retry_if_result_retries_rejected_values_and_keeps_the_last() -> None:
    clock = FakeClock(autojump=True)
    calls: dict[int, int] = {}

    async def check(i: int) -> dict[str, Any]:
        calls[i] = calls.get(i, 0) + 1
        passed = i == 0 or (calls[i] >= 3 and i == 1)
        return {"status": "passed" if passed else "failed", "call": calls[i]}

    retry = lk.Retry(
        attempts=3, initial=0.1, jitter=0, retry_if_result=lambda r: r["status"] != "passed"
    )
    report = await lk.run_parallel(check, range(3), retry=retry, clock=clock)
    first, second, third = report.results
    assert first.ok and first.attempts == 1
    assert second.ok and second.attempts == 3 and second.value == {"status": "passed", "call": 3}
    assert not third.ok and third.attempts == 3
    assert isinstance(third.error, ResultRejected) and third.value == {
        "status": "failed",
        "call": 3,
    }


async def test_report_to_dict_and_json_hold_the_summary_and_every_task() -> None:
    async def maybe(i: int) -> float:
        if i == 2:
            raise ValueError("bad input")
        return float("nan") if i == 1 else i / 2

    report = await lk.run_parallel(maybe, range(3))
    data = json.loads(report.to_json())
    assert data["stats"]["submitted"] == 3 and data["stats"]["failed"] == 1
    assert [r["value"] for r in data["results"]] == [0.0, None, None]
    assert data["results"][2]["error"] == "ValueError: bad input"
    assert data["results"][0].keys() >= {"index", "item", "ok", "attempts", "duration"}
    assert "item" not in report.to_dict(items=False)["results"][0]


# -- cancels ----------------------------------------------------------------------------------


async def test_after_a_cancel_every_submitted_item_is_accounted_for() -> None:
    runner = lk.Runner(max_concurrency=8)

    async def slow(i: int) -> int:
        await asyncio.sleep(0 if i < 50 else 3600)
        return i

    items = list(range(1000))
    task = asyncio.create_task(runner.map(slow, items))
    while runner.stats().done < 50:  # noqa: ASYNC110 - polling the public snapshot
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = runner.stats()
    assert stats.done + stats.failed == 1000 and stats.queued == 0 and stats.running == 0
    report = runner.last_report
    assert report is not None and report.stats.submitted == 1000
    assert [r.item for r in report.results] == items  # never-started ones keep their item
    assert sum(r.cancelled for r in report.results) == 950


async def test_events_name_their_task_by_index() -> None:
    events: list[lk.TaskEvent] = []
    await lk.run_parallel(_double, [7, 8], on_event=events.append)
    assert {e.index for e in events} == {0, 1}
    assert isinstance(events[0].index, int)
