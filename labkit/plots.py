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
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from labkit.errors import ConfigError, error_text
from labkit.live import DEFAULT_MAX_POINTS, AverageSnapshot, Band, decimate_indices
from labkit.timeline import Method, average_timelines
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
_INSTANCE_RANK = 1000  # legend ranks: the average (1) and its band (2) come first
_RESERVED_COLUMNS = frozenset({"t", "n"})

# A qualitative palette (ColorBrewer's Dark2, its pale yellow swapped for a blue):
# eight hues told apart at a glance, each at least 3:1 against the white plot
# (WCAG's figure for graphics), none a red, which is the outliers' colour.
INSTANCE_COLORS = (
    "#1f77b4",
    "#d95f02",
    "#1b9e77",
    "#7570b3",
    "#e7298a",
    "#66a61e",
    "#a6761d",
    "#666666",
)
AVERAGE_COLOR = "#1f1f1f"
BAND_COLOR = "rgba(31, 31, 31, 0.15)"
OUTLIER_COLOR = "#d62728"
MANY_COLOR = "#1f77b4"
PAPER_COLOR = "#ffffff"
"""The chart's own background: it stays white in a dark notebook theme, so its text
(:data:`TEXT_COLOR`) and lines keep their contrast whatever surrounds them."""
TEXT_COLOR = "#2a3f5f"

DEFAULT_BAND: Band = "ci95"
"""The band drawn by default: the 95 % confidence interval of the mean, the same
spread the summary tables print after "±"."""

MANY_INSTANCES = 8
"""Above this many instances, the plain ones share one trace and one legend entry
(``instances (64)``): the legend stays short and the browser draws one line per metric."""

METRIC_UNITS: Mapping[str, str] = {"cpu": "%", "memory": "MB"}
"""Units of the metrics labkit's sampler records, for axis titles."""

_FIGURE_KINDS = ("last", "min", "max", "mean", "peak")

XAxis = Literal["time", "step"]
"""What a chart's horizontal axis counts: seconds since the instance started, or steps."""

_X_HOVER = {"time": "t=%{x:.3g} s", "step": "step=%{x:.0f}"}


@dataclass(frozen=True, slots=True)
class MetricLabels:
    """How metrics are shown: a display name and a unit per metric.

    Attributes:
        units: Units by metric name; the sampler's (:data:`METRIC_UNITS`) are
            known without being given.
        names: Display names by metric name; a metric not named shows its own.
    """

    units: Mapping[str, str] = field(default_factory=lambda: dict(METRIC_UNITS))
    names: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        config: Mapping[str, Any] | None = None,
        *,
        units: Mapping[str, str] | None = None,
        display_names: Mapping[str, str] | None = None,
    ) -> MetricLabels:
        """The labels a run's config keeps (``Experiment(units=, display_names=)``),
        with ``units`` and ``display_names`` given here over them.

        Raises:
            ConfigError: If ``units`` or ``display_names`` is not a mapping of str to str.
        """
        config = config or {}
        merged: list[dict[str, str]] = []
        for option, given in (("units", units), ("display_names", display_names)):
            if given is not None and not (
                isinstance(given, Mapping)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in given.items())
            ):
                raise ConfigError(option, given, "None or a dict {metric: str}")
            stored = config.get(option)
            merged.append({**(stored if isinstance(stored, Mapping) else {}), **(given or {})})
        return cls({**METRIC_UNITS, **merged[0]}, merged[1])

    def name(self, metric: str) -> str:
        """The metric's display name (its own name when none is given)."""
        return self.names.get(metric, metric)

    def unit(self, metric: str) -> str:
        """The metric's unit, ``""`` when unknown."""
        return self.units.get(metric, "")

    def title(self, metric: str) -> str:
        """An axis title: ``cpu (%)``, ``latency (ms)``, ``loss``."""
        unit = self.unit(metric)
        return f"{self.name(metric)} ({unit})" if unit else self.name(metric)

    def value(self, metric: str, value: str = "%{y:.4g}") -> str:
        """A hover line: ``cpu=%{y:.4g} %``."""
        unit = self.unit(metric)
        return f"{self.name(metric)}={value}" + (f" {unit}" if unit else "")

    def figure_unit(self, figure: str) -> str:
        """The unit of a summary figure named after its metric (``latency_ms_peak``:
        ``ms``); ``""`` for counts (``error_count``) and figures of no known metric."""
        for metric in sorted(self.units, key=len, reverse=True):
            if figure == metric or (
                figure.startswith(f"{metric}_") and figure[len(metric) + 1 :] in _FIGURE_KINDS
            ):
                return self.units[metric]
        return ""


def axis_title(metric: str, units: Mapping[str, str] = METRIC_UNITS) -> str:
    """A metric's axis title with its unit when known: ``cpu (%)``, ``memory (MB)``, ``loss``."""
    return MetricLabels(units).title(metric)


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
    ends = _run_ends(average.mean, *(edges or ()))
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
    band: Band | None = DEFAULT_BAND,
    show_instances: bool = True,
    *,
    averaged: pd.DataFrame | None = None,
    outliers: Mapping[str, Iterable[int]] | Iterable[int] | None = None,
    title: str | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
    x_axis: XAxis | None = None,
    max_gap: float | Mapping[str, float | None] | None = None,
    method: Method | Mapping[str, Method] | None = None,
    units: Mapping[str, str] | None = None,
    display_names: Mapping[str, str] | None = None,
) -> go.Figure:
    """Every instance's timeline against the average, one subplot per metric.

    Instances are thin translucent lines, grouped in the legend so one click hides
    an instance in every subplot (more than :data:`MANY_INSTANCES` share one faint
    trace and legend entry); hovering shows the instance and its value. The
    average is a thick line on top with ``band`` filled around it; its hover
    shows ``n`` (the instances that measured the metric there). The legend lists
    the average and its band first, above the plot, and the chart takes the
    width it is given. Axis titles and hover values carry units (``cpu (%)``,
    ``time (s)``). Failed instances are left out and named in a note under the
    title; outlier instances are drawn in a warning colour.

    On a time axis each instance is drawn as averaging saw it: its values on
    the averaged timeline's grid (interpolated, held or summed per ``method``),
    so the average is the mean of the lines drawn and a ``"minmax"`` band holds
    every line. A gap is a break, never a bridge: in the average and its band
    where no instance measured (NaN), in an instance's line where its samples
    are further apart than ``max_gap``. Traces longer than ``max_points`` are
    decimated (each bucket's minimum and maximum kept).

    Args:
        result: An ``ExperimentResult`` (anything with ``instances`` and
            ``averaged``), or a plain sequence of timeline DataFrames (``t`` in
            seconds plus one column per metric) with ``averaged`` given.
        metrics: The metrics to draw (one name or several); default: every metric
            of the averaged timeline.
        band: ``"ci95"`` (the default: the mean's 95 % confidence interval, the
            spread summary tables print after "±"), ``"std"``, ``"minmax"`` or
            ``None`` for no band.
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
        max_gap: As the timelines were averaged with (seconds, or ``{metric:
            seconds}``); default: the result's own (``result.config["max_gap"]``),
            else 3 times the metric's median interval.
        method: As the timelines were averaged with; default: the result's own
            (``result.config["method"]``), else averaging's default.
        units: Units by metric, over the result's own (``Experiment(units=)``)
            and the sampler's (``cpu`` in %, ``memory`` in MB).
        display_names: Names to show by metric, over the result's own.

    Returns:
        A ``plotly.graph_objects.Figure``.

    Raises:
        ConfigError: If ``band`` is unknown, a metric is not in the averaged
            timeline, there is no averaged timeline, ``max_points`` is below 4,
            or ``units`` or ``display_names`` is not a mapping of str.
    """
    if band is not None and band not in _BANDS:
        raise ConfigError("band", band, "'std', 'minmax', 'ci95' or None")
    if max_points < 4:
        raise ConfigError("max_points", max_points, "an integer >= 4")
    instances, failed, mean_frame, name = _read_result(result, averaged, outliers)
    if mean_frame is None:
        raise ConfigError("averaged", None, "an averaged timeline DataFrame (t, n, m, m_std...)")
    config = getattr(result, "config", None) or {}
    names = _pick_metrics(mean_frame, metrics)
    axis: XAxis = x_axis or ("time" if "t" in mean_frame.columns else "step")
    drawing = _Drawing(
        band=band,
        x_axis=axis,
        max_points=max_points,
        labels=MetricLabels.of(config, units=units, display_names=display_names),
        max_gap=config.get("max_gap") if max_gap is None else max_gap,
        method=config.get("method") if method is None else method,
        step=_grid_step(mean_frame["t"].to_numpy(dtype=float)) if axis == "time" else None,
    )
    fig = make_subplots(
        rows=max(len(names), 1),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=min(0.08, 0.3 / max(len(names), 1)),
        subplot_titles=[drawing.labels.name(metric) for metric in names],
    )
    for row, metric in enumerate(names, start=1):
        shown = instances if show_instances else []
        fig.add_traces(drawing.traces(metric, shown, mean_frame, row == 1), rows=row, cols=1)
        fig.update_yaxes(title_text=drawing.labels.title(metric), row=row, col=1)
    if names:
        fig.update_xaxes(title_text=time_title(axis), row=len(names), col=1)
    heading = title if title is not None else name
    note = _failed_note(failed)
    fig.update_layout(
        title_text=heading + (f"<br><sup>{note}</sup>" if note else ""),
        height=120 + 240 * max(len(names), 1),
        margin={"t": (90 if note else 70) if heading or note else 40},
        **figure_layout(),
    )
    return fig


def figure_layout() -> dict[str, Any]:
    """The layout every chart shares: the width it is given, a white background of
    its own, and the legend above the plot in rows that wrap instead of scrolling,
    the average and its band first."""
    return {
        "autosize": True,
        "hovermode": "closest",
        "template": "plotly_white",
        "paper_bgcolor": PAPER_COLOR,
        "plot_bgcolor": PAPER_COLOR,
        "font": {"color": TEXT_COLOR},
        "legend": {
            "groupclick": "togglegroup",
            "orientation": "h",
            "x": 0.0,
            "xanchor": "left",
            "y": 1.0,
            "yanchor": "bottom",
        },
    }


@dataclass(frozen=True, slots=True)
class _Drawing:
    """How one static figure draws each metric."""

    band: Band | None
    x_axis: XAxis
    max_points: int
    labels: MetricLabels
    max_gap: Any
    method: Any
    step: float | None
    """The averaged timeline's grid step (s); ``None``: lines drawn as sampled."""

    def traces(
        self, metric: str, instances: Sequence[_Instance], mean_frame: pd.DataFrame, first: bool
    ) -> list[dict[str, Any]]:
        """The instances' lines, then the band and the average, of one metric."""
        traces: list[dict[str, Any]] = []
        if instances:
            gap = self._gap(metric, instances)
            lines = [self._line(inst, metric, gap) for inst in instances]
            traces += instance_traces(
                [line for line in lines if line is not None],
                metric,
                show_legend=first,
                x_axis=self.x_axis,
                labels=self.labels,
            )
        if self.band is not None:
            band_bounds(mean_frame, metric, self.band)  # its columns must exist
        traces += average_traces(
            AverageSnapshot.from_frame(mean_frame, metric),
            self.band,
            show_legend=first,
            max_points=self.max_points,
            x_axis=self.x_axis,
            labels=self.labels,
        )
        return traces

    def _gap(self, metric: str, instances: Sequence[_Instance]) -> float:
        """``metric``'s ``max_gap`` in seconds, resolved as averaging resolves it: the
        given one, else 3 times its median interval over every instance."""
        given = _gap_of(self.max_gap, metric)
        if given is not None:
            return given
        times = []
        for inst in instances:
            if metric in inst.timeline.columns and "t" in inst.timeline.columns:
                t, _ = _sampled(inst.timeline, "t", metric)
                times.append(t)
        return GAP_FACTOR * median_interval(times)

    def _line(self, inst: _Instance, metric: str, gap: float) -> InstanceLine | None:
        frame = inst.timeline
        x_column = "t" if self.x_axis == "time" else "step"
        if metric not in frame.columns or x_column not in frame.columns:
            return None
        t, y = _sampled(frame, x_column, metric)
        if y.size == 0:
            return None
        if self.step is not None:
            t, y = _on_grid(t, y, metric, self.step, self._method(metric), gap)
        keep = np.union1d(decimate_indices(y, self.max_points), _run_ends(y))
        if inst.outlier_in is None:
            return InstanceLine(inst.index, t[keep], y[keep])
        note = f"outlier: {', '.join(inst.outlier_in)}" if inst.outlier_in else "outlier"
        return InstanceLine(inst.index, t[keep], y[keep], state="outlier", note=note)

    def _method(self, metric: str) -> Any:
        return self.method.get(metric) if isinstance(self.method, Mapping) else self.method


def _sampled(frame: pd.DataFrame, x_column: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """A metric's samples: a timeline interleaves rows of different metrics (the
    sampler's and the user's); a metric's NaN rows are "not sampled here", not gaps
    (nor are rows without a step on a step axis)."""
    t = frame[x_column].to_numpy(dtype=float)
    y = frame[metric].to_numpy(dtype=float)
    sampled = ~(np.isnan(y) | np.isnan(t))
    return (t, y) if sampled.all() else (t[sampled], y[sampled])


def _grid_step(t: np.ndarray) -> float | None:
    """The grid step of an averaged timeline's times (``k * step``, some dropped where
    no instance measured); ``None`` with fewer than two times."""
    if t.size < 2:
        return None
    step = float(np.min(np.diff(t)))
    if not step > 0:
        return None
    # The last time over its grid index: the step as averaging multiplied it out.
    points = round(float(t[-1]) / step)
    return float(t[-1]) / points if points > 0 else step


def _on_grid(
    t: np.ndarray, y: np.ndarray, metric: str, step: float, method: Any, max_gap: float
) -> tuple[np.ndarray, np.ndarray]:
    """One instance's values of ``metric`` on the averaging grid, by the averaging
    itself (an average of one instance is its gridded values); one NaN per gap."""
    alone = average_timelines(
        [pd.DataFrame({"t": t, metric: y})], step=step, method=method, max_gap=max_gap
    )
    x = alone["t"].to_numpy(dtype=float)
    v = alone[metric].to_numpy(dtype=float)
    missing = np.isnan(v)
    # A gap holds several grid points: its first NaN is enough for a break.
    drop = missing & np.concatenate(([True], missing[:-1]))
    return x[~drop], v[~drop]


def _gap_of(max_gap: Any, metric: str) -> float | None:
    """``metric``'s ``max_gap`` in seconds from a number, ``"inf"`` (a stored config's
    infinity) or a mapping; ``None``: the default, found from the samples."""
    if isinstance(max_gap, Mapping):
        max_gap = max_gap.get(metric)
    if max_gap is None:
        return None
    return math.inf if max_gap == "inf" else float(max_gap)


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
