"""One nearest-grid-point rule for every grid: scalar and array forms, held values,
counters and the final average's spans all put a sample on the same point."""

from __future__ import annotations

import numpy as np
import pandas as pd

from labkit.timeline import average_timelines
from labkit.timeline.inputs import nearest_index

STEP = 0.1
# Half-step times where t * (1 / step) and t / step round apart (2.15, 4.05...): the
# places where two spellings of the rule would disagree.
TIES = np.array([2.15, 4.05, 4.55, 8.35, 8.85])


def test_the_scalar_and_the_array_rule_agree_ties_included() -> None:
    rng = np.random.default_rng(7)
    times = np.concatenate((TIES, (np.arange(2000) + 0.5) * STEP, rng.uniform(0, 200, 2000)))

    vector = nearest_index(times, STEP)

    assert vector.dtype == np.intp
    assert vector.tolist() == [nearest_index(float(t), STEP) for t in times]
    assert nearest_index(np.array([0.04, 0.05, 0.06]), STEP).tolist() == [0, 1, 1]  # halves up


def _held(t: np.ndarray, y: np.ndarray, points: np.ndarray) -> np.ndarray:
    """By hand: at each grid point, the last sample whose nearest grid point is at or
    before it."""
    bins = np.array([nearest_index(float(x), STEP) for x in t])
    return np.array([y[np.flatnonzero(bins <= k)[-1]] for k in points])


def test_held_values_and_spans_follow_the_rule_at_half_step_ties() -> None:
    rng = np.random.default_rng(3)
    frames = []
    for tie in TIES:
        # Samples about every 0.3 s around one on a tie, and a last one on a tie too.
        before = np.arange(0.0, tie - 0.1, 0.3) + 0.01
        after = np.arange(tie + 0.3, tie + 3.0, 0.3) - 0.01
        t = np.concatenate((before, [tie], after, [tie + 3.5]))
        frames.append(pd.DataFrame({"t": t, "queue": rng.permutation(t.size).astype(float)}))

    for frame in frames:
        out = average_timelines([frame], step=STEP, method="previous", max_gap=np.inf)
        points = np.round(out["t"].to_numpy() / STEP).astype(int)
        t, y = frame["t"].to_numpy(), frame["queue"].to_numpy()
        assert points[-1] == nearest_index(float(t[-1]), STEP)  # the span ends there
        np.testing.assert_array_equal(out["queue"].to_numpy(), _held(t, y, points))


def test_a_counter_counts_each_sample_at_its_nearest_point_in_any_block() -> None:
    t = np.concatenate((TIES, TIES + 20.0))
    frame = pd.DataFrame({"t": np.sort(t), "errors": np.ones(t.size)})

    out = average_timelines([frame], step=STEP)

    at = dict(zip(np.round(out["t"] / STEP).astype(int), out["errors"], strict=True))
    expected = np.bincount(nearest_index(np.sort(t), STEP))
    for point in np.flatnonzero(expected):
        assert at[point] == expected[point]
    assert out["errors"].sum() == t.size
