"""InstanceProgress: where each instance of a run stands, from real runs' events and logs."""

from __future__ import annotations

import asyncio

import pytest

from labkit.events import InstanceEvent, TaskEvent, TimelineEvent
from labkit.experiment import Experiment, InstanceContext, run_experiment
from labkit.policies import Retry
from labkit.progress import InstanceProgress, InstanceStatus, ProgressSnapshot
from labkit.samplelog import SampleLog
from labkit.testing import FakeClock


async def _fixed_steps(ctx: InstanceContext) -> None:
    """Ten steps of one second, whatever ``ctx.duration`` says (the README's shape)."""
    for step in range(10):
        ctx.record(loss=1.0 / (step + 1), step=float(step))
        await ctx.sleep(1.0)


@pytest.mark.asyncio
async def test_a_run_goes_from_queued_to_done_with_its_steps_and_samples() -> None:
    clock = FakeClock(autojump=True)
    progress = InstanceProgress(3, clock=clock)
    assert progress.snapshot().counts == {"queued": 3}
    seen: list[ProgressSnapshot] = []

    async def watched(ctx: InstanceContext) -> None:
        await _fixed_steps(ctx)
        seen.append(progress.snapshot())

    result = await run_experiment(
        Experiment("steps", watched), instances=3, on_event=progress, clock=clock
    )

    assert result.ok
    during = seen[0].instances[0]
    assert during.state == "running" and during.attempt == 1
    assert during.samples == 10 and during.step == 9.0 and during.offset == pytest.approx(9.0)
    assert during.fraction is None  # nothing says how long it runs: no fraction made up
    assert during.elapsed == pytest.approx(10.0)
    assert "step 9" in during.text() and "10 samples" in during.text()
    after = progress.snapshot()
    assert after.counts == {"done": 3} and after.ended == 3
    assert all(s.fraction == 1.0 and s.state == "done" for s in after.instances)


@pytest.mark.asyncio
async def test_a_bar_is_full_only_once_its_instance_ended() -> None:
    """A function told 5 s that runs 10 s: the bar stays short of full until it returns."""
    clock = FakeClock(autojump=True)
    progress = InstanceProgress(1, expected_s=5.0, clock=clock)
    fractions: list[float | None] = []

    async def watched(ctx: InstanceContext) -> None:
        for step in range(10):
            ctx.record(loss=1.0, step=float(step))
            await ctx.sleep(1.0)
            fractions.append(progress.snapshot().instances[0].fraction)

    await run_experiment(
        Experiment("long", watched), instances=1, duration=5.0, on_event=progress, clock=clock
    )

    assert fractions[0] == pytest.approx(0.2)
    assert max(f for f in fractions if f is not None) < 1.0  # twice as long as told
    assert progress.snapshot().instances[0].fraction == 1.0


@pytest.mark.asyncio
async def test_retries_failures_and_their_errors() -> None:
    clock = FakeClock(autojump=True)
    progress = InstanceProgress(3, clock=clock)
    states: list[str] = []

    async def flaky(ctx: InstanceContext) -> None:
        ctx.record(loss=1.0)
        if ctx.index == 1 and ctx.attempt == 1:
            raise RuntimeError("first attempt broke")
        if ctx.index == 2:
            raise ValueError("always broken")
        states.append(progress.snapshot().instances[1].state)

    await run_experiment(
        Experiment("flaky", flaky),
        instances=3,
        on_event=progress,
        clock=clock,
        retry=Retry(attempts=2, initial=0.5, jitter=0.0, retry_on=(RuntimeError,)),
    )

    snapshot = progress.snapshot()
    retried, broken = snapshot.instances[1], snapshot.instances[2]
    assert retried.state == "done" and retried.attempt == 2 and retried.retries == 1
    assert broken.state == "failed" and "always broken" in (broken.error or "")
    assert "always broken" in broken.text()
    assert snapshot.counts == {"done": 2, "failed": 1}


def test_a_retry_between_attempts_reads_retrying() -> None:
    progress = InstanceProgress(1, clock=FakeClock())
    progress.handle(InstanceEvent("started", 0, 0.0))
    progress.handle(InstanceEvent("failed", 0, 1.0, 1.0, message="RuntimeError: boom"))
    assert progress.snapshot().instances[0].state == "failed"
    assert progress.handle(TaskEvent("retrying", 0, 1.0, attempt=1, delay=0.5))
    status = progress.snapshot().instances[0]
    assert status.state == "retrying" and "attempt 2" in status.text() and "boom" in status.text()
    progress.handle(InstanceEvent("started", 0, 1.5))
    status = progress.snapshot().instances[0]
    assert (status.state, status.attempt, status.retries) == ("running", 2, 1)


@pytest.mark.asyncio
async def test_stopped_instances_stay_stopped_whatever_their_cancellation_says() -> None:
    clock = FakeClock()
    progress = InstanceProgress(2, clock=clock)

    async def forever(ctx: InstanceContext) -> None:
        ctx.record(loss=1.0)
        await asyncio.Event().wait()

    task = asyncio.ensure_future(
        run_experiment(Experiment("forever", forever), instances=2, on_event=progress, clock=clock)
    )
    for _ in range(200):
        await asyncio.sleep(0)
        if progress.snapshot().counts.get("running") == 2:
            break
    progress.stop()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    snapshot = progress.snapshot()
    assert snapshot.stopped and snapshot.counts == {"stopped": 2}
    assert {s.text().split(" · ")[0] for s in snapshot.instances} == {"stopped"}
    assert all(s.fraction is None for s in snapshot.instances)  # stopped part way: not full


@pytest.mark.asyncio
async def test_a_run_cancelled_from_elsewhere_reads_cancelled() -> None:
    clock = FakeClock()
    progress = InstanceProgress(1, clock=clock)

    async def forever(ctx: InstanceContext) -> None:
        await asyncio.Event().wait()

    task = asyncio.ensure_future(
        run_experiment(Experiment("forever", forever), instances=1, on_event=progress, clock=clock)
    )
    for _ in range(200):
        await asyncio.sleep(0)
        if progress.snapshot().counts.get("running"):
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert progress.snapshot().counts == {"cancelled": 1}


def _running(progress: InstanceProgress, index: int, steps: int, clock: FakeClock) -> None:
    log = SampleLog.from_samples((float(i), {"step": float(i)}) for i in range(steps))
    progress.handle(InstanceEvent("started", index, clock.now()))
    progress.handle(TimelineEvent(index, clock.now(), log))


def test_counts_and_the_slowest_instances_for_a_summary_line() -> None:
    clock = FakeClock()
    progress = InstanceProgress(64, clock=clock)
    for index in range(40):
        _running(progress, index, steps=50 + (index * 7) % 40, clock=clock)
    for index in range(40, 60):
        _running(progress, index, steps=100, clock=clock)
        progress.handle(InstanceEvent("finished", index, clock.now()))
    snapshot = progress.snapshot()

    assert snapshot.counts == {"running": 40, "queued": 4, "done": 20}
    assert list(snapshot.counts) == ["running", "queued", "done"]  # what moves first
    slowest = snapshot.slowest(3)
    assert [s.step for s in slowest] == [49.0, 50.0, 51.0]
    assert all(s.state == "running" for s in slowest)
    line = snapshot.summary()
    assert line.startswith("64 instances: 40 running, 4 queued, 20 done; slowest: #0 (step 49)")


def test_the_model_asks_only_for_what_it_reads() -> None:
    from labkit.events import EventBus

    bus = EventBus()
    bus.subscribe(InstanceProgress())
    assert bus.route(TaskEvent, "retrying") and bus.route(TimelineEvent)
    assert not bus.route(TaskEvent, "started")  # a bar needs no task but its retries
    assert not bus.route(InstanceEvent, "sample")  # it reads the logs, not one event per sample
    status = InstanceStatus(0, "queued")
    assert status.text() == "queued" and not status.ended
