"""Averaging of timelines and summaries, outliers, sample sizes (labkit.timeline)."""

from __future__ import annotations

import math
import statistics
import tracemalloc
import warnings
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit.errors import ConfigError
from labkit.timeline import (
    Outlier,
    average_summaries,
    average_timelines,
    detect_outliers,
    instances_needed,
    moments,
    summarize_timeline,
    t_quantile,
)
from labkit.timeline.averaging import average
from labkit.timeline.grid import Scratch

T975_2 = 4.302652729749462  # Student t, 97.5 % quantile, 2 degrees of freedom


def frame(t: list[float] | np.ndarray, **metrics: list[float] | np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"t": np.asarray(t, dtype=float), **metrics})


def reference_average(
    frames: list[pd.DataFrame], step: float, metric: str
) -> dict[str, np.ndarray]:
    """The specification: the obvious (memory-hungry) way to average, for one metric.

    np.interp of each instance onto the grid inside its own span (from the grid
    point nearest its first sample to the one nearest its last), a stack of
    instances x grid, then NaN-aware reductions. labkit's streaming averaging
    must agree with it.
    """
    spans = [
        (math.floor(f["t"].iat[0] / step + 0.5), math.floor(f["t"].iat[-1] / step + 0.5))
        for f in frames
    ]
    size = max(last for _, last in spans) + 1
    grid = np.arange(size) * step
    stack = np.full((len(frames), size), np.nan)
    for row, (f, (first, last)) in enumerate(zip(frames, spans, strict=True)):
        values = np.interp(grid, f["t"].to_numpy(), f[metric].to_numpy())
        stack[row, first : last + 1] = values[first : last + 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        n = (~np.isnan(stack)).sum(axis=0)
        keep = n > 0
        return {
            "t": grid[keep],
            "n": n[keep],
            "mean": np.nanmean(stack, axis=0)[keep],
            "std": np.nanstd(stack, axis=0, ddof=1)[keep],
            "min": np.nanmin(stack, axis=0)[keep],
            "max": np.nanmax(stack, axis=0)[keep],
        }


# --------------------------------------------------------------------------------------
# average_timelines: hand-computed cases
# --------------------------------------------------------------------------------------


def test_seed_numbers_mean_spread_and_rounded_errors() -> None:
    cpus, errors = [45.2, 52.8, 48.1], [7, 5, 6]
    frames = [
        frame([0.0, 1.0, 2.0], cpu=[c] * 3, errors=[e] * 3)
        for c, e in zip(cpus, errors, strict=True)
    ]

    out = average_timelines(frames, round_to_int=["errors"])

    assert list(out.columns) == [
        "t", "n",
        "cpu", "cpu_std", "cpu_min", "cpu_max", "cpu_ci95", "cpu_n", "cpu_nonfinite",
        "errors", "errors_std", "errors_min", "errors_max", "errors_ci95", "errors_n",
        "errors_nonfinite",
    ]  # fmt: skip
    assert out["t"].tolist() == [0.0, 1.0, 2.0]
    assert out["n"].tolist() == [3, 3, 3]
    assert out["cpu"].to_numpy() == pytest.approx([48.7] * 3, rel=1e-12)
    std = statistics.stdev(cpus)
    assert out["cpu_std"].to_numpy() == pytest.approx([std] * 3, rel=1e-12)
    assert out["cpu_min"].tolist() == [45.2] * 3
    assert out["cpu_max"].tolist() == [52.8] * 3
    assert out["cpu_ci95"].to_numpy() == pytest.approx([T975_2 * std / math.sqrt(3)] * 3)
    assert out["errors"].tolist() == [6.0, 6.0, 6.0]
    assert out["errors_std"].tolist() == [1.0, 1.0, 1.0]  # spread is not rounded


def test_round_to_int_rounds_halves_up_after_averaging_only_the_named_metrics() -> None:
    frames = [frame([0.0], errors=[1], cpu=[1.0]), frame([0.0], errors=[2], cpu=[2.0])]

    out = average_timelines(frames, round_to_int="errors")  # one name as a plain string

    assert out["errors"].tolist() == [2.0]
    assert out["cpu"].tolist() == [1.5]
    assert out["errors_min"].tolist() == [1.0]


def test_linear_interpolation_of_jittered_samples_onto_the_grid() -> None:
    # v = 2t + 1 is linear, so interpolation is exact at every grid time inside.
    a_t = [0.0, 0.104, 0.196, 0.305, 0.398]
    b_t = [0.003, 0.097, 0.21, 0.29, 0.401]
    frames = [frame(ts, v=[2 * t + 1 for t in ts]) for ts in (a_t, b_t)]

    out = average_timelines(frames, step=0.1)

    assert out["t"].to_numpy() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert out["n"].tolist() == [2, 2, 2, 2, 2]
    inside = out["t"].between(0.01, 0.39)
    assert out.loc[inside, "v"].to_numpy() == pytest.approx(2 * out.loc[inside, "t"] + 1)
    assert out.loc[inside, "v_std"].to_numpy() == pytest.approx(0.0, abs=1e-12)
    # At the edges an instance whose nearest grid point is 0 (or 0.4) but whose
    # first (last) sample is after (before) it holds that sample's value over the
    # half step: no extrapolation. The other one interpolates as usual.
    assert out["v"].iat[0] == pytest.approx((1.0 + 1.006) / 2)
    assert out["v"].iat[-1] == pytest.approx((1.796 + 1.8) / 2)


def test_a_sample_belongs_to_its_nearest_grid_point_not_the_floor() -> None:
    # Timestamps jittered just below the grid: flooring would put each one a step early.
    t = [0.0, 0.098, 0.199, 0.297]
    counter = [0.0, 1.0, 2.0, 3.0]

    out = average_timelines([frame(t, c=counter)], step=0.1, method="previous")

    assert out["t"].to_numpy() == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert out["c"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_last_grid_point_is_covered_when_the_last_sample_rounds_up_to_it() -> None:
    out = average_timelines([frame([0.04, 0.13, 0.21, 0.29], v=[1.0, 2.0, 3.0, 4.0])], step=0.1)

    assert out["t"].to_numpy() == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert out["v"].iat[0] == 1.0  # held from the first sample (0.04 is nearest 0)
    assert out["v"].iat[-1] == 4.0  # held from the last sample (0.29 is nearest 0.3)


def test_previous_holds_counters_and_method_can_be_given_per_metric() -> None:
    f = frame([0.0, 1.0, 2.0], count=[0.0, 5.0, 7.0], cpu=[0.0, 5.0, 7.0])

    held = average_timelines([f], step=0.5, method="previous")
    mixed = average_timelines([f], step=0.5, method={"count": "previous"})

    assert held["count"].tolist() == [0.0, 0.0, 5.0, 5.0, 7.0]
    assert mixed["count"].tolist() == [0.0, 0.0, 5.0, 5.0, 7.0]
    assert mixed["cpu"].tolist() == [0.0, 2.5, 5.0, 6.0, 7.0]  # linear by default


def test_methods_mixed_in_any_column_order_match_separate_averages() -> None:
    rng = np.random.default_rng(9)
    frames = []
    for _ in range(3):
        t = np.sort(rng.uniform(0, 10, 80))
        # Linear, then previous, then linear again: each keeps its own bracketing.
        frames.append(frame(t, a=rng.normal(size=80), held=t * 3, b=rng.normal(size=80)))
    methods = {"a": "linear", "held": "previous", "b": "linear"}

    together = average_timelines(frames, step=0.1, method=methods)

    for name, how in methods.items():
        alone = average_timelines([f[["t", name]] for f in frames], step=0.1, method=how)
        pd.testing.assert_frame_equal(
            together[["t", "n", *[c for c in together.columns if c.startswith(name)]]], alone
        )


def test_unequal_lengths_no_extrapolation_and_undefined_spread_for_one_instance() -> None:
    long = frame(np.arange(11) * 0.1, v=np.arange(11.0))
    short = frame(np.arange(6) * 0.1, v=np.arange(6.0) + 10)

    out = average_timelines([long, short], step=0.1)

    assert out["n"].tolist() == [2] * 6 + [1] * 5
    assert out["v"].tolist()[6:] == [6.0, 7.0, 8.0, 9.0, 10.0]  # the long one alone
    assert out["v"].to_numpy()[:6] == pytest.approx(np.arange(6.0) + 5)
    assert out["v_std"].isna().tolist() == [False] * 6 + [True] * 5
    assert out["v_ci95"].isna().tolist() == [False] * 6 + [True] * 5
    assert out["v_min"].tolist()[6:] == out["v_max"].tolist()[6:] == [6.0, 7.0, 8.0, 9.0, 10.0]


def test_grid_points_no_instance_covers_are_dropped() -> None:
    early = frame([0.0, 1.0], v=[1.0, 1.0])
    late = frame([5.0, 6.0], v=[3.0, 3.0])

    out = average_timelines([early, late], step=1.0)

    assert out["t"].tolist() == [0.0, 1.0, 5.0, 6.0]
    assert out["n"].tolist() == [1, 1, 1, 1]


def test_single_sample_timeline_contributes_at_its_own_time_only() -> None:
    full = frame(np.arange(11) * 0.1, v=np.zeros(11))
    single = frame([0.31], v=[4.0])

    out = average_timelines([full, single], step=0.1)

    assert out["n"].tolist() == [1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1]
    assert out["v"].iat[3] == 2.0
    alone = average_timelines([single], step=0.1)
    assert alone["t"].to_numpy() == pytest.approx([0.3])
    assert alone["v"].tolist() == [4.0]
    assert alone["n"].tolist() == [1]


def test_default_step_is_the_median_sampling_interval_rounded_to_3_digits() -> None:
    rng = np.random.default_rng(1)
    frames = []
    for _ in range(3):
        t = np.arange(200) * 0.01 + rng.uniform(-0.002, 0.002, 200)
        t[0] = 0.0
        frames.append(frame(t, v=rng.normal(size=200)))

    out = average_timelines(frames)

    assert np.diff(out["t"].to_numpy()) == pytest.approx(0.01)
    assert out["t"].iat[5] == 5 * 0.01
    # One-sample timelines have no interval: the step falls back to 1 s.
    assert average_timelines([frame([0.0], v=[1.0]), frame([2.2], v=[2.0])])["t"].tolist() == [
        0.0,
        2.0,
    ]


def test_identical_instances_give_exactly_zero_spread() -> None:
    rng = np.random.default_rng(7)
    t = np.cumsum(rng.uniform(0.05, 0.15, 100))
    base = frame(t, cpu=rng.uniform(0, 100, 100) + 0.1, memory=1e9 + rng.normal(size=100))

    out = average_timelines([base.copy() for _ in range(7)], step=0.1)
    alone = average_timelines([base], step=0.1)

    for metric in ("cpu", "memory"):
        assert (out[f"{metric}_std"] == 0.0).all()
        assert (out[f"{metric}_ci95"] == 0.0).all()
        np.testing.assert_array_equal(out[metric], alone[metric])
        np.testing.assert_array_equal(out[f"{metric}_min"], out[metric])
        np.testing.assert_array_equal(out[f"{metric}_max"], out[metric])


def test_large_offset_small_spread_is_numerically_stable() -> None:
    # Naive sum-of-squares would lose every digit of a spread of 1 around 1e9.
    frames = [frame([0.0, 1.0], v=[1e9 + x, 1e9 + x]) for x in (1.0, 2.0, 3.0, 4.0)]

    out = average_timelines(frames, step=1.0)

    assert out["v_std"].tolist() == pytest.approx([statistics.stdev([1, 2, 3, 4])] * 2, rel=1e-12)


def test_matches_interp_stack_reference_on_random_jittered_data() -> None:
    rng = np.random.default_rng(3)
    frames = []
    for length in (400, 350, 420, 1, 399):
        t = np.sort(np.arange(length) * 0.01 + rng.uniform(-0.004, 0.004, length)) + 0.005
        frames.append(frame(t, v=rng.normal(50, 10, length)))

    out = average_timelines(frames, step=0.01)
    ref = reference_average(frames, 0.01, "v")

    np.testing.assert_allclose(out["t"], ref["t"], rtol=0, atol=0)
    np.testing.assert_array_equal(out["n"], ref["n"])
    for ours, theirs in (("v", "mean"), ("v_std", "std"), ("v_min", "min"), ("v_max", "max")):
        np.testing.assert_allclose(out[ours], ref[theirs], rtol=0, atol=1e-9)


def test_blocks_and_grouped_instances_give_the_same_result_as_one_at_a_time() -> None:
    rng = np.random.default_rng(11)
    frames = []
    for i in range(11):
        length = 3000 - 97 * i
        t = np.arange(length) * 0.01 + rng.uniform(-0.004, 0.004, length) + 0.3 * i
        errors = rng.poisson(0.2, length).astype(float)
        frames.append(frame(np.abs(t), cpu=rng.normal(50, 5, length), errors=errors))
    methods = {"errors": "previous"}

    expected = average_timelines(frames, step=0.01, method=methods)
    small_blocks = average(frames, step=0.01, method=methods, block_points=257, block_rows=3)

    pd.testing.assert_frame_equal(small_blocks, expected, rtol=1e-12, atol=1e-9)
    ref = reference_average(frames, 0.01, "cpu")
    np.testing.assert_allclose(expected["cpu"], ref["mean"], rtol=0, atol=1e-9)


@pytest.mark.parametrize("block", [7, 64, 16_384])
def test_sparse_irregular_samples_across_blocks_match_the_reference(block: int) -> None:
    rng = np.random.default_rng(8)
    frames = []
    for _ in range(4):
        # Bursts of samples between long silences: windows whose margin samples
        # lie far outside the block.
        t = np.sort(np.concatenate([rng.uniform(0, 3, 40), rng.uniform(9, 9.5, 30), [14.2]]))
        frames.append(frame(t, v=rng.normal(size=t.size), c=np.arange(t.size, dtype=float)))
    step = 0.05

    # The reference bridges every gap between samples.
    out = average(frames, step=step, method={"c": "previous"}, block_points=block, max_gap=math.inf)

    ref = reference_average(frames, step, "v")
    np.testing.assert_array_equal(out["n"], ref["n"])
    np.testing.assert_allclose(out["v"], ref["mean"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["v_std"], ref["std"], rtol=0, atol=1e-9)
    # previous: each grid point holds the last sample whose nearest grid point is
    # at or before it.
    held = []
    for f in frames:
        nearest = np.floor(f["t"].to_numpy() / step + 0.5).astype(int)
        row = np.full(len(out), np.nan)
        for i, k in enumerate(np.rint(out["t"].to_numpy() / step).astype(int)):
            if nearest[0] <= k <= nearest[-1]:
                row[i] = f["c"].iat[np.searchsorted(nearest, k, side="right") - 1]
        held.append(row)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        np.testing.assert_allclose(out["c"], np.nanmean(held, axis=0), rtol=0, atol=1e-9)


def test_unsorted_times_are_sorted_first() -> None:
    shuffled = frame([2.0, 0.0, 1.0], v=[20.0, 0.0, 10.0])

    out = average_timelines([shuffled], step=0.5)

    assert out["v"].tolist() == [0.0, 5.0, 10.0, 15.0, 20.0]


def test_missing_values_use_each_metrics_own_samples_and_count() -> None:
    a = frame([0.0, 1.0, 2.0], cpu=[1.0, 2.0, 3.0], mem=[10.0, np.nan, 30.0])
    b = frame([0.0, 1.0, 2.0], cpu=[3.0, 4.0, 5.0], mem=[30.0, 40.0, 50.0])
    c = frame([0.0, 1.0, 2.0], cpu=[5.0, 6.0, 7.0], mem=[np.nan, np.nan, 60.0])

    out = average_timelines([a, b, c], step=1.0)

    assert out["n"].tolist() == [3, 3, 3]
    assert out["cpu"].tolist() == [3.0, 4.0, 5.0]
    # a's memory at t=1 is interpolated between its own samples (20); c has memory
    # at t=2 only, so the first two points average two instances.
    assert out["mem"].tolist() == [20.0, 30.0, pytest.approx(140 / 3)]
    assert out["mem_std"].iat[0] == pytest.approx(statistics.stdev([10.0, 30.0]))
    assert out["mem_ci95"].iat[0] == pytest.approx(
        12.706204736174694 * out["mem_std"].iat[0] / 2**0.5
    )


def test_instances_lacking_a_metric_do_not_count_for_it() -> None:
    a = frame([0.0, 1.0], cpu=[1.0, 1.0], gpu=[50.0, 70.0])
    b = frame([0.0, 1.0], cpu=[3.0, 3.0])
    nan_column = frame([0.0, 1.0], cpu=[5.0, 5.0], gpu=[np.nan, np.nan])

    out = average_timelines([a, b, nan_column], step=1.0)

    assert out["n"].tolist() == [3, 3]
    assert out["gpu"].tolist() == [50.0, 70.0]
    assert out["gpu_std"].isna().all()
    assert out["cpu"].tolist() == [3.0, 3.0]


def test_a_diverging_metric_is_counted_not_averaged_and_never_fails() -> None:
    inf = np.inf
    diverged = frame([0.0, 1.0, 2.0, 3.0], loss=[1.0, 0.5, inf, -inf], cpu=[1.0, 1.0, 1.0, 1.0])
    fine = frame([0.0, 1.0, 2.0, 3.0], loss=[1.2, 0.7, 0.4, 0.3], cpu=[3.0, 3.0, 3.0, 3.0])
    also = frame([0.0, 1.0, 2.0, 3.0], loss=[1.4, 0.9, 0.6, 0.5], cpu=[5.0, 5.0, 5.0, 5.0])

    out = average_timelines([diverged, fine, also], step=1.0)

    assert out["n"].tolist() == [3, 3, 3, 3]  # the instance still runs: cpu counts it
    assert out["loss_nonfinite"].tolist() == [0, 0, 1, 1]
    assert out["loss_nonfinite"].dtype == np.int64
    assert out["loss"].tolist() == pytest.approx([1.2, 0.7, 0.5, 0.4])
    assert out["loss_std"].iat[2] == pytest.approx(statistics.stdev([0.4, 0.6]))
    assert out["loss_max"].iat[3] == 0.5  # the inf is in no statistic
    assert out["cpu"].tolist() == [3.0] * 4
    assert out["cpu_nonfinite"].tolist() == [0] * 4


def test_a_metric_without_any_finite_value_gives_nan_statistics() -> None:
    out = average_timelines(
        [frame([0.0, 1.0], v=[np.inf, np.inf]), frame([0.0, 1.0], v=[np.nan, np.nan])]
    )

    assert out["n"].tolist() == [2, 2]
    assert out[["v", "v_std", "v_min", "v_max", "v_ci95"]].isna().all().all()
    assert out["v_nonfinite"].tolist() == [1, 1]


def test_several_inf_samples_nearest_one_point_count_the_instance_once() -> None:
    a = frame([0.0, 0.9, 1.0, 1.1, 2.0], v=[1.0, np.inf, np.inf, np.inf, 2.0])
    b = frame([0.0, 1.0, 2.0], v=[3.0, np.inf, 4.0])

    out = average_timelines([a, b], step=1.0)

    assert out["v_nonfinite"].tolist() == [0, 2, 0]
    assert out["v"].tolist() == [2.0, 2.5, 3.0]  # bridged by the finite neighbours


def test_empty_frames_contribute_nothing() -> None:
    empty = frame([], v=[])

    out = average_timelines([empty, frame([0.0, 1.0], v=[1.0, 3.0])], step=1.0)
    nothing = average_timelines([empty, empty])

    assert out["n"].tolist() == [1, 1]
    assert list(nothing.columns) == [
        "t", "n", "v", "v_std", "v_min", "v_max", "v_ci95", "v_n", "v_nonfinite"
    ]  # fmt: skip
    assert len(nothing) == 0


def test_integer_and_boolean_metrics_are_numbers() -> None:
    out = average_timelines(
        [
            pd.DataFrame({"t": [0, 1], "k": [1, 3], "up": [True, False]}),
            pd.DataFrame(
                {"t": [0, 1], "k": pd.array([3, None], dtype="Int64"), "up": [True, True]}
            ),
        ],
        step=1,
    )

    assert out["k"].tolist() == [2.0, 3.0]  # pd.NA is a missing value; the other has t=1
    assert out["up"].tolist() == [1.0, 0.5]


def test_memory_grows_with_the_grid_not_with_instances() -> None:
    rng = np.random.default_rng(5)
    samples = 100_000

    def frames(count: int) -> list[pd.DataFrame]:
        t = np.arange(samples) * 0.01
        return [frame(t + rng.uniform(0, 0.004, samples), v=rng.normal(size=samples))
                for _ in range(count)]  # fmt: skip

    def peak(inputs: list[pd.DataFrame]) -> int:
        tracemalloc.start()
        try:
            average_timelines(inputs, step=0.01)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    few, many = frames(4), frames(48)
    peak(few)  # warm-up: caches of numpy and the t-quantile table
    stack_bytes = 48 * samples * 8  # one instances x grid float64 array
    assert peak(many) < 1.3 * peak(few)
    assert peak(many) < 0.5 * stack_bytes


# --------------------------------------------------------------------------------------
# average_timelines: gaps stay gaps, counters keep their totals
# --------------------------------------------------------------------------------------


def _outage(metric: str = "latency") -> pd.DataFrame:
    """Recorded at t = 0-3 s and 7-9 s: a killed server in between."""
    t = [0.0, 1.0, 2.0, 3.0, 7.0, 8.0, 9.0]
    return frame(t, **{metric: [10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0]})


def test_an_outage_in_one_instance_is_averaged_from_the_others_only() -> None:
    steady = frame(np.arange(10.0), latency=np.arange(10.0) * 10.0)

    out = average_timelines([_outage(), steady])

    during = out["t"].isin([4.0, 5.0, 6.0])
    assert out.loc[during, "latency"].tolist() == [40.0, 50.0, 60.0]  # the second only
    assert out.loc[during, "latency_n"].tolist() == [1, 1, 1]
    assert out.loc[during, "latency_std"].isna().all()  # one value: no spread
    assert out.loc[during, "n"].tolist() == [2, 2, 2]  # both still running
    assert out.loc[~during, "latency_n"].tolist() == [2] * 7
    # At the outage's edges both instances measured: 3 s and 7 s are averages of two.
    assert out.loc[out["t"] == 3.0, "latency"].item() == 20.0
    assert out.loc[out["t"] == 7.0, "latency"].item() == 40.0


def test_where_every_instance_has_the_gap_the_average_is_nan_and_the_row_stays() -> None:
    out = average_timelines([_outage(), _outage()])

    during = out["t"].isin([4.0, 5.0, 6.0])
    assert during.sum() == 3  # the rows stay: a chart draws a break there, not a bridge
    assert out.loc[during, "latency"].isna().all()
    assert out.loc[during, ["latency_std", "latency_min", "latency_max"]].isna().all().all()
    assert out.loc[during, "latency_n"].tolist() == [0, 0, 0]
    assert out.loc[~during, "latency"].tolist() == [10.0] * 7


def test_max_gap_decides_what_is_a_gap_per_metric_and_inf_bridges_everything() -> None:
    steady = frame(np.arange(10.0), latency=np.arange(10.0) * 10.0)

    bridged = average_timelines([_outage(), steady], max_gap=math.inf)
    wide = average_timelines([_outage(), steady], max_gap=4.0)  # the 4 s gap is allowed
    per_metric = average_timelines([_outage(), steady], max_gap={"latency": 4.0})
    narrow = average_timelines([_outage(), steady], max_gap=3.9)

    assert bridged.loc[bridged["t"] == 5.0, "latency_n"].item() == 2
    assert bridged.loc[bridged["t"] == 5.0, "latency"].item() == 30.0  # (10 + 50) / 2
    pd.testing.assert_frame_equal(wide, bridged)
    pd.testing.assert_frame_equal(per_metric, bridged)
    assert narrow.loc[narrow["t"] == 5.0, "latency_n"].item() == 1


def test_the_default_max_gap_is_three_median_intervals_of_each_metric() -> None:
    # cpu every 0.5 s, loss every 2 s: each metric's own interval sets its gap.
    t = np.arange(0.0, 40.0, 0.5)
    loss = np.where(t % 2 == 0, t, np.nan)
    a = frame(t, cpu=np.ones(t.size), loss=loss)
    quiet = (t > 10) & (t < 11.5)  # cpu silent 1.5 s: 3 intervals, not a gap
    silent = (t > 10) & (t < 12)  # cpu silent 2 s: 4 intervals, a gap
    b = frame(t[~quiet], cpu=np.ones((~quiet).sum()), loss=loss[~quiet])
    c = frame(t[~silent], cpu=np.ones((~silent).sum()), loss=loss[~silent])

    out = average_timelines([a, b, c], step=0.5)

    at = out.set_index("t")
    assert at.loc[11.0, "cpu_n"] == 2  # c's 2 s silence (> 3 x 0.5 s) is a gap
    assert at.loc[10.5, "cpu_n"] == 2
    # loss is sampled every 2 s: its gap is 6 s, so c's missing sample at 11 s
    # (a 4 s interval) is bridged: every grid point up to its last sample (38 s)
    # has all three instances.
    assert (out.loc[out["t"] <= 38.0, "loss_n"] == 3).all()
    assert (out["cpu_n"] >= 2).all()
    assert (at.loc[[9.5, 10.0, 12.0], "cpu_n"] == 3).all()


def test_previous_holds_values_only_within_a_run_of_samples() -> None:
    out = average_timelines([_outage()], method="previous")

    assert out["latency_n"].tolist() == [1, 1, 1, 1, 0, 0, 0, 1, 1, 1]


def test_gaps_across_small_blocks_give_the_same_result() -> None:
    rng = np.random.default_rng(5)
    frames = []
    for i in range(5):
        t = np.sort(rng.uniform(0, 30, 600))
        t = t[(t < 8 + i) | (t > 12 + i)]  # each instance silent for 4 s somewhere
        frames.append(frame(t, v=rng.normal(size=t.size), errors=rng.poisson(1, t.size)))

    whole = average(frames, step=0.05, max_gap=1.0)
    blocks = average(frames, step=0.05, max_gap=1.0, block_points=7, block_rows=2)

    pd.testing.assert_frame_equal(blocks, whole, rtol=1e-12, atol=1e-9)
    assert (whole["v_n"] < whole["n"]).any()


def test_error_counts_are_summed_so_the_total_is_kept() -> None:
    rng = np.random.default_rng(12)
    frames = []
    for i in range(6):
        # Different lengths and sampling rates, jittered: counts since the last sample.
        t = np.sort(rng.uniform(0, 20 + 3 * i, 50 + 20 * i))
        frames.append(frame(t, errors=rng.poisson(2.0, t.size).astype(float)))
    totals = [f["errors"].sum() for f in frames]

    out = average_timelines(frames, step=0.5)
    rounded = average_timelines(frames, step=0.5, round_to_int=["errors"])
    interpolated = average_timelines(frames, step=0.5, method="linear")

    assert out["errors"].sum() == pytest.approx(statistics.fmean(totals), rel=1e-12)
    assert (out["errors_n"] == 6).all()  # an instance counts 0 where it reported nothing
    assert (rounded["errors"] == np.round(rounded["errors"])).all()
    assert abs(rounded["errors"].sum() - statistics.fmean(totals)) <= 0.5
    # Interpolating a counter invents counts: its sum is nowhere near the total.
    assert abs(interpolated["errors"].sum() - statistics.fmean(totals)) > 10


def test_an_outage_stays_nan_while_the_errors_during_it_are_counted() -> None:
    # The instance's latency stops at 3 s; its error sample at 7 s counts the
    # errors since 3 s (the outage): they stay in the total.
    broken = frame(
        [0.0, 1.0, 2.0, 3.0, 7.0, 8.0, 9.0],
        latency=[10.0] * 7,
        errors=[0.0, 0.0, 1.0, 0.0, 12.0, 0.0, 0.0],
    )
    other = broken.assign(errors=[0.0, 1.0, 0.0, 0.0, 8.0, 1.0, 0.0])

    out = average_timelines([broken, other], round_to_int=["errors"])

    during = out["t"].isin([4.0, 5.0, 6.0])
    assert out.loc[during, "latency"].isna().all()
    assert out.loc[during, "latency_n"].tolist() == [0, 0, 0]
    assert out["errors"].sum() == (13 + 10) / 2 + 0.5  # 11.5, rounded halves up
    assert out.loc[out["t"] == 7.0, "errors"].item() == 10.0


def test_step_indexed_averages_count_each_metric() -> None:
    a = pd.DataFrame({"step": [0, 1, 2], "loss": [1.0, np.nan, 0.5]})
    b = pd.DataFrame({"step": [0, 1, 2], "loss": [3.0, 2.0, 1.5]})

    out = average_timelines([a, b])

    assert out["n"].tolist() == [2, 2, 2]
    assert out["loss_n"].tolist() == [2, 1, 2]


# --------------------------------------------------------------------------------------
# average_timelines: properties
# --------------------------------------------------------------------------------------

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
values = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@st.composite
def timelines(draw: st.DrawFn, length: int | None = None) -> pd.DataFrame:
    size = length if length is not None else draw(st.integers(1, 25))
    gaps = draw(st.lists(st.floats(0.01, 2.0), min_size=size, max_size=size))
    start = draw(st.floats(0.0, 5.0))
    t = start + np.cumsum(gaps) - gaps[0]
    cpu = draw(st.lists(values, min_size=size, max_size=size))
    errors = draw(st.lists(st.integers(0, 50), min_size=size, max_size=size))
    return frame(t, cpu=cpu, errors=np.asarray(errors, dtype=float))


steps = st.sampled_from([None, 0.05, 0.3, 1.0])
methods = st.sampled_from(["linear", "previous", None, {"errors": "previous"}])
max_gaps = st.sampled_from([None, math.inf, 0.5])


@SETTINGS
@given(timelines(), st.integers(1, 6), steps, methods, max_gaps)
def test_property_copies_of_a_timeline_average_to_it_with_zero_spread(
    timeline: pd.DataFrame, copies: int, step: float | None, method: object, max_gap: float | None
) -> None:
    options: dict[str, Any] = {"step": step, "method": method, "max_gap": max_gap}
    alone = average_timelines([timeline], **options)
    many = average_timelines([timeline] * copies, **options)

    np.testing.assert_array_equal(many["t"], alone["t"])
    assert (many["n"] == copies).all()
    for metric in ("cpu", "errors"):
        np.testing.assert_array_equal(many[metric], alone[metric])
        np.testing.assert_array_equal(many[f"{metric}_min"], alone[metric])
        np.testing.assert_array_equal(many[f"{metric}_max"], alone[metric])
        np.testing.assert_array_equal(many[f"{metric}_n"], alone[f"{metric}_n"] * copies)
        if copies > 1:
            measured = many[f"{metric}_n"] > 0
            assert (many[f"{metric}_std"][measured] == 0.0).all()


@SETTINGS
@given(st.lists(timelines(), min_size=1, max_size=5), values, steps, methods, max_gaps)
def test_property_a_constant_shift_shifts_the_mean_and_keeps_the_spread(
    frames: list[pd.DataFrame],
    shift: float,
    step: float | None,
    method: object,
    max_gap: float | None,
) -> None:
    moved = [f.assign(cpu=f["cpu"] + shift) for f in frames]
    options: dict[str, Any] = {"step": step, "method": method, "max_gap": max_gap}

    before = average_timelines(frames, **options)
    after = average_timelines(moved, **options)

    scale = 1e-9 * (1 + abs(shift) + max(f["cpu"].abs().max() for f in frames))
    np.testing.assert_array_equal(after["t"], before["t"])
    np.testing.assert_array_equal(after["cpu_n"], before["cpu_n"])
    np.testing.assert_allclose(after["cpu"], before["cpu"] + shift, rtol=0, atol=scale)
    np.testing.assert_allclose(after["cpu_std"], before["cpu_std"], rtol=0, atol=scale)


@SETTINGS
@given(st.lists(timelines(), min_size=1, max_size=6), steps, methods, max_gaps)
def test_property_mean_between_min_and_max_and_n_at_most_the_instances(
    frames: list[pd.DataFrame], step: float | None, method: object, max_gap: float | None
) -> None:
    out = average_timelines(frames, step=step, method=method, max_gap=max_gap)  # type: ignore[arg-type]

    assert len(out) > 0
    assert ((out["n"] >= 1) & (out["n"] <= len(frames))).all()
    assert out["t"].is_monotonic_increasing and out["t"].is_unique
    for metric in ("cpu", "errors"):
        count = out[f"{metric}_n"]
        assert ((count >= 0) & (count <= len(frames))).all()
        measured = count > 0
        assert (out[f"{metric}_min"][measured] <= out[metric][measured]).all()
        assert (out[metric][measured] <= out[f"{metric}_max"][measured]).all()
        assert out[metric][~measured].isna().all()
        spread = out[f"{metric}_std"]
        assert (spread[count >= 2] >= 0).all() and spread[count < 2].isna().all()


@SETTINGS
@given(st.lists(timelines(), min_size=2, max_size=5), st.randoms(use_true_random=False))
def test_property_instance_order_does_not_matter(frames: list[pd.DataFrame], rng: object) -> None:
    shuffled = list(frames)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]

    a = average_timelines(frames, step=0.3)
    b = average_timelines(shuffled, step=0.3)

    pd.testing.assert_frame_equal(a, b, rtol=1e-9, atol=1e-6)


# --------------------------------------------------------------------------------------
# average_timelines: errors
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timelines_", "words"),
    [
        ([], "at least one timeline"),
        (frame([0.0], v=[1.0]), "wrap it in a list"),
        ([pd.DataFrame({"time": [0.0], "v": [1.0]})], "'t' column"),
        ([pd.DataFrame({"v": [1.0]}, index=pd.Index([0.0], name="t"))], "reset_index"),
        ([frame([0.0, 1.0], phase=["warm", "hot"])], "timelines[0]['phase']"),
        ([frame([0.0, 1.0], v=[1.0, 2.0]), frame([0.0], v=[np.nan])], None),
        ([frame([0.0, np.nan], v=[1.0, 2.0])], "finite times"),
        ([frame([0.0, 1.0])], "at least one metric"),
        ([frame([0.0], v=[1.0], v_std=[2.0])], "clash"),
        ([frame([0.0], n=[1.0])], "clash"),
        ([pd.DataFrame({"t": pd.to_timedelta([0, 1], unit="s"), "v": [1.0, 2.0]})], "seconds"),
        (["not a frame"], "timelines[0]"),
    ],
)
def test_bad_timelines_are_a_value_error_naming_the_problem(
    timelines_: object, words: str | None
) -> None:
    if words is None:  # a NaN-only column in one instance is fine: it lacks the metric
        assert average_timelines(timelines_)["v"].tolist() == [1.0, 2.0]  # type: ignore[arg-type]
        return
    with pytest.raises(ValueError, match=None) as caught:
        average_timelines(timelines_)  # type: ignore[arg-type]
    assert isinstance(caught.value, ConfigError)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"step": 0}, "step"),
        ({"step": -0.1}, "step"),
        ({"step": float("nan")}, "step"),
        ({"step": "0.1"}, "step"),
        ({"step": True}, "step"),
        ({"step": 1e-9}, "step"),  # a grid of 10^10 points
        ({"method": "cubic"}, "method"),
        ({"method": {"v": "nearest"}}, "method['v']"),
        ({"method": {"gpu": "linear"}}, "method['gpu']"),
        ({"round_to_int": ["errors"]}, "round_to_int"),
        ({"max_gap": 0}, "max_gap"),
        ({"max_gap": -1.0}, "max_gap"),
        ({"max_gap": "3"}, "max_gap"),
        ({"max_gap": float("nan")}, "max_gap"),
        ({"max_gap": {"v": 0.0}}, "max_gap['v']"),
        ({"max_gap": {"gpu": 1.0}}, "max_gap['gpu']"),
        ({"method": {"v": "total"}}, "method['v']"),
    ],
)
def test_bad_options_are_config_errors_naming_the_option(options: dict, option: str) -> None:
    with pytest.raises(ConfigError) as caught:
        average_timelines([frame([0.0, 10.0], v=[1.0, 2.0])], **options)
    assert caught.value.option == option


# --------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------


def test_average_summaries_seed_example() -> None:
    summaries = [
        {"cpu_peak": 45.2, "memory_peak": 28.0, "error_count": 7, "recovery_time": 1.5},
        {"cpu_peak": 52.8, "memory_peak": 30.0, "error_count": 5, "recovery_time": 2.5},
        {"cpu_peak": 48.1, "memory_peak": 29.3, "error_count": 6, "recovery_time": 0.5},
    ]

    out = average_summaries(summaries)

    assert out == {
        "cpu_peak": 48.7,
        "memory_peak": 29.1,
        "error_count": 6,
        "num_instances": 3,
        "num_failed": 0,
        "errors": {},
        "recovery_times": [1.5, 2.5, 0.5],
    }
    assert isinstance(out["error_count"], int)
    assert "recovery_times" not in average_summaries([{"cpu_peak": 1.0}, None])


def test_failed_instances_are_counted_and_kept_but_not_averaged() -> None:
    summaries = [
        {"cpu_peak": 40.0, "error_count": 2, "recovery_time": 1.0},
        None,
        {"ok": False, "error": ValueError("boom"), "cpu_peak": 999.0, "recovery_time": 9.0},
        {"cpu_peak": 60.0, "error_count": 3, "ok": True},
        {"ok": False, "error": "TimeoutError: 30 s"},
    ]

    out = average_summaries(summaries)

    assert out["cpu_peak"] == 50.0
    assert out["error_count"] == 3  # 2.5 rounds half up
    assert out["num_instances"] == 5
    assert out["num_failed"] == 3
    assert out["errors"] == {
        1: "failed (no summary)",
        2: "ValueError: boom",
        4: "TimeoutError: 30 s",
    }
    assert out["recovery_times"] == [1.0, None, 9.0, None, None]
    assert "ok" not in out and "recovery_time" not in out


def test_summary_values_that_agree_are_kept_and_others_dropped() -> None:
    out = average_summaries(
        [
            {"scenario": "cpu_stress", "host": "a", "loss": 1.0, "flag": True},
            {"scenario": "cpu_stress", "host": "b", "loss": float("nan"), "flag": True},
            {"scenario": "cpu_stress", "host": "a", "loss": 3.0, "flag": True},
        ]
    )

    assert out["scenario"] == "cpu_stress"
    assert out["flag"] is True
    assert "host" not in out
    assert out["loss"] == 2.0  # NaN is a missing value


def test_average_summaries_errors_and_options() -> None:
    with pytest.raises(ConfigError, match="at least one summary"):
        average_summaries([])
    with pytest.raises(ConfigError, match=r"summaries\[1\]"):
        average_summaries([{"a": 1}, 3])  # type: ignore[list-item]
    out = average_summaries([{"ops": 1}, {"ops": 2}], round_to_int=["ops"])
    assert out["ops"] == 2
    assert average_summaries([None])["num_failed"] == 1


def test_summarize_timeline_peaks_and_error_total() -> None:
    timeline = frame([0.0, 1.0, 2.0], cpu=[40.0, 52.5, np.nan], errors=[2.0, 0.0, 1.0])

    assert summarize_timeline(timeline) == {"cpu_peak": 52.5, "error_count": 3}
    unsorted = frame([2.0, 0.0, 1.0, 3.0], loss=[0.5, 1.4, 0.9, np.nan], memory=[3, 9, 4, 1])
    assert summarize_timeline(unsorted) == {"loss_last": 0.5, "memory_peak": 9.0}
    diverged = frame([0.0, 1.0], loss=[1.0, np.inf], errors=[np.nan, np.nan])
    assert summarize_timeline(diverged) == {"loss_last": math.inf}  # no errors recorded
    with pytest.raises(ConfigError):
        summarize_timeline(pd.DataFrame({"cpu": [1.0]}))


# --------------------------------------------------------------------------------------
# Outliers
# --------------------------------------------------------------------------------------


def test_a_deviant_summary_is_flagged_and_uniform_ones_are_not() -> None:
    peaks = [50.0, 51.0, 49.0, 50.5, 49.5, 90.0]
    summaries = [{"cpu_peak": p, "error_count": 3} for p in peaks]

    found = detect_outliers(summaries)

    assert len(found) == 1
    outlier = found[0]
    assert (outlier.instance, outlier.metric, outlier.value) == (5, "cpu_peak", 90.0)
    assert outlier.score > 3.5
    assert outlier.median == 50.25
    assert detect_outliers(summaries[:5]) == []


def test_outlier_positions_skip_failed_summaries_and_need_three_instances() -> None:
    summaries = [None, {"x": 1.0}, {"ok": False, "error": "e"}, {"x": 1.1}, {"x": 0.9}, {"x": 1.0}]
    summaries.append({"x": 9.0})

    found = detect_outliers(summaries)

    assert [(o.instance, o.metric) for o in found] == [(6, "x")]
    assert detect_outliers([{"x": 1.0}, {"x": 100.0}]) == []
    assert detect_outliers([{"x": 5.0}] * 10) == []


def test_mostly_identical_values_still_flag_the_odd_one() -> None:
    # MAD is 0 when most values agree; the mean absolute deviation takes over.
    summaries = [{"error_count": 0}] * 9 + [{"error_count": 4}]

    found = detect_outliers(summaries)

    assert [(o.instance, o.metric) for o in found] == [(9, "error_count")]


def _noisy_timelines(count: int, seed: int) -> list[pd.DataFrame]:
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        t = np.arange(500) * 0.1 + rng.uniform(-0.02, 0.02, 500)
        t[0] = 0.0
        cpu = 50 + 20 * np.sin(t / 5) + rng.normal(0, 2, 500)
        memory = 300 + rng.normal(0, 1, 500)
        frames.append(frame(t, cpu=cpu, memory=memory))
    return frames


def test_a_deviant_timeline_is_flagged_in_that_metric_only() -> None:
    frames = _noisy_timelines(8, seed=2)
    frames[3] = frames[3].assign(cpu=frames[3]["cpu"] + 15.0)

    found = detect_outliers(frames)

    assert [(o.instance, o.metric) for o in found] == [(3, "cpu")]
    assert found[0].value == pytest.approx(15.0, rel=0.2)  # RMS distance to the median curve
    table = pd.DataFrame(found)
    assert list(table.columns) == ["instance", "metric", "score", "value", "median"]


def test_uniform_timelines_have_no_outliers() -> None:
    assert detect_outliers(_noisy_timelines(8, seed=4)) == []
    assert detect_outliers(_noisy_timelines(2, seed=4)) == []


def test_outliers_are_sorted_by_severity_and_can_be_restricted() -> None:
    frames = _noisy_timelines(8, seed=6)
    frames[1] = frames[1].assign(cpu=frames[1]["cpu"] + 10.0)
    frames[5] = frames[5].assign(cpu=frames[5]["cpu"] - 40.0, memory=frames[5]["memory"] + 50)

    found = detect_outliers(frames)
    only_memory = detect_outliers(frames, metrics=["memory"])

    assert [(o.instance, o.metric) for o in found][:2] == [(5, "memory"), (5, "cpu")] or [
        (o.instance, o.metric) for o in found
    ][:2] == [(5, "cpu"), (5, "memory")]
    assert {(o.instance, o.metric) for o in found} == {(1, "cpu"), (5, "cpu"), (5, "memory")}
    scores = [abs(o.score) for o in found]
    assert scores == sorted(scores, reverse=True)
    assert [(o.instance, o.metric) for o in only_memory] == [(5, "memory")]
    assert isinstance(found[0], Outlier)


def test_detect_outliers_errors() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        detect_outliers([{"x": 1.0}] * 3, threshold=0)
    with pytest.raises(ConfigError, match="one kind"):
        detect_outliers([{"x": 1.0}, frame([0.0], x=[1.0])])
    with pytest.raises(ConfigError, match="metrics"):
        detect_outliers([{"x": 1.0}] * 3, metrics=["y"])
    with pytest.raises(ConfigError, match="single DataFrame"):
        detect_outliers(frame([0.0], x=[1.0]))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Student t and instances_needed
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        (0.975, 1, 12.706204736174694),
        (0.975, 2, 4.302652729749462),
        (0.975, 3, 3.1824463052837078),
        (0.975, 4, 2.7764451051977934),
        (0.975, 5, 2.5705818356363146),
        (0.975, 10, 2.228138851986274),
        (0.975, 30, 2.0422724563012378),
        (0.975, 100, 1.9839715185235518),
        (0.975, 1000, 1.9623390808264083),
        (0.95, 20, 1.7247182429207866),
        (0.995, 10, 3.16927267261695),
        (0.9995, 3, 12.923978636687961),
    ],
)
def test_t_quantile_matches_table_values(p: float, df: int, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, rel=1e-10)
    assert t_quantile(1 - p, df) == pytest.approx(-expected, rel=1e-10)


def test_t_quantile_agrees_with_scipy_where_installed() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 21), 29, 47, 99, 250, 999, 1001, 5000, 100_000]:
        for p in (0.55, 0.9, 0.975, 0.999, 1 - 1e-6, 1 - 1e-9):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9), (p, df)


def test_t_quantile_edges_and_errors() -> None:
    assert t_quantile(0.5, 7) == 0.0
    assert t_quantile(0.975, 10**7) == pytest.approx(1.959964, rel=1e-6)  # the normal's
    for p in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(ConfigError):
            t_quantile(p, 3)
    for df in (0, -1, 0.5, True):
        with pytest.raises(ConfigError):
            t_quantile(0.9, df)  # type: ignore[arg-type]
    # Fractional degrees of freedom (Welch) lie between their integer neighbours.
    assert t_quantile(0.9, 3) < t_quantile(0.9, 2.5) < t_quantile(0.9, 2)


def test_instances_needed_known_value() -> None:
    # mean 100, s 10: +-5 % is +-5; t(17) * 10 / sqrt(18) = 4.97 <= 5 < t(16) * 10 / sqrt(17).
    assert instances_needed([90.0, 100.0, 110.0]) == 18
    assert 2.1098155778333156 * 10 / math.sqrt(18) <= 5 < 2.1199052992212546 * 10 / math.sqrt(17)
    assert instances_needed(np.array([90.0, 100.0, 110.0]), rel_half_width=0.5) == 3
    assert instances_needed([5.0, 5.0, 5.0]) == 2  # no spread: any interval is tight


def test_instances_needed_grows_with_noise_confidence_and_precision() -> None:
    pilot = np.array([48.0, 52.0, 50.5, 49.0, 50.5])
    noisier = 50 + (pilot - 50) * 3

    base = instances_needed(pilot)
    assert instances_needed(noisier) > base
    assert instances_needed(pilot, confidence=0.99) > base
    assert instances_needed(pilot, rel_half_width=0.01) > base
    assert instances_needed(-pilot) == base  # relative to |mean|


@SETTINGS
@given(
    st.lists(st.floats(1.0, 100.0), min_size=2, max_size=8),
    st.floats(1.0, 20.0),
    st.floats(0.005, 0.5),
)
def test_property_a_noisier_pilot_never_needs_fewer_instances(
    pilot: list[float], factor: float, width: float
) -> None:
    values = np.asarray(pilot)
    mean = values.mean()
    noisier = mean + (values - mean) * factor

    needed = instances_needed(values, rel_half_width=width)

    assert instances_needed(noisier, rel_half_width=width) >= needed
    spread = values.std(ddof=1)
    if spread > 0 and needed > 2:
        # The answer is the smallest n whose interval is tight enough.
        def half(n: int) -> float:
            return t_quantile(0.975, n - 1) * spread / math.sqrt(n)

        assert half(needed) <= width * abs(mean) * (1 + 1e-12)
        assert half(needed - 1) > width * abs(mean) * (1 - 1e-12)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (([1.0],), "values"),
        (([1.0, np.nan],), "values"),
        (([-1.0, 1.0],), "values"),
        (([1.0, 2.0], 0.0), "rel_half_width"),
        (([1.0, 2.0], 0.05, 1.0), "confidence"),
        ((["a", "b"],), "values"),
    ],
)
def test_instances_needed_errors(args: tuple, option: str) -> None:
    with pytest.raises(ConfigError) as caught:
        instances_needed(*args)
    assert caught.value.option == option


def test_outliers_must_also_matter_in_practice() -> None:
    # With three instances the MAD is the smallest gap: 52.8 scores far above 3.5,
    # yet it lies within 10 % of the median and is ordinary run-to-run noise.
    near = [{"cpu_peak": 48.1}, {"cpu_peak": 48.7}, {"cpu_peak": 52.8}]
    assert detect_outliers(near) == []
    flagged = detect_outliers(near, min_relative=0)
    assert [(o.instance, o.metric) for o in flagged] == [(2, "cpu_peak")]
    far = [{"cpu_peak": 48.1}, {"cpu_peak": 48.7}, {"cpu_peak": 95.0}]
    assert [o.instance for o in detect_outliers(far)] == [2]
    with pytest.raises(ConfigError, match="min_relative"):
        detect_outliers(near, min_relative=-1)


def test_timeline_outliers_ignore_small_wobbles() -> None:
    t = np.arange(0.0, 10.0, 0.5)
    frames = [pd.DataFrame({"t": t, "cpu": 50.0 + offset}) for offset in (0.0, 0.1, 2.0)]
    assert detect_outliers(frames) == []
    frames.append(pd.DataFrame({"t": t, "cpu": 50.0 + 0.05}))
    frames.append(pd.DataFrame({"t": t, "cpu": 90.0}))
    assert [o.instance for o in detect_outliers(frames)] == [4]


# --------------------------------------------------------------------------------------
# Timelines indexed by step
# --------------------------------------------------------------------------------------


def test_timelines_indexed_by_step_align_on_equal_steps_without_interpolation() -> None:
    a = pd.DataFrame({"step": [0, 1, 2, 3], "loss": [1.0, 0.8, 0.6, 0.5]})
    b = pd.DataFrame({"step": [0, 2, 4], "loss": [1.2, 0.7, 0.4]})  # every other step
    c = pd.DataFrame({"step": [1, 3], "loss": [0.9, np.inf]})

    out = average_timelines([a, b, c])

    assert list(out.columns[:2]) == ["step", "n"]
    assert "t" not in out
    assert out["step"].tolist() == [0, 1, 2, 3, 4]
    assert out["step"].dtype == np.int64
    assert out["n"].tolist() == [2, 2, 2, 2, 1]
    # Exactly the instances that recorded each step: no interpolation in b's gaps.
    assert out["loss"].tolist() == pytest.approx([1.1, 0.85, 0.65, 0.5, 0.4])
    assert out["loss_std"].iat[0] == pytest.approx(statistics.stdev([1.0, 1.2]))
    assert out["loss_nonfinite"].tolist() == [0, 0, 0, 1, 0]
    assert math.isnan(out["loss_std"].iat[3])  # one finite value there


def test_step_averaging_matches_a_pandas_groupby_on_random_instances() -> None:
    rng = np.random.default_rng(21)
    frames = []
    for _ in range(7):
        steps = np.sort(rng.choice(200, size=rng.integers(5, 150), replace=False))
        loss = rng.normal(1.0, 0.2, steps.size)
        loss[rng.random(steps.size) < 0.1] = np.nan  # some steps lack the metric
        frames.append(pd.DataFrame({"step": steps, "loss": loss}))

    out = average_timelines(frames).set_index("step")

    # The specification: stack every row, group by step, reduce.
    rows = pd.concat(frames)
    grouped = rows.groupby("step")["loss"]
    assert out["n"].tolist() == rows.groupby("step").size().tolist()
    np.testing.assert_allclose(out["loss"], grouped.mean(), rtol=1e-12)
    np.testing.assert_allclose(out["loss_std"], grouped.std(ddof=1), rtol=1e-9)
    np.testing.assert_allclose(out["loss_min"], grouped.min())
    np.testing.assert_allclose(out["loss_max"], grouped.max())


def test_step_timelines_with_seconds_and_resource_rows_align_on_step() -> None:
    nan = np.nan
    # An instance's timeline as an experiment records it: t on every row, a step on
    # the rows the function recorded, the sampler's cpu rows in between.
    a = frame([0.0, 0.5, 1.0, 1.5], step=[0, nan, 1, nan], loss=[1.0, nan, 0.5, nan],
              cpu=[nan, 40.0, nan, 60.0])  # fmt: skip
    b = frame([0.0, 2.0], step=[0, 1], loss=[2.0, 1.5], cpu=[nan, nan])

    out = average_timelines([a, b])
    by_time = average_timelines([a, b], on="t", step=0.5)

    assert out["step"].tolist() == [0, 1]
    assert out["loss"].tolist() == [1.5, 1.0]
    assert out["cpu"].isna().all()  # the sampler's rows have no step
    assert "t" not in out
    assert "step" in by_time and "t" in by_time  # on="t": step is a metric like any other


def test_step_mode_repeated_steps_keep_the_last_row_and_fractional_steps_stay_float() -> None:
    a = pd.DataFrame({"step": [0.0, 0.5, 0.5], "v": [1.0, 2.0, 3.0]})
    b = pd.DataFrame({"step": [0.5], "v": [5.0]})

    out = average_timelines([a, b])

    assert out["step"].tolist() == [0.0, 0.5]
    assert out["step"].dtype == np.float64
    assert out["v"].tolist() == [1.0, 4.0]
    assert out["n"].tolist() == [1, 2]


@pytest.mark.parametrize(
    ("options", "option"),
    [({"on": "seconds"}, "on"), ({"on": "step", "step": 1.0}, "step")],
)
def test_step_mode_options_are_checked(options: dict, option: str) -> None:
    with pytest.raises(ConfigError) as caught:
        average_timelines([pd.DataFrame({"step": [0, 1], "v": [1.0, 2.0]})], **options)
    assert caught.value.option == option


def test_on_step_needs_a_step_column() -> None:
    with pytest.raises(ConfigError, match="'step' column"):
        average_timelines([frame([0.0], v=[1.0])], on="step")


def test_outliers_of_step_timelines_compare_instances_at_equal_steps() -> None:
    rng = np.random.default_rng(3)
    frames = [
        pd.DataFrame(
            {"step": np.arange(20), "loss": 1.0 / (1 + np.arange(20)) + rng.normal(0, 0.01, 20)}
        )
        for _ in range(5)
    ]
    frames[2]["loss"] += 0.5
    frames[4] = frames[4].iloc[::2]  # records every other step: no interpolation needed

    found = detect_outliers(frames)

    assert [(o.instance, o.metric) for o in found] == [(2, "loss")]  # "step" is no metric
    with pytest.raises(ConfigError) as caught:
        detect_outliers(frames, step=1.0)
    assert caught.value.option == "step"


@pytest.mark.parametrize("option", ["block_points", "block_rows"])
def test_block_sizes_must_be_positive_integers(option: str) -> None:
    with pytest.raises(ConfigError) as caught:
        average([frame([0.0, 1.0], v=[1.0, 2.0])], **{option: 0})
    assert caught.value.option == option


# --------------------------------------------------------------------------------------
# Streaming statistics: init / update / merge / finalize
# --------------------------------------------------------------------------------------


def finalized(state: moments.Moments, n: np.ndarray) -> list[np.ndarray]:
    out = [np.empty(state.size) for _ in range(5)]
    moments.finalize(state, n, out, moments.HalfWidthTable(64), Scratch(), round_mean=False)
    return out


def test_merging_two_partial_states_equals_folding_everything_into_one() -> None:
    rng = np.random.default_rng(5)
    size = 50
    rows = rng.normal(1e6, 1.0, (9, size))  # a large offset: the shifts must re-centre
    scratch = Scratch()
    whole = moments.init(size, own_count=True)
    moments.reset(whole, size)
    moments.update_rows(whole, rows, scratch)
    first, second = moments.init(size, own_count=True), moments.init(size, own_count=True)
    moments.reset(first, size)
    moments.reset(second, size)
    moments.update_rows(first, rows[:4], scratch)
    moments.update(second, 10, rows[4, 10:], scratch)  # second has no value at 0..9 from 4
    moments.update_rows(second, rows[5:], scratch)
    moments.update(first, 0, rows[4, :10], scratch)

    moments.merge(first, second)

    n = np.full(size, 9)
    for merged, expected in zip(finalized(first, n), finalized(whole, n), strict=True):
        np.testing.assert_allclose(merged, expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(finalized(first, n)[1], rows.std(axis=0, ddof=1), rtol=1e-6)


@SETTINGS
@given(
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2 * 6, max_size=8 * 6),
    split=st.integers(1, 7),
    starts=st.lists(st.integers(0, 5), min_size=8, max_size=8),
)
def test_property_any_split_of_instances_merges_to_the_same_statistics(
    values: list[float], split: int, starts: list[int]
) -> None:
    size = 6
    rows = np.array(values[: len(values) // size * size]).reshape(-1, size)
    split = min(split, len(rows) - 1)
    scratch = Scratch()
    states = [moments.init(size, own_count=True) for _ in range(3)]
    for state in states:
        moments.reset(state, size)
    for index, row in enumerate(rows):
        start = starts[index]  # each instance covers points start..size-1
        moments.update(states[0], start, row[start:], scratch)
        moments.update(states[1 if index < split else 2], start, row[start:], scratch)
    moments.merge(states[1], states[2])

    counts = states[0].count
    assert counts is not None
    merged, whole = finalized(states[1], counts), finalized(states[0], counts)
    for ours, expected in zip(merged, whole, strict=True):
        np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-6)
    assert states[1].count is not None
    assert states[1].count.tolist() == counts.tolist()


def test_merge_into_an_empty_state_takes_the_other_as_it_is() -> None:
    scratch = Scratch()
    empty, full = moments.init(4, own_count=True), moments.init(4, own_count=True)
    moments.reset(empty, 4)
    moments.reset(full, 4)
    moments.update_rows(full, np.array([[1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0]]), scratch)

    moments.merge(empty, full)

    mean, std, low, high, _ = finalized(empty, np.full(4, 2))
    assert mean.tolist() == [2.0, 3.0, 4.0, 5.0]
    assert std.tolist() == pytest.approx([math.sqrt(2)] * 4)
    assert (low.tolist(), high.tolist()) == ([1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0])
    with pytest.raises(ValueError, match="own count"):
        moments.merge(moments.init(4, own_count=False), full)


def test_a_recorded_step_is_an_axis_not_a_summary_figure() -> None:
    from labkit.timeline import summarize_timeline

    timeline = pd.DataFrame({"t": [0.0, 1.0, 2.0], "step": [0, 1, 2], "loss": [3.0, 2.0, 1.0]})
    assert summarize_timeline(timeline) == {"loss_last": 1.0}


# --------------------------------------------------------------------------------------
# Extreme magnitudes: exact references with fractions.Fraction
# --------------------------------------------------------------------------------------


def exact_mean_std(values: list[float]) -> tuple[Fraction, Decimal]:
    """The exact mean (a Fraction) and the standard deviation (ddof=1) to 40 digits."""
    exact = [Fraction(value) for value in values]
    mean = sum(exact, Fraction(0)) / len(exact)
    variance = sum(((x - mean) ** 2 for x in exact), Fraction(0)) / (len(exact) - 1)
    with localcontext() as context:
        context.prec = 40
        std = (Decimal(variance.numerator) / Decimal(variance.denominator)).sqrt()
    return mean, std


def relative_error(ours: float, exact: Fraction | Decimal) -> float:
    reference = Fraction(exact)
    if reference == 0:
        return 0.0 if ours == 0.0 else math.inf
    return float(abs(Fraction(ours) - reference) / abs(reference))


def extreme_values(rng: np.random.Generator, kind: str, shape: tuple[int, int]) -> np.ndarray:
    """Values from 1e-300 to 1e300: one magnitude per grid point, or one per value
    (with random signs)."""
    _, points = shape
    if kind == "per point":
        return 10.0 ** rng.uniform(-300, 300, points) * rng.lognormal(0.0, 1.0, shape)
    signs = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return signs * 10.0 ** rng.uniform(-300, 300, shape)


@pytest.mark.parametrize("kind", ["per point", "per value"])
def test_averages_at_any_magnitude_are_correctly_rounded(kind: str) -> None:
    # 7 instances, 1,500 grid points each a case; instances start at different points
    # (counts differ: both paths of the statistics), blocks of 256 points.
    rng = np.random.default_rng(27 if kind == "per point" else 28)
    values = extreme_values(rng, kind, (7, 1500))
    starts = [0, 0, 1, 2, 0, 2, 1]
    frames = [
        frame(np.arange(start, 1500), v=values[row, start:]) for row, start in enumerate(starts)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        averaged = average(frames, step=1.0, block_points=256)

    worst_mean = worst_std = 0.0
    for k in range(1500):
        mean, std = exact_mean_std([values[row, k] for row, s in enumerate(starts) if s <= k])
        worst_mean = max(worst_mean, relative_error(averaged["v"].iat[k], mean))
        worst_std = max(worst_std, relative_error(averaged["v_std"].iat[k], std))
    assert worst_mean <= 1e-12 and worst_std <= 1e-12, (worst_mean, worst_std)


def test_averages_at_the_ends_of_the_float_range() -> None:
    def averaged(*values: float, on: str = "t") -> pd.DataFrame:
        frames = [pd.DataFrame({on: [0.0, 1.0], "v": [value, value]}) for value in values]
        return average_timelines(frames, **({"step": 1.0} if on == "t" else {}))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for on in ("t", "step"):
            assert averaged(1.7e308, -1.7e308, on=on)["v"].tolist() == [0.0, 0.0]
            huge = averaged(1e155, 3e155, 5e155, on=on)["v_std"]
            assert huge.tolist() == pytest.approx([2e155, 2e155], rel=1e-12)
            tiny = averaged(1e-300, 3e-300, 5e-300, on=on)
            assert tiny["v_std"].tolist() == pytest.approx([2e-300] * 2, rel=1e-12)  # not 0
            assert tiny["v"].tolist() == pytest.approx([3e-300, 3e-300], rel=1e-12)
            # Identical instances still give exactly zero spread, at any magnitude.
            for value in (1.7e308, -1e200, 1e-300, 5e-324):
                same = averaged(value, value, value, on=on)
                assert same["v_std"].tolist() == [0.0, 0.0]
                assert same["v"].tolist() == [value, value]
            # A spread past the largest float is inf (its true value), never NaN.
            assert averaged(1.7e308, -1.7e308, on=on)["v_std"].tolist() == [math.inf] * 2


def test_interpolating_between_opposite_extremes_stays_between_them() -> None:
    wild = frame([0.0, 0.55, 1.1], v=[1.7e308, -1.7e308, 1.7e308])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        averaged = average_timelines([wild, wild], step=0.25)
    values = averaged["v"].to_numpy()
    assert np.isfinite(values).all()
    assert (np.abs(values) <= 1.7e308).all()
    # At 0.25 s: 1.7e308 + (0.25 / 0.55) (-3.4e308), taken as a (1 - w) + b w.
    assert values[1] == pytest.approx(1.7e308 * (1 - 2 * 0.25 / 0.55), rel=1e-12)
    assert averaged["v_std"].tolist() == [0.0] * len(averaged)


def test_averaged_summaries_at_the_ends_of_the_float_range() -> None:
    summary = average_summaries([{"peak": 1.7e308}, {"peak": 1.7e308}, {"peak": 1.6e308}])
    assert summary["peak"] == pytest.approx(1.7e308 / 3 * 2 + 1.6e308 / 3, rel=1e-12)
    assert average_summaries([{"x": 1e-320}, {"x": 3e-320}])["x"] == 2e-320


def test_a_spike_left_out_in_a_gap_costs_no_precision_to_the_others() -> None:
    # Instance 0 jumps to 7e5 just before a gap longer than max_gap: the points in
    # the gap leave its (interpolated, huge) values out. The others' spread there
    # must not depend on where the data sit: shifting them keeps it to 1e-9.
    spike_t = [0.0, 1.516461, 2.466201, 3.343374, 4.192244, 4.797467, 6.297467, 7.653093]
    spike_t += [8.685369, 10.400742, 12.216251, 13.891054, 15.07481, 16.441994, 17.374337]
    spiky = pd.DataFrame({"t": spike_t, "cpu": 0.0})
    spiky.loc[6, "cpu"] = 7.028647e5
    flat = pd.DataFrame(
        {"t": [*np.linspace(1.99327, 2.16327, 9), 3.645872, *np.linspace(4.899186, 4.999186, 11)],
         "cpu": 0.0}
    )  # fmt: skip
    bumpy = pd.DataFrame(
        {"t": [4.287529, 5.043683, 5.515898, 5.771335, 6.673299, 7.044679],
         "cpu": [0.0, 0.0, 0.006234, 0.0, 0.0, 0.0]}
    )  # fmt: skip
    frames = [spiky, flat, bumpy]
    shift = 61203.385684678564
    before = average_timelines(frames, max_gap=0.5)
    after = average_timelines([f.assign(cpu=f["cpu"] + shift) for f in frames], max_gap=0.5)
    spread = before["cpu_std"].to_numpy()
    assert np.nanmax(spread) > 0  # the bump has a spread somewhere
    np.testing.assert_allclose(after["cpu_std"], spread, rtol=0, atol=1e-9 * (1 + shift))
