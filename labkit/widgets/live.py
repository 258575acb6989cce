"""A live chart that grows while an experiment runs.

:class:`LiveTimeline` is an ``on_event`` callback and a plotly ``FigureWidget``:
pass it (or :meth:`LiveTimeline.handle`) to ``run_experiment(on_event=...)`` and
display :attr:`LiveTimeline.figure`. Samples are buffered and drawn in one batch
at most ``updates_per_s`` times a second, and less often when redrawing is slow:
redraws take at most ``max_load`` of the loop's time, so a fast experiment
neither floods the browser nor slows its instances down. The running average is recomputed from what
is drawn (decimated timelines) with :func:`labkit.timeline.average_timelines`;
:meth:`LiveTimeline.show_result` replaces it with the exact average at the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from labkit.errors import ConfigError
from labkit.experiment import InstanceEvent
from labkit.plots import (
    AVERAGE_COLOR,
    BAND_COLOR,
    DEFAULT_MAX_POINTS,
    INSTANCE_COLORS,
    OUTLIER_COLOR,
    Band,
    band_bounds,
    decimate_indices,
)

__all__ = ("LiveTimeline",)

_GAP = 0.06  # vertical space between subplots, as a fraction of the plot area


_UNSEEN: Any = object()


class _Series:
    """One instance's samples of one metric, grown in place."""

    __slots__ = ("t", "y")

    def __init__(self) -> None:
        self.t: list[float] = []
        self.y: list[float] = []


class LiveTimeline:
    """A ``FigureWidget`` fed by instance events: every instance and the running average.

    One subplot per metric shares the time axis (seconds since each instance
    started); metrics are learnt from the samples unless given. Only ``sample``
    and ``failed`` instance events matter; every other event (the runner's
    ``TaskEvent`` included) is ignored, cheaply.

    Args:
        metrics: The metrics to draw, in order; default: every metric seen, in
            order of first appearance.
        band: The band drawn around the running average (``"std"``, ``"minmax"``,
            ``"ci95"`` or ``None``).
        updates_per_s: The most redraws per second; samples in between are batched.
        max_load: The largest fraction of the event loop's time redraws may take
            (0.02: after a 10 ms redraw the next waits at least 0.5 s).
        max_points: The most points drawn per trace (min-max decimation).
        title: The chart's title.

    Raises:
        ConfigError: If ``band``, ``updates_per_s``, ``max_load`` or ``max_points``
            is invalid.
    """

    def __init__(
        self,
        metrics: Sequence[str] | None = None,
        *,
        band: Band | None = "std",
        updates_per_s: float = 4.0,
        max_load: float = 0.02,
        max_points: int = DEFAULT_MAX_POINTS,
        title: str = "",
    ) -> None:
        if band is not None and band not in ("std", "minmax", "ci95"):
            raise ConfigError("band", band, "'std', 'minmax', 'ci95' or None")
        if not updates_per_s > 0:
            raise ConfigError("updates_per_s", updates_per_s, "a number > 0")
        if not 0 < max_load <= 1:
            raise ConfigError("max_load", max_load, "a fraction > 0 and <= 1")
        if max_points < 4:
            raise ConfigError("max_points", max_points, "an integer >= 4")
        self.band = band
        self.max_points = max_points
        self._interval = 1.0 / updates_per_s
        self._max_load = max_load
        self._gap = self._interval  # seconds from one redraw's end to the next
        self._fixed_metrics = metrics is not None
        self._metrics: list[str] = list(metrics or ())
        # Per instance, per metric; None marks a metric seen but not drawn.
        self._series: dict[int, dict[str, _Series | None]] = {}
        self._failed: set[int] = set()
        self._pending: list[Any] = []  # sample events not drawn yet
        self._pending_failed: list[int] = []
        self._handle: asyncio.TimerHandle | None = None
        self._last_flush: float | None = None
        self._traces: dict[tuple[str, int | str], int] = {}
        self._labels: dict[tuple[str, int], str] = {}  # what each instance trace is called now
        self.flushes = 0
        """How many batched redraws have happened (for tests and curiosity)."""
        self.figure = go.FigureWidget(
            layout={
                "title": {"text": title},
                "template": "plotly_white",
                "height": 340,
                "margin": {"t": 60 if title else 30, "b": 40},
                "hovermode": "closest",
                "legend": {"groupclick": "togglegroup"},
            }
        )
        if self._metrics:
            with self.figure.batch_update():
                self._layout_axes()
                for metric in self._metrics:
                    self._add_average(metric)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics drawn so far, top to bottom."""
        return tuple(self._metrics)

    def __call__(self, event: Any) -> None:
        """Same as :meth:`handle`, so the chart itself can be an ``on_event`` callback."""
        self.handle(event)

    event_types = (InstanceEvent,)
    """What the chart reads: a bus given the chart (or ``chart.handle``) routes it only
    instance events, so a runner creates no task events for it."""

    def handle(self, event: Any) -> None:
        """Buffer an instance event and schedule a redraw (never draws synchronously
        inside a running loop, so the instance that recorded the sample is not delayed).
        """
        kind = getattr(event, "kind", None)
        if kind == "sample" and event.metrics:
            self._pending.append(event)  # the least work per event: sorted out at redraw
        elif kind == "failed":
            self._pending_failed.append(event.instance)
        else:
            return
        if self._handle is None:
            self._schedule()

    handle.event_types = event_types  # type: ignore[attr-defined]

    def _schedule(self) -> None:
        if self._handle is not None:
            return
        now = time.monotonic()
        if self._last_flush is None:
            self._last_flush = now  # the first redraw also waits, to batch the first burst
        delay = self._last_flush + self._gap - now
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # No loop (a script feeding events by hand): draw when due; call
            # flush() at the end for what came after the last redraw.
            if delay <= 0:
                self._timed_flush()
            return
        self._handle = loop.call_later(max(delay, 0.0), self._timed_flush)

    def _timed_flush(self) -> None:
        self._handle = None
        started = time.monotonic()
        self.flush()
        self._last_flush = time.monotonic()
        # Stretch the gap so that redraws stay under max_load of the loop's time.
        self._gap = max(self._interval, (self._last_flush - started) / self._max_load)

    def flush(self) -> None:
        """Draw every buffered sample now, in one batch."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        pending, self._pending = self._pending, []
        failed, self._pending_failed = self._pending_failed, []
        if not pending and not failed:
            return
        known = len(self._metrics)
        for event in pending:
            series = self._series.get(event.instance)
            if series is None:
                series = self._series[event.instance] = {}
            for metric, value in event.metrics.items():
                line = series.get(metric, _UNSEEN)
                if line is _UNSEEN:
                    line = series[metric] = self._new_line(metric)
                if line is not None:
                    line.t.append(event.offset)
                    line.y.append(value)
        touched = {event.instance for event in pending}
        new_metrics = len(self._metrics) > known
        self._failed.update(failed)
        with self.figure.batch_update():
            if new_metrics:
                self._layout_axes()
            for instance in sorted(touched | set(failed)):
                self._draw_instance(instance)
            if touched:
                self._draw_average()
        # Outside the batch: a batch applies trace updates by position at its end,
        # so reordering inside it would send them to the wrong traces.
        self._keep_average_on_top()
        self.flushes += 1

    def _new_line(self, metric: str) -> _Series | None:
        """A new instance series for ``metric``; ``None`` when the metric is not drawn."""
        if metric not in self._metrics:
            if self._fixed_metrics:
                return None
            self._metrics.append(metric)
        return _Series()

    def show_result(self, result: Any) -> None:
        """Replace the running average with ``result.averaged``, the exact one."""
        self.flush()
        averaged = getattr(result, "averaged", None)
        if averaged is None or not len(averaged):
            return
        with self.figure.batch_update():
            self._draw_average(averaged)

    def reset(self) -> None:
        """Forget every instance (keep the metrics' subplots) for a new run."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._pending.clear()
        self._pending_failed.clear()
        self._last_flush = None
        self._labels.clear()
        self._series.clear()
        self._failed.clear()
        kept = [(key, i) for key, i in self._traces.items() if isinstance(key[1], str)]
        # Dropping traces outside a batch: a batch applies updates by position.
        self.figure.data = [self.figure.data[i] for _, i in kept]
        with self.figure.batch_update():
            for trace in self.figure.data:
                trace.update(x=[], y=[])
        self._traces = {key: position for position, (key, _) in enumerate(kept)}

    def close(self) -> None:
        """Stop pending redraws and close the widget."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.figure.close()

    # Drawing ------------------------------------------------------------------------

    def _axes(self, metric: str) -> tuple[str, str]:
        position = self._metrics.index(metric)
        suffix = "" if position == 0 else str(position + 1)
        return f"x{suffix}", f"y{suffix}"

    def _layout_axes(self) -> None:
        count = len(self._metrics)
        height = (1.0 - _GAP * (count - 1)) / count
        axes: dict[str, Any] = {}
        for position, metric in enumerate(self._metrics):
            suffix = "" if position == 0 else str(position + 1)
            top = 1.0 - position * (height + _GAP)
            last = position == count - 1
            axes[f"xaxis{suffix}"] = {
                "anchor": f"y{suffix}",
                "domain": [0.0, 1.0],
                "matches": None if position == 0 else "x",
                "showticklabels": last,
                "title": {"text": "time (s)" if last else ""},
            }
            axes[f"yaxis{suffix}"] = {
                "anchor": f"x{suffix}",
                "domain": [max(top - height, 0.0), top],
                "title": {"text": metric},
            }
        self.figure.layout.update(axes, height=100 + 220 * count)
        for metric in self._metrics:
            x, y = self._axes(metric)
            for key, index in self._traces.items():
                if key[0] == metric:
                    self.figure.data[index].update(xaxis=x, yaxis=y)
            if (metric, "average") not in self._traces:
                self._add_average(metric)

    def _add_average(self, metric: str) -> None:
        self._add_band(metric)
        x, y = self._axes(metric)
        first = self._metrics.index(metric) == 0
        self._add(
            (metric, "average"),
            go.Scatter(
                x=[],
                y=[],
                xaxis=x,
                yaxis=y,
                mode="lines",
                name="average",
                legendgroup="average",
                showlegend=first,
                line={"width": 3.5, "color": AVERAGE_COLOR},
                hovertemplate=f"average<br>t=%{{x:.3g}} s<br>{metric}=%{{y:.4g}}<extra></extra>",
            ),
        )

    def _add_band(self, metric: str) -> None:
        if self.band is None:
            return
        x, y = self._axes(metric)
        common = {"x": [], "y": [], "xaxis": x, "yaxis": y, "mode": "lines", "hoverinfo": "skip"}
        # The lower edge first: the upper edge fills down to the trace just before it.
        self._add(
            (metric, "lower"),
            go.Scatter(
                **common,
                line={"width": 0},
                name=f"band ({self.band}) lower",
                showlegend=False,
                legendgroup="band",
            ),
        )
        self._add(
            (metric, "upper"),
            go.Scatter(
                **common,
                line={"width": 0},
                fill="tonexty",
                fillcolor=BAND_COLOR,
                name=f"band ({self.band})",
                legendgroup="band",
                showlegend=self._metrics.index(metric) == 0,
            ),
        )

    def _add(self, key: tuple[str, int | str], trace: go.Scatter) -> None:
        self.figure.add_trace(trace)
        self._traces[key] = len(self.figure.data) - 1

    def _draw_instance(self, instance: int) -> None:
        failed = instance in self._failed
        label = f"instance {instance}" + (" (failed)" if failed else "")
        color = INSTANCE_COLORS[instance % len(INSTANCE_COLORS)]
        for metric, series in self._series.get(instance, {}).items():
            if series is None:
                continue
            key = (metric, instance)
            if key not in self._traces:
                xaxis, yaxis = self._axes(metric)
                self._add(
                    key,
                    go.Scatter(
                        x=[],
                        y=[],
                        xaxis=xaxis,
                        yaxis=yaxis,
                        mode="lines",
                        legendgroup=f"instance-{instance}",
                        showlegend=self._metrics.index(metric) == 0,
                        opacity=0.45,
                        line={"width": 1, "color": color},
                    ),
                )
            t = np.asarray(series.t)
            y = np.asarray(series.y)
            keep = decimate_indices(y, self.max_points)
            trace = self.figure.data[self._traces[key]]
            trace.update(x=t[keep], y=y[keep])
            if self._labels.get(key) == label:
                continue  # restyling costs as much as new data: only when it changes
            self._labels[key] = label
            trace.update(
                name=label,
                line={
                    "dash": "dot" if failed else "solid",
                    "color": OUTLIER_COLOR if failed else color,
                },
                hovertemplate=f"{label}<br>t=%{{x:.3g}} s<br>{metric}=%{{y:.4g}}<extra></extra>",
            )

    def _draw_average(self, averaged: pd.DataFrame | None = None) -> None:
        for metric in self._metrics:
            frame = averaged if averaged is not None else self._running_average(metric)
            if frame is None or metric not in frame.columns:
                continue
            t = frame["t"].to_numpy(dtype=float)
            mean = frame[metric].to_numpy(dtype=float)
            keep = decimate_indices(mean, self.max_points)
            self.figure.data[self._traces[(metric, "average")]].update(x=t[keep], y=mean[keep])
            if self.band is None:
                continue
            try:
                lower, upper = band_bounds(frame, metric, self.band)
            except ConfigError:
                continue  # this average has no such statistic: draw the mean only
            self.figure.data[self._traces[(metric, "lower")]].update(x=t[keep], y=lower[keep])
            self.figure.data[self._traces[(metric, "upper")]].update(x=t[keep], y=upper[keep])

    def _running_average(self, metric: str) -> pd.DataFrame | None:
        """The average of ``metric`` over the live instances' drawn (decimated) samples."""
        from labkit.timeline import average_timelines

        frames = []
        for instance, series in self._series.items():
            line = series.get(metric)
            if line is None or instance in self._failed:
                continue
            t = np.asarray(line.t)
            y = np.asarray(line.y)
            keep = decimate_indices(y, self.max_points)
            frames.append(pd.DataFrame({"t": t[keep], metric: y[keep]}))
        return average_timelines(frames) if frames else None

    def _keep_average_on_top(self) -> None:
        """Move the band and average traces after the instances (drawn last, on top)."""
        order = sorted(
            self._traces.items(),
            key=lambda item: (isinstance(item[0][1], str), item[1]),
        )
        if [index for _, index in order] == list(range(len(order))):
            return
        self.figure.data = [self.figure.data[index] for _, index in order]
        self._traces = {key: position for position, (key, _) in enumerate(order)}
