"""Keeping a line's shape in few points: min/max decimation, whole and streaming.

A chart cannot usefully draw more points than it has pixels, but a peak that
decimation drops is a peak the reader never sees. Both forms here keep each
bucket's minimum and maximum (with their times) and the first and last point:

- :func:`decimate_indices` picks the positions to draw of a whole series, and
  :func:`decimate_line` draws a line with them, its breaks kept (the static
  chart, the report, and the live chart's lines on the running grid);
- :class:`MinMaxLine` keeps one live line's samples to a fixed number of points
  as they stream in, whatever the length of the run (what the live chart draws,
  unless its lines are on the running grid).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from labkit.errors import ConfigError
from labkit.live.snapshots import FloatArray, IntArray, frozen

__all__ = ("DEFAULT_MAX_POINTS", "MinMaxLine", "decimate_indices", "decimate_line", "run_ends")

DEFAULT_MAX_POINTS = 2000
"""Points per line above which a timeline is decimated for display."""


def decimate_indices(values: npt.ArrayLike, max_points: int = DEFAULT_MAX_POINTS) -> IntArray:
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


def run_ends(*series: npt.ArrayLike) -> IntArray:
    """Positions where any of ``series`` turns from a number to NaN or back, both sides:
    decimation must keep them, or a gap would be bridged."""
    known = np.isfinite(np.asarray(series[0], dtype=float))
    changes = np.zeros(known.size, dtype=bool)
    for values in series:
        finite = np.isfinite(np.asarray(values, dtype=float))
        changes[1:] |= finite[1:] != finite[:-1]
    after = np.flatnonzero(changes)
    return np.union1d(after, after - 1)


def decimate_line(
    t: FloatArray, y: FloatArray, max_points: int = DEFAULT_MAX_POINTS
) -> tuple[FloatArray, FloatArray]:
    """A line (times, values; a NaN is a break) kept to about ``max_points`` points
    by :func:`decimate_indices`, its breaks kept (a few points more where it has any)."""
    if y.shape[0] <= max_points:
        return t, y
    keep = np.union1d(decimate_indices(y, max_points), run_ends(y))
    return t[keep], y[keep]


class MinMaxLine:
    """One instance's samples of one metric, kept to a fixed number of points.

    Samples fill buckets of ``size`` samples each; a bucket keeps its minimum and
    maximum (with their times). When every bucket is used, neighbours merge in
    pairs and ``size`` doubles, so memory is fixed and each sample costs O(1)
    amortised. The first and the latest sample are always kept.

    Args:
        buckets: The buckets kept (>= 1): the line holds at most
            ``2 * buckets + 2`` points.
    """

    __slots__ = (
        "_buckets",
        "_count",
        "_first",
        "_hi_t",
        "_hi_y",
        "_last",
        "_lo_t",
        "_lo_y",
        "_partial",
        "_size",
        "samples",
    )

    def __init__(self, buckets: int) -> None:
        self._buckets = buckets
        # One slot more than the buckets: points() puts the open bucket there.
        self._lo_t = np.empty(buckets + 1)
        self._lo_y = np.empty(buckets + 1)
        self._hi_t = np.empty(buckets + 1)
        self._hi_y = np.empty(buckets + 1)
        self._count = 0  # buckets filled
        self._size = 1  # samples per bucket
        self._partial: list[float] | None = None  # lo_t, lo_y, hi_t, hi_y, samples
        self._first: tuple[float, float] | None = None
        self._last: tuple[float, float] | None = None
        self.samples = 0
        """Samples received (before decimation)."""

    def extend(self, t: FloatArray, y: FloatArray) -> None:
        """Take samples ``y`` at times ``t`` (ascending, after the ones already taken)."""
        n = t.shape[0]
        if n == 0:
            return
        if self._first is None:
            self._first = (float(t[0]), float(y[0]))
        self._last = (float(t[-1]), float(y[-1]))
        self.samples += n
        i = 0
        while i < n:
            if self._partial is not None:
                i = self._fill_partial(t, y, i)
                continue
            whole = min((n - i) // self._size, self._buckets - self._count)
            if whole:
                end = i + whole * self._size
                self._push(t[i:end], y[i:end], whole)
                i = end
                if self._count == self._buckets:
                    self._merge_pairs()
                continue
            self._partial = [math.inf, math.inf, -math.inf, -math.inf, 0.0]
            i = self._fill_partial(t, y, i)

    def _fill_partial(self, t: FloatArray, y: FloatArray, start: int) -> int:
        partial = self._partial
        assert partial is not None
        take: int = min(self._size - int(partial[4]), int(t.shape[0]) - start)
        part_y = y[start : start + take]
        low, high = int(part_y.argmin()), int(part_y.argmax())
        if part_y[low] < partial[1]:
            partial[0], partial[1] = float(t[start + low]), float(part_y[low])
        if part_y[high] > partial[3]:
            partial[2], partial[3] = float(t[start + high]), float(part_y[high])
        partial[4] += take
        if partial[4] == self._size:
            slot = self._count
            self._lo_t[slot], self._lo_y[slot], self._hi_t[slot], self._hi_y[slot] = partial[:4]
            self._count += 1
            self._partial = None
            if self._count == self._buckets:
                self._merge_pairs()
        return start + take

    def _push(self, t: FloatArray, y: FloatArray, whole: int) -> None:
        rows_t = t.reshape(whole, self._size)
        rows_y = y.reshape(whole, self._size)
        picks = np.arange(whole)
        low = rows_y.argmin(axis=1)
        high = rows_y.argmax(axis=1)
        span = slice(self._count, self._count + whole)
        self._lo_t[span], self._lo_y[span] = rows_t[picks, low], rows_y[picks, low]
        self._hi_t[span], self._hi_y[span] = rows_t[picks, high], rows_y[picks, high]
        self._count += whole

    def _merge_pairs(self) -> None:
        half, odd = divmod(self._count, 2)
        a, b = slice(0, 2 * half, 2), slice(1, 2 * half, 2)
        lo_from_b = self._lo_y[b] < self._lo_y[a]
        hi_from_b = self._hi_y[b] > self._hi_y[a]
        self._lo_t[:half] = np.where(lo_from_b, self._lo_t[b], self._lo_t[a])
        self._lo_y[:half] = np.where(lo_from_b, self._lo_y[b], self._lo_y[a])
        self._hi_t[:half] = np.where(hi_from_b, self._hi_t[b], self._hi_t[a])
        self._hi_y[:half] = np.where(hi_from_b, self._hi_y[b], self._hi_y[a])
        self._count = half
        if odd and half:
            # An odd bucket count leaves the last bucket without a partner: it moves
            # down whole (a bucket of half the new size), its extremes kept.
            for kept in (self._lo_t, self._lo_y, self._hi_t, self._hi_y):
                kept[half] = kept[2 * half]
            self._count += 1
        self._size *= 2

    def points(self) -> tuple[FloatArray, FloatArray]:
        """The kept points in time order (each bucket's extremes, first and latest)."""
        count = self._count
        if self._partial is not None:
            # The open bucket goes into the spare slot after the filled ones.
            p = self._partial
            self._lo_t[count], self._lo_y[count], self._hi_t[count], self._hi_y[count] = p[:4]
            count += 1
        lo_t, lo_y = self._lo_t[:count], self._lo_y[:count]
        hi_t, hi_y = self._hi_t[:count], self._hi_y[:count]
        size = 2 * count + 2
        t, y = np.empty(size), np.empty(size)
        first, last = self._first or (math.nan, math.nan), self._last or (math.nan, math.nan)
        t[0], y[0], t[-1], y[-1] = first[0], first[1], last[0], last[1]
        swap = lo_t > hi_t  # each bucket's two extremes in time order
        np.minimum(lo_t, hi_t, out=t[1:-1:2])
        np.maximum(lo_t, hi_t, out=t[2:-1:2])
        y[1:-1:2] = np.where(swap, hi_y, lo_y)
        y[2:-1:2] = np.where(swap, lo_y, hi_y)
        # A point repeated (a one-sample bucket, the first or latest sample) is drawn once.
        keep = np.empty(size, dtype=bool)
        keep[0] = True
        np.not_equal(t[1:], t[:-1], out=keep[1:])
        keep[1:] |= y[1:] != y[:-1]
        return frozen(t[keep]), frozen(y[keep])
