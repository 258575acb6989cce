"""The live chart's model: decimated lines, the running average on the final grid,
immutable snapshots, all on an injected clock (no sleeping)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labkit.errors import ConfigError
from labkit.events import EventBus, TaskEvent, TimelineEvent
from labkit.experiment import InstanceEvent
from labkit.live import AverageSnapshot, LiveTimelineModel
from labkit.live.grid import MetricGrid
from labkit.samplelog import SampleLog
from labkit.testing import FakeClock
from labkit.timeline import average_timelines


def _sample(instance: int, offset: float, **metrics: float) -> InstanceEvent:
    return InstanceEvent("sample", instance, offset, offset, metrics=metrics)


def _jittered(count: int, samples: int, seed: int = 1) -> list[pd.DataFrame]:
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        t = np.cumsum(rng.uniform(0.09, 0.11, samples)) + 0.003 * i
        frames.append(pd.DataFrame({"t": t, "cpu": np.sin(t) + i, "memory": 100.0 + t * i}))
    return frames


def _feed(model: LiveTimelineModel, frames: list[pd.DataFrame], *, every: int) -> None:
    """Interleave the instances' samples as a run would, updating every ``every`` steps."""
    for i in range(len(frames)):
        model.handle(InstanceEvent("started", i, 0.0))
    for k in range(len(frames[0])):
        for i, frame in enumerate(frames):
            row = frame.iloc[k]
            model.handle(_sample(i, float(row.t), cpu=float(row.cpu), memory=float(row.memory)))
        if k % every == 0:
            model.update()
    for i in range(len(frames)):
        model.handle(InstanceEvent("finished", i, 0.0))


def _final_at(final: pd.DataFrame, times: np.ndarray, step: float) -> pd.DataFrame:
    by_index = final.set_index(np.round(final["t"].to_numpy() / step).astype(int))
    return by_index.loc[np.round(times / step).astype(int)]


@pytest.mark.parametrize("max_grid_points", [2000, 64])
def test_running_average_is_the_final_average_on_its_grid(max_grid_points: int) -> None:
    frames = _jittered(count=4, samples=400)
    model = LiveTimelineModel(max_grid_points=max_grid_points)
    _feed(model, frames, every=37)

    snapshot = model.snapshot()
    final = average_timelines(frames)
    assert snapshot.step == pytest.approx(0.1)  # the step the final average chose
    assert np.allclose(np.diff(final["t"]), snapshot.step)
    for metric in ("cpu", "memory"):
        live = snapshot.averages[metric]
        assert live.t.size <= max_grid_points
        expected = _final_at(final, live.t, snapshot.step)
        np.testing.assert_array_equal(live.n, expected[f"{metric}_n"].to_numpy())
        for column, values in [
            (metric, live.mean),
            (f"{metric}_std", live.std),
            (f"{metric}_min", live.min),
            (f"{metric}_max", live.max),
            (f"{metric}_ci95", live.ci95),
        ]:
            np.testing.assert_allclose(values, expected[column].to_numpy(), rtol=1e-9, atol=1e-9)
    if max_grid_points == 2000:  # not thinned: every final grid point is there
        assert snapshot.averages["cpu"].t.size == len(final)
    else:  # thinned by a power of two: still points of the final grid
        spacing = np.diff(snapshot.averages["cpu"].t) / snapshot.step
        assert np.allclose(spacing, spacing[0]) and round(spacing[0]) in (8, 16)


def _outages(seed: int = 4) -> list[pd.DataFrame]:
    """Four instances sampled every 0.1 s (jittered) for 40 s, with cpu, memory and
    an error counter; instance 0 is silent from 10 to 15 s, 1 from 12 to 20 s and
    3 from 12 to 15 s: from 12 to 15 s only instance 2 measures."""
    rng = np.random.default_rng(seed)
    silent = {0: (10.0, 15.0), 1: (12.0, 20.0), 3: (12.0, 15.0)}
    frames = []
    for i in range(4):
        t = np.arange(400) * 0.1 + rng.uniform(-0.001, 0.001, 400) + 0.001
        start, stop = silent.get(i, (np.inf, np.inf))
        t = t[(t < start) | (t > stop)]
        errors = rng.poisson(0.3, t.size).astype(float)
        frames.append(pd.DataFrame({"t": t, "cpu": np.sin(t) + i, "memory": 100.0 + t * i,
                                    "errors": errors}))  # fmt: skip
    return frames


@pytest.mark.parametrize(("method", "every"), [(None, 37), (None, 1000), ("previous", 37)])
def test_running_average_with_gaps_is_the_final_average(method: str | None, every: int) -> None:
    frames = _outages()
    options = {} if method is None else {"method": {"cpu": method, "memory": method}}
    model = LiveTimelineModel(round_to_int=["errors"], **options)  # type: ignore[arg-type]
    for i in range(len(frames)):
        model.handle(InstanceEvent("started", i, 0.0))
    rows = sorted(
        (float(t), i, row)
        for i, frame in enumerate(frames)
        for t, row in zip(frame["t"], frame.to_dict("records"), strict=True)
    )
    for position, (t, i, row) in enumerate(rows):
        model.handle(_sample(i, t, cpu=row["cpu"], memory=row["memory"], errors=row["errors"]))
        if position % every == 0:
            model.update()
    for i in range(len(frames)):
        model.handle(InstanceEvent("finished", i, 0.0))

    snapshot = model.snapshot()
    final = average_timelines(frames, round_to_int=["errors"], **options)  # type: ignore[arg-type]
    at = final.set_index(np.round(final["t"].to_numpy() / 0.1).astype(int))
    assert (at.loc[125:145, "cpu_n"] == 1).all() and (at.loc[160:190, "cpu_n"] == 3).all()
    for metric in ("cpu", "memory", "errors"):
        live = snapshot.averages[metric]
        expected = _final_at(final, live.t, snapshot.step)
        np.testing.assert_array_equal(live.n, expected[f"{metric}_n"].to_numpy())
        for column, values in [
            (metric, live.mean),
            (f"{metric}_std", live.std),
            (f"{metric}_min", live.min),
            (f"{metric}_max", live.max),
            (f"{metric}_ci95", live.ci95),
        ]:
            np.testing.assert_allclose(values, expected[column].to_numpy(), rtol=1e-9, atol=1e-9)
    # Every final grid point is drawn live, the gap ones as NaN, not skipped.
    assert snapshot.averages["cpu"].t.size == len(final)
    assert np.isnan(snapshot.averages["cpu"].mean).sum() == 0  # instance 2 never stops
    assert final["errors"].sum() == pytest.approx(
        np.mean([frame["errors"].sum() for frame in frames]), abs=0.5
    )


def test_a_gap_every_instance_has_is_nan_in_the_running_average() -> None:
    model = LiveTimelineModel(step=1.0)
    for second in [0, 1, 2, 3, 7, 8, 9]:
        for instance in range(2):
            model.handle(_sample(instance, float(second), latency=10.0 * (instance + 1)))
    for instance in range(2):
        model.handle(InstanceEvent("finished", instance, 0.0))

    average = model.snapshot().averages["latency"]

    assert list(average.t) == [float(k) for k in range(10)]  # the gap's points stay
    assert list(average.n) == [2, 2, 2, 2, 0, 0, 0, 2, 2, 2]
    assert np.isnan(average.mean[4:7]).all() and (average.mean[[0, 3, 7, 9]] == 15.0).all()


def test_lines_are_decimated_to_a_fixed_size_and_keep_peaks() -> None:
    model = LiveTimelineModel(max_points=100)
    rng = np.random.default_rng(3)
    values = rng.random(100_000)
    values[43_210] = 7.0
    values[77_777] = -3.0
    for start in range(0, values.size, 9_999):  # uneven batches, as frames come
        for i in range(start, min(start + 9_999, values.size)):
            model.handle(_sample(0, i * 0.001, cpu=float(values[i])))
        model.update()

    line = model.snapshot().lines[0]
    assert line.samples == 100_000
    assert len(line.t) <= 100
    assert line.y.max() == 7.0 and line.y.min() == -3.0
    assert line.t[0] == 0.0 and line.t[-1] == pytest.approx(99.999)
    assert np.all(np.diff(line.t) > 0)
    # Buckets cover equal sample counts: the kept points spread over the whole run.
    assert np.diff(line.t).max() < 10 * 100.0 / 100


def test_every_line_lies_inside_the_running_min_max_band() -> None:
    """With ``lines="grid"`` lines are drawn from the points the running average reads:
    the band holds them all, also where a sample between two grid points peaks
    (drawn as sampled, it pokes out of the band)."""
    model = LiveTimelineModel(lines="grid")
    rng = np.random.default_rng(11)
    for instance in range(3):
        t = np.cumsum(rng.uniform(0.05, 0.15, 200))
        y = np.sin(t) + instance + rng.normal(0, 0.3, t.size)
        y[50 + 40 * instance] += 5.0  # a spike, between grid points or on one
        for time, value in zip(t, y, strict=True):
            model.handle(_sample(instance, float(time), cpu=float(value)))
    snapshot = model.snapshot()
    average = snapshot.averages["cpu"]
    for line in snapshot.lines_of("cpu"):
        assert line.t.size > 100
        at = np.searchsorted(average.t, line.t)
        np.testing.assert_allclose(average.t[at], line.t)  # the grid's own points
        assert np.all(average.min[at] <= line.y) and np.all(line.y <= average.max[at])
    assert max(float(line.y.max()) for line in snapshot.lines_of("cpu")) > 4.0  # spikes show


def test_lines_follow_their_samples_by_default_and_the_grid_on_request() -> None:
    model = LiveTimelineModel()
    for i, t in enumerate([0.0, 0.13, 0.2, 0.41, 0.5]):
        model.handle(_sample(0, t, cpu=float(i)))
    assert model.lines == "samples"
    assert list(model.snapshot().lines[0].t) == [0.0, 0.13, 0.2, 0.41, 0.5]
    version = model.snapshot().version
    model.lines = "grid"
    on_grid = model.snapshot()
    assert on_grid.version > version  # a view redraws
    step = model.step
    assert step is not None
    np.testing.assert_allclose(on_grid.lines[0].t / step, np.round(on_grid.lines[0].t / step))
    with pytest.raises(ConfigError, match="lines"):
        model.lines = "raw"  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="lines"):
        LiveTimelineModel(lines="points")  # type: ignore[arg-type]


def test_short_lines_are_kept_whole() -> None:
    model = LiveTimelineModel(max_points=100)
    for i in range(30):
        model.handle(_sample(0, float(i), loss=float(i % 7)))
    line = model.snapshot().lines_of("loss")[0]
    np.testing.assert_array_equal(line.t, np.arange(30.0))
    np.testing.assert_array_equal(line.y, np.arange(30.0) % 7)


def test_snapshots_are_immutable_and_versioned() -> None:
    clock = FakeClock(start=5.0)
    model = LiveTimelineModel(clock=clock)
    empty = model.snapshot()
    assert empty.empty and empty.lines == () and empty.averages == {}

    model.handle(_sample(0, 0.0, cpu=1.0))
    model.handle(_sample(0, 1.0, cpu=2.0))
    first = model.snapshot()
    assert model.snapshot() is first  # nothing new: the same record
    assert first.time == 5.0 and first.version > empty.version
    with pytest.raises(ValueError, match="read-only"):
        first.lines[0].y[0] = 9.0
    with pytest.raises(AttributeError):
        first.samples = 3  # type: ignore[misc]

    clock.advance(0.25)
    model.handle(_sample(0, 2.0, cpu=3.0))
    second = model.snapshot()
    assert second.time == 5.25 and second.version > first.version
    assert list(first.lines[0].y) == [1.0, 2.0]  # the earlier snapshot did not move
    assert list(second.lines[0].y) == [1.0, 2.0, 3.0]


def test_hand_fed_samples_go_to_a_log_and_no_event_is_kept() -> None:
    import gc
    import weakref

    model = LiveTimelineModel()

    class Sample(dict[str, float]):
        """A metrics mapping that can be watched for collection."""

    watched = Sample(cpu=1.0)
    alive = weakref.ref(watched)
    model.handle(InstanceEvent("sample", 0, 0.0, 0.0, metrics=watched))
    del watched
    for i in range(1, 250):
        model.handle(_sample(0, i * 0.1, cpu=float(i)))
    gc.collect()
    assert alive() is None  # the sample went into the model's log for the attempt
    assert model.snapshot().lines[0].samples == 250


def test_the_model_reads_logs_and_drops_what_it_does_not_draw() -> None:
    model = LiveTimelineModel()
    bus = EventBus()
    bus.subscribe(model)
    assert not bus.route(InstanceEvent, "sample")  # a run builds no sample event for it
    assert not bus.route(TaskEvent, "started") and bus.route(TimelineEvent)
    model.handle(TaskEvent("started", 0, 0.0))
    model.handle(_sample(1, 0.0, cpu=4.0))
    model.handle(InstanceEvent("log", 1, 0.0, message="hello"))
    assert model.snapshot().samples == 1
    assert model.snapshot().instances == (1,)
    # A sample of an attempt whose log was announced is in that log: let pass.
    log = SampleLog()
    bus.emit(InstanceEvent("started", 2, 0.0))
    bus.emit(TimelineEvent(2, 0.0, log))
    log.append(0.5, {"cpu": 2.0})
    model.handle(_sample(2, 0.5, cpu=2.0))
    assert model.snapshot().lines_of("cpu")[-1].samples == 1


def test_failed_instance_is_marked_and_leaves_the_average() -> None:
    model = LiveTimelineModel(step=1.0)
    for step in range(5):
        model.handle(_sample(0, float(step), cpu=10.0))
        model.handle(_sample(1, float(step), cpu=20.0))
    assert np.allclose(model.snapshot().averages["cpu"].mean, 15.0)

    model.handle(InstanceEvent("failed", 1, 5.0, 5.0, message="RuntimeError: boom"))
    snapshot = model.snapshot()
    assert snapshot.failed == {1}
    assert [line.failed for line in snapshot.lines] == [False, True]
    average = snapshot.averages["cpu"]
    assert np.allclose(average.mean, 10.0) and set(average.n.tolist()) == {1}


def test_a_retry_starts_the_instance_over() -> None:
    model = LiveTimelineModel(step=1.0)
    for step in range(4):
        model.handle(_sample(0, float(step), cpu=99.0))
    model.handle(InstanceEvent("failed", 0, 4.0, 4.0, message="flaky"))
    model.handle(InstanceEvent("started", 0, 5.0))
    for step in range(3):
        model.handle(_sample(0, float(step), cpu=1.0))
    snapshot = model.snapshot()
    assert snapshot.failed == frozenset()
    assert list(snapshot.lines[0].y) == [1.0, 1.0, 1.0]
    assert np.allclose(snapshot.averages["cpu"].mean, 1.0)


def test_fixed_metrics_keep_their_order_and_ignore_others() -> None:
    model = LiveTimelineModel(metrics=["memory", "cpu"])
    model.handle(_sample(0, 0.0, cpu=1.0, gpu=5.0))
    model.handle(_sample(0, 1.0, memory=3.0))
    snapshot = model.snapshot()
    assert snapshot.metrics == ("memory", "cpu")
    assert {line.metric for line in snapshot.lines} == {"memory", "cpu"}


def test_metrics_sampled_apart_each_get_their_own_line() -> None:
    model = LiveTimelineModel()
    for step in range(6):
        metrics = {"cpu": float(step)} if step % 2 else {"loss": 1.0 / (step + 1)}
        model.handle(_sample(0, step * 0.5, **metrics))
    snapshot = model.snapshot()
    assert snapshot.metrics == ("loss", "cpu")
    assert list(snapshot.lines_of("cpu")[0].t) == [0.5, 1.5, 2.5]
    assert list(snapshot.lines_of("loss")[0].t) == [0.0, 1.0, 2.0]


def test_error_counts_are_rounded_like_the_result() -> None:
    model = LiveTimelineModel(step=1.0, round_to_int=["errors"])
    frames = [
        pd.DataFrame({"t": [0.0, 1.0, 2.0], "errors": [1.0, 1.0, 1.0]}),
        pd.DataFrame({"t": [0.0, 1.0, 2.0], "errors": [2.0, 2.0, 2.0]}),
    ]
    for step in range(3):
        for instance, frame in enumerate(frames):
            model.handle(_sample(instance, float(step), errors=frame["errors"][step]))
    final = average_timelines(frames, step=1.0, round_to_int=["errors"])

    live = model.snapshot().averages["errors"].mean
    # Summed and rounded on the running total: 1.5, 3, 4.5 rounded are 2, 3, 5.
    np.testing.assert_array_equal(live, [2.0, 1.0, 2.0])
    np.testing.assert_array_equal(live, final["errors"].to_numpy())


def test_complete_replaces_the_running_average_with_the_exact_one() -> None:
    frames = _jittered(count=3, samples=50)
    model = LiveTimelineModel()
    _feed(model, frames, every=10)
    exact = average_timelines(frames)
    model.complete(exact)
    average = model.snapshot().averages["cpu"]
    assert average.final
    np.testing.assert_array_equal(average.mean, exact["cpu"].to_numpy())
    np.testing.assert_array_equal(average.n, exact["cpu_n"].to_numpy())


def test_average_snapshot_bands() -> None:
    frame = pd.DataFrame(
        {"t": [0.0, 1.0], "n": [2, 2], "cpu": [2.0, 4.0], "cpu_std": [1.0, 0.5],
         "cpu_min": [1.0, 3.0], "cpu_max": [3.0, 5.0], "cpu_ci95": [2.0, 1.0]}
    )  # fmt: skip
    average = AverageSnapshot.from_frame(frame, "cpu")
    np.testing.assert_array_equal(average.band("std")[0], [1.0, 3.5])
    np.testing.assert_array_equal(average.band("minmax")[1], [3.0, 5.0])
    np.testing.assert_array_equal(average.band("ci95")[1], [4.0, 5.0])
    with pytest.raises(ConfigError, match="band"):
        average.band("iqr")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="averaged"):
        AverageSnapshot.from_frame(frame, "gpu")


def test_reset_forgets_everything() -> None:
    model = LiveTimelineModel()
    model.handle(_sample(0, 0.0, cpu=1.0))
    before = model.snapshot()
    model.reset()
    after = model.snapshot()
    assert after.empty and after.metrics == () and after.version != before.version


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="max_points"):
        LiveTimelineModel(max_points=3)
    with pytest.raises(ConfigError, match="max_grid_points"):
        LiveTimelineModel(max_grid_points=2)
    with pytest.raises(ConfigError, match="step"):
        LiveTimelineModel(step=0.0)
    with pytest.raises(ConfigError, match="on"):
        LiveTimelineModel(on="epoch")  # type: ignore[arg-type]


# Reading the attempts' logs -----------------------------------------------------------


def _announce(model: LiveTimelineModel, instance: int, log: SampleLog) -> None:
    model.handle(InstanceEvent("started", instance, 0.0))
    model.handle(TimelineEvent(instance, 0.0, log))


def test_a_log_is_read_in_bulk_and_its_sample_events_pass() -> None:
    frames = _jittered(count=3, samples=300)
    from_events = LiveTimelineModel()
    _feed(from_events, frames, every=41)
    from_logs = LiveTimelineModel()
    logs = [SampleLog() for _ in frames]
    for instance, log in enumerate(logs):
        _announce(from_logs, instance, log)
    for k in range(len(frames[0])):
        for instance, frame in enumerate(frames):
            row = frame.iloc[k]
            values = {"cpu": float(row.cpu), "memory": float(row.memory)}
            logs[instance].append(float(row.t), values)  # the recorder, then the event
            from_logs.handle(_sample(instance, float(row.t), **values))
        if k % 41 == 0:
            from_logs.update()
    for instance in range(len(frames)):
        from_logs.handle(InstanceEvent("finished", instance, 0.0))

    a, b = from_events.snapshot(), from_logs.snapshot()
    assert b.samples == a.samples == 2 * 3 * 300  # each sample counted once
    assert b.step == a.step
    for line_a, line_b in zip(a.lines, b.lines, strict=True):
        assert (line_a.instance, line_a.metric) == (line_b.instance, line_b.metric)
        assert np.array_equal(line_a.t, line_b.t) and np.array_equal(line_a.y, line_b.y)
    for metric in ("cpu", "memory"):
        assert np.array_equal(a.averages[metric].t, b.averages[metric].t)
        assert np.allclose(a.averages[metric].mean, b.averages[metric].mean)
        assert np.array_equal(a.averages[metric].n, b.averages[metric].n)


def test_rows_recorded_with_no_event_appear_at_the_next_update() -> None:
    model = LiveTimelineModel(step=1.0)
    log = SampleLog()
    _announce(model, 0, log)
    assert model.update() is False and model.feeding
    for step in range(5):
        log.append(float(step), {"cpu": 10.0 * step})
    assert model.update() is True
    assert model.snapshot().lines[0].samples == 5
    assert model.update() is False  # nothing new: no new version
    log.append(5.0, {"cpu": 50.0})
    model.handle(InstanceEvent("finished", 0, 5.0, 5.0))  # the last row is read first
    snapshot = model.snapshot()
    assert snapshot.lines[0].samples == 6 and snapshot.finished == frozenset({0})
    assert not model.feeding  # an ended attempt's log is read no more
    assert snapshot.averages["cpu"].mean.tolist() == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]


def test_a_retried_attempt_is_read_from_its_own_log() -> None:
    model = LiveTimelineModel(step=1.0)
    first, second = SampleLog(), SampleLog()
    _announce(model, 0, first)
    for step in range(4):
        first.append(float(step), {"cpu": 99.0})
    model.handle(InstanceEvent("failed", 0, 4.0, 4.0, message="flaky"))
    assert model.snapshot().failed == frozenset({0})
    assert model.snapshot().lines[0].samples == 4  # the failed attempt's line stays
    _announce(model, 0, second)
    for step in range(3):
        second.append(float(step), {"cpu": 1.0})
        first.append(10.0 + step, {"cpu": 99.0})  # an abandoned attempt still recording
    snapshot = model.snapshot()
    assert snapshot.failed == frozenset()
    assert list(snapshot.lines[0].y) == [1.0, 1.0, 1.0]
    assert np.allclose(snapshot.averages["cpu"].mean, 1.0)


def test_a_new_metric_in_a_log_gets_its_line() -> None:
    model = LiveTimelineModel(step=1.0)
    log = SampleLog()
    _announce(model, 0, log)
    log.append(0.0, {"cpu": 1.0})
    log.append(1.0, {"cpu": 2.0})
    model.update()
    log.append(2.0, {"cpu": 3.0, "loss": 0.5})
    log.append(3.0, {"loss": 0.25})
    snapshot = model.snapshot()
    assert snapshot.metrics == ("cpu", "loss")
    assert list(snapshot.lines_of("cpu")[0].y) == [1.0, 2.0, 3.0]
    assert list(snapshot.lines_of("loss")[0].t) == [2.0, 3.0]


def test_reset_forgets_the_logs() -> None:
    model = LiveTimelineModel()
    log = SampleLog()
    _announce(model, 0, log)
    log.append(0.0, {"cpu": 1.0})
    model.reset()
    assert not model.feeding
    model.handle(_sample(0, 0.0, cpu=5.0))  # a hand-fed sample counts again
    assert model.snapshot().lines[0].y.tolist() == [5.0]


def test_the_grid_grows_its_columns_without_growing_its_rows() -> None:
    grid = MetricGrid(rows=3, capacity=4096)
    for k in range(0, 4000, 10):  # the grid widens a few times as the run goes on
        grid.put(2, np.array([k]), np.array([float(k)]))
    assert grid.values.shape == (3, 4096)  # rows as many as the instances, not doubled
    assert grid.statistics(3).mean[3990 // grid.stride] == 3990.0


def test_running_average_at_the_ends_of_the_float_range() -> None:
    model = LiveTimelineModel()
    values = {"big": (1e155, 3e155, 5e155), "tiny": (1e-300, 3e-300, 5e-300)}
    for i in range(3):
        model.handle(InstanceEvent("started", i, 0.0))
    for offset in (0.0, 1.0, 2.0):
        for i in range(3):
            metrics = {name: triple[i] for name, triple in values.items()}
            model.handle(_sample(i, offset, **metrics, wide=(1.7e308, -1.7e308, 0.0)[i]))
    model.update()

    averages = model.snapshot().averages
    np.testing.assert_allclose(averages["big"].std, 2e155, rtol=1e-12)  # not NaN
    np.testing.assert_allclose(averages["tiny"].std, 2e-300, rtol=1e-12)  # not 0
    np.testing.assert_allclose(averages["tiny"].mean, 3e-300, rtol=1e-12)
    # Not -1.7e308 nor inf: 0 up to the rounding of values of that magnitude, and
    # exactly what the final average gives (one kernel).
    assert np.all(np.abs(averages["wide"].mean) <= 1e-15 * 1.7e308)
    np.testing.assert_allclose(averages["wide"].std, 1.7e308, rtol=1e-12)
    wide = [pd.DataFrame({"t": [0.0, 1.0, 2.0], "wide": [v] * 3}) for v in (1.7e308, -1.7e308, 0)]
    final = average_timelines(wide)
    assert averages["wide"].mean.tolist() == final["wide"].tolist()
    assert averages["wide"].std.tolist() == final["wide_std"].tolist()


def test_samples_waiting_for_the_step_never_bring_a_failed_instance_back() -> None:
    model = LiveTimelineModel()
    model.handle(_sample(0, 0.0, cpu=1.0))
    model.handle(_sample(1, 0.0, cpu=100.0))
    model.update()  # one time each: no interval yet, the samples wait
    model.handle(InstanceEvent("failed", 1, 0.5, 0.5, message="RuntimeError: boom"))
    model.update()
    for t in (1.0, 2.0):
        model.handle(_sample(0, t, cpu=1.0))

    average = model.snapshot().averages["cpu"]

    assert list(average.n) == [1, 1, 1] and (average.mean == 1.0).all()
