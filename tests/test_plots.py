"""Charts: instances against the average, bands, failures, outliers, decimation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from labkit.errors import ConfigError
from labkit.plots import band_bounds, decimate_indices, metric_names, timeline_figure
from labkit.results import ExperimentResult, InstanceResult
from labkit.timeline import average_timelines


def _timelines(count: int = 3, samples: int = 20) -> list[pd.DataFrame]:
    t = np.arange(samples, dtype=float) * 0.5
    return [
        pd.DataFrame({"t": t, "cpu": 10.0 * i + t, "memory": 100.0 + i + 0.0 * t})
        for i in range(count)
    ]


def _average(timelines: list[pd.DataFrame]) -> pd.DataFrame:
    """A hand-made averaged timeline, so these tests do not depend on timeline.py."""
    averaged = pd.DataFrame({"t": timelines[0]["t"], "n": len(timelines)})
    for metric in ("cpu", "memory"):
        stack = np.stack([frame[metric].to_numpy() for frame in timelines])
        averaged[metric] = stack.mean(axis=0)
        averaged[f"{metric}_std"] = stack.std(axis=0)
        averaged[f"{metric}_min"] = stack.min(axis=0)
        averaged[f"{metric}_max"] = stack.max(axis=0)
        averaged[f"{metric}_ci95"] = 2 * stack.std(axis=0)
    return averaged


def _result(timelines: list[pd.DataFrame], failed: int | None = None) -> ExperimentResult:
    instances = [
        InstanceResult(index=i, ok=True, error=None, timeline=frame)
        for i, frame in enumerate(timelines)
    ]
    if failed is not None:
        instances.append(InstanceResult(index=failed, ok=False, error="RuntimeError: boom"))
    return ExperimentResult(
        name="demo",
        params={},
        instances=tuple(instances),
        averaged=_average(timelines),
        summary={},
        outliers={"cpu_peak": [2]},
        config={},
    )


def _traces(fig: go.Figure, name: str) -> list[go.Scatter]:
    return [trace for trace in fig.data if trace.name == name]


def test_one_subplot_per_metric_sharing_time_axis() -> None:
    timelines = _timelines()
    fig = timeline_figure(timelines, averaged=_average(timelines))

    averages = _traces(fig, "average")
    assert [trace.yaxis for trace in averages] == ["y", "y2"]
    assert fig.layout.xaxis.matches == "x2" or fig.layout.xaxis2.matches == "x"
    assert [a.text for a in fig.layout.annotations] == ["cpu", "memory"]


def test_instances_thin_translucent_grouped_and_average_thick() -> None:
    timelines = _timelines()
    fig = timeline_figure(timelines, averaged=_average(timelines), band=None, outliers=[])

    instance_traces = [t for t in fig.data if t.name.startswith("instance")]
    assert len(instance_traces) == 3 * 2  # three instances, two metrics
    average = _traces(fig, "average")[0]
    for trace in instance_traces:
        assert trace.opacity < 1
        assert trace.line.width < average.line.width
    # One legend entry per instance; clicking it toggles the instance in every subplot.
    groups = {t.legendgroup for t in instance_traces}
    assert groups == {"instance-0", "instance-1", "instance-2"}
    assert sum(bool(t.showlegend) for t in instance_traces) == 3
    assert "instance 1" in _traces(fig, "instance 1")[0].hovertemplate
    np.testing.assert_allclose(average.y, _average(timelines)["cpu"])


def test_show_instances_false_draws_only_the_average() -> None:
    timelines = _timelines()
    fig = timeline_figure(timelines, averaged=_average(timelines), show_instances=False)

    assert not [t for t in fig.data if t.name.startswith("instance")]
    assert len(_traces(fig, "average")) == 2


@pytest.mark.parametrize(
    ("band", "lower", "upper"),
    [
        ("std", lambda a: a["cpu"] - a["cpu_std"], lambda a: a["cpu"] + a["cpu_std"]),
        ("minmax", lambda a: a["cpu_min"], lambda a: a["cpu_max"]),
        ("ci95", lambda a: a["cpu"] - a["cpu_ci95"], lambda a: a["cpu"] + a["cpu_ci95"]),
    ],
)
def test_band_filled_around_the_average(band, lower, upper) -> None:  # type: ignore[no-untyped-def]
    timelines = _timelines()
    averaged = _average(timelines)
    fig = timeline_figure(timelines, metrics="cpu", averaged=averaged, band=band)

    names = [t.name for t in fig.data]
    outline = fig.data[names.index(f"band ({band})")]
    assert outline.fill == "toself"  # one closed shape: up the upper edge, back the lower
    assert names.index(f"band ({band})") + 1 == names.index("average")  # the line on top
    size = len(averaged)
    np.testing.assert_allclose(outline.y[:size], upper(averaged))
    np.testing.assert_allclose(outline.y[size:], lower(averaged)[::-1])
    np.testing.assert_allclose(outline.x, np.concatenate([averaged["t"], averaged["t"][::-1]]))


def test_a_gap_in_the_average_is_a_break_in_line_and_band_never_a_bridge() -> None:
    gap = pd.DataFrame({"t": [0.0, 1.0, 2.0, 3.0, 7.0, 8.0, 9.0], "cpu": [1.0] * 7})
    timelines = [gap, gap.assign(cpu=3.0)]
    averaged = average_timelines(timelines)

    fig = timeline_figure(timelines, averaged=averaged, band="std", max_points=8)

    line = _traces(fig, "average")[0]
    at = {float(x): y for x, y in zip(line.x, line.y, strict=True)}
    assert math.isnan(at[4.0]) and at[3.0] == 2.0 and at[7.0] == 2.0  # kept despite decimation
    assert line.connectgaps is False
    assert dict(zip(line.x, line.customdata, strict=True))[4.0] == 0  # cpu_n, not n
    outline = _traces(fig, "band (std)")[0]
    y = np.asarray(outline.y, dtype=float)
    assert np.isnan(y).sum() == 1  # two closed shapes, one each side of the gap
    x = np.asarray(outline.x, dtype=float)
    first, second = x[: np.flatnonzero(np.isnan(x))[0]], x[np.flatnonzero(np.isnan(x))[0] + 1 :]
    assert first.max() == 3.0 and second.min() == 7.0  # neither shape spans the gap
    instance = _traces(fig, "instance 0")[0]
    broken = np.isnan(np.asarray(instance.y, dtype=float))
    assert broken.sum() == 1  # the instance's own line breaks at its silence too
    assert np.asarray(instance.x, dtype=float)[np.flatnonzero(broken)[0] - 1] == 3.0


def test_an_instance_line_breaks_where_the_result_was_told_its_gaps_are() -> None:
    t = np.array([0.0, 1.0, 2.0, 3.0, 7.0, 8.0, 9.0])
    frame = pd.DataFrame({"t": t, "cpu": 1.0, "memory": 2.0})
    bridged = _result([frame, frame])
    bridged.config["max_gap"] = "inf"  # as a stored run writes math.inf

    assert not np.isnan(np.asarray(_traces(timeline_figure(bridged), "instance 0")[0].y)).any()
    own = timeline_figure(_result([frame, frame]))
    assert np.isnan(np.asarray(_traces(own, "instance 0")[0].y, dtype=float)).sum() == 1
    wide = timeline_figure(_result([frame, frame]), max_gap={"cpu": 5.0})
    assert not np.isnan(np.asarray(_traces(wide, "instance 0")[0].y, dtype=float)).any()


def test_no_band() -> None:
    timelines = _timelines()
    fig = timeline_figure(timelines, averaged=_average(timelines), band=None)
    assert not [t for t in fig.data if t.fill]


def test_experiment_result_failed_left_out_and_named_outliers_highlighted() -> None:
    fig = timeline_figure(_result(_timelines(), failed=3), metrics=["cpu"])

    names = [t.name for t in fig.data]
    assert not [n for n in names if n.startswith("instance 3")]
    assert "instance 3" in fig.layout.title.text
    assert "RuntimeError: boom" in fig.layout.title.text
    assert "demo" in fig.layout.title.text
    outlier = _traces(fig, "instance 2 (outlier: cpu_peak)")[0]
    normal = _traces(fig, "instance 1")[0]
    assert outlier.line.color != normal.line.color
    assert outlier.opacity > normal.opacity


def test_unknown_band_or_metric_raises_config_error() -> None:
    timelines = _timelines()
    with pytest.raises(ConfigError, match="band"):
        timeline_figure(timelines, averaged=_average(timelines), band="iqr")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="gpu"):
        timeline_figure(timelines, averaged=_average(timelines), metrics=["gpu"])
    with pytest.raises(ConfigError, match="averaged"):
        timeline_figure(timelines)
    averaged = _average(timelines).drop(columns=["cpu_ci95"])
    with pytest.raises(ConfigError, match="cpu_ci95"):
        band_bounds(averaged, "cpu", "ci95")


def test_metric_names_skip_time_count_and_statistics() -> None:
    assert metric_names(_average(_timelines())) == ["cpu", "memory"]
    assert metric_names(pd.DataFrame({"t": [0.0], "errors": [1], "net_max": [2]})) == [
        "errors",
        "net_max",
    ]


def test_decimation_bounds_length_and_keeps_extremes() -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(size=1_000_000)
    values[123_457] = 50.0
    values[876_543] = -50.0
    values[500_000] = np.nan

    keep = decimate_indices(values, 2000)

    assert len(keep) <= 2000
    assert keep[0] == 0 and keep[-1] == len(values) - 1
    assert np.all(np.diff(keep) > 0)
    assert {123_457, 876_543} <= set(keep.tolist())
    # Every bucket's extremes survive: the decimated range equals the full range.
    assert np.nanmax(values[keep]) == np.nanmax(values)
    assert np.nanmin(values[keep]) == np.nanmin(values)


def test_short_series_kept_whole() -> None:
    np.testing.assert_array_equal(decimate_indices(np.arange(10.0), 2000), np.arange(10))
    with pytest.raises(ConfigError, match="max_points"):
        decimate_indices(np.arange(10.0), 3)


def test_million_sample_result_renders_bounded() -> None:
    n = 1_000_000
    t = np.arange(n) * 0.001
    rng = np.random.default_rng(1)
    timelines = [pd.DataFrame({"t": t, "cpu": rng.random(n)}) for _ in range(2)]
    timelines[1].loc[654_321, "cpu"] = 9.0
    averaged = pd.DataFrame(
        {
            "t": t,
            "n": 2,
            "cpu": (timelines[0]["cpu"] + timelines[1]["cpu"]) / 2,
            "cpu_std": 0.1,
            "cpu_ci95": 0.2,
        }
    )

    fig = timeline_figure(timelines, averaged=averaged)

    assert all(len(trace.x) <= 2000 for trace in fig.data)
    peak = _traces(fig, "instance 1")[0]
    assert max(peak.y) == 9.0
    assert 654.321 in np.round(np.asarray(peak.x), 6)


def test_outlier_records_from_detect_outliers_are_highlighted() -> None:
    from labkit.timeline import detect_outliers

    timelines = _timelines(count=5)
    timelines[4]["cpu"] += 500.0
    averaged = _average(timelines)
    found = detect_outliers(timelines, metrics=["cpu"])

    fig = timeline_figure(timelines, averaged=averaged, metrics="cpu", outliers=found)

    assert [t.name for t in fig.data if "outlier" in t.name] == ["instance 4 (outlier: cpu)"]


def test_instance_lines_skip_rows_where_the_metric_was_not_sampled() -> None:
    nan = float("nan")
    # The sampler's cpu rows and the function's own loss rows interleave.
    frame = pd.DataFrame(
        {"t": [0.0, 0.5, 1.0, 1.5, 2.0], "cpu": [10.0, nan, 20.0, nan, 30.0],
         "loss": [nan, 1.0, nan, 0.5, nan]}
    )  # fmt: skip
    averaged = average_timelines([frame, frame])
    fig = timeline_figure([frame, frame], averaged=averaged, band=None)
    cpu = [tr for tr in fig.data if tr.name == "instance 0" and tr.yaxis in ("y", None)]
    # No break at the loss rows: the cpu samples joined, as averaging put them on its grid.
    assert cpu and list(cpu[0].x) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert list(cpu[0].y) == [10.0, 15.0, 20.0, 25.0, 30.0]


def test_axis_titles_carry_units_and_step_indexed_timelines_go_by_step() -> None:
    timelines = _timelines()
    fig = timeline_figure(timelines, averaged=_average(timelines))
    assert fig.layout.yaxis.title.text == "cpu (%)"
    assert fig.layout.yaxis2.title.text == "memory (MB)"
    assert fig.layout.xaxis2.title.text == "time (s)"

    nan = float("nan")
    stepped = [
        pd.DataFrame({"t": [0.0, 0.4, 1.0, 2.0], "step": [0.0, nan, 1.0, 2.0],
                      "loss": [3.0, nan, 2.0, 1.0 + i]})
        for i in range(2)
    ]  # fmt: skip
    averaged = average_timelines(stepped)
    assert "step" in averaged.columns and "t" not in averaged.columns
    fig = timeline_figure(stepped, averaged=averaged, band=None)
    assert fig.layout.xaxis.title.text == "step" and fig.layout.yaxis.title.text == "loss"
    line = _traces(fig, "instance 1")[0]
    assert list(line.x) == [0.0, 1.0, 2.0] and list(line.y) == [3.0, 2.0, 2.0]
    assert "step=%{x:.0f}" in line.hovertemplate
    np.testing.assert_allclose(_traces(fig, "average")[0].y, [3.0, 2.0, 1.5])


def test_many_instances_share_one_faint_trace_and_legend_entry() -> None:
    timelines = _timelines(count=12)
    fig = timeline_figure(timelines, averaged=_average(timelines), metrics="cpu", outliers=[5])

    names = [trace.name for trace in fig.data]
    assert names == ["instances (11)", "instance 5 (outlier)", "band (ci95)", "average"]
    many = fig.data[0]
    assert 0.25 <= many.opacity < 0.7
    assert sorted(set(np.asarray(many.customdata).tolist())) == [i for i in range(12) if i != 5]
    assert sum(bool(trace.showlegend) for trace in fig.data) == 4


def _jittered(count: int, samples: int, seed: int) -> list[pd.DataFrame]:
    """Timelines sampled every 0.2 to 0.3 s, off the averaging grid, as a real sampler."""
    rng = np.random.default_rng(seed)
    timelines = []
    for i in range(count):
        t = np.cumsum(rng.uniform(0.2, 0.3, size=samples))
        cpu = 60 + 20 * np.sin(t / 2) + rng.normal(0, 3, size=samples) + (25.0 if i == 4 else 0)
        errors = rng.poisson(0.3, size=samples).astype(float)
        timelines.append(pd.DataFrame({"t": t, "cpu": cpu, "errors": errors}))
    return timelines


def _band_at(outline: go.Scatter, x: float) -> tuple[float, float] | None:
    """The band's (lower, upper) edge at ``x``: the outline runs up the upper edge and
    back along the lower one, one closed shape per run between NaNs."""
    xs, ys = np.asarray(outline.x, dtype=float), np.asarray(outline.y, dtype=float)
    for run in np.split(np.arange(xs.size), np.flatnonzero(np.isnan(xs))):
        run = run[np.isfinite(xs[run])]
        half = run.size // 2
        upper, lower = run[:half], run[half:][::-1]
        if xs[upper][0] <= x <= xs[upper][-1]:
            return (
                float(np.interp(x, xs[lower], ys[lower])),
                float(np.interp(x, xs[upper], ys[upper])),
            )
    return None


def _points_outside_band(fig: go.Figure) -> list[tuple[str, float, float]]:
    """Every instance line point not inside the min-max band of its subplot at its x."""
    outside = []
    bands = {trace.yaxis: trace for trace in fig.data if trace.name == "band (minmax)"}
    for trace in fig.data:
        if not trace.name.startswith("instance"):
            continue
        for x, y in zip(trace.x, trace.y, strict=True):
            if not np.isfinite(y):
                continue
            edges = _band_at(bands[trace.yaxis], float(x))
            if edges is None or not edges[0] - 1e-9 <= y <= edges[1] + 1e-9:
                outside.append((trace.name, float(x), float(y)))
    return outside


def test_every_instance_line_point_lies_inside_the_minmax_band() -> None:
    # Jittered sample times, as tutorial 02's: the band is the range of the values on
    # the averaging grid, so lines through the raw samples between grid points used
    # to poke out of it (23.5 % where the band stopped at 22).
    timelines = _jittered(count=5, samples=40, seed=42)
    averaged = average_timelines(timelines, round_to_int=["errors"])

    fig = timeline_figure(timelines, averaged=averaged, band="minmax")

    assert {trace.yaxis for trace in fig.data if trace.name.startswith("instance")} == {"y", "y2"}
    assert _points_outside_band(fig) == []


def test_a_decimated_band_still_holds_every_decimated_line() -> None:
    timelines = _jittered(count=3, samples=6_000, seed=3)
    timelines[1].loc[4_321, "cpu"] = 400.0  # a spike only one instance has
    result = ExperimentResult.build("spiky", {}, [
        InstanceResult(index=i, ok=True, error=None, timeline=frame)
        for i, frame in enumerate(timelines)
    ], {})  # fmt: skip

    fig = timeline_figure(result, metrics="cpu", band="minmax", max_points=400)

    assert all(len(trace.x) <= 400 for trace in fig.data)
    band = _traces(fig, "band (minmax)")[0]
    assert np.nanmax(np.asarray(band.y, dtype=float)) == result.averaged["cpu_max"].max()
    assert _points_outside_band(fig) == []


def test_the_average_is_the_mean_of_the_instance_lines_drawn() -> None:
    timelines = _jittered(count=4, samples=30, seed=5)
    averaged = average_timelines(timelines)

    fig = timeline_figure(timelines, averaged=averaged, metrics="cpu", band=None)

    lines = [_traces(fig, f"instance {i}")[0] for i in range(4)]
    at = [dict(zip(np.round(line.x, 9), line.y, strict=True)) for line in lines]
    average = _traces(fig, "average")[0]
    for x, mean, n in zip(average.x, average.y, average.customdata, strict=True):
        values = [points[round(x, 9)] for points in at if round(x, 9) in points]
        assert len(values) == n
        assert mean == pytest.approx(np.mean(values), rel=1e-12)


def test_the_live_charts_final_lines_lie_inside_its_minmax_band() -> None:
    from labkit.events import InstanceEvent
    from labkit.widgets.live import LiveTimeline

    timelines = _jittered(count=5, samples=40, seed=42)
    chart = LiveTimeline(band="minmax")
    for index, frame in enumerate(timelines):
        for t, cpu in zip(frame["t"], frame["cpu"], strict=True):
            chart.handle(InstanceEvent("sample", index, t, t, metrics={"cpu": cpu}))
    chart.flush()
    result = ExperimentResult.build(
        "live",
        {},
        [
            InstanceResult(index=i, ok=True, error=None, timeline=frame[["t", "cpu"]])
            for i, frame in enumerate(timelines)
        ],
        {},
    )

    chart.show_result(result)

    names = [trace.name for trace in chart.figure.data]
    assert names[:5] == [f"instance {i}" for i in range(4)] + ["instance 4 (outlier: cpu)"]
    assert _points_outside_band(chart.figure) == []
    chart.close()
