"""A lease (GPU, sandbox) lasts as long as the code that uses it, and waiting for one
is not run time: instances in threads, where a timed-out call cannot be stopped."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import labkit as lk
from labkit.experiment import InstanceContext
from labkit.testing import FakeSandbox, static_fleet

pytestmark = pytest.mark.timeout(60)


class Ledger:
    """When each instance's code held which GPU, as the code itself saw it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[str, float, float]] = []

    def overlaps(self) -> list[tuple[tuple[str, float, float], tuple[str, float, float]]]:
        spans = sorted(self.spans, key=lambda span: span[1])
        return [
            (a, b)
            for i, a in enumerate(spans)
            for b in spans[i + 1 :]
            if a[0] == b[0] and b[1] < a[2]
        ]


async def test_a_gpu_is_not_handed_on_while_a_timed_out_thread_still_uses_it() -> None:
    ledger = Ledger()
    pool = lk.GPUPool(lk.StaticInventory(static_fleet(1).devices()))
    held_while_abandoned: list[int] = []

    def job(ctx: InstanceContext) -> None:  # sync: runs in a thread, cannot be stopped
        began = time.monotonic()
        time.sleep(1.0)
        with ledger.lock:
            ledger.spans.append((ctx.gpus[0], began, time.monotonic()))

    async def watch() -> None:
        while True:
            held_while_abandoned.append(pool.stats().abandoned)
            await asyncio.sleep(0.02)

    watcher = asyncio.ensure_future(watch())
    result = await lk.run_experiment(
        lk.Experiment("gpu-job", job),
        instances=3,
        gpus_per_instance=1,
        gpu_pool=pool,
        max_concurrency=1,
        timeout=0.2,
    )
    assert all(str(i.error).startswith("TaskTimeout") for i in result.instances)
    # The last thread still runs: its GPU stays held, counted as abandoned.
    assert pool.stats().active == 1 and pool.stats().abandoned == 1
    for _ in range(300):
        if pool.stats().active == 0:
            break
        await asyncio.sleep(0.01)
    watcher.cancel()
    assert pool.stats().active == 0 and pool.stats().abandoned == 0
    assert len(ledger.spans) == 3
    assert ledger.overlaps() == []  # never two instances' code on the one GPU at once
    assert max(held_while_abandoned) == 1


async def test_a_sandbox_is_not_handed_on_while_a_timed_out_thread_still_uses_it() -> None:
    ledger = Ledger()
    sandboxes = lk.SandboxPool(FakeSandbox, max_size=1)

    def job(ctx: InstanceContext) -> None:
        began = time.monotonic()
        time.sleep(0.5)
        with ledger.lock:
            ledger.spans.append((str(id(ctx.sandbox)), began, time.monotonic()))

    try:
        await lk.run_experiment(
            lk.Experiment("sandbox-job", job),
            instances=2,
            sandbox_pool=sandboxes,
            max_concurrency=2,
            timeout=0.1,
        )
        assert sandboxes.stats().abandoned == 1
        for _ in range(300):
            if sandboxes.stats().active == 0:
                break
            await asyncio.sleep(0.01)
        assert sandboxes.stats().abandoned == 0
    finally:
        await sandboxes.close()
    assert len(ledger.spans) == 2 and ledger.overlaps() == []


async def test_waiting_for_a_gpu_is_not_run_time() -> None:
    pool = lk.GPUPool(lk.StaticInventory(static_fleet(1).devices()))

    async def job(ctx: InstanceContext) -> None:
        await asyncio.sleep(0.3)

    result = await lk.run_experiment(
        lk.Experiment("queued", job),
        instances=3,
        gpus_per_instance=1,
        gpu_pool=pool,
        timeout=0.5,
    )
    # Each waited up to 0.6 s for the one GPU, and ran 0.3 s of its 0.5 s.
    assert [(i.ok, i.error) for i in result.instances] == [(True, None)] * 3


async def test_waiting_for_a_sandbox_is_not_run_time() -> None:
    sandboxes = lk.SandboxPool(FakeSandbox, max_size=1)

    def job(ctx: InstanceContext) -> None:
        time.sleep(0.2)

    try:
        result = await lk.run_experiment(
            lk.Experiment("queued", job),
            instances=3,
            sandbox_pool=sandboxes,
            timeout=0.35,
        )
    finally:
        await sandboxes.close()
    assert [(i.ok, i.error) for i in result.instances] == [(True, None)] * 3


async def test_an_instance_past_its_timeout_still_fails_with_a_task_timeout() -> None:
    async def slow(ctx: InstanceContext) -> None:
        ctx.record(x=1.0)
        await asyncio.sleep(5)

    events: list[Any] = []
    result = await lk.run_experiment(
        lk.Experiment("slow", slow),
        instances=1,
        timeout=0.1,
        retry=lk.Retry(attempts=2, initial=0.0, jitter=0.0),
        on_event=events.append,
    )
    (instance,) = result.instances
    assert instance.error == "TaskTimeout: task 0, attempt 2: timed out after 0.1 s"
    assert instance.attempts == 2
    assert list(instance.timeline["x"]) == [1.0]
    assert [e.kind for e in events if isinstance(e, lk.TaskEvent)].count("retrying") == 1


async def test_what_an_abandoned_thread_records_reaches_neither_events_nor_the_retry() -> None:
    release = threading.Event()
    samples: list[tuple[int, float]] = []

    def job(ctx: InstanceContext) -> None:
        if ctx.attempt == 1:
            release.wait(5)
            ctx.record(late=1.0)  # after its attempt ended
        else:
            ctx.record(second=2.0)

    def on_event(event: Any) -> None:
        if isinstance(event, lk.InstanceEvent) and event.kind == "sample":
            samples.append((event.instance, next(iter(event.metrics.values()))))

    result = await lk.run_experiment(
        lk.Experiment("late", job),
        timeout=0.1,
        retry=lk.Retry(attempts=2, initial=0.0, jitter=0.0),
        on_event=on_event,
    )
    release.set()
    await asyncio.sleep(0.1)
    (instance,) = result.instances
    assert instance.ok and list(instance.timeline.columns) == ["t", "second"]
    assert samples == [(0, 2.0)]
