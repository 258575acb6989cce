"""Scheduling under load: resource guard, dependencies and graphs, adaptive concurrency."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

import labkit as lk
from labkit.errors import ConfigError, DependencyFailed, GraphError, ResourceUnavailable
from labkit.events import ConcurrencyEvent, GuardEvent
from labkit.guard import HostSample
from labkit.testing import FakeClock


@dataclass
class FakeHost:
    """A host whose CPU and memory the test sets; counts readings."""

    cpu: float = 10.0
    total_mb: float = 16_000.0
    available_mb: float = 12_000.0
    readings: int = 0

    def sample(self) -> HostSample:
        self.readings += 1
        return HostSample(self.cpu, self.total_mb, self.available_mb)


# -- resource guard ----------------------------------------------------------------


async def test_starts_are_held_while_the_host_is_over_its_limit_and_resume_after() -> None:
    clock = FakeClock()
    host = FakeHost(cpu=95.0)
    events: list[object] = []
    started: list[float] = []

    async def work(i: int) -> int:
        started.append(clock.now())
        return i

    runner = lk.Runner(
        max_concurrency=4,
        limits=lk.ResourceLimits(max_cpu_percent=80, check_every=1.0),
        probe=host,
        clock=clock,
        on_event=events.append,
    )
    task = asyncio.create_task(runner.map(work, range(3)))
    for _ in range(20):
        await asyncio.sleep(0)
    assert started == []  # nothing starts while the CPU is over 80 %
    stats = runner.stats()
    assert stats.held_reason == "cpu" and stats.held_back == 3
    # held tasks are held, not running: nothing has started
    assert stats.held == 3 and stats.running == 0 and stats.peak_concurrency == 0
    clock.advance(1.0)
    for _ in range(5):
        await asyncio.sleep(0)
    assert started == []  # still over after one more reading
    host.cpu = 40.0
    clock.advance(1.0)
    report = await task
    assert report.values == [0, 1, 2] and started == [2.0, 2.0, 2.0]
    stats = runner.stats()
    assert stats.held_back == 3 and stats.held_seconds == pytest.approx(6.0)
    assert stats.held_reason is None
    guard_events = [e for e in events if isinstance(e, GuardEvent)]
    assert [e.kind for e in guard_events] == ["held"] * 3 + ["resumed"] * 3
    assert all(e.reason == "cpu" for e in guard_events)
    # time spent held back is not part of a task's duration
    assert all(r.duration == 0.0 for r in report.results)


async def test_memory_cost_is_admitted_only_when_free_and_reserved_while_running() -> None:
    clock = FakeClock()
    host = FakeHost(available_mb=5_000.0)
    running: list[int] = []
    release = asyncio.Event()

    async def hungry(i: int) -> int:
        running.append(i)
        await release.wait()
        return i

    runner = lk.Runner(
        max_concurrency=8,
        limits=lk.ResourceLimits(check_every=0.5),
        cost={"memory_mb": 2_000},
        probe=host,
        clock=clock,
    )
    task = asyncio.create_task(runner.map(hungry, range(4)))
    for _ in range(20):
        await asyncio.sleep(0)
    # 5,000 MB free admits two tasks of 2,000 MB; the next two wait for memory
    assert running == [0, 1]
    assert runner.stats().held_reason == "memory"
    release.set()
    for _ in range(20):
        await asyncio.sleep(0)
    clock.advance(0.5)  # the reservations of the first two were released
    report = await task
    assert report.values == [0, 1, 2, 3]
    assert runner._guard is not None and runner._guard.reserved_mb == 0


async def test_per_item_cost_and_memory_percent_limit() -> None:
    clock = FakeClock(autojump=True)
    host = FakeHost(total_mb=10_000, available_mb=6_000)  # 40 % in use
    order: list[int] = []

    async def work(i: int) -> int:
        order.append(i)
        return i

    report = await lk.run_parallel(
        work,
        [100, 1_000, 5_000],
        max_concurrency=1,
        limits=lk.ResourceLimits(max_memory_percent=90),
        cost=lambda mb: {"memory_mb": mb},
        probe=host,
        clock=clock,
    )
    # 40 % + 5,000 MB would be 90 %: admitted exactly at the limit
    assert report.values == [100, 1_000, 5_000] and order == [100, 1_000, 5_000]


async def test_a_task_that_could_never_fit_fails_at_once_instead_of_waiting() -> None:
    report = await lk.run_parallel(
        lambda x: x,
        [1],
        limits=lk.ResourceLimits(),
        cost={"memory_mb": 1e9},
        probe=FakeHost(),
        clock=FakeClock(),
    )
    assert isinstance(report.errors[0], ResourceUnavailable)
    assert "memory_mb" in str(report.errors[0])
    assert report.results[0].attempts == 0


def test_bad_limits_and_costs_are_refused() -> None:
    with pytest.raises(ConfigError, match="max_cpu_percent"):
        lk.ResourceLimits(max_cpu_percent=150)
    with pytest.raises(ConfigError, match="check_every"):
        lk.ResourceLimits(check_every=0)
    with pytest.raises(ConfigError, match="cost"):
        lk.Runner(cost={"gpu_mb": 3})


def test_the_real_host_probe_reads_psutil() -> None:
    from labkit.guard import PsutilProbe

    sample = PsutilProbe().sample()
    assert 0 <= sample.cpu_percent <= 100
    assert 0 < sample.memory_available_mb <= sample.memory_total_mb


# -- dependencies ------------------------------------------------------------------


async def test_a_dependent_starts_only_after_its_dependencies_succeeded() -> None:
    log: list[str] = []

    async def step(name: str, delay: float) -> str:
        log.append(f"start {name}")
        await asyncio.sleep(delay)
        log.append(f"end {name}")
        return name

    async with lk.Runner(max_concurrency=4) as runner:
        a = runner.submit(step, "a", 0.02)
        b = runner.submit(step, "b", 0.01)
        c = runner.submit(step, "c", 0, depends_on=[a, b])
        result = await c
    assert result.ok and result.value == "c"
    assert log.index("start c") > max(log.index("end a"), log.index("end b"))


async def test_a_failed_dependency_means_the_dependent_does_not_run() -> None:
    ran: list[str] = []

    async def boom() -> None:
        raise ValueError("broken input")

    async def after() -> None:
        ran.append("after")

    async with lk.Runner() as runner:
        first = runner.submit(boom)
        second = runner.submit(after, depends_on=[first])
        third = runner.submit(after, depends_on=[second])
        results = [await first, await second, await third]
    assert ran == []
    assert isinstance(results[1].error, DependencyFailed)
    assert results[1].error.dependency == first.index
    assert "broken input" in str(results[1].error)
    assert isinstance(results[2].error, DependencyFailed)  # the failure propagates
    assert results[1].attempts == 0


async def test_a_cancelled_dependency_is_reported_as_cancelled() -> None:
    async with lk.Runner() as runner:
        slow = runner.submit(asyncio.sleep, 3600)
        after = runner.submit(asyncio.sleep, 0, depends_on=[slow])
        await asyncio.sleep(0)
        slow.cancel()
        result = await after
    assert isinstance(result.error, DependencyFailed)
    assert "cancelled" in str(result.error)


async def test_run_graph_runs_a_dag_in_parallel_branches_with_values_passed_on() -> None:
    clock = FakeClock(autojump=True)
    spans: dict[str, tuple[float, float]] = {}

    def node(name: str, seconds: float, combine=lambda *xs: sum(xs)):  # type: ignore[no-untyped-def]
        async def run(*inputs: int) -> int:
            start = clock.now()
            await clock.sleep(seconds)
            spans[name] = (start, clock.now())
            return combine(*inputs) + 1

        return run

    graph = {
        "load": (node("load", 1), []),
        "left": (node("left", 2), ["load"]),
        "right": (node("right", 3), ["load"]),
        "join": (node("join", 1), ["left", "right"]),
    }
    results = await lk.run_graph(graph, max_concurrency=4, clock=clock)
    assert list(results) == ["load", "left", "right", "join"]
    assert results["join"].value == (1 + 1) + (1 + 1) + 1
    assert results["join"].item == "join"
    assert spans["left"][0] == spans["right"][0] == 1.0  # the branches ran side by side
    assert spans["join"][0] == 4.0


async def test_run_graph_names_the_failed_dependency() -> None:
    def broken() -> None:
        raise RuntimeError("no data")

    results = await lk.run_graph(
        {"data": (broken, []), "model": (lambda d: d, ["data"]), "free": (lambda: 7, [])}
    )
    assert isinstance(results["model"].error, DependencyFailed)
    assert results["model"].error.dependency == "data"
    assert "'data'" in str(results["model"].error)
    assert results["free"].value == 7


async def test_run_graph_refuses_cycles_and_unknown_names_before_running() -> None:
    ran: list[str] = []

    def mark(name: str):  # type: ignore[no-untyped-def]
        return lambda *_: ran.append(name)

    with pytest.raises(GraphError) as cycle:
        await lk.run_graph(
            {
                "a": (mark("a"), ["c"]),
                "b": (mark("b"), ["a"]),
                "c": (mark("c"), ["b"]),
                "d": (mark("d"), []),
            }
        )
    assert set(cycle.value.cycle) == {"a", "b", "c"}
    assert cycle.value.cycle[0] == cycle.value.cycle[-1]
    assert "cycle" in str(cycle.value)
    with pytest.raises(GraphError) as unknown:
        await lk.run_graph({"a": (mark("a"), []), "b": (mark("b"), ["a", "ghost"])})
    assert unknown.value.unknown == {"b": ["ghost"]}
    assert "ghost" in str(unknown.value) and isinstance(unknown.value, ValueError)
    assert ran == []


# -- adaptive concurrency ----------------------------------------------------------


class SimulatedService:
    """Latency is flat up to ``capacity`` concurrent calls, then grows with the square
    of the overload: throughput peaks at exactly ``capacity``."""

    def __init__(self, clock: FakeClock, capacity: int = 20, latency: float = 0.1) -> None:
        self.clock = clock
        self.capacity = capacity
        self.latency = latency
        self.in_flight = 0

    async def call(self, _: int) -> None:
        self.in_flight += 1
        overload = max(1.0, self.in_flight / self.capacity)
        try:
            await self.clock.sleep(self.latency * overload**2)
        finally:
            self.in_flight -= 1


async def test_adaptive_concurrency_converges_to_the_services_capacity() -> None:
    clock = FakeClock(autojump=True)
    service = SimulatedService(clock)
    changes: list[ConcurrencyEvent] = []
    runner = lk.Runner(
        max_concurrency=lk.AutoConcurrency(min=1, max=200),
        clock=clock,
        on_event=lambda e: changes.append(e) if isinstance(e, ConcurrencyEvent) else None,
    )
    report = await runner.map(service.call, range(6_000))
    assert report.stats.completed == 6_000
    limits = [e.limit for e in changes]
    assert limits[:2] == [16, 32]  # slow start doubles from 8 while it pays
    settled = limits[len(limits) // 2 :]
    assert min(settled) >= 16 and max(settled) <= 24  # it hovers around 20
    assert 16 <= runner.stats().max_concurrency <= 24
    best_possible = service.capacity / service.latency  # 200 tasks/s
    assert report.stats.throughput >= 0.85 * best_possible


async def test_adaptive_concurrency_backs_off_when_the_guard_holds_starts() -> None:
    clock = FakeClock(autojump=True)
    host = FakeHost(cpu=50)
    service = SimulatedService(clock, capacity=1_000)
    changes: list[ConcurrencyEvent] = []
    runner = lk.Runner(
        max_concurrency=lk.AutoConcurrency(min=1, max=64, initial=32),
        limits=lk.ResourceLimits(max_cpu_percent=80, check_every=0.5),
        probe=host,
        clock=clock,
        on_event=lambda e: changes.append(e) if isinstance(e, ConcurrencyEvent) else None,
    )
    task = asyncio.create_task(runner.map(service.call, range(400)))
    while runner.stats().done < 50:
        await clock.sleep(0.05)  # lets the fake clock jump while the work runs
    host.cpu = 99
    await clock.sleep(1.0)
    host.cpu = 50
    await task
    pressure = [e for e in changes if e.reason == "pressure"]
    assert len(pressure) == 1  # one cut per hold, not one per held start
    assert pressure[0].limit == int(pressure[0].previous * 0.95)
    assert all(e.reason == "probe" for e in changes if e.time < pressure[0].time)


def test_auto_concurrency_bounds_are_validated() -> None:
    with pytest.raises(ConfigError, match="max"):
        lk.AutoConcurrency(min=10, max=5)
    with pytest.raises(ConfigError, match="max_concurrency"):
        lk.Runner(max_concurrency="fast")
    assert lk.Runner(max_concurrency="auto").concurrency == 8
