"""Charts of an experiment: every instance's timeline against the averaged one.

Pure functions from results to plotly figures; nothing here runs or measures
anything. :func:`timeline_figure` draws one subplot per metric sharing the time
axis: each instance a thin translucent line, the average a thick line on top, and
a band (standard deviation, min-max or 95 % confidence interval) filled around it.

The traces come from two builders, :func:`instance_traces` and
:func:`average_traces`, which the live chart (:mod:`labkit.widgets.live`) and the
HTML report use too, so the three charts cannot drift apart. They return plain
trace dicts (cheap to build many times a second; plotly validates them once).

Long timelines are decimated for display by :func:`decimate_indices`, which keeps
each bucket's minimum and maximum, so a million-sample result draws at once and
its peaks stay visible.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from labkit.errors import ConfigError, error_text
from labkit.live import DEFAULT_MAX_POINTS, AverageSnapshot, Band, decimate_indices
from labkit.timeline.inputs import GAP_FACTOR, median_interval

__all__ = (
    "AVERAGE_COLOR",
    "BAND_COLOR",
    "Band",
    "DEFAULT_MAX_POINTS",
    "INSTANCE_COLORS",
    "InstanceLine",
    "MANY_INSTANCES",
    "METRIC_UNITS",
    "OUTLIER_COLOR",
    "STAT_SUFFIXES",
    "XAxis",
    "average_traces",
    "axis_title",
    "band_bounds",
    "decimate_indices",
    "instance_traces",
    "metric_names",
    "time_title",
    "timeline_figure",
)

STAT_SUFFIXES = ("_std", "_min", "_max", "_ci95", "_n", "_nonfinite")
"""Suffixes of the per-metric statistic columns of an averaged timeline."""

_BANDS = ("std", "minmax", "ci95")
_RESERVED_COLUMNS = frozenset({"t", "n"})

# Instances cycle through a muted palette, dark enough to read on white at the
# translucency instances are drawn with, so the thick average stays the eye's anchor.
INSTANCE_COLORS = (
    "#4c78a8",
    "#2a9d8f",
    "#54a24b",
    "#b279a2",
    "#9d755d",
    "#6b6ecf",
    "#f58518",
    "#8c6d31",
)
AVERAGE_COLOR = "#1f1f1f"
BAND_COLOR = "rgba(31, 31, 31, 0.15)"
OUTLIER_COLOR = "#e45756"
MANY_COLOR = "#4c78a8"

MANY_INSTANCES = 8
"""Above this many instances, the plain ones share one trace and one legend entry
(``instances (64)``): the legend stays short and the browser draws one line per metric."""

METRIC_UNITS: Mapping[str, str] = {"cpu": "%", "memory": "MB"}
"""Units of the metrics labkit's sampler records, for axis titles."""

XAxis = Literal["time", "step"]
"""What a chart's horizontal axis counts: seconds since the instance started, or steps."""

_X_HOVER = {"time": "t=%{x:.3g} s", "step": "step=%{x:.0f}"}


def axis_title(metric: str, units: Mapping[str, str] = METRIC_UNITS) -> str:
    """A metric's axis title with its unit when known: ``cpu (%)``, ``memory (MB)``, ``loss``."""
    unit = units.get(metric)
    return f"{metric} ({unit})" if unit else metric


def time_title(x_axis: XAxis = "time") -> str:
    """The horizontal axis title: ``time (s)`` or ``step``."""
    return "time (s)" if x_axis == "time" else "step"


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
) -> list[dict[str, Any]]:
    """The traces of instances' lines of ``metric``: thin, translucent, grouped.

    Up to :data:`MANY_INSTANCES` plain lines get a trace each, coloured from
    :data:`INSTANCE_COLORS` and listed in the legend (one click hides an instance in
    every subplot: the legend group is per instance). More share one trace, NaN
    between lines, one faint colour and one legend entry. Outliers and failed
    instances always get their own trace, in :data:`OUTLIER_COLOR`. Hovering a
    point shows its instance, time and value.

    Args:
        lines: The lines, already decimated for display.
        metric: The metric's name (for hover text).
        show_legend: List the traces in the legend (true for the first subplot).
        x_axis: What the horizontal axis counts.

    Returns:
        Plotly scatter trace dicts, plain instances first.
    """
    hover_x = _X_HOVER[x_axis]
    plain = [line for line in lines if line.state == "ok"]
    traces: list[dict[str, Any]] = []
    opacity = instance_opacity(len(plain))
    if len(plain) > MANY_INSTANCES:
        gap = np.array([np.nan])
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        for line in plain:
            xs += [np.asarray(line.t, dtype=float), gap]
            ys += [np.asarray(line.y, dtype=float), gap]
            # int32: plotly sends int64 arrays as lists, 30 times slower than a buffer.
            owners.append(np.full(len(line.t) + 1, line.instance, dtype=np.int32))
        traces.append(
            {
                "type": "scatter",
                "x": np.concatenate(xs),
                "y": np.concatenate(ys),
                "customdata": np.concatenate(owners),
                "mode": "lines",
                "connectgaps": False,
                "name": f"instances ({len(plain)})",
                "legendgroup": "instances",
                "showlegend": show_legend,
                "opacity": opacity,
                "line": {"width": 1, "color": MANY_COLOR},
                "hovertemplate": (
                    f"instance %{{customdata}}<br>{hover_x}<br>{metric}=%{{y:.4g}}<extra></extra>"
                ),
            }
        )
    else:
        for line in plain:
            traces.append(_line_trace(line, metric, hover_x, show_legend, opacity))
    for line in lines:
        if line.state != "ok":
            traces.append(_line_trace(line, metric, hover_x, show_legend, opacity))
    return traces


def _line_trace(
    line: InstanceLine, metric: str, hover_x: str, show_legend: bool, opacity: float
) -> dict[str, Any]:
    label = f"instance {line.instance}" + (f" ({line.note})" if line.note else "")
    special = line.state != "ok"
    color = OUTLIER_COLOR if special else INSTANCE_COLORS[line.instance % len(INSTANCE_COLORS)]
    return {
        "type": "scatter",
        "x": line.t,
        "y": line.y,
        "mode": "lines",
        "name": label,
        "legendgroup": f"instance-{line.instance}",
        "showlegend": show_legend,
        "opacity": 0.9 if line.state == "outlier" else 0.7 if special else opacity,
        "line": {
            "width": 2 if line.state == "outlier" else 1.5 if special else 1,
            "color": color,
            "dash": "dot" if line.state == "failed" else "solid",
        },
        "hovertemplate": f"{label}<br>{hover_x}<br>{metric}=%{{y:.4g}}<extra></extra>",
    }


def average_traces(
    average: AverageSnapshot,
    band: Band | None = "std",
    *,
    show_legend: bool = True,
    max_points: int = DEFAULT_MAX_POINTS,
    x_axis: XAxis = "time",
) -> list[dict[str, Any]]:
    """The band around the average and the thick average line of one metric, in drawing order.

    NaN (a gap: no instance measured the metric there) is drawn as a break in
    the line and in the band, never bridged: the band is one closed shape per
    run of points where both its edges are known (``fill="toself"``, which
    plotly closes per segment; ``"tonexty"`` would fill across gaps), and
    decimation keeps the first and last point of every run. Draw these after
    the instances so the average is on top. Hovering the average shows its
    time, value and ``n``, the instances that contribute there.

    Args:
        average: The metric's average and spread (live, or from an averaged
            timeline with :meth:`AverageSnapshot.from_frame`).
        band: ``"std"``, ``"minmax"``, ``"ci95"`` or ``None`` for no band.
        show_legend: List the traces in the legend (true for the first subplot).
        max_points: The most points per trace (min/max decimation of the mean,
            plus the first and last point of each run between gaps).
        x_axis: What the horizontal axis counts.

    Returns:
        Plotly scatter trace dicts: the band (when ``band``), then the average.

    Raises:
        ConfigError: If ``band`` is unknown.
    """
    edges = average.band(band) if band is not None else None
    ends = _run_ends(average.mean, *(edges or ()))
    keep = np.union1d(decimate_indices(average.mean, max_points), ends)
    t = average.t[keep]
    hover_x = _X_HOVER[x_axis]
    traces: list[dict[str, Any]] = []
    if edges is not None:
        # The outline runs along both edges: half the points each.
        kept = np.union1d(decimate_indices(average.mean, max(max_points // 2, 4)), ends)
        x, y = _band_outline(average.t[kept], edges[0][kept], edges[1][kept])
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
                "showlegend": show_legend,
                "hoverinfo": "skip",
            }
        )
    traces.append(
        {
            "type": "scatter",
            "x": t,
            "y": average.mean[keep],
            "customdata": average.n[keep].astype(np.int32),
            "mode": "lines",
            "connectgaps": False,
            "name": "average",
            "legendgroup": "average",
            "showlegend": show_legend,
            "line": {"width": 3.5, "color": AVERAGE_COLOR},
            "hovertemplate": (
                f"average<br>{hover_x}<br>{average.metric}=%{{y:.4g}}"
                "<br>n=%{customdata}<extra></extra>"
            ),
        }
    )
    return traces


def _run_ends(*series: np.ndarray) -> np.ndarray:
    """Positions where any of ``series`` turns from a number to NaN or back, both sides:
    decimation must keep them, or a gap would be bridged."""
    known = np.isfinite(np.asarray(series[0], dtype=float))
    changes = np.zeros(known.size, dtype=bool)
    for values in series:
        finite = np.isfinite(np.asarray(values, dtype=float))
        changes[1:] |= finite[1:] != finite[:-1]
    after = np.flatnonzero(changes)
    return np.union1d(after, after - 1)


def _band_outline(t: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, ...]:
    """The band as closed outlines, one per run of points with both edges known:
    along the upper edge, back along the lower one, then NaN before the next run."""
    known = np.isfinite(lower) & np.isfinite(upper)
    edges = np.diff(known.astype(np.int8), prepend=0, append=0)
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    gap = np.array([np.nan])
    for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
        run = slice(start, stop)
        xs += [t[run], t[run][::-1], gap]
        ys += [upper[run], lower[run][::-1], gap]
    if not xs:
        return np.array([], dtype=float), np.array([], dtype=float)
    return np.concatenate(xs[:-1]), np.concatenate(ys[:-1])


@dataclass(frozen=True, slots=True)
class _Instance:
    """One instance as the chart sees it."""

    index: int
    timeline: pd.DataFrame
    outlier_in: tuple[str, ...] | None
    """The metrics in which this instance stands apart; ``None``: not an outlier."""


def metric_names(frame: pd.DataFrame) -> list[str]:
    """The metric columns of a timeline or averaged timeline, in column order.

    ``t`` (or ``step`` in a frame indexed by step, which has no ``t``), ``n`` and the
    statistic columns (``m_std``, ``m_min``, ``m_max``,
    ``m_ci95``, ``m_n``, ``m_nonfinite``) are not metrics.
    """
    columns = [str(c) for c in frame.columns]
    names = set(columns)
    # A frame indexed by step has a ``step`` column instead of ``t``.
    reserved = _RESERVED_COLUMNS if "t" in names else _RESERVED_COLUMNS | {"step"}
    return [
        c
        for c in columns
        if c not in reserved
        and not any(c.endswith(s) and c[: -len(s)] in names for s in STAT_SUFFIXES)
    ]


def band_bounds(averaged: pd.DataFrame, metric: str, band: Band) -> tuple[np.ndarray, np.ndarray]:
    """The lower and upper edges of ``metric``'s band in an averaged timeline.

    Args:
        averaged: An averaged timeline (``t``, ``n``, ``m``, ``m_std``, ...).
        metric: The metric's column name.
        band: ``"std"`` (mean ± one standard deviation), ``"minmax"`` (the range
            over instances) or ``"ci95"`` (mean ± the 95 % confidence half-width).

    Returns:
        ``(lower, upper)`` as float arrays, one value per row.

    Raises:
        ConfigError: If ``band`` is unknown or its columns are missing.
    """
    columns = {
        "std": (f"{metric}_std",),
        "minmax": (f"{metric}_min", f"{metric}_max"),
        "ci95": (f"{metric}_ci95",),
    }
    if band not in columns:
        raise ConfigError("band", band, "'std', 'minmax', 'ci95' or None")
    needed = columns[band]
    missing = [c for c in needed if c not in averaged.columns]
    if missing:
        raise ConfigError(
            "band", band, f"a band whose columns exist in the averaged timeline (missing {missing})"
        )
    edges = [averaged[c].to_numpy(dtype=float) for c in needed]
    if band == "minmax":
        return edges[0], edges[1]
    mean = averaged[metric].to_numpy(dtype=float)
    return mean - edges[0], mean + edges[0]


def timeline_figure(
    result: Any,
    metrics: Sequence[str] | str | None = None,
    band: Band | None = "std",
    show_instances: bool = True,
    *,
    averaged: pd.DataFrame | None = None,
    outliers: Mapping[str, Iterable[int]] | Iterable[int] | None = None,
    title: str | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
    x_axis: XAxis | None = None,
    max_gap: float | Mapping[str, float | None] | None = None,
) -> go.Figure:
    """Every instance's timeline against the average, one subplot per metric.

    Instances are thin translucent lines, grouped in the legend so one click hides
    an instance in every subplot (more than :data:`MANY_INSTANCES` share one faint
    trace and legend entry); hovering shows the instance and its value. The
    average is a thick line on top with ``band`` filled around it; its hover
    shows ``n`` (the instances that measured the metric there). Axis titles carry
    units (``cpu (%)``, ``time (s)``). Failed instances are left out and named in
    a note under the title; outlier instances are drawn in a warning colour.
    Traces longer than ``max_points`` are decimated (each bucket's minimum and
    maximum kept). A gap is a break, never a bridge: in the average and its band
    where no instance measured (NaN), in an instance's line where its samples are
    further apart than ``max_gap``.

    Args:
        result: An ``ExperimentResult`` (anything with ``instances`` and
            ``averaged``), or a plain sequence of timeline DataFrames (``t`` in
            seconds plus one column per metric) with ``averaged`` given.
        metrics: The metrics to draw (one name or several); default: every metric
            of the averaged timeline.
        band: ``"std"``, ``"minmax"``, ``"ci95"`` or ``None`` for no band.
        show_instances: Draw the per-instance lines (the average is always drawn).
        averaged: The averaged timeline when ``result`` is a list of timelines;
            overrides ``result.averaged`` otherwise.
        outliers: Instances to highlight: ``{metric: [indices]}`` (the form of
            ``ExperimentResult.outliers``, the default), the records
            ``timeline.detect_outliers`` returns, or plain indices.
        title: The figure title; default: the experiment's name.
        max_points: The most points drawn per trace.
        x_axis: ``"time"`` (``t`` in seconds) or ``"step"`` (timelines indexed by
            step); default: ``"step"`` when the averaged timeline has a ``step``
            column instead of ``t``.
        max_gap: Where an instance's line breaks (seconds between two of its
            samples, or ``{metric: seconds}``), as averaging treats a gap;
            default: the result's own (``result.config["max_gap"]``), else 3
            times the line's median interval. A gap in the average (NaN) is
            always a break.

    Returns:
        A ``plotly.graph_objects.Figure``.

    Raises:
        ConfigError: If ``band`` is unknown, a metric is not in the averaged
            timeline, there is no averaged timeline, or ``max_points`` is below 4.
    """
    if band is not None and band not in _BANDS:
        raise ConfigError("band", band, "'std', 'minmax', 'ci95' or None")
    if max_points < 4:
        raise ConfigError("max_points", max_points, "an integer >= 4")
    instances, failed, mean_frame, name = _read_result(result, averaged, outliers)
    if max_gap is None:  # as the result was averaged
        max_gap = (getattr(result, "config", None) or {}).get("max_gap")
    if mean_frame is None:
        raise ConfigError("averaged", None, "an averaged timeline DataFrame (t, n, m, m_std...)")
    names = _pick_metrics(mean_frame, metrics)
    if x_axis is None:
        x_axis = "time" if "t" in mean_frame.columns else "step"
    x_column = "t" if x_axis == "time" else "step"
    fig = make_subplots(
        rows=max(len(names), 1),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=min(0.08, 0.3 / max(len(names), 1)),
        subplot_titles=names,
    )
    for row, metric in enumerate(names, start=1):
        first = row == 1
        traces: list[dict[str, Any]] = []
        if show_instances:
            lines = [_lines_of(inst, metric, x_column, max_points, max_gap) for inst in instances]
            traces += instance_traces(
                [line for line in lines if line is not None],
                metric,
                show_legend=first,
                x_axis=x_axis,
            )
        if band is not None:
            band_bounds(mean_frame, metric, band)  # its columns must exist
        average = AverageSnapshot.from_frame(mean_frame, metric)
        traces += average_traces(
            average, band, show_legend=first, max_points=max_points, x_axis=x_axis
        )
        fig.add_traces(traces, rows=row, cols=1)
        fig.update_yaxes(title_text=axis_title(metric), row=row, col=1)
    if names:
        fig.update_xaxes(title_text=time_title(x_axis), row=len(names), col=1)
    heading = title if title is not None else name
    note = _failed_note(failed)
    fig.update_layout(
        title_text=heading + (f"<br><sup>{note}</sup>" if note else ""),
        height=120 + 240 * max(len(names), 1),
        hovermode="closest",
        legend={"groupclick": "togglegroup"},
        template="plotly_white",
        margin={"t": 90 if note else 70},
    )
    return fig


def _read_result(
    result: Any,
    averaged: pd.DataFrame | None,
    outliers: Mapping[str, Iterable[int]] | Iterable[int] | None,
) -> tuple[list[_Instance], list[tuple[int, str]], pd.DataFrame | None, str]:
    """Normalise an ExperimentResult or plain timelines into chart inputs."""
    flagged = _outlier_metrics(
        outliers if outliers is not None else getattr(result, "outliers", None)
    )
    instances: list[_Instance] = []
    failed: list[tuple[int, str]] = []
    if hasattr(result, "instances"):
        mean_frame = averaged if averaged is not None else getattr(result, "averaged", None)
        for item in result.instances:
            index = int(item.index)
            if not item.ok:
                failed.append((index, _error_text(item.error)))
            elif item.timeline is not None and len(item.timeline):
                instances.append(_Instance(index, item.timeline, flagged.get(index)))
        return instances, failed, mean_frame, str(getattr(result, "name", "") or "")
    if isinstance(result, pd.DataFrame):
        raise ConfigError(
            "result", "DataFrame", "an ExperimentResult or a list of timeline DataFrames"
        )
    for index, frame in enumerate(result):
        instances.append(_Instance(index, frame, flagged.get(index)))
    return instances, failed, averaged, ""


def _outlier_metrics(outliers: Any) -> dict[int, tuple[str, ...]]:
    """Instance index -> the metrics it is an outlier in (``()`` when not said)."""
    if outliers is None:
        return {}
    if isinstance(outliers, Mapping):
        found: dict[int, tuple[str, ...]] = {}
        for metric, indices in outliers.items():
            for index in indices:
                found[int(index)] = (*found.get(int(index), ()), str(metric))
        return found
    found = {}
    for item in outliers:
        if hasattr(item, "instance"):  # timeline.Outlier records, straight from detect_outliers
            index = int(item.instance)
            found[index] = (*found.get(index, ()), str(item.metric))
        else:
            found.setdefault(int(item), ())
    return found


def _error_text(error: Any) -> str:
    if error is None:
        return "failed"
    text = error_text(error) if isinstance(error, BaseException) else str(error)
    return text if len(text) <= 80 else text[:77] + "..."


def _failed_note(failed: list[tuple[int, str]]) -> str:
    if not failed:
        return ""
    listed = "; ".join(f"instance {i} ({message})" for i, message in failed[:5])
    more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
    return f"Left out, failed: {listed}{more}"


def _pick_metrics(mean_frame: pd.DataFrame, metrics: Sequence[str] | str | None) -> list[str]:
    available = metric_names(mean_frame)
    if metrics is None:
        return available
    wanted = [metrics] if isinstance(metrics, str) else list(metrics)
    for metric in wanted:
        if metric not in mean_frame.columns:
            raise ConfigError("metrics", metric, f"one of {available}")
    return wanted


def _lines_of(
    inst: _Instance, metric: str, x_column: str, max_points: int, max_gap: Any
) -> InstanceLine | None:
    frame = inst.timeline
    if metric not in frame.columns or x_column not in frame.columns:
        return None
    t = frame[x_column].to_numpy(dtype=float)
    y = frame[metric].to_numpy(dtype=float)
    # A timeline interleaves rows of different metrics (the sampler's and the
    # user's); a metric's NaN rows are "not sampled here", not gaps in its line
    # (nor are rows without a step on a step axis).
    sampled = ~(np.isnan(y) | np.isnan(t))
    if not sampled.all():
        t, y = t[sampled], y[sampled]
    if y.size == 0:
        return None
    if x_column == "t":
        t, y = _broken_at_gaps(t, y, _gap_of(max_gap, metric))
    keep = np.union1d(decimate_indices(y, max_points), _run_ends(y))
    if inst.outlier_in is None:
        return InstanceLine(inst.index, t[keep], y[keep])
    note = f"outlier: {', '.join(inst.outlier_in)}" if inst.outlier_in else "outlier"
    return InstanceLine(inst.index, t[keep], y[keep], state="outlier", note=note)


def _gap_of(max_gap: Any, metric: str) -> float | None:
    """``metric``'s ``max_gap`` in seconds from a number, ``"inf"`` (a stored config's
    infinity) or a mapping; ``None``: the default, found from the line itself."""
    if isinstance(max_gap, Mapping):
        max_gap = max_gap.get(metric)
    if max_gap is None:
        return None
    return math.inf if max_gap == "inf" else float(max_gap)


def _broken_at_gaps(
    t: np.ndarray, y: np.ndarray, max_gap: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """The line with NaN between samples further apart than ``max_gap`` (default: 3
    times its median interval, the averaging's rule), so a silence is not bridged."""
    if t.size < 3:
        return t, y
    limit = GAP_FACTOR * median_interval([t]) if max_gap is None else max_gap
    cuts = np.flatnonzero(np.diff(t) > limit) + 1
    if not cuts.size:
        return t, y
    return np.insert(t, cuts, np.nan), np.insert(y, cuts, np.nan)
