"""Putting one instance's samples on the grid, a block of grid points at a time.

The grid is ``t = 0, step, 2*step, ...``; a sample belongs to its nearest grid
point. An instance's value at a grid point is interpolated (``"linear"``) or held
from the last sample (``"previous"``), only inside the instance's own range.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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


@dataclass(slots=True)
class Series:
    """Samples that share one time array, and the grid points [k0, stop) they cover.

    An instance gives one series for its metrics without gaps, plus one per
    metric with NaN samples (that metric's valid samples only).
    """

    t: FloatArray
    metrics: list[tuple[str, FloatArray]]
    k0: int
    stop: int

    @classmethod
    def of(cls, t: FloatArray, metrics: list[tuple[str, FloatArray]], step: float) -> Series:
        k0 = max(nearest_index(float(t[0]), step), 0)
        return cls(t, metrics, k0, nearest_index(float(t[-1]), step) + 1)


def _series_of(instance: Instance, step: float) -> list[Series]:
    series = [Series.of(instance.t, list(instance.clean.items()), step)]
    series += [Series.of(t, [(name, v)], step) for name, (t, v) in instance.ragged.items()]
    return series


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

    def _positions(
        self, tw: FloatArray, lo: int, hi: int, offset: float, rounding: Any, name: str
    ) -> IntArray:
        """For grid points lo..hi-1: index in ``tw`` of the last sample with
        ``rounding(t/step + offset) <= k`` (0 before the first sample)."""
        size = hi - lo
        position = self._scratch.floats("position", tw.size)
        np.multiply(tw, 1.0 / self._step, out=position)
        # t/step - lo + offset, rounded: the grid point (from lo) each sample goes to.
        np.subtract(position, lo - offset, out=position)
        rounding(position, out=position)
        # Only the two samples of margin at each end of the window can fall outside
        # the block (see _window): clip just those.
        for edge in (position[:2], position[-2:]):
            np.clip(edge, 0, size, out=edge)
        bins = self._scratch.ints("bins", tw.size)
        np.copyto(bins, position, casting="unsafe")
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
            if methods[name] == "previous":
                if previous is None:
                    # A sample belongs to its nearest grid point: it is "at or
                    # before" k when t < (k + 1/2) * step.
                    s0, s1 = self._window(t, (lo + 0.5) * step, (hi - 0.5) * step, "left")
                    index = self._positions(t[s0:s1], lo, hi, 0.5, np.floor, "previous")
                    if hi == series.stop and s1 == t.size:
                        # The series' last grid point is the one nearest its last
                        # sample: it holds that sample even when a half-step tie
                        # rounds the other way in the vectorised arithmetic.
                        index[-1] = s1 - s0 - 1
                    previous = (s0, s1, index)
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
            yield name, out

    def _linear(self, t: FloatArray, lo: int, hi: int) -> tuple[int, int, IntArray, FloatArray]:
        step, scratch = self._step, self._scratch
        size = hi - lo
        s0, s1 = self._window(t, lo * step, (hi - 1) * step, "right")
        tw = t[s0:s1]
        # index: the last sample at or before each grid time (ceil(t/step) <= k).
        index = self._positions(tw, lo, hi, 0.0, np.ceil, "linear")
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


def layout(instances: Sequence[Instance], step: float) -> tuple[int, list[list[Series]]]:
    """The grid length and each instance's series; refuses absurdly long grids."""
    series = [_series_of(instance, step) for instance in instances]
    size = max((parts[0].stop for parts in series), default=0)
    if size > _MAX_GRID_POINTS:
        raise ConfigError(
            "step",
            step,
            f"a step giving at most {_MAX_GRID_POINTS:,} grid points (this one gives {size:,})",
        )
    return max(size, 0), series
