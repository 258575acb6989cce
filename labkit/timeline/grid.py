"""Putting one instance's samples on the grid, a block of grid points at a time.

The grid is ``t = 0, step, 2*step, ...``; a sample belongs to its nearest grid
point. An instance's value at a grid point is interpolated (``"linear"``) or held
from the last sample (``"previous"``), only inside a run of its samples no two of
which are more than ``max_gap`` apart; or (``"sum"``, counters) the sum of the
samples nearest that point, 0 where there are none, over the whole grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from labkit.errors import ConfigError
from labkit.timeline.inputs import FloatArray, Instance, IntArray, nearest_index

BLOCK_POINTS = 16_384
"""Grid points per block by default: a block's working set stays in cache."""

_MAX_GRID_POINTS = 50_000_000


class Scratch:
    """Reusable work buffers, so that gridding an instance allocates (almost) nothing."""

    __slots__ = ("_float", "_int")

    def __init__(self) -> None:
        self._float: dict[str, FloatArray] = {}
        self._int: dict[str, IntArray] = {}

    def floats(self, name: str, size: int) -> FloatArray:
        buffer = self._float.get(name)
        if buffer is None or buffer.size < size:
            buffer = np.empty(max(size, 1024), dtype=np.float64)
            self._float[name] = buffer
        return buffer[:size]

    def ints(self, name: str, size: int) -> IntArray:
        buffer = self._int.get(name)
        if buffer is None or buffer.size < size:
            buffer = np.empty(max(size, 1024), dtype=np.intp)
            self._int[name] = buffer
        return buffer[:size]


@dataclass(frozen=True, slots=True)
class Gaps:
    """Where a series' samples are further apart than its metrics' ``max_gap``.

    For gap ``j``, between samples ``before[j]`` and ``before[j] + 1``: the grid
    points strictly between ``end[j]`` (nearest the sample before it) and
    ``start[j]`` (nearest the sample after) get no value from the series.
    """

    before: IntArray
    end: IntArray
    start: IntArray

    @classmethod
    def of(cls, t: FloatArray, limit: float, step: float) -> Gaps | None:
        """The gaps of sample times ``t`` longer than ``limit`` (None: there are none)."""
        before = np.flatnonzero(np.subtract(t[1:], t[:-1]) > limit)
        if not before.size:
            return None
        return cls(before, nearest_index(t[before], step), nearest_index(t[before + 1], step))


@dataclass(slots=True)
class Series:
    """Samples that share one time array, and the grid points [k0, stop) they cover.

    An instance gives one series for its metrics without missing values (one per
    distinct ``max_gap`` among those that have gaps), one per metric with NaN
    samples (that metric's valid samples only), and one per ``"sum"`` metric,
    covering the whole grid. ``gaps`` says where the series has no value.
    """

    t: FloatArray
    metrics: list[tuple[str, FloatArray]]
    k0: int
    stop: int
    gaps: Gaps | None = None

    @classmethod
    def of(
        cls,
        t: FloatArray,
        metrics: list[tuple[str, FloatArray]],
        step: float,
        gaps: Gaps | None = None,
    ) -> Series:
        k0 = max(nearest_index(float(t[0]), step), 0)
        return cls(t, metrics, k0, nearest_index(float(t[-1]), step) + 1, gaps)


@dataclass(frozen=True, slots=True)
class Layout:
    """Every instance on the grid: its grid length, spans and series.

    Attributes:
        size: Grid points, up to the one nearest the latest sample of any instance.
        spans: Per instance, the grid points [start, stop) from the one nearest its
            first sample to the one nearest its last (what ``n`` counts).
        series: Per instance, its series.
        shared: The metrics whose count of instances is ``n`` everywhere: every
            instance has them at each of its samples, without a gap, and they
            are not summed (the others keep a count of their own).
    """

    size: int
    spans: list[tuple[int, int]]
    series: list[list[Series]]
    shared: frozenset[str]


def _with_gaps(
    t: FloatArray,
    metrics: list[tuple[str, FloatArray]],
    step: float,
    limits: Mapping[str, float],
    scratch: Scratch,
) -> list[Series]:
    """The series of samples sharing ``t``: one for the metrics without a gap longer
    than their ``max_gap``, one per distinct ``max_gap`` of the others."""
    if t.size < 2 or all(limits.get(name, math.inf) == math.inf for name, _ in metrics):
        return [Series.of(t, metrics, step)]
    intervals = np.subtract(t[1:], t[:-1], out=scratch.floats("intervals", t.size - 1))
    widest = float(intervals.max())
    groups: dict[float, list[tuple[str, FloatArray]]] = {}
    for name, values in metrics:
        limit = limits.get(name, math.inf)
        groups.setdefault(limit if widest > limit else math.inf, []).append((name, values))
    return [
        Series.of(t, group, step, None if limit == math.inf else Gaps.of(t, limit, step))
        for limit, group in groups.items()
    ]


def layout(
    instances: Sequence[Instance],
    step: float,
    methods: Mapping[str, str] | None = None,
    gaps: Mapping[str, float] | None = None,
) -> Layout:
    """The grid length and each instance's span and series; refuses absurdly long grids.

    ``methods`` (default: linear for all) and ``gaps`` (each metric's ``max_gap``
    in seconds; default: none) shape the series.
    """
    methods = methods or {}
    gaps = gaps or {}
    scratch = Scratch()
    spans: list[tuple[int, int]] = []
    series: list[list[Series]] = []
    summed: list[Series] = []
    shared: set[str] | None = None
    for instance in instances:
        spans.append(
            (
                max(nearest_index(float(instance.t[0]), step), 0),
                nearest_index(float(instance.t[-1]), step) + 1,
            )
        )
        clean = [(n, v) for n, v in instance.clean.items() if methods.get(n) != "sum"]
        parts = _with_gaps(instance.t, clean, step, gaps, scratch) if clean else []
        for name, (t, v) in instance.ragged.items():
            if methods.get(name) != "sum":
                parts += _with_gaps(t, [(name, v)], step, gaps, scratch)
        for name, values in instance.clean.items():
            if methods.get(name) == "sum":
                parts.append(Series(instance.t, [(name, values)], 0, 0))
        for name, (t, v) in instance.ragged.items():
            if methods.get(name) == "sum":
                parts.append(Series(t, [(name, v)], 0, 0))
        summed += [part for part in parts if part.stop == 0]
        whole = {name for part in parts if part.gaps is None for name, _ in part.metrics}
        whole &= {name for name, _ in clean}
        shared = whole if shared is None else shared & whole
        series.append(parts)
    size = max((stop for _, stop in spans), default=0)
    if size > _MAX_GRID_POINTS:
        raise ConfigError(
            "step",
            step,
            f"a step giving at most {_MAX_GRID_POINTS:,} grid points (this one gives {size:,})",
        )
    for part in summed:
        part.stop = size
    return Layout(max(size, 0), spans, series, frozenset(shared or ()))


class Gridder:
    """Puts a series on a block of grid points [lo, hi), one metric at a time.

    Which sample brackets each grid point, and the interpolation weight, depend
    only on the times: they are worked out once per series and block and reused
    for each metric. Only the samples near the block are touched (a window found
    by binary search), so a block's work stays in cache.
    """

    __slots__ = ("_grid", "_scratch", "_step", "careful")

    def __init__(self, grid: FloatArray, step: float, scratch: Scratch) -> None:
        self._grid = grid
        self._step = step
        self._scratch = scratch
        # Whether linear values whose rise overflowed (samples of opposite signs
        # near the largest float) are interpolated again from the samples: a
        # check per value that only blocks with extreme magnitudes pay.
        self.careful = False

    def _window(self, t: FloatArray, first: float, last: float, side: Any) -> tuple[int, int]:
        """Sample positions [s0, s1) holding every sample the block can need.

        ``first``/``last`` are the times that decide the first and last grid point;
        two samples of margin on each side absorb last-ulp disagreements between
        the binary search and the vectorised rounding below.
        """
        below, above = np.searchsorted(t, (first, last), side=side).tolist()
        return max(below - 2, 0), min(above + 2, t.size)

    def _positions(self, bins: IntArray, size: int, name: str) -> IntArray:
        """For grid points lo..lo+size-1: index in the window of the last sample whose
        bin (its grid point, counted from lo: ``bins``, ascending) is at or before
        each point (0 before the first sample)."""
        # Only the two samples of margin at each end of the window can fall outside
        # the block (see _window): clip just those.
        for edge in (bins[:2], bins[-2:]):
            np.clip(edge, 0, size, out=edge)
        counts = np.bincount(bins, minlength=size + 1)[:size]
        # index = (number of samples at or before k) - 1: take the 1 off the first
        # count so that the running sum is the index itself.
        before_first = counts[0] == 0
        counts[0] -= 1
        index = self._scratch.ints(name, size)
        np.cumsum(counts, out=index)
        if before_first:  # grid points before the first sample (half a step at most)
            np.maximum(index, 0, out=index)
        return index

    def values(
        self,
        series: Series,
        lo: int,
        hi: int,
        methods: Mapping[str, str],
        outputs: Mapping[str, FloatArray] | None = None,
    ) -> Iterable[tuple[str, FloatArray]]:
        """Yield (metric, its values at grid points lo..hi-1).

        The values are written into ``outputs[metric]`` when given, else into a
        work buffer that the next metric reuses.
        """
        t, step, scratch = series.t, self._step, self._scratch
        size = hi - lo
        linear: tuple[int, int, IntArray, FloatArray] | None = None
        previous: tuple[int, int, IntArray] | None = None
        for name, v in series.metrics:
            out = scratch.floats("values", size) if outputs is None else outputs[name]
            if methods[name] == "sum":
                self._sums(t, v, lo, hi, out)
                yield name, out
                continue
            if methods[name] == "previous":
                if previous is None:
                    # A sample belongs to its nearest grid point: it is "at or
                    # before" k when that point is (t < (k + 1/2) * step). The rule
                    # is the one that ends the series (stop), so its last grid point
                    # holds its last sample, ties included.
                    s0, s1 = self._window(t, (lo + 0.5) * step, (hi - 0.5) * step, "left")
                    bins = nearest_index(t[s0:s1], step)
                    bins -= lo
                    previous = (s0, s1, self._positions(bins, size, "previous"))
                s0, s1, index = previous
                np.take(v[s0:s1], index, out=out, mode="clip")
                yield name, out
                continue
            if linear is None:
                linear = self._linear(t, lo, hi)
            s0, s1, index, weight = linear
            vw = v[s0:s1]
            rise = scratch.floats("rise", vw.size)
            np.subtract(vw[1:], vw[:-1], out=rise[:-1])
            rise[-1] = v[s1] - v[s1 - 1] if s1 < v.size else 0.0
            np.take(vw, index, out=out, mode="clip")
            part = scratch.floats("part", size)
            np.take(rise, index, out=part, mode="clip")
            part *= weight
            out += part
            if self.careful:
                _bridge(out, v, s0 + np.minimum(index, s1 - s0 - 1), weight)
            if series.gaps is not None:
                self._hold_edges(series, v, lo, hi, out)
            yield name, out

    def keep(self, series: Series, lo: int, hi: int) -> npt.NDArray[np.bool_] | None:
        """Which of grid points lo..hi-1 the series gives a value (None: all of them)."""
        gaps = series.gaps
        if gaps is None:
            return None
        # Gaps overlapping the block: their [end + 1, start) ranges, counted in.
        first, last = np.searchsorted(gaps.start, lo, side="right"), np.searchsorted(gaps.end, hi)
        if first >= last:
            return None
        size = hi - lo
        inside = np.zeros(size + 1, dtype=np.intp)
        np.add.at(inside, np.clip(gaps.end[first:last] + 1 - lo, 0, size), 1)
        np.add.at(inside, np.clip(gaps.start[first:last] - lo, 0, size), -1)
        kept: npt.NDArray[np.bool_] = np.cumsum(inside[:size]) == 0
        return kept

    def _hold_edges(self, series: Series, v: FloatArray, lo: int, hi: int, out: FloatArray) -> None:
        """Linear values at a gap's edges: the point nearest the sample before it holds
        that sample (when after it), the point nearest the one after holds that one
        (when before it), as at an instance's own first and last sample."""
        gaps = series.gaps
        assert gaps is not None
        t, grid = series.t, self._grid
        first, last = np.searchsorted(gaps.start, lo), np.searchsorted(gaps.end, hi)
        for edge, sample, later in (
            (gaps.end[first:last], gaps.before[first:last], True),
            (gaps.start[first:last], gaps.before[first:last] + 1, False),
        ):
            inside = (edge >= lo) & (edge < hi)
            edge, sample = edge[inside], sample[inside]
            beyond = grid[edge] > t[sample] if later else grid[edge] < t[sample]
            out[edge[beyond] - lo] = v[sample[beyond]]

    def _sums(self, t: FloatArray, v: FloatArray, lo: int, hi: int, out: FloatArray) -> None:
        """Into ``out``: per grid point lo..hi-1, the sum of the samples nearest it."""
        step, size = self._step, hi - lo
        s0, s1 = self._window(t, (lo - 0.5) * step, (hi - 0.5) * step, "left")
        # The grid's one rounding rule: a sample is summed at exactly one grid
        # point whatever the blocks, the one its inf samples are counted at.
        bins = nearest_index(t[s0:s1], step)
        bins -= lo
        first, last = np.searchsorted(bins, (0, size)).tolist()  # the block's samples
        out[:] = np.bincount(bins[first:last], weights=v[s0 + first : s0 + last], minlength=size)

    def _linear(self, t: FloatArray, lo: int, hi: int) -> tuple[int, int, IntArray, FloatArray]:
        step, scratch = self._step, self._scratch
        size = hi - lo
        s0, s1 = self._window(t, lo * step, (hi - 1) * step, "right")
        tw = t[s0:s1]
        # index: the last sample at or before each grid time (ceil(t/step) <= k).
        position = scratch.floats("position", tw.size)
        np.multiply(tw, 1.0 / step, out=position)
        np.subtract(position, lo, out=position)
        np.ceil(position, out=position)
        bins = scratch.ints("bins", tw.size)
        np.copyto(bins, position, casting="unsafe")
        index = self._positions(bins, size, "linear")
        gap = scratch.floats("gap", tw.size)
        np.subtract(tw[1:], tw[:-1], out=gap[:-1])
        # Past the last sample the next gap is infinite: weight 0, so the value is
        # exactly the last sample's (over the half step an instance extends by).
        gap[-1] = t[s1] - t[s1 - 1] if s1 < t.size else np.inf
        weight = scratch.floats("weight", size)
        np.take(tw, index, out=weight, mode="clip")
        np.subtract(self._grid[lo:hi], weight, out=weight)
        spacing = scratch.floats("spacing", size)
        np.take(gap, index, out=spacing, mode="clip")
        weight /= spacing
        if s0 == 0 and self._grid[lo] < t[0]:
            # Before the first sample (half a step at most) the weight is negative:
            # hold the first value instead of extrapolating.
            np.maximum(weight, 0.0, out=weight)
        return s0, s1, index, weight


def _bridge(out: FloatArray, v: FloatArray, below: IntArray, weight: FloatArray) -> None:
    """Non-finite interpolated values again as ``a (1 - w) + b w``, which cannot overflow.

    ``below`` is each grid point's sample at or before it (its index in ``v``).
    """
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size == 0:
        return
    at = below[bad]
    a, b = v[at], v[np.minimum(at + 1, v.size - 1)]
    w = weight[bad]
    out[bad] = np.clip(a * (1.0 - w) + b * w, np.minimum(a, b), np.maximum(a, b))
