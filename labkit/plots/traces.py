"""The traces of a chart, as plain dicts: instances' lines, the band and the average.

The static figure (:func:`labkit.plots.timeline_figure`), the live chart
(:mod:`labkit.widgets.live`) and the HTML report all build their traces here, so
they cannot drift apart. Plain dicts are cheap to build many times a second;
plotly validates them once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from labkit.live import DEFAULT_MAX_POINTS, AverageSnapshot, Band, decimate_indices
from labkit.live.decimation import run_ends
from labkit.plots.style import (
    AVERAGE_COLOR,
    BAND_COLOR,
    DEFAULT_BAND,
    INSTANCE_COLORS,
    MANY_COLOR,
    MANY_INSTANCES,
    OUTLIER_COLOR,
    MetricLabels,
    XAxis,
)

__all__ = ("InstanceLine", "average_traces", "instance_opacity", "instance_traces")

_X_HOVER = {"time": "t=%{x:.3g} s", "step": "step=%{x:.0f}"}
_INSTANCE_RANK = 1000  # legend ranks: the average (1) and its band (2) come first


@dataclass(frozen=True, slots=True, eq=False)
class InstanceLine:
    """One instance's line of one metric, as the trace builders take it.

    Attributes:
        instance: The instance's index.
        t: Times (seconds) or steps, ascending.
        y: Values at ``t``.
        state: ``"ok"``, ``"outlier"`` (drawn apart, in a warning colour) or
            ``"failed"`` (dotted, in a warning colour).
        note: Added to the label in brackets (``"outlier: cpu"``, ``"failed"``).
    """

    instance: int
    t: np.ndarray
    y: np.ndarray
    state: Literal["ok", "outlier", "failed"] = "ok"
    note: str = ""


def instance_opacity(count: int) -> float:
    """How opaque ``count`` plain instance lines are drawn: faint when many, never invisible."""
    return float(min(0.7, max(0.25, 2.0 / max(count, 1) ** 0.5)))


def instance_traces(
    lines: Sequence[InstanceLine],
    metric: str,
    *,
    show_legend: bool = True,
    x_axis: XAxis = "time",
    labels: MetricLabels | None = None,
) -> list[dict[str, Any]]:
    """The traces of instances' lines of ``metric``: thin, translucent, grouped.

    Up to :data:`MANY_INSTANCES` plain lines get a trace each, coloured from
    :data:`INSTANCE_COLORS` and listed in the legend after the average and its
    band (one click hides an instance in every subplot: the legend group is per
    instance). More share one trace, NaN between lines, one faint colour and one
    legend entry. Outliers and failed instances always get their own trace, in
    :data:`OUTLIER_COLOR`. Hovering a point shows its instance, time and value
    with its unit.

    Args:
        lines: The lines, already decimated for display.
        metric: The metric's name.
        show_legend: List the traces in the legend (true for the first subplot).
        x_axis: What the horizontal axis counts.
        labels: The metric's display name and unit (default: known units only).

    Returns:
        Plotly scatter trace dicts, plain instances first.
    """
    labels = labels or MetricLabels()
    hover = f"{_X_HOVER[x_axis]}<br>{labels.value(metric)}<extra></extra>"
    plain = [line for line in lines if line.state == "ok"]
    traces: list[dict[str, Any]] = []
    opacity = instance_opacity(len(plain))
    if len(plain) > MANY_INSTANCES:
        traces.append(_shared_trace(plain, hover, show_legend, opacity))
    else:
        for line in plain:
            traces.append(_line_trace(line, hover, show_legend, opacity))
    for line in lines:
        if line.state != "ok":
            traces.append(_line_trace(line, hover, show_legend, opacity))
    return traces


def _shared_trace(
    plain: Sequence[InstanceLine], hover: str, show_legend: bool, opacity: float
) -> dict[str, Any]:
    """Many plain lines as one trace, NaN between them, the instance in ``customdata``."""
    gap = np.array([np.nan])
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    for line in plain:
        xs += [np.asarray(line.t, dtype=float), gap]
        ys += [np.asarray(line.y, dtype=float), gap]
        # int32: plotly sends int64 arrays as lists, 30 times slower than a buffer.
        owners.append(np.full(len(line.t) + 1, line.instance, dtype=np.int32))
    return {
        "type": "scatter",
        "x": np.concatenate(xs),
        "y": np.concatenate(ys),
        "customdata": np.concatenate(owners),
        "mode": "lines",
        "connectgaps": False,
        "name": f"instances ({len(plain)})",
        "legendgroup": "instances",
        "legendrank": _INSTANCE_RANK,
        "showlegend": show_legend,
        "opacity": opacity,
        "line": {"width": 1, "color": MANY_COLOR},
        "hovertemplate": f"instance %{{customdata}}<br>{hover}",
    }


def _line_trace(
    line: InstanceLine, hover: str, show_legend: bool, opacity: float
) -> dict[str, Any]:
    label = f"instance {line.instance}" + (f" ({line.note})" if line.note else "")
    special = line.state != "ok"
    color = OUTLIER_COLOR if special else INSTANCE_COLORS[line.instance % len(INSTANCE_COLORS)]
    return {
        "type": "scatter",
        "x": line.t,
        "y": line.y,
        "mode": "lines",
        "connectgaps": False,
        "name": label,
        "legendgroup": f"instance-{line.instance}",
        "legendrank": _INSTANCE_RANK + (line.instance if special else 0),
        "showlegend": show_legend,
        "opacity": 0.9 if line.state == "outlier" else 0.7 if special else opacity,
        "line": {
            "width": 2 if line.state == "outlier" else 1.5 if special else 1,
            "color": color,
            "dash": "dot" if line.state == "failed" else "solid",
        },
        "hovertemplate": f"{label}<br>{hover}",
    }


def average_traces(
    average: AverageSnapshot,
    band: Band | None = DEFAULT_BAND,
    *,
    show_legend: bool = True,
    max_points: int = DEFAULT_MAX_POINTS,
    x_axis: XAxis = "time",
    labels: MetricLabels | None = None,
) -> list[dict[str, Any]]:
    """The band around the average and the thick average line of one metric, in drawing order.

    NaN (a gap: no instance measured the metric there) is drawn as a break in
    the line and in the band, never bridged: the band is one closed shape per
    run of points where both its edges are known (``fill="toself"``, which
    plotly closes per segment; ``"tonexty"`` would fill across gaps), and
    decimation keeps the first and last point of every run. A decimated band
    is the envelope of the points it stands for (each bucket's lowest and
    highest edge across the bucket), so it still holds every value it spans.
    Draw these after the instances so the average is on top; the legend lists
    them first, where a long legend cannot scroll them away. Hovering the
    average shows its time, value with its unit and ``n``, the instances that
    contribute there.

    Args:
        average: The metric's average and spread (live, or from an averaged
            timeline with :meth:`AverageSnapshot.from_frame`).
        band: ``"std"``, ``"minmax"``, ``"ci95"`` or ``None`` for no band.
        show_legend: List the traces in the legend (true for the first subplot).
        max_points: The most points per trace (min/max decimation of the mean,
            plus the first and last point of each run between gaps).
        x_axis: What the horizontal axis counts.
        labels: The metric's display name and unit (default: known units only).

    Returns:
        Plotly scatter trace dicts: the band (when ``band``), then the average.

    Raises:
        ConfigError: If ``band`` is unknown.
    """
    labels = labels or MetricLabels()
    edges = average.band(band) if band is not None else None
    ends = run_ends(average.mean, *(edges or ()))
    keep = np.union1d(decimate_indices(average.mean, max_points), ends)
    traces: list[dict[str, Any]] = []
    if edges is not None:
        x, y = _band_outline(average.t, edges[0], edges[1], max_points)
        traces.append(
            {
                "type": "scatter",
                "x": x,
                "y": y,
                "mode": "lines",
                "line": {"width": 0},
                "fill": "toself",
                "fillcolor": BAND_COLOR,
                "connectgaps": False,
                "name": f"band ({band})",
                "legendgroup": "average-band",
                "legendrank": 2,
                "showlegend": show_legend,
                "hoverinfo": "skip",
            }
        )
    traces.append(
        {
            "type": "scatter",
            "x": average.t[keep],
            "y": average.mean[keep],
            "customdata": average.n[keep].astype(np.int32),
            "mode": "lines",
            "connectgaps": False,
            "name": "average",
            "legendgroup": "average",
            "legendrank": 1,
            "showlegend": show_legend,
            "line": {"width": 3.5, "color": AVERAGE_COLOR},
            "hovertemplate": (
                f"average<br>{_X_HOVER[x_axis]}<br>{labels.value(average.metric)}"
                "<br>n=%{customdata}<extra></extra>"
            ),
        }
    )
    return traces


def _band_outline(
    t: np.ndarray, lower: np.ndarray, upper: np.ndarray, max_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """The band as closed outlines, one per run of points with both edges known:
    along the upper edge, back along the lower one, then NaN before the next run.

    Past ``max_points`` the runs are cut into buckets and each bucket is drawn
    flat at its highest upper and lowest lower edge, from its first point's time
    to its last: an envelope, never a chord that would cut a peak off.
    """
    known = np.isfinite(lower) & np.isfinite(upper)
    edges = np.diff(known.astype(np.int8), prepend=0, append=0)
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    total = int(known.sum())
    size = 1
    if 2 * total > max_points:
        # Four points a bucket (two per edge), a NaN between runs, a bucket more per run.
        buckets = max((max_points - starts.size) // 4 - starts.size, 1)
        size = -(-total // buckets)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    gap = np.array([np.nan])
    for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
        x, low, high = t[start:stop], lower[start:stop], upper[start:stop]
        if size > 1:
            cuts = np.arange(0, stop - start, size)
            last = np.append(cuts[1:], stop - start) - 1
            x = np.column_stack([x[cuts], x[last]]).ravel()
            low = np.repeat(np.minimum.reduceat(low, cuts), 2)
            high = np.repeat(np.maximum.reduceat(high, cuts), 2)
        xs += [x, x[::-1], gap]
        ys += [high, low[::-1], gap]
    if not xs:
        return np.array([], dtype=float), np.array([], dtype=float)
    return np.concatenate(xs[:-1]), np.concatenate(ys[:-1])
