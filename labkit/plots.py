"""Charts of an experiment: every instance's timeline against the averaged one.

Pure functions from results to plotly figures; nothing here runs or measures
anything. :func:`timeline_figure` draws one subplot per metric sharing the time
axis: each instance a thin translucent line, the average a thick line, and a band
(standard deviation, min-max or 95 % confidence interval) filled around it.

Long timelines are decimated for display by :func:`decimate_indices`, which keeps
each bucket's minimum and maximum, so a million-sample result draws at once and
its peaks stay visible.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from labkit.errors import ConfigError

__all__ = (
    "Band",
    "DEFAULT_MAX_POINTS",
    "STAT_SUFFIXES",
    "band_bounds",
    "decimate_indices",
    "metric_names",
    "timeline_figure",
)

Band = Literal["std", "minmax", "ci95"]

DEFAULT_MAX_POINTS = 2000
"""Points per trace above which a timeline is decimated for display."""

STAT_SUFFIXES = ("_std", "_min", "_max", "_ci95", "_nonfinite")
"""Suffixes of the per-metric statistic columns of an averaged timeline."""

_BANDS = ("std", "minmax", "ci95")
_RESERVED_COLUMNS = frozenset({"t", "n"})

# Instances cycle through a muted palette so the thick average stays the eye's anchor.
# The live chart (labkit.widgets.live) draws with the same colours.
INSTANCE_COLORS = (
    "#4c78a8",
    "#72b7b2",
    "#54a24b",
    "#b279a2",
    "#9d755d",
    "#bab0ac",
    "#f58518",
    "#eeca3b",
)
AVERAGE_COLOR = "#1f1f1f"
BAND_COLOR = "rgba(31, 31, 31, 0.15)"
OUTLIER_COLOR = "#e45756"


@dataclass(frozen=True, slots=True)
class _Instance:
    """One instance as the chart sees it."""

    index: int
    timeline: pd.DataFrame
    outlier_in: tuple[str, ...] | None
    """The metrics in which this instance stands apart; ``None``: not an outlier."""


def decimate_indices(values: np.ndarray, max_points: int = DEFAULT_MAX_POINTS) -> np.ndarray:
    """Pick at most ``max_points`` positions of ``values`` that keep its shape.

    The series is cut into ``max_points // 2`` equal buckets and each bucket keeps
    the position of its minimum and of its maximum (NaNs are ignored unless a bucket
    holds nothing else); the first and last positions are always kept. A series
    that is already short enough comes back whole.

    Args:
        values: A one-dimensional numeric array.
        max_points: The most positions to return (at least 4).

    Returns:
        Sorted, unique integer positions into ``values``.

    Raises:
        ConfigError: If ``max_points`` is below 4.
    """
    if max_points < 4:
        raise ConfigError("max_points", max_points, "an integer >= 4")
    y = np.asarray(values, dtype=float)
    n = y.shape[0]
    if n <= max_points:
        return np.arange(n)
    # Two slots go to the first and last points, two per bucket to its extremes.
    buckets = (max_points - 2) // 2
    size = -(-n // buckets)  # ceil division: every bucket but the last is full
    padded = np.full(buckets * size, np.nan)
    padded[:n] = y
    grid = padded.reshape(buckets, size)
    nan = np.isnan(grid)
    low = np.where(nan, np.inf, grid).argmin(axis=1)
    high = np.where(nan, -np.inf, grid).argmax(axis=1)
    offsets = np.arange(buckets) * size
    picked = np.concatenate(([0, n - 1], offsets + low, offsets + high))
    return np.unique(picked[picked < n])


def metric_names(frame: pd.DataFrame) -> list[str]:
    """The metric columns of a timeline or averaged timeline, in column order.

    ``t``, ``n`` and the statistic columns (``m_std``, ``m_min``, ``m_max``,
    ``m_ci95``) are not metrics.
    """
    columns = [str(c) for c in frame.columns]
    names = set(columns)
    return [
        c
        for c in columns
        if c not in _RESERVED_COLUMNS
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
) -> go.Figure:
    """Every instance's timeline against the average, one subplot per metric.

    Instances are thin translucent lines, grouped in the legend so one click hides
    an instance in every subplot; hovering shows the instance and its value. The
    average is a thick line with ``band`` filled around it. Failed instances are
    left out and named in a note under the title; outlier instances are drawn in
    a warning colour. Traces longer than ``max_points`` are decimated (each
    bucket's minimum and maximum kept).

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
    if mean_frame is None:
        raise ConfigError("averaged", None, "an averaged timeline DataFrame (t, n, m, m_std...)")
    names = _pick_metrics(mean_frame, metrics)
    fig = make_subplots(
        rows=max(len(names), 1),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=min(0.08, 0.3 / max(len(names), 1)),
        subplot_titles=names,
    )
    for row, metric in enumerate(names, start=1):
        first = row == 1
        if show_instances:
            for inst in instances:
                trace = _instance_trace(inst, metric, max_points, show_legend=first)
                if trace is not None:
                    fig.add_trace(trace, row=row, col=1)
        for trace in _average_traces(mean_frame, metric, band, max_points, show_legend=first):
            fig.add_trace(trace, row=row, col=1)
        fig.update_yaxes(title_text=metric, row=row, col=1)
    if names:
        fig.update_xaxes(title_text="time (s)", row=len(names), col=1)
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
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
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


def _instance_trace(
    inst: _Instance, metric: str, max_points: int, *, show_legend: bool
) -> go.Scatter | None:
    frame = inst.timeline
    if metric not in frame.columns:
        return None
    t = frame["t"].to_numpy(dtype=float)
    y = frame[metric].to_numpy(dtype=float)
    # A timeline interleaves rows of different metrics (the sampler's and the
    # user's); a metric's NaN rows are "not sampled here", not gaps in its line.
    sampled = ~np.isnan(y)
    if not sampled.all():
        t, y = t[sampled], y[sampled]
    if y.size == 0:
        return None
    keep = decimate_indices(y, max_points)
    outlier = inst.outlier_in is not None
    label = f"instance {inst.index}"
    if inst.outlier_in:
        label += f" (outlier: {', '.join(inst.outlier_in)})"
    elif outlier:
        label += " (outlier)"
    color = OUTLIER_COLOR if outlier else INSTANCE_COLORS[inst.index % len(INSTANCE_COLORS)]
    return go.Scatter(
        x=t[keep],
        y=y[keep],
        mode="lines",
        name=label,
        legendgroup=f"instance-{inst.index}",
        showlegend=show_legend,
        line={"width": 2 if outlier else 1, "color": color},
        opacity=0.9 if outlier else 0.4,
        hovertemplate=f"{label}<br>t=%{{x:.3g}} s<br>{metric}=%{{y:.4g}}<extra></extra>",
    )


def _average_traces(
    mean_frame: pd.DataFrame, metric: str, band: Band | None, max_points: int, *, show_legend: bool
) -> list[go.Scatter]:
    t = mean_frame["t"].to_numpy(dtype=float)
    mean = mean_frame[metric].to_numpy(dtype=float)
    keep = decimate_indices(mean, max_points)
    traces: list[go.Scatter] = []
    if band is not None:
        lower, upper = band_bounds(mean_frame, metric, band)
        # The lower edge goes first: the upper edge fills down to it ("tonexty").
        traces.append(
            go.Scatter(
                x=t[keep],
                y=lower[keep],
                mode="lines",
                line={"width": 0},
                name=f"band ({band}) lower",
                legendgroup="average-band",
                showlegend=False,
                hoverinfo="skip",
            )
        )
        traces.append(
            go.Scatter(
                x=t[keep],
                y=upper[keep],
                mode="lines",
                line={"width": 0},
                fill="tonexty",
                fillcolor=BAND_COLOR,
                name=f"band ({band})",
                legendgroup="average-band",
                showlegend=show_legend,
                hoverinfo="skip",
            )
        )
    traces.append(
        go.Scatter(
            x=t[keep],
            y=mean[keep],
            mode="lines",
            name="average",
            legendgroup="average",
            showlegend=show_legend,
            line={"width": 3.5, "color": AVERAGE_COLOR},
            hovertemplate=f"average<br>t=%{{x:.3g}} s<br>{metric}=%{{y:.4g}}<extra></extra>",
        )
    )
    return traces
