"""The running grid: every instance's values of one metric on the final grid.

A :class:`MetricGrid` holds, per instance (a row) and grid point (a column),
the instance's value there, NaN where it has none (yet, or in a gap). Its
statistics are those of the final average by construction: the columns are
folded with :func:`labkit.timeline.moments.update_ragged` and written out by
:func:`labkit.timeline.moments.finalize`, the kernel
:func:`labkit.timeline.average_timelines` uses, recomputed only from the first
column that changed. A :class:`GridCursor` remembers where one instance's line
of one metric stands on the grid.
"""

from __future__ import annotations

import math

import numpy as np

from labkit.live.snapshots import FloatArray, IntArray
from labkit.timeline import moments
from labkit.timeline.grid import Scratch

__all__ = ("GridCursor", "GridStatistics", "MetricGrid")

_INITIAL_COLUMNS = 16


class GridCursor:
    """Where one instance's line of one metric stands on the grid.

    Attributes:
        last_t: The latest sample's time put on the grid (NaN: none yet).
        last_y: Its value.
        next_k: The first grid index not yet given a value (-1: no sample yet).
        waiting: Samples held back until the step (or the metric's gap) is known.
    """

    __slots__ = ("last_t", "last_y", "next_k", "waiting")

    def __init__(self) -> None:
        self.last_t = math.nan
        self.last_y = math.nan
        self.next_k = -1
        self.waiting: list[tuple[FloatArray, FloatArray]] = []


class GridStatistics:
    """The statistics of every grid column, as the final average writes them.

    Attributes:
        n: Values per column (instances that measured the metric there).
        mean: The mean (NaN where ``n`` is 0).
        std: The sample standard deviation (NaN where ``n < 2``).
        min: The smallest value.
        max: The largest value.
        ci95: The 95 % half-width of the mean (NaN where ``n < 2``).
    """

    __slots__ = ("ci95", "max", "mean", "min", "n", "std")

    def __init__(self, columns: int) -> None:
        self.n: IntArray = np.zeros(columns, dtype=np.int64)
        self.mean: FloatArray = np.full(columns, np.nan)
        self.std: FloatArray = np.full(columns, np.nan)
        self.min: FloatArray = np.full(columns, np.nan)
        self.max: FloatArray = np.full(columns, np.nan)
        self.ci95: FloatArray = np.full(columns, np.nan)

    @property
    def columns(self) -> int:
        return int(self.n.shape[0])

    def resized(self, columns: int) -> GridStatistics:
        """These statistics in ``columns`` columns (new ones empty)."""
        grown = GridStatistics(columns)
        keep = min(columns, self.columns)
        for name in GridStatistics.__slots__:
            getattr(grown, name)[:keep] = getattr(self, name)[:keep]
        return grown

    def thinned(self) -> GridStatistics:
        """Every other column, from the first."""
        thin = GridStatistics(0)
        for name in GridStatistics.__slots__:
            setattr(thin, name, getattr(self, name)[::2].copy())
        return thin

    def write(self, start: int, block: FloatArray, scratch: Scratch, *, round_mean: bool) -> None:
        """Columns ``start:`` from ``block`` (instances x those columns, NaN: no value);
        with ``round_mean``, the means rounded to whole numbers (halves up)."""
        size = block.shape[1]
        state = moments.init(size, own_count=True)
        moments.reset(state, size)
        # A plain pass may overflow at extreme magnitudes: folded again, scaled.
        with np.errstate(over="ignore", invalid="ignore"):
            moments.update_ragged(state, block, scratch)
        if moments.extreme(state):
            moments.rescale(state)
            moments.update_ragged(state, block, scratch)
        stop = start + size
        out = [self.mean[start:stop], self.std[start:stop], self.min[start:stop]]
        out += [self.max[start:stop], self.ci95[start:stop]]
        count = self.n[start:stop]
        half_widths = moments.HalfWidthTable(block.shape[0])
        moments.finalize(
            state, count, out, half_widths, scratch, round_mean=round_mean, count_out=count
        )


class MetricGrid:
    """Every instance's values of one metric on the grid, and their statistics.

    ``values[row, col]`` is instance ``row``'s value at grid index ``col * stride``
    (NaN: not covered). Statistics are cached per column and recomputed from the
    first column that changed. A summed grid (a counter) holds each instance's
    counts per grid point; an instance that has counted anything counts 0 at
    every other point, as in the final average.

    Args:
        rows: The instances to make room for (more are added as they come).
        capacity: The most columns kept: past it the grid is thinned, keeping
            every other point (the stride doubles).
        summed: Whether the metric is a counter (averaged with ``"sum"``).
        rounded: Whether the means are rounded to whole numbers, as the final
            average rounds a metric of ``round_to_int`` (a counter's are not: its
            running total is rounded, see
            :func:`labkit.timeline.moments.round_running_total`).
    """

    __slots__ = (
        "_capacity",
        "_dirty_from",
        "_scratch",
        "_stats",
        "members",
        "rounded",
        "row_versions",
        "stride",
        "summed",
        "values",
    )

    def __init__(
        self, rows: int, capacity: int, *, summed: bool = False, rounded: bool = False
    ) -> None:
        self._capacity = capacity
        self.rounded = rounded
        self.values = np.full((rows, _INITIAL_COLUMNS), np.nan)
        self.members = np.zeros(rows, dtype=bool)  # summed: the rows that have counted
        # Each row's changes so far: a line drawn from a row is current while it holds.
        self.row_versions = np.zeros(rows, dtype=np.int64)
        self.summed = summed
        self.stride = 1
        self._stats = GridStatistics(0)
        self._dirty_from = 0
        self._scratch = Scratch()

    @property
    def columns(self) -> int:
        """Grid columns with statistics (up to the latest point given a value)."""
        return self._stats.columns

    @property
    def changed(self) -> bool:
        """Whether some column changed since the statistics were last computed."""
        return self._dirty_from < self._stats.columns

    def ensure(self, rows: int, columns: int) -> None:
        """Make room for ``rows`` instances and ``columns`` columns."""
        have_rows, have_cols = self.values.shape
        if rows > have_rows or columns > have_cols:
            # Room to grow into, never past the capacity: thinning keeps columns below it.
            wide = (
                have_cols
                if columns <= have_cols
                else max(columns, min(2 * have_cols, self._capacity))
            )
            tall = have_rows if rows <= have_rows else max(rows, 2 * have_rows)
            grown = np.full((tall, wide), np.nan)
            grown[:have_rows, :have_cols] = self.values
            self.values = grown
            members = np.zeros(tall, dtype=bool)
            members[:have_rows] = self.members
            self.members = members
            versions = np.zeros(tall, dtype=np.int64)
            versions[:have_rows] = self.row_versions
            self.row_versions = versions
        if columns > self._stats.columns:
            self._stats = self._stats.resized(columns)

    def reserve(self, k: int) -> int:
        """Thin the grid until grid index ``k`` fits; the stride then in force."""
        while k // self.stride >= self._capacity:
            self._thin()
        return self.stride

    def put(self, row: int, ks: IntArray, values: FloatArray) -> None:
        """Store ``values`` at grid indices ``ks``: multiples of the stride, ascending,
        the last one :meth:`reserve`-d."""
        if ks.size == 0:
            return
        columns = ks // self.stride
        self.ensure(row + 1, int(columns[-1]) + 1)
        self.values[row, columns] = values
        self.row_versions[row] += 1
        self._dirty_from = min(self._dirty_from, int(columns[0]))

    def add(self, row: int, ks: IntArray, counts: FloatArray) -> None:
        """Add ``counts`` at grid indices ``ks`` (distinct multiples of the stride,
        ascending, the last one :meth:`reserve`-d) to a summed grid."""
        if ks.size == 0:
            return
        columns = ks // self.stride
        self.ensure(row + 1, int(columns[-1]) + 1)
        held = self.values[row, columns]
        self.values[row, columns] = np.where(np.isnan(held), 0.0, held) + counts
        self.row_versions[row] += 1
        if not self.members[row]:
            self.members[row] = True
            self._dirty_from = 0  # its zeros count everywhere
        self._dirty_from = min(self._dirty_from, int(columns[0]))

    def row(self, row: int) -> FloatArray:
        """Instance ``row``'s values over the columns with statistics, as they count
        in them (a copy; NaN: not covered, but 0 where a counter's row counts 0)."""
        values = self.values[row, : self.columns].copy()
        if self.summed and self.members[row]:
            values[np.isnan(values)] = 0.0
        return values

    def clear_row(self, row: int) -> None:
        """Forget an instance's values (it failed, or starts over)."""
        if row < self.values.shape[0]:
            self.values[row, :] = np.nan
            self.members[row] = False
            self.row_versions[row] += 1
            self._dirty_from = 0

    def _thin(self) -> None:
        """Keep every other grid point: the grid's step doubles, points stay final ones."""
        self.stride *= 2
        half = (self._stats.columns + 1) // 2
        values = np.full_like(self.values, np.nan)
        values[:, :half] = self.values[:, : 2 * half : 2]
        self.values = values
        self.row_versions += 1
        self._stats = self._stats.thinned()
        self._dirty_from = min(self._dirty_from // 2, half)

    def statistics(self, rows: int) -> GridStatistics:
        """Every column's statistics over the first ``rows`` instances (recomputed
        where changed; the record is the grid's own: read, never keep)."""
        start, stop = self._dirty_from, self._stats.columns
        if start < stop:
            block = self.values[:rows, start:stop]
            if self.summed:
                counted = self.members[:rows, np.newaxis] & np.isnan(block)
                block = np.where(counted, 0.0, block)
            round_mean = self.rounded and not self.summed
            self._stats.write(start, block, self._scratch, round_mean=round_mean)
            self._dirty_from = stop
        return self._stats
