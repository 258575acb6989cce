"""The running average: the final average's figures, as the samples arrive.

:class:`RunningAverage` puts each instance's samples on the grid the final
average uses and hands out one :class:`~labkit.live.snapshots.AverageSnapshot`
per metric. Every grid point shown is a point of the final grid (thinned by
powers of two when the run grows long), and once every sample has arrived its
mean, spread and ``n`` are the final average's there: the grid step and each
metric's ``max_gap`` are chosen as :func:`labkit.timeline.average_timelines`
chooses them (from the first samples seen, unless given), samples go to their
nearest grid point by :func:`labkit.timeline.inputs.nearest_index`, and the
statistics come from the same kernel (:mod:`labkit.timeline.moments`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from labkit.live.axes import AxisRule
from labkit.live.grid import GridCursor, MetricGrid
from labkit.live.snapshots import AverageSnapshot, FloatArray, frozen
from labkit.timeline import moments
from labkit.timeline.inputs import COUNTERS, GAP_FACTOR, Method, default_step, median_interval

__all__ = ("GAP_INTERVALS", "RunningAverage")

GAP_INTERVALS = 1
"""Intervals between a metric's samples seen before its default ``max_gap`` is fixed
(as the step, from the first samples that have one: the chart starts at once)."""

_Key = tuple[int, str]  # (instance, metric): one line


class RunningAverage:
    """Every instance's samples on the final grid, and each metric's average there.

    Samples of an instance are expected in time order; a sample older than its
    line's latest on the grid is not averaged. Until the grid step (and, for a
    metric interpolated or held, its ``max_gap``) is known, samples wait.

    Args:
        axis: The axis the samples' times run over.
        step: The grid step in seconds; ``None``: the axis's own (1 on steps),
            else learnt from the samples as the final average chooses it.
        max_gap: As for :func:`labkit.timeline.average_timelines` (checked by
            the caller); ``None``: 3 times the median interval of a metric's
            first samples.
        method: As for :func:`labkit.timeline.average_timelines` (checked by the
            caller); ``None``: ``errors`` summed, the rest linear.
        round_to_int: Metrics whose mean is rounded to a whole number.
        max_grid_points: The most grid points kept per metric.
    """

    def __init__(
        self,
        axis: AxisRule,
        *,
        step: float | None,
        max_gap: float | Mapping[str, float | None] | None,
        method: Method | Mapping[str, Method] | None,
        round_to_int: Iterable[str],
        max_grid_points: int,
    ) -> None:
        self._axis = axis
        self._step = axis.step if axis.step is not None else step
        self._method = method
        self._rounded = frozenset(round_to_int)
        self._capacity = max_grid_points
        self._grids: dict[str, MetricGrid] = {}
        self._cursors: dict[_Key, GridCursor] = {}
        self._rows: dict[int, int] = {}  # instance -> its row in the grids
        self._early_times: dict[int, FloatArray] = {}  # sample times before the step is known
        self._gaps = _given_gaps(max_gap)  # each metric's max_gap, once known
        self._intervals: dict[str, list[FloatArray]] = {}  # seen before a gap is known
        self._seen: dict[_Key, float] = {}  # each line's latest time, till then
        self._cache: dict[str, AverageSnapshot] = {}
        # Each metric's grid and placing rule once its step and gap are settled.
        self._placing: dict[str, tuple[MetricGrid, tuple[str, float, float | None]]] = {}

    @property
    def step(self) -> float | None:
        """The grid step (seconds, or 1 step), once known."""
        return self._step

    # Samples in ----------------------------------------------------------------------

    def saw(self, instance: int, t: FloatArray) -> None:
        """Note an instance's sample times (ascending): until the step is known, the
        first instance with two distinct times fixes it, as the final average would
        for the times seen so far."""
        if self._step is not None:
            return
        seen = self._early_times.get(instance)
        self._early_times[instance] = times = t if seen is None else np.concatenate((seen, t))
        if np.unique(times).shape[0] < 2:
            return
        # Each instance's distinct times, ascending: what averaging reads them as.
        self._step = default_step([np.unique(t) for t in self._early_times.values()])
        self._early_times.clear()
        self._flush()

    def add(self, instance: int, metric: str, t: FloatArray, y: FloatArray) -> None:
        """Put an instance's finite samples ``y`` of ``metric`` at times ``t`` (ascending)
        on the grid, or hold them until the step and the metric's gap are known."""
        key = (instance, metric)
        cursor = self._cursors.get(key)
        placing = self._placing.get(metric)
        if placing is not None and cursor is not None and not cursor.waiting:
            grid, rule = placing  # the usual case, once a run is under way
            self._axis.place(grid, self._row(instance), cursor, (t, y), rule)
            return
        if cursor is None:
            cursor = self._cursors[key] = GridCursor()
        ready = self._ready(key, t) and self._step is not None
        if ready and not cursor.waiting:
            self._place(key, cursor, t, y)
            return
        cursor.waiting.append((t, y))
        if ready:
            self._flush(metric)

    def drop(self, instance: int) -> None:
        """Take an instance out of the average (it failed, or starts over)."""
        for key in [key for key in self._cursors if key[0] == instance]:
            del self._cursors[key]
            self._seen.pop(key, None)
        row = self._rows.get(instance)
        if row is not None:
            for grid in self._grids.values():
                grid.clear_row(row)

    def close(self, instance: int) -> None:
        """A finished instance: its lines cover the grid point nearest their last
        sample too, and metrics waiting for a gap settle on what they have."""
        metrics = {metric for i, metric in self._cursors if i == instance}
        for metric in metrics:
            if metric in self._intervals:  # too few samples to wait for more
                self._settle(metric)
                self._flush(metric)
        step = self._step
        if step is None:
            return
        for metric in metrics:
            if not self._axis.summed(self._method_of(metric)):
                cursor = self._cursors[(instance, metric)]
                self._axis.close(self._grid_of(metric), self._row(instance), cursor, step)

    # The average out -----------------------------------------------------------------

    def snapshot(self, metric: str) -> AverageSnapshot | None:
        """The running average of ``metric`` (``None`` until it has a grid point)."""
        grid = self._grids.get(metric)
        if grid is None or self._step is None or not grid.columns:
            return None
        cached = self._cache.get(metric)
        if cached is not None and not grid.changed:
            return cached
        stats = grid.statistics(len(self._rows))
        columns = self._axis.shown(np.flatnonzero(stats.n > 0))
        mean = stats.mean[columns]
        if grid.rounded and grid.summed:
            # On the running total, as the final average rounds a counter.
            moments.round_running_total(mean, 0.0)
        counts = stats.n[columns]
        counts.flags.writeable = False
        average = AverageSnapshot(
            metric=metric,
            t=frozen(columns * (grid.stride * self._step)),
            n=counts,
            mean=frozen(mean),
            std=frozen(stats.std[columns]),
            min=frozen(stats.min[columns]),
            max=frozen(stats.max[columns]),
            ci95=frozen(stats.ci95[columns]),
        )
        self._cache[metric] = average
        return average

    def line_version(self, instance: int, metric: str) -> int:
        """How often ``instance``'s row of ``metric`` has changed (-1: it has none): a
        :meth:`line` read at one version is current while it holds."""
        grid = self._grids.get(metric)
        row = self._rows.get(instance)
        if grid is None or row is None or row >= grid.row_versions.shape[0]:
            return -1
        return int(grid.row_versions[row])

    def line(self, instance: int, metric: str) -> tuple[FloatArray, FloatArray] | None:
        """``instance``'s line of ``metric`` as the average reads it: its values on the
        grid (times in seconds or steps, values; a gap is one NaN), or ``None`` while
        it has none there (the step or gap not yet known, or the instance left)."""
        grid = self._grids.get(metric)
        row = self._rows.get(instance)
        if grid is None or row is None or self._step is None or row >= grid.values.shape[0]:
            return None
        columns, y = self._axis.drawn(grid.row(row))
        if not columns.size:
            return None
        return frozen(columns * (grid.stride * self._step)), frozen(y)

    # Internals -----------------------------------------------------------------------

    def _row(self, instance: int) -> int:
        return self._rows.setdefault(instance, len(self._rows))

    def _grid_of(self, metric: str) -> MetricGrid:
        grid = self._grids.get(metric)
        if grid is None:
            summed = self._axis.summed(self._method_of(metric))
            rounded = metric in self._rounded
            grid = MetricGrid(len(self._rows), self._capacity, summed=summed, rounded=rounded)
            self._grids[metric] = grid
        return grid

    def _place(self, key: _Key, cursor: GridCursor, t: FloatArray, y: FloatArray) -> None:
        step = self._step
        assert step is not None
        instance, metric = key
        grid, method, gap = self._grid_of(metric), self._method_of(metric), self._gap_of(metric)
        rule = (method, step, gap)
        if gap is not None or self._axis.gap_free(method):
            self._placing[metric] = (grid, rule)  # settled: step and gap never change again
        self._axis.place(grid, self._row(instance), cursor, (t, y), rule)

    def _method_of(self, metric: str) -> str:
        method = self._method
        if isinstance(method, str):
            return method
        if isinstance(method, Mapping) and metric in method:
            return str(method[metric])
        return "sum" if metric in COUNTERS else "linear"

    def _gap_of(self, metric: str) -> float | None:
        """The metric's ``max_gap`` in seconds (at least the step), ``None`` till known."""
        gap = self._gaps.get(metric, self._gaps.get("*"))
        if gap is None or self._step is None:
            return None
        return max(gap, self._step)

    def _ready(self, key: _Key, t: FloatArray) -> bool:
        """Whether the metric of line ``key`` can be gridded (its gap is known or not
        needed); notes the intervals of the samples ``t`` on the way."""
        metric = key[1]
        if metric in self._gaps or "*" in self._gaps:
            return True
        if self._axis.gap_free(self._method_of(metric)):
            return True
        before = self._seen.get(key)
        times = t if before is None else np.concatenate(([before], t))
        self._seen[key] = float(t[-1])
        intervals = self._intervals.setdefault(metric, [])
        intervals.append(times)
        if sum(times.shape[0] - 1 for times in intervals) >= GAP_INTERVALS:
            self._settle(metric)
            return True
        return False

    def _settle(self, metric: str) -> None:
        """Fix the metric's default gap from the intervals seen (none: no gap)."""
        self._gaps[metric] = GAP_FACTOR * median_interval(self._intervals.pop(metric, []))
        for key in [key for key in self._seen if key[1] == metric]:
            del self._seen[key]

    def _flush(self, metric: str | None = None) -> None:
        """Grid the samples that waited for the step or a gap (of ``metric``, or all)."""
        if self._step is None:
            return
        for key, cursor in self._cursors.items():
            if not cursor.waiting or (metric is not None and key[1] != metric):
                continue
            if not self._axis.gap_free(self._method_of(key[1])) and self._gap_of(key[1]) is None:
                continue
            held, cursor.waiting = cursor.waiting, []
            for t, y in held:
                self._place(key, cursor, t, y)


def _given_gaps(max_gap: float | Mapping[str, float | None] | None) -> dict[str, float]:
    """The gaps ``max_gap`` fixes: one for every metric (``"*"``) or by name."""
    if max_gap is None:
        return {}
    if isinstance(max_gap, Mapping):
        return {name: float(value) for name, value in max_gap.items() if value is not None}
    return {"*": float(max_gap)}
