"""What the live chart's lines run over, and how samples go onto the running grid.

Two strategies, one per axis, so that the model and the running average never
ask which axis they are on:

- :class:`TimeAxis` (``"t"``): lines over seconds since the instance started;
  the average's grid step is learnt from the first samples (or given), and an
  instance's value at a grid point is interpolated, held or summed as the final
  average does, never across a gap;
- :class:`StepAxis` (``"step"``): lines over the samples' ``step`` values; each
  whole step is a grid point and a sample is its step's value, with no
  interpolation (as the result averages timelines indexed by step).

Both place samples on a :class:`~labkit.live.grid.MetricGrid` with the one
nearest-grid-point rule, :func:`labkit.timeline.inputs.nearest_index`.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from labkit.live.columns import SampleColumns
from labkit.live.grid import GridCursor, MetricGrid
from labkit.live.snapshots import Axis, FloatArray, IntArray
from labkit.timeline.inputs import nearest_index

__all__ = ("AxisRule", "StepAxis", "TimeAxis", "axis_rule")


class TimeAxis:
    """Lines over seconds; the average on the final average's time grid."""

    name: ClassVar[Literal["t"]] = "t"
    step: ClassVar[float | None] = None
    """The grid step this axis fixes (``None``: learnt from the samples, or given)."""

    def times(self, chunk: SampleColumns) -> FloatArray | None:
        """Each row's place on the axis: its offset, in seconds."""
        return chunk.offsets

    def is_metric(self, name: str) -> bool:
        """Whether a column is a metric to draw (on this axis, every column)."""
        return True

    def on_axis(self, t: FloatArray) -> npt.NDArray[np.bool_] | None:
        """Which rows have a place on the axis (``None``: all; every sample has a time)."""
        return None

    def gap_free(self, method: str) -> bool:
        """Whether a metric goes on the grid without waiting for its ``max_gap``:
        a counter has no gaps (the sample after a silence counts what happened)."""
        return method == "sum"

    def summed(self, method: str) -> bool:
        """Whether a metric's grid holds counts per point (a counter)."""
        return method == "sum"

    def place(
        self,
        grid: MetricGrid,
        row: int,
        cursor: GridCursor,
        samples: tuple[FloatArray, FloatArray],
        rule: tuple[str, float, float | None],
    ) -> None:
        """Give the grid points up to the latest sample their values, run by run.

        ``samples`` are times (ascending, s) and values; ``rule`` is the metric's
        method, the grid step (s) and its ``max_gap`` (s; ``None`` for a counter).
        A sample no later than the line's latest on the grid is drawn, not averaged.
        """
        t, y = samples
        method, step, gap = rule
        if cursor.next_k >= 0 and not t[0] > cursor.last_t:  # t ascends: only a head can be late
            late = int(np.searchsorted(t, cursor.last_t, side="right"))
            t, y = t[late:], y[late:]
            if t.shape[0] == 0:
                return
        if method == "sum":
            _count(grid, row, cursor, t, y, step)
            return
        assert gap is not None
        _runs(grid, row, cursor, t, y, method, step, gap)

    def shown(self, covered: IntArray) -> IntArray:
        """The grid columns an average shows, given those some instance covers: all
        from the first to the last, a gap every instance has drawn as a break."""
        return np.arange(covered[0], covered[-1] + 1) if covered.size else covered

    def drawn(self, values: FloatArray) -> tuple[IntArray, FloatArray]:
        """A line's grid columns and values from its row: its first to its last
        covered column, each gap one NaN (a break in the line)."""
        return _with_breaks(values)

    def close(self, grid: MetricGrid, row: int, cursor: GridCursor, step: float) -> None:
        """End a finished line's run: it covers the grid point nearest its last sample
        too, holding that sample's value."""
        last_k = nearest_index(cursor.last_t, step)
        if cursor.next_k < 0 or last_k < cursor.next_k:
            return
        stride = grid.reserve(last_k)
        ks = np.arange(-(-cursor.next_k // stride) * stride, last_k + 1, stride, dtype=np.int64)
        cursor.next_k = last_k + 1
        grid.put(row, ks, np.full(ks.shape[0], cursor.last_y))


class StepAxis:
    """Lines over the samples' ``step`` values; the average per whole step."""

    name: ClassVar[Literal["step"]] = "step"
    step: ClassVar[float | None] = 1.0
    """Steps align exactly: the grid is every whole step."""

    def times(self, chunk: SampleColumns) -> FloatArray | None:
        """Each row's step (NaN: a row between steps); ``None`` when no row has one."""
        return chunk.values.get("step")

    def is_metric(self, name: str) -> bool:
        """Whether a column is a metric to draw: ``step`` is the axis itself."""
        return name != "step"

    def on_axis(self, t: FloatArray) -> npt.NDArray[np.bool_] | None:
        """Which rows have a step (``None``: all): the others are left out."""
        stepped = ~np.isnan(t)
        return None if stepped.all() else stepped

    def gap_free(self, method: str) -> bool:
        """Every metric goes on the grid at once: steps have no gaps to learn."""
        return True

    def summed(self, method: str) -> bool:
        """No grid holds counts: each step holds its value, counters too."""
        return False

    def place(
        self,
        grid: MetricGrid,
        row: int,
        cursor: GridCursor,
        samples: tuple[FloatArray, FloatArray],
        rule: tuple[str, float, float | None],
    ) -> None:
        """Each sample is its step's value (the latest recorded at a step wins)."""
        steps, y = samples
        ks = np.rint(steps).astype(np.int64)
        if ks.shape[0] > 1 and bool((np.diff(ks) <= 0).any()):
            # One value per step, the latest recorded; steps ascending.
            last = np.unique(ks[::-1], return_index=True)[1]
            picked = ks.shape[0] - 1 - last
            ks, y = ks[picked], y[picked]
        ks, y = ks[ks >= 0], y[ks >= 0]
        if ks.size:
            on_grid = ks % grid.reserve(int(ks[-1])) == 0
            grid.put(row, ks[on_grid], y[on_grid])

    def shown(self, covered: IntArray) -> IntArray:
        """The grid columns an average shows: the steps some instance recorded, as the
        result's rows (steps recorded every k are joined, not k - 1 breaks apart)."""
        return covered

    def drawn(self, values: FloatArray) -> tuple[IntArray, FloatArray]:
        """A line's grid columns and values from its row: the steps it recorded,
        joined (as :meth:`shown` joins the average's)."""
        columns = np.flatnonzero(~np.isnan(values))
        return columns, values[columns]

    def close(self, grid: MetricGrid, row: int, cursor: GridCursor, step: float) -> None:
        """Nothing to end: a step's value is placed with its sample."""


AxisRule: TypeAlias = TimeAxis | StepAxis
"""One of the two axes' strategies."""


def axis_rule(name: Axis) -> AxisRule:
    """The strategy of the axis ``name`` (``"t"`` or ``"step"``)."""
    return StepAxis() if name == "step" else TimeAxis()


def _with_breaks(values: FloatArray) -> tuple[IntArray, FloatArray]:
    """The covered span of a row (first to last non-NaN), each run of NaN one NaN."""
    covered = np.flatnonzero(~np.isnan(values))
    if not covered.size:
        return covered, values[:0]
    first, last = int(covered[0]), int(covered[-1])
    span = values[first : last + 1]
    missing = np.isnan(span)
    if not missing.any():
        return np.arange(first, last + 1), span
    # A NaN is kept where the one before it was not: one break per gap.
    kept = ~missing
    kept[1:] |= ~missing[:-1]
    return np.flatnonzero(kept) + first, span[kept]


def _count(
    grid: MetricGrid, row: int, cursor: GridCursor, t: FloatArray, y: FloatArray, step: float
) -> None:
    """A counter's samples, each added at its nearest grid point."""
    cursor.last_t, cursor.last_y = float(t[-1]), float(y[-1])
    cursor.next_k = 0  # samples before this one are late from now on
    ks = nearest_index(t, step)
    stride = grid.reserve(int(ks[-1]))
    kept = ks % stride == 0
    points, where = np.unique(ks[kept], return_inverse=True)
    counts = np.asarray(np.bincount(where, weights=y[kept]), dtype=np.float64)
    grid.add(row, points, counts)


def _runs(
    grid: MetricGrid,
    row: int,
    cursor: GridCursor,
    t: FloatArray,
    y: FloatArray,
    method: str,
    step: float,
    gap: float,
) -> None:
    """Samples further apart than ``gap`` are not bridged: one pass of numpy for every
    run of the samples, however many gaps they hold.

    A run between gaps covers the grid points from the one nearest its first
    sample to the one nearest its last (held there, not extrapolated); the open
    run at the end covers the points its samples settle: up to the latest time
    (interpolated), or up to the point before the latest sample's own (held: a
    later sample may still round to that point).
    """
    continuing = cursor.next_k >= 0
    if continuing:  # the run so far ends with the line's last sample
        t = np.concatenate(((cursor.last_t,), t))
        y = np.concatenate(((cursor.last_y,), y))
    cursor.last_t, cursor.last_y = float(t[-1]), float(y[-1])
    breaks = np.flatnonzero(np.subtract(t[1:], t[:-1]) > gap) + 1
    firsts = np.concatenate(((0,), breaks))
    lasts = np.concatenate((breaks - 1, (t.shape[0] - 1,)))
    lo, hi = nearest_index(t[firsts], step), nearest_index(t[lasts], step)
    if continuing:
        lo[0] = cursor.next_k
    if method == "previous":
        hi[-1] -= 1
    else:
        hi[-1] = math.floor(t[-1] / step)
    cursor.next_k = max(int(hi[-1]) + 1, int(lo[-1]))
    if not bool((hi >= lo).any()):
        return
    stride = grid.reserve(int(hi.max()))  # thinned first: only kept points are computed
    run, ks = _points(lo, hi, stride)
    if not ks.size:
        return
    if method == "previous":
        # The last sample whose nearest grid point is at or before each point.
        values = y[np.searchsorted(nearest_index(t, step), ks, side="right") - 1]
    else:
        # Each point's time, kept inside its own run: held at the run's ends.
        at = np.clip(ks * step, t[firsts][run], t[lasts][run])
        values = np.interp(at, t, y)
    grid.put(row, ks, values)


def _points(lo: IntArray, hi: IntArray, stride: int) -> tuple[IntArray, IntArray]:
    """The kept grid points (multiples of ``stride``) of runs [lo, hi], and each one's run."""
    first = -(-lo // stride) * stride
    counts = np.maximum((hi - first) // stride + 1, 0)
    total = int(counts.sum())
    run = np.repeat(np.arange(counts.shape[0]), counts)
    offsets = np.repeat(np.cumsum(counts) - counts, counts)  # each run's first position
    return run, first[run] + stride * (np.arange(total) - offsets)
