"""How charts read: metric units and display names, the palette, the legend, the layout."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import labkit as lk
from labkit.errors import ConfigError
from labkit.plots import (
    AVERAGE_COLOR,
    INSTANCE_COLORS,
    OUTLIER_COLOR,
    MetricLabels,
    timeline_figure,
)
from labkit.timeline import average_timelines
from labkit.widgets.live import LiveTimeline


def _linear(hex_color: str) -> np.ndarray:
    rgb = np.array([int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def _contrast(a: str, b: str) -> float:
    """WCAG 2 contrast ratio of two opaque colours."""
    weights = np.array([0.2126, 0.7152, 0.0722])
    high, low = sorted((float(_linear(a) @ weights), float(_linear(b) @ weights)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def _lab(hex_color: str) -> np.ndarray:
    """CIE L*a*b* (D65) of an sRGB colour."""
    matrix = np.array(
        [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
    )
    xyz = matrix @ _linear(hex_color) / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _timelines(count: int = 3) -> list[pd.DataFrame]:
    t = np.arange(10, dtype=float)
    return [
        pd.DataFrame({"t": t, "latency_ms": 5.0 + i + t, "cpu": 10.0 * i + t}) for i in range(count)
    ]


def test_instance_colours_are_told_apart_and_read_on_the_charts_own_background() -> None:
    fig = timeline_figure(_timelines(), averaged=average_timelines(_timelines()))
    paper, plot = fig.layout.paper_bgcolor, fig.layout.plot_bgcolor
    # The chart carries its own background: a dark notebook theme shows it as a card
    # whose text keeps its contrast (WCAG AA for text: 4.5:1).
    assert paper and plot
    assert _contrast(fig.layout.font.color, paper) >= 4.5
    colours = (*INSTANCE_COLORS, OUTLIER_COLOR, AVERAGE_COLOR)
    for colour in INSTANCE_COLORS:
        assert _contrast(colour, plot) >= 3.0, colour  # WCAG's figure for graphics
    # Every pair of hues clearly apart (CIE76 distance; about 2.3 is just noticeable).
    closest = min(
        (float(np.linalg.norm(_lab(a) - _lab(b))), a, b)
        for a, b in itertools.combinations(colours, 2)
    )
    assert closest[0] >= 25.0, closest
    drawn = {trace.line.color for trace in fig.data if trace.name.startswith("instance")}
    assert len(drawn) == 3


def test_the_legend_keeps_average_and_band_first_and_the_chart_takes_the_cells_width() -> None:
    timelines = _timelines(count=8)
    fig = timeline_figure(timelines, averaged=average_timelines(timelines), outliers=[3])

    ranked = sorted(
        (trace for trace in fig.data if trace.showlegend),
        key=lambda trace: trace.legendrank if trace.legendrank is not None else 1000,
    )
    assert [trace.name for trace in ranked[:2]] == ["average", "band (ci95)"]
    assert len(ranked) == 10  # eight instances (one an outlier), average, band
    # Under the time axis, in rows that wrap: no scrolling legend that hides entries.
    legend = fig.layout.legend
    assert legend.orientation == "h" and legend.y < 0 and legend.yanchor == "top"
    assert fig.layout.autosize is True and fig.layout.width is None


def test_units_and_display_names_on_axes_titles_and_hover() -> None:
    timelines = _timelines()
    fig = timeline_figure(
        timelines,
        averaged=average_timelines(timelines),
        units={"latency_ms": "ms"},
        display_names={"latency_ms": "latency"},
    )

    assert [a.text for a in fig.layout.annotations] == ["latency", "cpu"]
    assert fig.layout.yaxis.title.text == "latency (ms)"
    assert fig.layout.yaxis2.title.text == "cpu (%)"  # the sampler's own unit
    for trace in fig.data:
        if trace.hovertemplate:
            unit = " ms" if trace.yaxis == "y" else " %"
            name = "latency" if trace.yaxis == "y" else "cpu"
            assert f"{name}=%{{y:.4g}}{unit}" in trace.hovertemplate


def test_labels_name_the_bad_option() -> None:
    with pytest.raises(ConfigError, match="units"):
        MetricLabels.of(units={"latency_ms": 3})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="display_names"):
        timeline_figure(_timelines(), averaged=average_timelines(_timelines()), display_names=["x"])  # type: ignore[arg-type]
    assert MetricLabels.of({"units": {"loss": "nats"}}).figure_unit("loss_last") == "nats"
    assert MetricLabels().figure_unit("cpu_peak") == "%"
    assert MetricLabels().figure_unit("error_count") == ""


async def _wait(ctx: lk.InstanceContext) -> None:
    for step in range(3):
        ctx.record(latency_ms=10.0 + step + ctx.index)


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("units", {"latency_ms": ""}, r"units\['latency_ms'\]"),
        ("units", "ms", "units"),
        ("display_names", {"t": "time"}, "display_names"),
        ("display_names", {"loss": 3}, r"display_names\['loss'\]"),
    ],
)
def test_experiment_refuses_bad_units_and_names(option: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        lk.Experiment("x", _wait, **{option: value})  # type: ignore[arg-type]


async def test_a_stored_run_keeps_its_units_and_names_for_its_charts(tmp_path: Path) -> None:
    experiment = lk.Experiment(
        "latency", _wait, units={"latency_ms": "ms"}, display_names={"latency_ms": "latency"}
    )
    with lk.Store(tmp_path / "runs.db") as store:
        result = await lk.run_experiment(experiment, instances=2, store=store)
        assert result.experiment_id is not None
        loaded = store.load(result.experiment_id)

    assert loaded.config["units"] == {"latency_ms": "ms"}
    fig = timeline_figure(loaded)
    assert fig.layout.yaxis.title.text == "latency (ms)"
    assert fig.layout.annotations[0].text == "latency"
    assert "latency=%{y:.4g} ms" in fig.data[-1].hovertemplate

    chart = LiveTimeline()
    for instance in loaded.instances:
        for row in instance.timeline.itertuples():
            metrics = {"latency_ms": row.latency_ms}
            chart.handle(lk.InstanceEvent("sample", instance.index, row.t, row.t, metrics=metrics))
    chart.show_result(loaded)
    assert chart.figure.layout.yaxis.title.text == "latency (ms)"
    assert any("latency=%{y:.4g} ms" in (t.hovertemplate or "") for t in chart.figure.data)
