"""The running average is the final average: one grid rule, one statistics kernel.

Seeded random runs (ragged instances, several metrics and methods, gaps, both
axes) are fed to the live model as a run feeds it, and its running average at
completion is compared with ``average_timelines`` and ``ExperimentResult``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from labkit.events import InstanceEvent, TimelineEvent
from labkit.live import AverageSnapshot, LiveTimelineModel
from labkit.live.decimation import MinMaxLine
from labkit.live.grid import MetricGrid
from labkit.results import ROUND_TO_INT, ExperimentResult, InstanceResult
from labkit.samplelog import SampleLog
from labkit.timeline import average_timelines

Feed = Callable[[LiveTimelineModel, list[pd.DataFrame], int], None]
STATISTICS = (("", "mean"), ("_std", "std"), ("_min", "min"), ("_max", "max"), ("_ci95", "ci95"))


def _ragged_run(seed: int) -> list[pd.DataFrame]:
    """Six instances sampled every 0.1 s (+-0.4 ms) from different starts for different
    lengths: ``cpu`` (linear), ``memory`` at every other sample only, ``queue`` (held),
    ``errors`` (a counter); one instance is silent for a while (a gap)."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(6):
        start = 0 if i == 0 else int(rng.integers(0, 15))
        count = int(rng.integers(60, 140))
        t = np.abs((start + np.arange(count)) * 0.1 + rng.uniform(-4e-4, 4e-4, count))
        if i == 2:  # an outage of about 1.5 s
            t = np.concatenate((t[:20], t[35:]))
        memory = 100.0 + rng.normal(0, 5, t.size)
        memory[1::2] = np.nan  # not in those samples
        frames.append(
            pd.DataFrame(
                {
                    "t": t,
                    "cpu": rng.normal(50, 10, t.size),
                    "memory": memory,
                    "queue": rng.integers(0, 9, t.size).astype(float),
                    "errors": rng.poisson(0.4, t.size).astype(float),
                }
            )
        )
    return frames


def _stepped_run(seed: int) -> list[pd.DataFrame]:
    """Five instances recording every k-th step (k from 1 to 3) over ragged step
    ranges, with ``loss`` at every step, ``accuracy`` at some, and resource rows
    between steps (no step)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(5):
        every = int(rng.integers(1, 4))
        steps = np.arange(int(rng.integers(0, 10)), int(rng.integers(40, 90)), every, dtype=float)
        accuracy = rng.uniform(0, 1, steps.size)
        accuracy[rng.uniform(size=steps.size) < 0.3] = np.nan
        recorded = pd.DataFrame(
            {
                "t": steps * 0.05,
                "step": steps,
                "loss": 1.0 / (steps + 1.0) + rng.normal(0, 0.01, steps.size),
                "accuracy": accuracy,
                "errors": rng.poisson(0.5, steps.size).astype(float),
            }
        )
        between = pd.DataFrame({"t": steps[::4] * 0.05 + 0.01, "cpu": rng.normal(40, 5)})
        frame = pd.concat([recorded, between]).sort_values("t", kind="stable")
        frames.append(frame.reset_index(drop=True))
    return frames


def _feed_events(model: LiveTimelineModel, frames: list[pd.DataFrame], seed: int) -> None:
    """The samples as sample events, interleaved in time order, updates at random."""
    rng = np.random.default_rng(seed)
    for i in range(len(frames)):
        model.handle(InstanceEvent("started", i, 0.0))
    rows = sorted(
        (float(record["t"]), i, record)
        for i, frame in enumerate(frames)
        for record in frame.to_dict("records")
    )
    for t, i, record in rows:
        metrics = {k: float(v) for k, v in record.items() if k != "t" and not np.isnan(v)}
        model.handle(InstanceEvent("sample", i, t, t, metrics=metrics))
        if rng.uniform() < 0.02:
            model.update()
    for i in range(len(frames)):
        model.handle(InstanceEvent("finished", i, 0.0))


def _feed_logs(model: LiveTimelineModel, frames: list[pd.DataFrame], seed: int) -> None:
    """The samples through each attempt's log, read at random moments."""
    rng = np.random.default_rng(seed)
    logs = [SampleLog() for _ in frames]
    for i, log in enumerate(logs):
        model.handle(InstanceEvent("started", i, 0.0))
        model.handle(TimelineEvent(i, 0.0, log))
    rows = sorted(
        (float(record["t"]), i, record)
        for i, frame in enumerate(frames)
        for record in frame.to_dict("records")
    )
    for t, i, record in rows:
        logs[i].append(t, {k: float(v) for k, v in record.items() if k != "t" and not np.isnan(v)})
        if rng.uniform() < 0.02:
            model.update()
    for i in range(len(frames)):
        model.handle(InstanceEvent("finished", i, 0.0))


def _assert_same(live: AverageSnapshot, final: pd.DataFrame, axis: str) -> None:
    """The live average equals the final one at every point it shows, to 1e-12, and
    shows every point where the final one has a value."""
    metric = live.metric
    measured = final[final[f"{metric}_n"] > 0]
    positions = np.searchsorted(final[axis].to_numpy(), live.t)
    np.testing.assert_allclose(final[axis].to_numpy()[positions], live.t, rtol=0, atol=1e-9)
    rows = final.iloc[positions]
    assert set(measured[axis].round(9)) <= set(np.round(live.t, 9))
    np.testing.assert_array_equal(live.n, rows[f"{metric}_n"].to_numpy())
    for suffix, name in STATISTICS:
        np.testing.assert_allclose(
            getattr(live, name), rows[metric + suffix].to_numpy(), rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("feed", [_feed_events, _feed_logs])
def test_the_running_average_at_completion_is_the_final_average_on_t(seed: int, feed: Feed) -> None:
    frames = _ragged_run(seed)
    method = {"queue": "previous"}
    model = LiveTimelineModel(round_to_int=ROUND_TO_INT, method=method)  # type: ignore[arg-type]
    feed(model, frames, seed)

    snapshot = model.snapshot()
    final = average_timelines(frames, round_to_int=ROUND_TO_INT, method=method)  # type: ignore[arg-type]
    instances = [
        InstanceResult(index=i, ok=True, error=None, timeline=frame)
        for i, frame in enumerate(frames)
    ]
    result = ExperimentResult.build("live", {}, instances, {"method": method})
    pd.testing.assert_frame_equal(result.averaged, final)  # the result averages so too
    assert snapshot.step == 0.1 and snapshot.axis == "t"
    assert (final["cpu_n"] < final["n"]).any()  # instance 2's gap is left out
    for metric in ("cpu", "memory", "queue", "errors"):
        _assert_same(snapshot.averages[metric], result.averaged, "t")
    errors = snapshot.averages["errors"].mean
    assert np.array_equal(errors, np.round(errors))  # rounded on the running total


@pytest.mark.parametrize("seed", [4, 5, 6])
@pytest.mark.parametrize("feed", [_feed_events, _feed_logs])
def test_the_running_average_at_completion_is_the_final_average_on_steps(
    seed: int, feed: Feed
) -> None:
    frames = _stepped_run(seed)
    model = LiveTimelineModel(round_to_int=ROUND_TO_INT)
    feed(model, frames, seed)

    snapshot = model.snapshot()
    final = average_timelines(frames, round_to_int=ROUND_TO_INT)
    instances = [
        InstanceResult(index=i, ok=True, error=None, timeline=frame)
        for i, frame in enumerate(frames)
    ]
    result = ExperimentResult.build("live", {}, instances, {})
    pd.testing.assert_frame_equal(result.averaged, final)
    assert snapshot.axis == "step" and snapshot.step == 1.0
    assert "step" in final.columns and "cpu" not in snapshot.metrics  # only between steps
    for metric in ("loss", "accuracy", "errors"):
        _assert_same(snapshot.averages[metric], result.averaged.rename(columns={"step": "t"}), "t")


def test_a_given_step_axis_averages_per_whole_step() -> None:
    model = LiveTimelineModel(on="step")
    for step in range(0, 50, 10):  # recorded every 10 steps
        for instance in range(2):
            metrics = {"step": float(step), "loss": 1.0 + instance}
            model.handle(InstanceEvent("sample", instance, 0.1 * step, 0.1 * step, metrics=metrics))

    average = model.snapshot().averages["loss"]

    assert model.step == 1.0
    assert average.t.tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]  # the steps, joined
    assert average.mean.tolist() == [1.5] * 5


def test_an_odd_bucket_count_keeps_every_peak() -> None:
    line = MinMaxLine(buckets=3)
    values = np.zeros(12)
    values[2] = 5.0  # in the bucket left without a partner at the first merge
    for k in range(12):
        line.extend(np.array([float(k)]), values[k : k + 1])

    t, y = line.points()

    assert 5.0 in y.tolist() and t[y.tolist().index(5.0)] == 2.0


def test_a_grid_column_is_what_the_kernel_gives_at_any_magnitude() -> None:
    grid = MetricGrid(rows=3, capacity=64)
    for row, value in enumerate((1e300, 3e300, np.nan)):
        grid.put(row, np.array([0, 1]), np.array([value, -value]))

    stats = grid.statistics(3)

    assert stats.n.tolist() == [2, 2]
    np.testing.assert_allclose(stats.mean, [2e300, -2e300], rtol=1e-15)
    np.testing.assert_allclose(stats.std, [np.sqrt(2) * 1e300] * 2, rtol=1e-15)
    assert stats.min.tolist() == [1e300, -3e300] and stats.max.tolist() == [3e300, -1e300]
