"""The static chart of an experiment: one subplot per metric, instances against the average."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from labkit.errors import ConfigError, error_text
from labkit.live import DEFAULT_MAX_POINTS, AverageSnapshot, Band, decimate_line
from labkit.plots.style import DEFAULT_BAND, MetricLabels, XAxis, figure_layout, time_title
from labkit.plots.traces import InstanceLine, average_traces, instance_traces
from labkit.timeline import Method, average_timelines
from labkit.timeline.inputs import GAP_FACTOR, median_interval

__all__ = ("STAT_SUFFIXES", "band_bounds", "instance_lines", "metric_names", "timeline_figure")

STAT_SUFFIXES = ("_std", "_min", "_max", "_ci95", "_n", "_nonfinite")
"""Suffixes of the per-metric statistic columns of an averaged timeline."""

_BANDS = ("std", "minmax", "ci95")
_RESERVED_COLUMNS = frozenset({"t", "n"})
_BOTTOM = 120  # the bottom margin, px: the time axis' title, and the legend under it


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
    top = 90 if heading and note else 70 if heading or note else 40
    plot_height = 240 * max(len(names), 1) - 20
    fig.update_layout(
        title_text="<br>".join(
            part for part in (heading, f"<sup>{note}</sup>" if note else "") if part
        ),
        height=top + plot_height + _BOTTOM,
        margin={"t": top, "b": _BOTTOM},
        **figure_layout(plot_height),
    )
    return fig


def instance_lines(
    result: Any, metric: str, *, max_points: int = DEFAULT_MAX_POINTS
) -> list[InstanceLine]:
    """The lines of ``metric`` that :func:`timeline_figure` draws for ``result``'s
    instances that succeeded: on the averaged timeline's grid, decimated, outliers
    marked; the live chart shows them once a run's result is in.

    Args:
        result: An ``ExperimentResult`` whose averaged timeline is indexed by time.
        metric: The metric.
        max_points: The most points per line.

    Returns:
        One line per instance that recorded ``metric``, in instance order.

    Raises:
        ConfigError: If ``result`` has no averaged timeline with a ``t`` column.
    """
    instances, _, mean_frame, _ = _read_result(result, None, None)
    if mean_frame is None or "t" not in mean_frame.columns:
        raise ConfigError("result", result, "a result whose averaged timeline has a 't' column")
    config = getattr(result, "config", None) or {}
    drawing = _Drawing(
        band=None,
        x_axis="time",
        max_points=max_points,
        labels=MetricLabels.of(config),
        max_gap=config.get("max_gap"),
        method=config.get("method"),
        step=_grid_step(mean_frame["t"].to_numpy(dtype=float)),
    )
    return drawing.lines(metric, instances)


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
            traces += instance_traces(
                self.lines(metric, instances),
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

    def lines(self, metric: str, instances: Sequence[_Instance]) -> list[InstanceLine]:
        """The instances' lines of ``metric`` (those that recorded it)."""
        gap = self._gap(metric, instances)
        lines = [self._line(inst, metric, gap) for inst in instances]
        return [line for line in lines if line is not None]

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
        t, y = decimate_line(t, y, self.max_points)
        if inst.outlier_in is None:
            return InstanceLine(inst.index, t, y)
        note = f"outlier: {', '.join(inst.outlier_in)}" if inst.outlier_in else "outlier"
        return InstanceLine(inst.index, t, y, state="outlier", note=note)

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
