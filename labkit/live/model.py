"""The live chart's model: instance events in, immutable snapshots out, no UI.

:class:`LiveTimelineModel` keeps the books of a run as a chart sees it: which
instances started, finished or failed, each instance's decimated samples per metric
(:class:`~labkit.live.decimation.MinMaxLine`), and the running average
(:class:`~labkit.live.average.RunningAverage`). A line is drawn from its samples
(peaks between grid points stay visible), or with ``lines="grid"`` from the
points the average reads, the instance's values on the running grid, so that a
min-max band holds every line (a chart drawing a min-max band asks for that). It
hands out
:class:`~labkit.live.snapshots.LiveSnapshot` records that a widget only maps to
traces. Whether lines run over seconds or steps is a strategy object
(:mod:`labkit.live.axes`), chosen from the first samples or given.

How samples reach it (the *intake*, one part of the class below): always in an
attempt's :class:`~labkit.samplelog.SampleLog`, announced by a
:class:`~labkit.events.TimelineEvent` (the model is a
:class:`~labkit.events.Watcher` and reads no per-sample event) and read in bulk at
each update; a model fed ``sample`` events by hand keeps them in logs of its own.
Receiving an event costs one list append; the work (reading the logs' new rows,
decimating, gridding, the statistics) happens once per frame in
:meth:`LiveTimelineModel.update`, with numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from labkit._checks import is_int, is_real
from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import ConfigError
from labkit.events import InstanceEvent, TimelineEvent, Watcher
from labkit.live.average import RunningAverage
from labkit.live.axes import AxisRule, axis_rule
from labkit.live.columns import SampleColumns
from labkit.live.decimation import DEFAULT_MAX_POINTS, MinMaxLine, decimate_line
from labkit.live.snapshots import (
    AverageSnapshot,
    Axis,
    FloatArray,
    IntArray,
    LineSnapshot,
    LiveSnapshot,
)
from labkit.samplelog import SampleLog
from labkit.timeline.inputs import Method, check_max_gap, check_method

__all__ = ("LinePoints", "LiveTimelineModel")

LinePoints = Literal["samples", "grid"]
"""What a line is drawn from: its samples, or its values on the running grid."""

_Prepared = tuple[IntArray, FloatArray, dict[str, FloatArray], FloatArray]
"""A chunk ready for the lines: owners, times on the axis, metrics to draw, offsets."""


class LiveTimelineModel(Watcher):
    """Instance events in, immutable snapshots out: what a live chart draws.

    Only instance events matter (``sample``, and ``started``, ``finished``,
    ``failed``) and an attempt's :class:`~labkit.events.TimelineEvent`; anything
    else is dropped at the next :meth:`update`. Once an attempt's timeline event
    has come, its samples are read from its log at each update, in bulk, and its
    ``sample`` events are let pass (they hold the same samples). A
    ``started`` event for an instance that already has samples begins a new
    attempt: its old line is dropped, as the result keeps only the last attempt.
    A failed instance's line stays (marked) but leaves the average, as in the
    result. Samples are expected in time order per instance; a sample older than
    its line's latest is drawn but does not enter the running average.

    Args:
        metrics: The metrics to keep, in order; default: every metric seen, in
            order of first appearance.
        max_points: The most points kept per instance line (min/max decimation).
        max_grid_points: The most grid points kept per average (the grid is
            thinned by powers of two past it).
        step: The average's grid step in seconds (on ``"t"``); default: the step
            :func:`labkit.timeline.average_timelines` chooses for the samples of
            the first update that has at least two sample times in an instance.
        round_to_int: Metrics whose mean is rounded to a whole number (halves up),
            as the result rounds error counts (a summed metric on its running
            total, as the result does).
        max_gap: As for :func:`labkit.timeline.average_timelines`: two samples of a
            metric further apart than this (seconds) are a gap the average does
            not bridge. ``None``: 3 times the median interval between the
            metric's samples in the first line that has two (all of that read:
            the step is learnt the same way; the final average takes the median
            over every interval, the same for a steady sampler).
        method: As for :func:`labkit.timeline.average_timelines`: ``"linear"``,
            ``"previous"``, ``"sum"`` or per metric; ``None``: ``errors`` summed,
            the rest linear.
        on: ``"t"``: lines over seconds (``offset``); ``"step"``: over each
            sample's ``step`` value (samples without one are left out, and the
            average is per whole step, with no interpolation, as the result's);
            default: ``"step"`` when the first samples read carry a ``step``.
        clock: The clock that stamps snapshots.
        lines: What a line is drawn from: ``"samples"`` (its samples, min/max
            decimated: every peak stays visible) or ``"grid"`` (its values on the
            running grid, the points the average reads, decimated the same way: a
            min-max band then holds every line, as on the final chart; a line has
            its samples until it has grid points, and once its instance failed).
            Settable later (:attr:`lines`).

    Raises:
        ConfigError: If ``max_points`` or ``max_grid_points`` is below 4,
            ``step`` is not a positive number, ``max_gap`` or ``method`` is not
            one of the forms above, or ``lines`` is neither ``"samples"`` nor
            ``"grid"``.
    """

    def __init__(
        self,
        metrics: Sequence[str] | None = None,
        *,
        max_points: int = DEFAULT_MAX_POINTS,
        max_grid_points: int = DEFAULT_MAX_POINTS,
        step: float | None = None,
        round_to_int: Iterable[str] = (),
        on: Axis | None = None,
        clock: Clock = SYSTEM_CLOCK,
        max_gap: float | Mapping[str, float | None] | None = None,
        method: Method | Mapping[str, Method] | None = None,
        lines: LinePoints = "samples",
    ) -> None:
        _check_options(on, max_points, max_grid_points, step)
        self._on_grid = _check_lines(lines)
        check_max_gap(max_gap)
        check_method(method)
        self._max_gap = max_gap
        self._method = method
        self.max_points = max_points
        self.max_grid_points = max_grid_points
        self._fixed_step = None if step is None else float(step)
        self._fixed_axis: Axis | None = on
        self._fixed_metrics = metrics is not None
        self._initial_metrics = tuple(metrics or ())
        self._rounded = frozenset(round_to_int)
        self._clock = clock
        self._staged: list[InstanceEvent | TimelineEvent] = []
        self._announced: set[int] = set()  # instances whose attempt's log was announced
        self._own: dict[int, SampleLog] = {}  # hand-fed samples, per instance's attempt
        self._clear()

    def _clear(self) -> None:
        self._metrics: list[str] = list(self._initial_metrics)
        self._lines: dict[tuple[int, str], MinMaxLine] = {}
        # Each line's record, and the version of its grid row it was drawn from (-1: none).
        self._line_cache: dict[tuple[int, str], tuple[int, LineSnapshot]] = {}
        self._instances: set[int] = set()  # every instance that had a line
        self._latest: dict[int, float] = {}  # instance -> its latest sample's offset (s)
        self._failed: set[int] = set()
        self._finished: set[int] = set()
        self._axis: AxisRule | None = None
        self._average: RunningAverage | None = None
        if self._fixed_axis is not None:
            self._choose_axis(self._fixed_axis)
        self._feeds: dict[int, _Feed] = {}  # instance -> the log its samples are read from
        self._version = 0
        self._samples = 0
        self._snapshot: LiveSnapshot | None = None
        self._final: dict[str, AverageSnapshot] = {}

    # ----------------------------------------------------------------------------------
    # Intake: every sample reaches the model in a SampleLog, read in bulk at updates.
    # State changes are staged in order and applied at the next update; they reach
    # the bookkeeping below through _started, _failed_now and _finished_now.
    # ----------------------------------------------------------------------------------

    def handle(self, event: Any) -> None:
        """Receive one event; it is read at the next :meth:`update`.

        An attempt's samples come in its log (a :class:`TimelineEvent`). A model
        fed by hand may give ``sample`` events instead: they go to a log of the
        model's own for that attempt, read the same way. A sample of an attempt
        whose log was announced is in that log already, and is let pass.
        """
        kind = event.__class__
        if kind is InstanceEvent:
            instance = event.instance
            if event.kind == "sample":
                if instance not in self._announced:
                    self._own_log(instance, event.time).append(event.offset, event.metrics or {})
                return
            if event.kind == "log":
                return
            self._staged.append(event)
            if event.kind == "started":
                # A new attempt: a new log, of its own (announced next) or the model's.
                self._announced.discard(instance)
                self._own.pop(instance, None)
                self._own_log(instance, event.time)
            return
        if kind is TimelineEvent:
            self._announced.add(event.instance)
            self._staged.append(event)

    on_instance_started = on_samples = on_instance_finished = on_instance_failed = handle

    def _own_log(self, instance: int, time: float) -> SampleLog:
        """The model's own log of ``instance``'s current attempt, for hand-fed samples."""
        log = self._own.get(instance)
        if log is None:
            log = self._own[instance] = SampleLog()
            self._staged.append(TimelineEvent(instance, time, log))
        return log

    @property
    def feeding(self) -> bool:
        """Whether some attempt's log is read at each update (its attempt has not ended,
        as of the last update): a view keeps its frames coming, since the attempt's
        samples may come with no event at all."""
        return bool(self._feeds)

    @property
    def lines(self) -> LinePoints:
        """What lines are drawn from: ``"samples"`` or ``"grid"`` (see the class)."""
        return "grid" if self._on_grid else "samples"

    @lines.setter
    def lines(self, lines: LinePoints) -> None:
        on_grid = _check_lines(lines)
        if on_grid != self._on_grid:
            self._on_grid = on_grid
            self._version += 1  # a view redraws: every line changes

    def update(self) -> bool:
        """Apply the staged state changes, in order, and read the new rows of every log.

        Returns:
            Whether anything changed.
        """
        changed = False
        if self._staged:
            staged, self._staged = self._staged, []
            for event in staged:
                changed |= self._apply(event)
        for instance in list(self._feeds):
            changed |= self._read_feed(instance)
        if changed:
            self._version += 1
        return changed

    def _read_feed(self, instance: int) -> bool:
        """Read the rows ``instance``'s log gained since the last read."""
        feed = self._feeds.get(instance)
        if feed is None or len(feed.log) <= feed.read:
            return False  # nothing new: no arrays made for it
        offsets, values = feed.log.read(feed.read)
        count = offsets.shape[0]
        if not count:
            return False
        feed.read += count
        prepared = self._prepare(SampleColumns.of_instance(instance, offsets, values))
        if prepared is None:
            return False
        return self._add_instance(instance, None, *prepared[1:])

    def _apply(self, event: InstanceEvent | TimelineEvent) -> bool:
        """A state change: a log announced, an attempt started, finished or failed."""
        instance = event.instance
        if type(event) is TimelineEvent:
            self._feeds[instance] = _Feed(event.log)
            return False
        if event.kind == "started":
            self._feeds.pop(instance, None)  # the last attempt's: its samples go anyway
            return self._started(instance)
        if event.kind not in ("failed", "finished"):
            return False
        # The attempt ended: its log holds every sample it will have.
        read = self._read_feed(instance)
        self._feeds.pop(instance, None)
        if event.kind == "failed":
            return self._failed_now(instance) or read
        self._finished_now(instance)
        return True

    # ----------------------------------------------------------------------------------
    # Bookkeeping: instances, lines, the average
    # ----------------------------------------------------------------------------------

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics known so far, in order."""
        return tuple(self._metrics)

    @property
    def axis(self) -> Axis | None:
        """``"t"`` or ``"step"`` once known (see ``on``)."""
        return None if self._axis is None else self._axis.name

    @property
    def step(self) -> float | None:
        """The average's grid step in seconds, once known."""
        return self._fixed_step if self._average is None else self._average.step

    def reset(self) -> None:
        """Forget every instance and sample (for a new run); configured metrics stay."""
        version = self._version
        self._staged.clear()
        self._announced.clear()
        self._own.clear()
        self._clear()
        self._version = version + 1  # versions only grow: a view sees the change

    def complete(self, averaged: pd.DataFrame | None) -> None:
        """Replace the running averages by a finished run's exact ``averaged`` timeline.

        Reads what is pending first. Metrics ``averaged`` lacks keep their running
        average.
        """
        self.update()
        if averaged is None or not len(averaged):
            return
        for metric in self._metrics:
            if metric in averaged.columns:
                self._final[metric] = AverageSnapshot.from_frame(averaged, metric, final=True)
        self._version += 1

    def _choose_axis(self, name: Axis) -> AxisRule:
        """Fix the axis (given, or learnt from the first samples) and start the average."""
        axis = self._axis = axis_rule(name)
        self._metrics = [metric for metric in self._metrics if axis.is_metric(metric)]
        self._average = RunningAverage(
            axis,
            step=self._fixed_step,
            max_gap=self._max_gap,
            method=self._method,
            round_to_int=self._rounded,
            max_grid_points=self.max_grid_points,
        )
        return axis

    def _started(self, instance: int) -> bool:
        """A new attempt: an instance seen before starts over (its old lines go)."""
        had = instance in self._instances or instance in self._failed
        self._failed.discard(instance)
        self._finished.discard(instance)
        if had:
            self._latest.pop(instance, None)
            for key in [key for key in self._lines if key[0] == instance]:
                del self._lines[key]
                self._line_cache.pop(key, None)
            if self._average is not None:
                self._average.drop(instance)
        return had

    def _failed_now(self, instance: int) -> bool:
        """An instance failed: its lines stay, marked, and it leaves the average."""
        if instance in self._failed:
            return False
        self._failed.add(instance)
        if self._average is not None:
            self._average.drop(instance)
        return True

    def _finished_now(self, instance: int) -> None:
        self._finished.add(instance)
        if instance not in self._failed and self._average is not None:
            self._average.close(instance)

    def _prepare(self, chunk: SampleColumns) -> _Prepared | None:
        """The owners, the times (offsets or steps) and the metrics to draw of a chunk;
        learns new metrics and, with the first samples, the axis."""
        axis = self._axis or self._choose_axis("step" if "step" in chunk.values else "t")
        columns: dict[str, FloatArray] = {}
        for metric in self._in_order(chunk.names):
            if not axis.is_metric(metric):
                continue
            if metric not in self._metrics:
                if self._fixed_metrics:
                    continue
                self._metrics.append(metric)
            columns[metric] = chunk.values[metric]
        times = axis.times(chunk)
        if times is None or not columns:
            return None
        return chunk.owners, times, columns, chunk.offsets

    def _in_order(self, names: Sequence[str]) -> list[str]:
        """``names``: the known metrics in their order, then the new ones in theirs."""
        known = [metric for metric in self._metrics if metric in names]
        if len(known) == len(names):
            return known
        return known + [metric for metric in names if metric not in known]

    def _add_instance(
        self,
        instance: int,
        index: IntArray | None,
        times: FloatArray,
        columns: Mapping[str, FloatArray],
        offsets: FloatArray,
    ) -> bool:
        """Add one instance's samples (rows ``index`` of the columns; ``None``: every
        row, as a log's are) to its lines."""
        axis, average = self._axis, self._average
        assert axis is not None and average is not None  # chosen by _prepare
        t, mine = (times, offsets) if index is None else (times[index], offsets[index])
        if mine.shape[0]:
            latest = float(mine.max())
            self._latest[instance] = max(self._latest.get(instance, latest), latest)
        kept = axis.on_axis(t)
        if kept is not None:
            index = np.flatnonzero(kept) if index is None else index[kept]
            t = t[kept]
        if not t.shape[0]:
            return False
        if t.shape[0] > 1 and bool((t[1:] < t[:-1]).any()):
            by_time = np.argsort(t, kind="stable")
            index = by_time if index is None else index[by_time]
            t = t[by_time]
        average.saw(instance, t)
        changed = False
        for metric, values in columns.items():
            y = values if index is None else values[index]
            # One pass: every value is finite (a sum past the largest float only
            # sends the values to the exact check below).
            with np.errstate(over="ignore", invalid="ignore"):
                total = float(np.add.reduce(y))
            if math.isfinite(total):
                self._add_line(instance, metric, t, y)
            else:
                finite = np.isfinite(y)  # also drops the NaN of samples without it
                if not finite.any():
                    continue
                self._add_line(instance, metric, t[finite], y[finite])
            changed = True
        return changed

    def _add_line(self, instance: int, metric: str, t: FloatArray, y: FloatArray) -> None:
        key = (instance, metric)
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = MinMaxLine(max((self.max_points - 4) // 2, 1))
            self._instances.add(instance)
        line.extend(t, y)
        self._line_cache.pop(key, None)
        self._samples += t.shape[0]
        if instance not in self._failed and self._average is not None:
            self._average.add(instance, metric, t, y)

    # ----------------------------------------------------------------------------------
    # Snapshots
    # ----------------------------------------------------------------------------------

    def snapshot(self) -> LiveSnapshot:
        """Read what is pending, then the current state as an immutable record."""
        self.update()
        current = self._snapshot
        if current is not None and current.version == self._version:
            return current
        if not self._fixed_metrics:
            # Only metrics some line holds (on a step axis, a metric only recorded
            # between steps has none).
            drawn = {metric for _, metric in self._lines}
            self._metrics = [metric for metric in self._metrics if metric in drawn]
        averages: dict[str, AverageSnapshot] = {}
        for metric in self._metrics:
            average = self._final.get(metric) or self._running(metric)
            if average is not None:
                averages[metric] = average
        self._snapshot = LiveSnapshot(
            version=self._version,
            time=self._clock.now(),
            metrics=tuple(self._metrics),
            instances=tuple(sorted(self._instances | self._failed | self._finished)),
            failed=frozenset(self._failed),
            finished=frozenset(self._finished),
            lines=self._line_snapshots(),
            averages=averages,
            step=self.step,
            samples=self._samples,
            latest=dict(self._latest),
            axis=self.axis or "t",
        )
        return self._snapshot

    def _running(self, metric: str) -> AverageSnapshot | None:
        return None if self._average is None else self._average.snapshot(metric)

    def _line_snapshots(self) -> tuple[LineSnapshot, ...]:
        """Every line, by metric then instance (a line unchanged since the last
        snapshot is the same record).

        With ``lines="grid"``, a line is drawn from the points the running average
        reads, its values on the grid, so that the band holds every line; until
        it has any there (the first samples), and once its instance failed, from
        its samples.
        """
        lines = []
        average = self._average if self._on_grid else None
        for metric in self._metrics:
            for instance in sorted(i for i, m in self._lines if m == metric):
                key = (instance, metric)
                failed = instance in self._failed
                version = -1 if failed or average is None else average.line_version(*key)
                cached = self._line_cache.get(key)
                if cached is None or cached[0] != version or cached[1].failed != failed:
                    cached = self._line_cache[key] = (version, self._line(key, version, failed))
                lines.append(cached[1])
        return tuple(lines)

    def _line(self, key: tuple[int, str], version: int, failed: bool) -> LineSnapshot:
        """Line ``key``'s record: from its grid row at ``version`` (-1: its samples)."""
        line = self._lines[key]
        drawn = None if version < 0 or self._average is None else self._average.line(*key)
        t, y = line.points() if drawn is None else decimate_line(*drawn, self.max_points)
        return LineSnapshot(key[0], key[1], t, y, line.samples, failed)


class _Feed:
    """An attempt's log the model reads from, and how many of its rows it has read."""

    __slots__ = ("log", "read")

    def __init__(self, log: SampleLog) -> None:
        self.log = log
        self.read = 0


def _check_lines(lines: Any) -> bool:
    """Whether ``lines`` asks for lines on the grid.

    Raises:
        ConfigError: ``lines`` is neither ``"samples"`` nor ``"grid"``.
    """
    if lines not in ("samples", "grid"):
        raise ConfigError("lines", lines, "'samples' or 'grid'")
    return bool(lines == "grid")


def _check_options(on: Any, max_points: Any, max_grid_points: Any, step: Any) -> None:
    """Refuse a bad ``on``, ``max_points``, ``max_grid_points`` or ``step``.

    Raises:
        ConfigError: Naming the option, the bad value and what is allowed.
    """
    if on not in (None, "t", "step"):
        raise ConfigError("on", on, "'t', 'step' or None")
    if not is_int(max_points) or max_points < 4:
        raise ConfigError("max_points", max_points, "an integer >= 4")
    if not is_int(max_grid_points) or max_grid_points < 4:
        raise ConfigError("max_grid_points", max_grid_points, "an integer >= 4")
    if on == "step" and step is not None:
        raise ConfigError("step", step, "None on a step axis (steps align exactly)")
    if step is not None and not (is_real(step) and step > 0):
        raise ConfigError("step", step, "a finite number of seconds > 0, or None")
