"""The parallel runner: order, caps, retries, timeouts, rate limits, events, cancellation."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import threading
import time
from collections.abc import Awaitable, Iterator
from typing import Any

import pytest

import labkit as lk
from labkit.errors import ConfigError, TaskFailed, TaskTimeout
from labkit.runner.inputs import OnLoop
from labkit.testing import FakeClock


class Gauge:
    """Counts calls in flight and remembers the most at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


def square(x: int) -> int:
    """Module-level so that it pickles for the process executor."""
    return x * x


def pid_of(_: int) -> int:
    return os.getpid()


# -- results -------------------------------------------------------------------------


async def test_results_come_back_in_input_order_with_values_and_stats() -> None:
    async def slow_then_fast(i: int) -> int:
        await asyncio.sleep(0.001 * (10 - i))
        return i * 10

    report = await lk.run_parallel(slow_then_fast, range(10), max_concurrency=4)
    assert [r.index for r in report.results] == list(range(10))
    assert report.values == [i * 10 for i in range(10)]
    assert [r.item for r in report.results] == list(range(10))
    assert all(r.ok and r.attempts == 1 and r.duration >= 0 for r in report.results)
    stats = report.stats
    assert (stats.submitted, stats.completed, stats.failed) == (10, 10, 0)
    assert stats.success_rate == 1.0 and stats.peak_concurrency == 4
    assert stats.throughput > 0 and stats.total_time > 0


async def test_a_failing_item_is_a_result_not_an_exception() -> None:
    async def maybe(i: int) -> int:
        if i % 3 == 0:
            raise ValueError(f"bad {i}")
        return i

    report = await lk.run_parallel(maybe, range(7))
    assert report.values == [1, 2, 4, 5]
    assert [str(e) for e in report.errors] == ["bad 0", "bad 3", "bad 6"]
    assert [r.index for r in report.failures] == [0, 3, 6]
    assert report.stats.completed + report.stats.failed == report.stats.submitted == 7
    assert not report.ok
    with pytest.raises(ExceptionGroup) as caught:
        report.raise_for_errors()
    members = caught.value.exceptions
    assert all(isinstance(m, TaskFailed) for m in members)
    assert [m.index for m in members] == [0, 3, 6]  # type: ignore[attr-defined]
    assert isinstance(members[0].__cause__, ValueError)


async def test_raise_for_errors_is_silent_when_all_succeeded() -> None:
    report = await lk.run_parallel(lambda x: x, [1, 2])
    report.raise_for_errors()
    assert report.ok


async def test_to_frame_has_one_row_per_item() -> None:
    async def f(i: int) -> int:
        if i == 1:
            raise KeyError("k")
        return i

    frame = (await lk.run_parallel(f, range(3))).to_frame()
    assert list(frame["index"]) == [0, 1, 2]
    assert list(frame["ok"]) == [True, False, True]
    assert frame.loc[1, "error"] == "KeyError: 'k'"
    assert {"attempts", "started", "finished", "duration", "value"} <= set(frame.columns)


async def test_empty_input_gives_an_empty_report() -> None:
    report = await lk.run_parallel(lambda x: x, [])
    assert report.results == [] and report.stats.submitted == 0
    assert report.stats.success_rate == 1.0


async def test_lazy_input_is_pulled_no_further_than_the_concurrency_ahead() -> None:
    pulled = 0
    finished = 0
    lead = 0

    def items() -> Any:
        nonlocal pulled, lead
        for i in range(200):
            pulled += 1
            lead = max(lead, pulled - finished)
            yield i

    async def f(i: int) -> int:
        nonlocal finished
        await asyncio.sleep(0)
        finished += 1
        return i

    report = await lk.run_parallel(f, items(), max_concurrency=5)
    assert report.values == list(range(200))
    assert lead <= 5 + 1


# -- concurrency and executors -----------------------------------------------------


async def test_the_cap_is_never_exceeded_for_async_functions() -> None:
    gauge = Gauge()

    async def f(i: int) -> int:
        gauge.enter()
        await asyncio.sleep(random.random() / 500)
        gauge.leave()
        return i

    report = await lk.run_parallel(f, range(100), max_concurrency=7)
    assert gauge.peak == 7
    assert report.stats.peak_concurrency == 7


async def test_sync_functions_run_in_threads_never_on_the_loop_and_under_the_cap() -> None:
    gauge = Gauge()
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    def f(i: int) -> int:
        gauge.enter()
        threads.add(threading.get_ident())
        threading.Event().wait(0.005)
        gauge.leave()
        return i + 1

    report = await lk.run_parallel(f, range(30), max_concurrency=4)
    assert report.values == list(range(1, 31))
    assert loop_thread not in threads
    assert 1 < len(threads) <= 4
    assert gauge.peak <= 4


async def test_process_executor_runs_picklable_functions_in_other_processes() -> None:
    report = await lk.run_parallel(square, range(6), max_concurrency=2, executor="process")
    assert report.values == [0, 1, 4, 9, 16, 25]
    pids = await lk.run_parallel(pid_of, range(4), max_concurrency=2, executor="process")
    assert os.getpid() not in set(pids.values)


async def test_an_async_function_cannot_run_in_a_process() -> None:
    async def f(x: int) -> int:
        return x

    with pytest.raises(ConfigError, match="executor"):
        await lk.run_parallel(f, [1], executor="process")


async def test_runner_cap_is_shared_by_map_and_submit() -> None:
    gauge = Gauge()

    async def f(i: int) -> int:
        gauge.enter()
        await asyncio.sleep(0.002)
        gauge.leave()
        return i

    async with lk.Runner(max_concurrency=3) as runner:
        handles = [runner.submit(f, i) for i in range(5)]
        report, *results = await asyncio.gather(
            runner.map(f, range(10)), *(_await(h) for h in handles)
        )
    assert gauge.peak == 3
    assert report.values == list(range(10))
    assert [r.value for r in results] == list(range(5))
    assert [r.item for r in results] == [(i,) for i in range(5)]


async def _await(handle: lk.TaskHandle[Any]) -> lk.TaskResult[Any]:
    return await handle


async def test_submit_with_kwargs_and_sync_functions() -> None:
    def add(a: int, *, b: int) -> int:
        return a + b

    async with lk.Runner() as runner:
        result = await runner.submit(add, 2, b=3)
    assert result.ok and result.value == 5


async def test_a_cancelled_handle_reports_a_cancelled_result() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    async with lk.Runner() as runner:
        handle = runner.submit(forever)
        await started.wait()
        handle.cancel()
        result = await handle
    assert not result.ok and result.cancelled
    assert runner.stats().failed == 1 and runner.stats().running == 0


async def test_map_kwargs_unpacks_mappings() -> None:
    async def area(*, w: int, h: int) -> int:
        return w * h

    async with lk.Runner() as runner:
        report = await runner.map_kwargs(area, [{"w": 2, "h": 3}, {"w": 4, "h": 5}])
    assert report.values == [6, 20]


# -- retries -------------------------------------------------------------------------


async def test_retry_backs_off_exponentially_with_a_cap_and_counts_attempts() -> None:
    clock = FakeClock(autojump=True)
    calls = 0

    async def flaky(_: int) -> str:
        nonlocal calls
        calls += 1
        if calls < 5:
            raise ConnectionError("down")
        return "up"

    retry = lk.Retry(attempts=5, initial=0.5, backoff=2.0, max_delay=3.0, jitter=0.0)
    report = await lk.run_parallel(flaky, [0], retry=retry, clock=clock)
    assert report.values == ["up"]
    assert report.results[0].attempts == 5
    assert report.stats.retries == 4
    assert clock.sleeps == [0.5, 1.0, 2.0, 3.0]
    assert report.results[0].duration == pytest.approx(6.5)


async def test_retry_gives_up_after_its_attempts_and_keeps_the_last_error() -> None:
    clock = FakeClock(autojump=True)

    async def broken(_: int) -> None:
        raise ConnectionError("still down")

    report = await lk.run_parallel(
        broken, [0, 1], retry=lk.Retry(attempts=3, jitter=0), clock=clock
    )
    assert [r.attempts for r in report.results] == [3, 3]
    assert report.stats.retries == 4 and report.stats.failed == 2
    assert isinstance(report.errors[0], ConnectionError)


async def test_retry_on_filters_which_exceptions_are_retried() -> None:
    clock = FakeClock(autojump=True)

    async def f(i: int) -> None:
        raise (ConnectionError if i == 0 else KeyError)("x")

    retry = lk.Retry(attempts=4, retry_on=(ConnectionError,), jitter=0)
    report = await lk.run_parallel(f, [0, 1], retry=retry, clock=clock)
    assert [r.attempts for r in report.results] == [4, 1]


def test_retry_jitter_stays_within_its_fraction_of_the_delay() -> None:
    retry = lk.Retry(initial=1.0, backoff=2.0, max_delay=100.0, jitter=0.25)
    rng = random.Random(7)
    delays = [retry.delay(3, rng) for _ in range(500)]
    assert all(3.0 <= d <= 5.0 for d in delays)
    assert max(delays) - min(delays) > 1.0  # it really varies
    assert lk.Retry(jitter=0, max_delay=30).delay(10_000) == 30.0  # no overflow


async def test_first_attempt_success_costs_no_retry_machinery() -> None:
    clock = FakeClock()
    report = await lk.run_parallel(
        lambda x: x, range(5), retry=lk.Retry(attempts=9), clock=clock, executor="thread"
    )
    assert report.stats.retries == 0 and clock.sleeps == []


# -- timeouts ------------------------------------------------------------------------


async def test_timeout_cancels_the_attempt_and_counts_as_timeout_error() -> None:
    clock = FakeClock(autojump=True)
    cleaned: list[int] = []

    async def slow(i: int) -> int:
        try:
            await clock.sleep(10.0 if i == 0 else 0.1)
        finally:
            cleaned.append(i)
        return i

    report = await lk.run_parallel(slow, [0, 1], timeout=1.0, clock=clock)
    error = report.results[0].error
    assert isinstance(error, TaskTimeout) and isinstance(error, TimeoutError)
    assert "1.0 s" in str(error)
    assert report.results[1].ok
    assert sorted(cleaned) == [0, 1]
    assert report.results[0].duration == pytest.approx(1.0)


async def test_timed_out_attempts_are_retried_when_retry_on_allows() -> None:
    clock = FakeClock(autojump=True)
    attempts = 0

    async def slow_then_quick(_: int) -> str:
        nonlocal attempts
        attempts += 1
        await clock.sleep(5.0 if attempts < 3 else 0.1)
        return "done"

    retry = lk.Retry(attempts=3, initial=0.1, jitter=0, retry_on=(TimeoutError,))
    report = await lk.run_parallel(slow_then_quick, [0], timeout=1.0, retry=retry, clock=clock)
    assert report.values == ["done"] and report.results[0].attempts == 3


async def test_a_functions_own_timeout_error_is_not_relabelled() -> None:
    async def f(_: int) -> None:
        raise TimeoutError("remote said so")

    report = await lk.run_parallel(f, [0], timeout=60)
    assert type(report.errors[0]) is TimeoutError


async def test_real_clock_timeout() -> None:
    async def slow(_: int) -> None:
        await asyncio.sleep(5)

    report = await lk.run_parallel(slow, [0], timeout=0.05)
    assert isinstance(report.errors[0], TaskTimeout)


# -- rate limits -------------------------------------------------------------------


async def test_rate_limit_allows_a_burst_then_spaces_starts() -> None:
    clock = FakeClock(autojump=True)
    starts: list[float] = []

    async def f(_: int) -> None:
        starts.append(clock.now())

    await lk.run_parallel(
        f, range(8), max_concurrency=8, rate_limit=lk.RateLimit(2, per=1.0, burst=3), clock=clock
    )
    assert sorted(starts) == pytest.approx([0, 0, 0, 0.5, 1.0, 1.5, 2.0, 2.5])


async def test_rate_limit_counts_retries_as_starts() -> None:
    clock = FakeClock(autojump=True)
    starts: list[float] = []

    async def fail_once(i: int) -> None:
        starts.append(clock.now())
        if len(starts) == 1:
            raise OSError("first start fails")

    await lk.run_parallel(
        fail_once,
        range(2),
        max_concurrency=2,
        rate_limit=lk.RateLimit(1, per=1.0),
        retry=lk.Retry(initial=0, jitter=0),
        clock=clock,
    )
    assert len(starts) == 3
    assert sorted(starts) == pytest.approx([0.0, 1.0, 2.0])


async def test_rate_limit_jitter_delays_each_start_by_at_most_its_value() -> None:
    clock = FakeClock(autojump=True)
    starts: list[float] = []

    async def f(_: int) -> None:
        starts.append(clock.now())

    await lk.run_parallel(
        f,
        range(20),
        max_concurrency=20,
        rate_limit=lk.RateLimit(1000, burst=20, jitter=0.5),
        clock=clock,
        rng=random.Random(3),
    )
    assert all(0 <= s < 0.5 for s in starts)
    assert len(set(starts)) > 10


# -- priority and batches ----------------------------------------------------------


async def test_priority_callable_runs_higher_first_and_ties_in_input_order() -> None:
    order: list[str] = []

    async def f(item: tuple[str, int]) -> None:
        order.append(item[0])

    items = [("a", 1), ("b", 5), ("c", 1), ("d", 9), ("e", 5)]
    report = await lk.run_parallel(f, items, max_concurrency=1, priority=lambda it: it[1])
    assert order == ["d", "b", "e", "a", "c"]
    assert [r.item[0] for r in report.results] == ["a", "b", "c", "d", "e"]


async def test_priority_values_per_item_must_match_the_items() -> None:
    order: list[int] = []

    async def f(i: int) -> None:
        order.append(i)

    await lk.run_parallel(f, [0, 1, 2], max_concurrency=1, priority=[0, 2, 1])
    assert order == [1, 2, 0]
    with pytest.raises(ConfigError, match="priority"):
        await lk.run_parallel(f, [0, 1, 2], priority=[1, 2])


async def test_batches_do_not_overlap_and_pause_between() -> None:
    clock = FakeClock(autojump=True)
    spans: list[tuple[int, float, float]] = []

    async def f(i: int) -> None:
        start = clock.now()
        await clock.sleep(1.0 + i * 0.1)
        spans.append((i, start, clock.now()))

    await lk.run_parallel(
        f, range(7), max_concurrency=10, batch_size=3, batch_delay=5.0, clock=clock
    )
    by_item = {i: (s, e) for i, s, e in spans}
    batches = [range(0, 3), range(3, 6), range(6, 7)]
    for earlier, later in itertools.pairwise(batches):
        end_of_earlier = max(by_item[i][1] for i in earlier)
        assert min(by_item[i][0] for i in later) == pytest.approx(end_of_earlier + 5.0)


# -- events and stats ---------------------------------------------------------------


async def test_events_trace_each_task_life() -> None:
    clock = FakeClock(autojump=True)
    events: list[lk.TaskEvent] = []
    calls = 0

    async def flaky(_: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("once")
        return 1

    await lk.run_parallel(
        flaky, [0], retry=lk.Retry(initial=2, jitter=0), on_event=events.append, clock=clock
    )
    assert [e.kind for e in events] == ["queued", "started", "retrying", "started", "succeeded"]
    assert events[2].delay == 2 and isinstance(events[2].error, OSError)
    assert [e.attempt for e in events] == [0, 1, 1, 2, 2]
    assert events[-1].duration == pytest.approx(2.0)
    assert all(e.index == 0 for e in events)
    with pytest.raises(AttributeError):
        events[0].kind = "x"  # type: ignore[misc]


async def test_a_subscriber_that_raises_does_not_break_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def bad(_: lk.TaskEvent) -> None:
        raise RuntimeError("widget bug")

    report = await lk.run_parallel(lambda x: x, range(3), on_event=bad)
    assert report.values == [0, 1, 2]
    assert "widget bug" in caplog.text


async def test_stats_snapshot_while_running_and_after() -> None:
    gate = asyncio.Event()
    runner = lk.Runner(max_concurrency=2)

    async def wait(i: int) -> int:
        await gate.wait()
        return i

    task = asyncio.create_task(runner.map(wait, range(5)))
    for _ in range(5):
        await asyncio.sleep(0)
    during = runner.stats()
    assert (during.queued, during.running, during.done) == (3, 2, 0)
    gate.set()
    await task
    after = runner.stats()
    assert (after.queued, after.running, after.done, after.failed) == (0, 0, 5, 0)
    assert after.peak_concurrency == 2 and after.max_concurrency == 2
    with pytest.raises(AttributeError):
        after.done = 1  # type: ignore[misc]
    await runner.aclose()


# -- cancellation ------------------------------------------------------------------


async def test_cancelling_the_caller_cancels_in_flight_attempts_and_waits_for_cleanup() -> None:
    cleaned: list[int] = []
    started = 0
    all_started = asyncio.Event()

    async def work(i: int) -> int:
        nonlocal started
        if i < 3:
            return i
        started += 1
        if started == 4:
            all_started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits
            cleaned.append(i)
        return i

    runner = lk.Runner(max_concurrency=4)
    task = asyncio.create_task(runner.map(work, range(10)))
    await all_started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(cleaned) == [3, 4, 5, 6]
    partial = runner.last_report
    assert partial is not None
    assert partial.values == [0, 1, 2]
    assert partial.stats.completed == 3 and partial.stats.failed == 7
    assert all(r.cancelled for r in partial.results[3:])
    assert runner.stats().running == 0 and runner.stats().queued == 0


# -- the sync bridge ---------------------------------------------------------------


def test_run_parallel_sync_from_plain_code() -> None:
    report = lk.run_parallel_sync(square, range(5), max_concurrency=2)
    assert report.values == [0, 1, 4, 9, 16]


async def test_run_parallel_sync_inside_a_running_loop_uses_that_loop() -> None:
    outer = asyncio.get_running_loop()
    seen: list[asyncio.AbstractEventLoop] = []

    async def where(_: int) -> None:
        seen.append(asyncio.get_running_loop())

    report = lk.run_parallel_sync(where, range(3))  # as a Jupyter cell would
    assert report.stats.completed == 3
    assert seen == [outer] * 3


def test_parallel_map_decorator_returns_a_report() -> None:
    @lk.parallel_map(max_concurrency=2)
    def double(x: int) -> int:
        return 2 * x

    @lk.parallel_map
    def negate(x: int) -> int:
        return -x

    assert double([1, 2, 3]).values == [2, 4, 6]
    assert negate([1, 2]).values == [-1, -2]
    assert double.__wrapped__(5) == 10  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="max_concurrency"):
        lk.parallel_map(max_concurrency=0)


# -- bad options -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "option"),
    [
        (lambda: lk.Runner(max_concurrency=0), "max_concurrency"),
        (lambda: lk.Runner(max_concurrency=2.5), "max_concurrency"),
        (lambda: lk.Runner(timeout=-1), "timeout"),
        (lambda: lk.Runner(executor="gpu-cluster"), "executor"),
        (lambda: lk.Runner(batch_size=0), "batch_size"),
        (lambda: lk.Runner(retry=3), "retry"),
        (lambda: lk.Runner(max_concurency=3), "max_concurency"),
        (lambda: lk.Retry(attempts=0), "attempts"),
        (lambda: lk.Retry(backoff=0.5), "backoff"),
        (lambda: lk.Retry(jitter=2), "jitter"),
        (lambda: lk.Retry(retry_on=("ValueError",)), "retry_on"),
        (lambda: lk.RateLimit(-1), "rate"),
        (lambda: lk.RateLimit(5, burst=0), "burst"),
        (lambda: lk.RateLimit(5, per=0), "per"),
    ],
)
def test_bad_options_name_the_option_the_value_and_what_is_allowed(build: Any, option: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build()
    assert isinstance(caught.value, ValueError)
    assert caught.value.option == option
    assert str(caught.value).startswith(f"{option}=")
    assert "expected" in str(caught.value)


async def test_bad_options_fail_before_anything_runs() -> None:
    ran: list[int] = []
    with pytest.raises(ConfigError):
        await lk.run_parallel(ran.append, [1], max_concurrency=-3)
    assert ran == []


async def test_subscribers_get_only_the_event_types_they_ask_for() -> None:
    from labkit.events import ConcurrencyEvent

    task_events: list[lk.TaskEvent] = []
    limit_events: list[ConcurrencyEvent] = []
    bus = lk.EventBus()
    bus.subscribe(limit_events.append, types=ConcurrencyEvent)
    runner = lk.Runner(on_event=bus)
    assert bus.route(lk.TaskEvent) == ()  # nobody wants task events: none are created
    await runner.map(lambda x: x, range(3))
    assert limit_events == []

    unsubscribe = bus.subscribe(task_events.append, types=lk.TaskEvent)
    await runner.map(lambda x: x, range(2))
    assert [e.kind for e in task_events].count("succeeded") == 2
    unsubscribe()
    assert bus.route(lk.TaskEvent) == ()


# -- a slow items generator -----------------------------------------------------------


async def _largest_tick_gap(run: Awaitable[Any]) -> tuple[Any, float]:
    """Run ``run`` while a ticker wakes every 5 ms; the longest the loop kept it waiting."""
    loop = asyncio.get_running_loop()
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(loop.time())
            await asyncio.sleep(0.005)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.02)
    try:
        value = await run
    finally:
        ticker.cancel()
    return value, max(later - earlier for earlier, later in itertools.pairwise(ticks))


async def test_a_slow_items_generator_does_not_freeze_the_loop() -> None:
    item_s = 0.3
    pulled_in: set[int] = set()

    def slow_items() -> Iterator[int]:
        for i in range(4):
            time.sleep(item_s)  # reading a file, a database cursor...
            pulled_in.add(threading.get_ident())
            yield i

    async def double(x: int) -> int:
        return 2 * x

    report, gap = await _largest_tick_gap(lk.run_parallel(double, slow_items()))
    print(f"largest loop stall while pulling 4 items of {item_s} s each: {gap * 1000:.0f} ms")
    assert report.values == [0, 2, 4, 6]
    assert threading.get_ident() not in pulled_in
    assert gap < item_s / 2  # was the whole item time, every item


async def test_fast_generators_are_pulled_on_the_loop_after_the_first_item() -> None:
    threads: list[int] = []

    def items(n: int) -> Iterator[int]:
        for i in range(n):
            threads.append(threading.get_ident())
            yield i

    async def same(x: int) -> int:
        return x

    report = await lk.run_parallel(same, items(50), max_concurrency=4)
    assert report.values == list(range(50))
    here = threading.get_ident()
    assert threads[0] != here and set(threads[1:]) == {here}  # then no thread hop per item
    threads.clear()
    report = await lk.run_parallel(same, OnLoop(items(10)), batch_size=3)
    assert report.values == list(range(10)) and set(threads) == {here}


async def test_a_generator_that_turns_slow_moves_off_the_loop_and_can_still_fail() -> None:
    def items() -> Iterator[int]:
        yield from range(5)  # fast: pulled on the loop
        for i in range(5, 8):
            time.sleep(0.2)
            yield i
        raise OSError("the file went away")

    async def same(x: int) -> int:
        return x

    with pytest.raises(lk.errors.ItemsFailed) as caught:
        await _largest_tick_gap(lk.run_parallel(same, items(), batch_size=2))
    assert caught.value.report.values == list(range(8))
    # The first slow pull stalls the loop once, at most: the rest come from the thread.
    _, gap = await _largest_tick_gap(lk.run_parallel(same, itertools.islice(items(), 8)))
    assert gap < 0.2 + 0.1
