"""A live chart that grows while an experiment runs: a thin view over the live model.

:class:`LiveTimeline` is a :class:`labkit.events.Watcher` and a plotly
``FigureWidget``: pass it to ``run_experiment(on_event=...)`` and display
:attr:`LiveTimeline.figure`. It reads the instances' state changes and each
attempt's :class:`labkit.SampleLog`, which it reads at its frames: a run builds no
event per sample for it. Everything else happens in frames, which keep coming
while a log is read. A :class:`~labkit.widgets.frames.FrameBudget` decides when a
frame is due (at most ``updates_per_s`` a second, drawing at most ``max_load`` of
the time); a frame takes a snapshot of the
:class:`labkit.live.LiveTimelineModel` and maps it to traces with the static
chart's builders (:func:`labkit.plots.instance_traces`,
:func:`labkit.plots.average_traces`), sending only the traces whose data changed.
:meth:`LiveTimeline.show_result` replaces the running average with the exact one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import ConfigError
from labkit.events import Watcher
from labkit.live import (
    DEFAULT_MAX_POINTS,
    AverageSnapshot,
    Band,
    LinePoints,
    LineSnapshot,
    LiveSnapshot,
    LiveTimelineModel,
)
from labkit.plots import (
    DEFAULT_BAND,
    InstanceLine,
    MetricLabels,
    XAxis,
    average_traces,
    figure_layout,
    instance_lines,
    instance_traces,
    metric_names,
    time_title,
)
from labkit.results import ROUND_TO_INT
from labkit.timeline import Method
from labkit.widgets.figure import LiveFigure
from labkit.widgets.frames import FrameBudget

__all__ = ("LiveTimeline",)

_GAP = 0.06  # vertical space between subplots, as a fraction of the plot area
_DATA_KEYS = ("x", "y", "customdata")
_BOTTOM = 110  # the bottom margin, px: the time axis' title, and the legend under it

PLACEHOLDER = "The live chart starts with the first sample: press Start."


class LiveTimeline(Watcher):
    """A ``FigureWidget`` fed by instance events: every instance and the running average.

    One subplot per metric shares the time axis (seconds since each instance
    started); metrics are learnt from the samples unless given. Only instance
    events matter; a bus routes nothing else to :meth:`handle`. Before the first
    sample the chart shows a one-line placeholder instead of empty axes.

    Args:
        metrics: The metrics to draw, in order; default: every metric seen, in
            order of first appearance.
        band: The band drawn around the running average: ``"ci95"`` (the
            default, the spread summary tables print after "±"), ``"std"``,
            ``"minmax"`` or ``None``. With ``"minmax"`` the instances' lines are
            drawn on the running grid (the model's ``lines="grid"``), so that the
            band holds every line; with the others, from their samples, so that
            every peak shows. Settable later (:attr:`band`).
        updates_per_s: The most redraws per second; samples in between are batched.
        max_load: The largest fraction of the event loop's time redraws may take
            (0.05: after a 10 ms redraw the next waits at least 0.2 s). Reading
            the samples into the model is not counted: its cost is mostly per
            sample, about the same however often frames come.
        max_points: The most points kept and drawn per instance line.
        title: The chart's title.
        x_axis: ``"time"`` (seconds since each instance started) or ``"step"``
            (the samples' ``step`` values); default: ``"step"`` when the first
            samples carry a ``step``, as the result's average then goes by step.
        clock: The clock frames are timed on (a test's ``FakeClock``).
        on_frame: Called with each frame's snapshot after it is drawn (the
            experiment panel moves its progress bars then, not per sample).
        max_gap: The running average's gaps, as the experiment's ``max_gap``
            (see :class:`labkit.live.LiveTimelineModel`): a gap is drawn as a
            break, never bridged.
        method: How each metric is averaged, as the experiment's ``method``.
        units: Units by metric, for axis titles and hover values, beside the
            sampler's (as ``Experiment(units=)``).
        display_names: Names to show by metric (as ``Experiment(display_names=)``).

    Raises:
        ConfigError: If ``band``, ``updates_per_s``, ``max_load``, ``max_points``,
            ``max_gap``, ``method``, ``units`` or ``display_names`` is invalid.
    """

    def __init__(
        self,
        metrics: Sequence[str] | None = None,
        *,
        band: Band | None = DEFAULT_BAND,
        updates_per_s: float = 4.0,
        max_load: float = 0.05,
        max_points: int = DEFAULT_MAX_POINTS,
        title: str = "",
        x_axis: XAxis | None = None,
        clock: Clock = SYSTEM_CLOCK,
        on_frame: Callable[[LiveSnapshot], object] | None = None,
        max_gap: float | Mapping[str, float | None] | None = None,
        method: Method | Mapping[str, Method] | None = None,
        units: Mapping[str, str] | None = None,
        display_names: Mapping[str, str] | None = None,
    ) -> None:
        _check_band(band)
        if x_axis not in (None, "time", "step"):
            raise ConfigError("x_axis", x_axis, "'time', 'step' or None")
        self._band = band
        self.labels = MetricLabels.of(units=units, display_names=display_names)
        """How metrics are named and in which units, on axes and in hover labels."""
        self.model = LiveTimelineModel(
            metrics,
            max_points=max_points,
            round_to_int=ROUND_TO_INT,
            on=None if x_axis is None else "t" if x_axis == "time" else "step",
            clock=clock,
            max_gap=max_gap,
            method=method,
            lines=_lines_for(band),
        )
        """The model behind the chart: ``chart.model.snapshot()`` is what it shows."""
        self.budget = FrameBudget(updates_per_s, max_load, clock=clock)
        """When frames are due, and what the last one cost (``budget.last_cost``, s)."""
        self._clock = clock
        self._on_frame = on_frame
        self._title = title
        self._x_axis: XAxis = x_axis or "time"
        self._frame: asyncio.Task[None] | None = None
        self._drawn_version = -1
        self._layout_key: tuple[str, ...] | None = None  # the metrics the axes are laid out for
        self._hidden = True  # the placeholder shows: the axes (if any) are hidden
        self._drawn: list[dict[str, Any]] = []  # the trace dicts on the figure, in order
        self._memo: dict[str, tuple[tuple[Any, ...], list[dict[str, Any]]]] = {}
        self._max_points = max_points
        self._final: dict[str, list[InstanceLine]] = {}  # a result's lines, once it is in
        self._stopped: frozenset[int] = frozenset()  # ended by the user's Stop, not failed
        self.flushes = 0
        """How many redraws have happened (for tests and curiosity)."""
        self.figure = LiveFigure(layout=figure_layout(220.0))
        self._show_placeholder()

    @property
    def band(self) -> Band | None:
        """The band drawn around the average (see the class); lines follow it."""
        return self._band

    @band.setter
    def band(self, band: Band | None) -> None:
        _check_band(band)
        self._band = band
        self.model.lines = _lines_for(band)
        self._memo.clear()
        self._drawn_version = -1

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics drawn so far, top to bottom."""
        return self.model.metrics

    def handle(self, event: Any) -> None:
        """Take any instance event (a script feeding the chart by hand): the model
        keeps it, and a frame is scheduled if none is (never draws here)."""
        self.model.handle(event)
        if self._frame is None:
            self._schedule()

    on_instance_started = on_samples = on_instance_finished = on_instance_failed = handle

    def _schedule(self, *, or_draw: bool = True) -> None:
        """Schedule the next frame on the running loop; with no loop (a script feeding
        events by hand), draw now if one is due and ``or_draw``."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # Call flush() at the end for what came after the last redraw.
            if or_draw and self.budget.delay() <= 0:
                self.flush()
            return
        self._frame = loop.create_task(self._next_frame(), name="labkit-live-frame")

    async def _next_frame(self) -> None:
        await self._clock.sleep(self.budget.delay())
        self._frame = None
        self._frame_now()

    def _frame_now(self) -> None:
        # Reading the samples costs about the same however they are batched; drawing
        # is what more frames would add, so only drawing counts against max_load
        # (counting both would make a late frame read more and come later still).
        self.model.update()
        started = self.budget.now
        self._draw()
        self.budget.drew(started)
        if self._on_frame is not None:
            self._on_frame(self.model.snapshot())
        if self.model.feeding and self._frame is None:
            # Samples go into the logs with no event to say so: keep reading them.
            self._schedule(or_draw=False)

    def _cancel_frame(self) -> None:
        if self._frame is not None:
            self._frame.cancel()
            self._frame = None

    def flush(self) -> None:
        """Draw everything received now, in one frame."""
        self._cancel_frame()
        self._frame_now()

    def show_result(self, result: Any) -> None:
        """Replace the running average with ``result.averaged``, the exact one, and draw
        with the units and display names the result's config keeps."""
        config = getattr(result, "config", None) or {}
        if config.get("units") or config.get("display_names"):
            self.set_labels(config.get("units"), config.get("display_names"))
        averaged = getattr(result, "averaged", None)
        self._memo.clear()
        self._final = {}
        if hasattr(result, "instances") and averaged is not None and "t" in averaged.columns:
            # The instances as the final average saw them, on its grid, as the static
            # chart draws them: a min-max band holds every line.
            self._final = {
                metric: instance_lines(result, metric, max_points=self._max_points)
                for metric in metric_names(averaged)
            }
        self.model.complete(averaged)
        self.flush()

    def set_labels(
        self,
        units: Mapping[str, str] | None = None,
        display_names: Mapping[str, str] | None = None,
    ) -> None:
        """Show metrics with these units and display names from the next frame on
        (a panel calls it at Start with its experiment's ``units`` and ``display_names``).

        Raises:
            ConfigError: If ``units`` or ``display_names`` is not a mapping of str.
        """
        self.labels = MetricLabels.of(units=units, display_names=display_names)
        self._memo.clear()
        self._layout_key = None  # axis titles are laid out again
        self._drawn_version = -1

    def watch(self, model: LiveTimelineModel) -> None:
        """Show another model from now on (a sweep's chart follows its best trial).

        Events given to :meth:`handle` go to ``model`` afterwards; the chart is
        redrawn from it at once.
        """
        self._cancel_frame()
        self.model = model
        model.lines = _lines_for(self._band)
        self._memo.clear()
        self._final = {}
        self._drawn_version = -1
        self.flush()

    def mark_stopped(self, instances: Iterable[int]) -> None:
        """Label these instances' lines "stopped" (the user stopped them), not "failed"."""
        self._stopped = frozenset(instances)
        self._memo.clear()
        self._drawn_version = -1

    def reset(self) -> None:
        """Forget every instance for a new run; the chart shows its placeholder again."""
        self._stopped = frozenset()
        self._cancel_frame()
        self.model.reset()
        self.budget.reset()
        self._memo.clear()
        self._final = {}
        self._show_placeholder()

    def close(self) -> None:
        """Stop pending redraws and close the widget."""
        self._cancel_frame()
        self.figure.close()

    # Drawing ------------------------------------------------------------------------

    def _draw(self) -> None:
        snapshot = self.model.snapshot()
        if snapshot.version == self._drawn_version:
            return
        if snapshot.empty:
            self._show_placeholder()
            self._drawn_version = snapshot.version
            return
        self._drawn_version = snapshot.version
        self._x_axis = "step" if snapshot.axis == "step" else "time"
        traces = self._traces(snapshot)
        same = _same_shapes(traces, self._drawn)
        if snapshot.metrics != self._layout_key:
            self._layout_axes(snapshot.metrics)
        elif self._hidden:
            self._reveal()
        if not same:
            # New traces go in without their data, which follows in one restyle:
            # adding traces checks every array one by one, a restyle does not.
            self.figure.data = []
            self.figure.add_traces(
                [{k: v for k, v in trace.items() if k not in _DATA_KEYS} for trace in traces]
            )
            self._drawn = [{} for _ in traces]
        self._restyle(traces)
        self._drawn = traces
        self.flushes += 1

    def _restyle(self, traces: list[dict[str, Any]]) -> None:
        """Send the data of the traces that changed, one restyle per kind of data.

        ``plotly_restyle`` updates many traces in one message, about ten times
        cheaper than updating them one by one (each checks its arrays on its own).
        """
        changes: dict[tuple[int, ...], dict[str, list[Any]]] = {}
        for key in _DATA_KEYS:
            positions = tuple(
                position
                for position, (new, old) in enumerate(zip(traces, self._drawn, strict=True))
                if key in new and new[key] is not old.get(key)
            )
            if positions:
                changes.setdefault(positions, {})[key] = [traces[p][key] for p in positions]
        for positions, data in changes.items():
            self.figure.plotly_restyle(data, trace_indexes=list(positions))

    def _traces(self, snapshot: LiveSnapshot) -> list[dict[str, Any]]:
        """Every trace, per metric: instances first, then band and average on top."""
        traces: list[dict[str, Any]] = []
        for position, metric in enumerate(snapshot.metrics):
            lines = snapshot.lines_of(metric)
            average = snapshot.averages.get(metric)
            key = (*lines, average)
            memo = self._memo.get(metric)
            if (
                memo is not None
                and len(memo[0]) == len(key)
                and all(a is b for a, b in zip(memo[0], key, strict=True))
            ):
                traces += memo[1]
                continue
            built = self._metric_traces(metric, lines, average, first=position == 0)
            suffix = "" if position == 0 else str(position + 1)
            for trace in built:
                trace["xaxis"], trace["yaxis"] = f"x{suffix}", f"y{suffix}"
            self._memo[metric] = (key, built)
            traces += built
        return traces

    def _metric_traces(
        self,
        metric: str,
        lines: Sequence[LineSnapshot],
        average: AverageSnapshot | None,
        *,
        first: bool,
    ) -> list[dict[str, Any]]:
        final = self._final.get(metric)
        shown = [
            InstanceLine(
                line.instance,
                line.t,
                line.y,
                state="failed" if line.failed else "ok",
                note="" if not line.failed else _ENDED[line.instance in self._stopped],
            )
            for line in lines
            if final is None or line.failed
        ]
        if final is not None:
            shown = sorted([*final, *shown], key=lambda line: line.instance)
        built = instance_traces(
            shown, metric, show_legend=first, x_axis=self._x_axis, labels=self.labels
        )
        if average is not None and average.t.size:
            built += average_traces(
                average, self._band, show_legend=first, x_axis=self._x_axis, labels=self.labels
            )
        return built

    def _layout_axes(self, metrics: Sequence[str]) -> None:
        self._layout_key = tuple(metrics)
        count = len(metrics)
        height = (1.0 - _GAP * (count - 1)) / count
        axes: dict[str, Any] = {}
        for position, metric in enumerate(metrics):
            suffix = "" if position == 0 else str(position + 1)
            top = 1.0 - position * (height + _GAP)
            last = position == count - 1
            axes[f"xaxis{suffix}"] = {
                "visible": True,
                "anchor": f"y{suffix}",
                "domain": [0.0, 1.0],
                "matches": None if position == 0 else "x",
                "showticklabels": last,
                "title": {"text": time_title(self._x_axis) if last else ""},
            }
            axes[f"yaxis{suffix}"] = {
                "visible": True,
                "anchor": f"x{suffix}",
                "domain": [max(top - height, 0.0), top],
                "title": {"text": self.labels.title(metric)},
            }
        existing = self.figure.layout.to_plotly_json()
        for key in [key for key in axes if key not in existing]:
            # A new axis goes in whole, in a message of its own: plotly.js refuses an
            # edit that sets an axis and one of its attributes at once, which is
            # what a batch would send.
            self.figure.layout[key] = axes.pop(key)
        self._show_axes(axes, count)

    def _reveal(self) -> None:
        """The placeholder gives way to the axes laid out for the same metrics before."""
        assert self._layout_key is not None
        count = len(self._layout_key)
        shown: dict[str, Any] = {}
        for position in range(count):
            suffix = "" if position == 0 else str(position + 1)
            shown[f"xaxis{suffix}.visible"] = shown[f"yaxis{suffix}.visible"] = True
        self._show_axes(shown, count)

    def _show_axes(self, axes: dict[str, Any], count: int) -> None:
        """Apply ``axes`` (whole axes, or attributes by path) to a chart of ``count``
        subplots, the placeholder gone.

        ``plotly_relayout`` of flat paths: a third of the cost of ``layout.update``
        with nested dicts, which walks plotly's property tree.
        """
        # Arrays of objects (annotations) are set as properties: a relayout would
        # leave plotly's Python view of them as it was.
        self.figure.layout.annotations = ()
        top = 60 if self._title else 30
        plot_height = 220 * count - 10
        self.figure.plotly_relayout(
            {
                **axes,
                "height": top + plot_height + _BOTTOM,
                "title.text": self._title,
                "margin.t": top,
                "margin.b": _BOTTOM,
                "legend.y": figure_layout(plot_height)["legend"]["y"],
                "showlegend": None,
            }
        )
        self._hidden = False

    def _show_placeholder(self) -> None:
        """No samples yet: one line of text, no axes (not empty axes from -1 to 6).

        The traces and axes stay on the figure, emptied and hidden: when the next
        run draws the same metrics (a new Start), its first frame only restyles
        them instead of building the chart again.
        """
        self._drawn_version = -1
        if self._drawn:
            empty = np.empty(0)
            cleared = [
                {key: empty if key in _DATA_KEYS else value for key, value in trace.items()}
                for trace in self._drawn
            ]
            self._restyle(cleared)
            self._drawn = cleared
        hidden: dict[str, Any] = {"xaxis.visible": False, "yaxis.visible": False}
        for key in self.figure.layout.to_plotly_json():
            if key.startswith(("xaxis", "yaxis")) and key not in ("xaxis", "yaxis"):
                hidden[f"{key}.visible"] = False  # the subplots of a run
        self.figure.layout.annotations = [_PLACEHOLDER_NOTE]
        self.figure.plotly_relayout(
            {
                **hidden,
                "height": 120,
                "title.text": self._title,
                "margin.t": 40 if self._title else 20,
                "margin.b": 20,
                "showlegend": False,
            }
        )
        self._hidden = True


_ENDED = ("failed", "stopped")  # a line's note once its instance ended early, by stopped

_PLACEHOLDER_NOTE = {
    "text": PLACEHOLDER,
    "showarrow": False,
    "xref": "paper",
    "yref": "paper",
    "x": 0.5,
    "y": 0.5,
    "font": {"size": 14, "color": "#666"},
}


def _shape(trace: dict[str, Any]) -> tuple[Any, ...]:
    """Everything about a trace but its data: equal shapes update in place."""
    return tuple(
        (key, repr(value)) for key, value in sorted(trace.items()) if key not in _DATA_KEYS
    )


def _same_shapes(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    return len(a) == len(b) and all(_shape(x) == _shape(y) for x, y in zip(a, b, strict=True))


def _check_band(band: Any) -> None:
    """Raises ConfigError: ``band`` is not one the chart draws."""
    if band is not None and band not in ("std", "minmax", "ci95"):
        raise ConfigError("band", band, "'std', 'minmax', 'ci95' or None")


def _lines_for(band: Band | None) -> LinePoints:
    """What the lines are drawn from under ``band``: a min-max band must hold them."""
    return "grid" if band == "minmax" else "samples"
