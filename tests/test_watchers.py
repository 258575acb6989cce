"""Typed watchers: a watcher's methods name the events it reads, and only those are built."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, NamedTuple

import pandas as pd
import pytest

import labkit as lk
from labkit.errors import ConfigError
from labkit.events import (
    EventBus,
    InstanceEvent,
    TaskEvent,
    TimelineEvent,
    Watcher,
    name_methods,
)
from labkit.experiment import Experiment, InstanceContext, run_experiment
from labkit.samplelog import SampleLog


class Finished(Watcher):
    """Reads one kind of event only."""

    def __init__(self) -> None:
        self.count = 0

    def on_task_succeeded(self, event: TaskEvent) -> None:
        self.count += 1


async def tiny(i: int) -> int:
    await asyncio.sleep(0)
    return i


async def test_a_watcher_gets_only_the_kinds_it_overrides_and_no_other_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: Counter[str] = Counter()
    original = TaskEvent.__new__

    def counting(cls: type, kind: str, *args: Any, **kwargs: Any) -> TaskEvent:
        built[kind] += 1
        return original(cls, kind, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(TaskEvent, "__new__", counting)
    watcher = Finished()
    report = await lk.run_parallel(
        tiny, range(50), max_concurrency=8, retry=lk.Retry(attempts=2), on_event=watcher
    )

    assert report.stats.completed == 50 and watcher.count == 50
    assert built == {"succeeded": 50}  # no queued or started event was ever made


async def test_a_plain_callable_still_gets_every_event() -> None:
    seen: list[Any] = []
    await lk.run_parallel(tiny, range(3), on_event=seen.append)
    kinds = Counter(event.kind for event in seen)
    assert kinds == {"queued": 3, "started": 3, "succeeded": 3}


async def record_three(ctx: InstanceContext) -> None:
    for step in range(3):
        ctx.record(loss=1.0 / (step + 1), step=step)


class Lifecycle(Watcher):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.logs: dict[int, SampleLog] = {}

    def on_instance_started(self, event: InstanceEvent) -> None:
        self.calls.append(("started", event.instance))

    def on_samples(self, event: TimelineEvent) -> None:
        self.calls.append(("samples", event.instance))
        self.logs[event.instance] = event.log

    def on_instance_finished(self, event: InstanceEvent) -> None:
        self.calls.append(("finished", event.instance))


async def test_an_experiment_watcher_reads_samples_from_each_attempts_log() -> None:
    watcher = Lifecycle()
    bus = EventBus()
    bus.subscribe(watcher)
    assert not bus.route(InstanceEvent, "sample")  # nobody reads samples one by one

    result = await run_experiment(Experiment("w", record_three), instances=2, on_event=bus)

    for index in range(2):
        mine = [kind for kind, instance in watcher.calls if instance == index]
        assert mine == ["started", "samples", "finished"]
        pd.testing.assert_frame_equal(watcher.logs[index].frame(), result.instances[index].timeline)


class EachSample(Watcher):
    def __init__(self) -> None:
        self.samples: list[InstanceEvent] = []

    def on_sample(self, event: InstanceEvent) -> None:
        self.samples.append(event)


@pytest.mark.parametrize("sync", [False, True])
async def test_a_watcher_that_asks_for_each_sample_gets_each_one(sync: bool) -> None:
    def record_sync(ctx: InstanceContext) -> None:
        for step in range(3):
            ctx.record(loss=1.0 / (step + 1), step=step)

    watcher = EachSample()
    fn = record_sync if sync else record_three
    await run_experiment(Experiment("s", fn), instances=2, on_event=watcher)

    by_instance = Counter(event.instance for event in watcher.samples)
    assert by_instance == {0: 3, 1: 3}
    assert {event.kind for event in watcher.samples} == {"sample"}
    assert sorted(event.metrics["loss"] for event in watcher.samples if event.instance == 0) == [
        pytest.approx(1 / 3),
        0.5,
        1.0,
    ]


def test_a_watcher_that_raises_is_logged_and_kept(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Watcher):
        calls = 0

        def on_task_started(self, event: TaskEvent) -> None:
            Broken.calls += 1
            raise RuntimeError("boom")

    bus = EventBus()
    bus.subscribe(Broken())
    healthy: list[Any] = []
    bus.subscribe(healthy.append)
    with caplog.at_level(logging.ERROR, logger="labkit.events"):
        bus.emit(TaskEvent("started", 0, 0.0, 1))
        bus.emit(TaskEvent("started", 1, 0.0, 1))
    assert Broken.calls == 2 and len(healthy) == 2
    assert "boom" in caplog.text


def test_unsubscribing_a_watcher_empties_its_routes() -> None:
    bus = EventBus()
    unsubscribe = bus.subscribe(Finished())
    assert bus.route(TaskEvent, "succeeded") and not bus.route(TaskEvent, "started")
    unsubscribe()
    assert not bus.route(TaskEvent, "succeeded") and not bus


def test_an_event_type_from_above_names_its_methods() -> None:
    class Custom(NamedTuple):
        kind: str
        value: int

    class Reader(Watcher):
        def __init__(self) -> None:
            self.got: list[int] = []

        def on_custom_done(self, event: Custom) -> None:
            self.got.append(event.value)

    name_methods(Custom, {"done": "on_custom_done"})
    bus = EventBus()
    reader = Reader()
    bus.subscribe(reader)
    bus.emit(Custom("done", 1))
    bus.emit(Custom("other", 2))  # no method reads it
    assert reader.got == [1]


def test_bad_subscribers_are_refused_with_the_option_named() -> None:
    bus = EventBus()
    with pytest.raises(ConfigError, match="watcher=3"):
        bus.subscribe(3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="types="):
        bus.subscribe(Finished(), types=TaskEvent)
    with pytest.raises(ConfigError, match="on_event=3"):
        lk.run_parallel_sync(tiny, [1], on_event=3)  # type: ignore[arg-type]


async def test_a_sweep_accepts_a_watcher() -> None:
    class Trials(Watcher):
        def __init__(self) -> None:
            self.finished: list[int] = []

        def on_trial_finished(self, event: Any) -> None:
            self.finished.append(event.trial)

    watcher = Trials()
    await lk.sweep(
        Experiment("sw", record_three),
        {"lr": [0.1, 0.2]},
        instances=1,
        objective="loss",
        on_event=watcher,
    )
    assert sorted(watcher.finished) == [0, 1]


async def test_a_sweep_relays_per_sample_trial_events_only_to_who_reads_them() -> None:
    class Trials(Watcher):
        def __init__(self) -> None:
            self.kinds: Counter[str] = Counter()

        def on_trial_event(self, event: lk.TrialEvent) -> None:
            self.kinds[str(event.kind)] += 1

    watcher = Trials()
    everything: list[Any] = []
    bus = EventBus()
    bus.subscribe(watcher)
    await lk.sweep(
        Experiment("sw", record_three),
        {"lr": [0.1, 0.2]},
        instances=2,
        objective="loss",
        on_event=bus,
    )
    assert watcher.kinds["started"] and watcher.kinds["timeline"] == 4
    assert "sample" not in watcher.kinds  # 12 samples, and no event was built for them

    await lk.sweep(
        Experiment("sw", record_three),
        {"lr": [0.1]},
        instances=2,
        objective="loss",
        on_event=everything.append,
    )
    trial_samples = [e for e in everything if isinstance(e, lk.TrialEvent) and e.kind == "sample"]
    assert len(trial_samples) == 6 and all(e.event.metrics for e in trial_samples)


def test_a_hot_paths_routes_by_kind_follow_subscriptions() -> None:
    bus = EventBus()
    routes = bus.routes_of(TaskEvent)
    assert routes["succeeded"] == () and routes["started"] == ()
    watcher = Finished()
    unsubscribe = bus.subscribe(watcher)
    assert bus.routes_of(TaskEvent) is routes  # the same mapping, kept current
    assert routes["succeeded"] == (watcher.on_task_succeeded,) and routes["started"] == ()
    everything: list[Any] = []
    bus.subscribe(everything.append)
    assert routes["started"] == (everything.append,)
    unsubscribe()
    assert routes["succeeded"] == (everything.append,)
