"""The live chart's model: buffers, decimation and the running average, no UI.

:class:`LiveTimelineModel` takes instance events (an ``on_event`` callback or a
bus subscriber) and hands out immutable :class:`LiveSnapshot` records; a widget
only maps snapshots to traces. Samples come from each attempt's
:class:`~labkit.samplelog.SampleLog`, announced by a :class:`~labkit.events.TimelineEvent`
(a bus then spares the model the sample events), or from ``sample`` events alone
(a hand-fed model). Receiving an event costs one list append: the work (reading
the logs' new rows, grouping samples by instance and metric, decimating,
gridding, the statistics) happens once per frame in
:meth:`LiveTimelineModel.update`, with numpy.

- Each instance's line is kept to a fixed number of points by streaming min/max
  decimation: samples fall into buckets of equal sample counts, each bucket keeps
  its minimum and maximum, and when the buckets run out two neighbours merge. Peaks
  stay visible and memory stays fixed however long the run.
- The running average lives on the grid the final average uses
  (:func:`labkit.timeline.average_timelines` chooses the step from the first
  samples seen, or ``step`` fixes it), thinned by powers of two when the run grows
  long: every grid point shown is a point of the final grid, and once every
  sample has arrived its mean, spread and ``n`` are the final average's there.

:class:`FrameBudget` decides when the next frame is due: at most
``updates_per_s`` frames a second, and no more than ``max_load`` of the time
spent drawing. Both take an injectable clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd

from labkit._checks import is_int, is_real
from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import ConfigError
from labkit.events import InstanceEvent, TimelineEvent
from labkit.samplelog import SampleLog
from labkit.stats import mean_std, t_quantile
from labkit.timeline.inputs import (
    COUNTERS,
    GAP_FACTOR,
    Method,
    check_max_gap,
    check_method,
    default_step,
    median_interval,
)

__all__ = (
    "AverageSnapshot",
    "Axis",
    "Band",
    "DEFAULT_MAX_POINTS",
    "FrameBudget",
    "LineSnapshot",
    "LiveSnapshot",
    "LiveTimelineModel",
    "decimate_indices",
)

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]

Band = Literal["std", "minmax", "ci95"]

Axis = Literal["t", "step"]
"""What lines and averages run over: seconds since the instance started, or steps."""

DEFAULT_MAX_POINTS = 2000
"""Points per line above which a timeline is decimated for display."""

GAP_INTERVALS = 1
"""Intervals between a metric's samples seen before its default ``max_gap`` is fixed
(as the step, from the first samples that have one: the chart starts at once)."""

BANDS: tuple[str, ...] = ("std", "minmax", "ci95")


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


def _frozen(values: npt.ArrayLike) -> FloatArray:
    array = np.array(values, dtype=float)
    array.flags.writeable = False
    return array


# --------------------------------------------------------------------------------------
# Snapshots
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineSnapshot:
    """One instance's line of one metric, decimated for display.

    Attributes:
        instance: The instance's index.
        metric: The metric's name.
        t: Seconds since the instance started, ascending (read-only array).
        y: The values at ``t`` (read-only array, same length).
        samples: How many samples the line has received (before decimation).
        failed: Whether the instance failed (its line is not in the average).
    """

    instance: int
    metric: str
    t: FloatArray
    y: FloatArray
    samples: int
    failed: bool


@dataclass(frozen=True, slots=True)
class AverageSnapshot:
    """The average of one metric over the instances, with its spread.

    Arrays are read-only and of one length: one value per grid point that at
    least one instance covers.

    Attributes:
        metric: The metric's name.
        t: Grid times, in seconds.
        n: Instances that measured the metric at each grid time (0 in a gap that
            every instance has: the statistics are NaN there, drawn as a break).
        mean: The mean over those instances.
        std: Sample standard deviation (ddof=1; NaN where ``n < 2``).
        min: The smallest instance value.
        max: The largest instance value.
        ci95: Half-width of the 95 % Student-t confidence interval (NaN where ``n < 2``).
        final: Whether these are the finished run's exact figures.
    """

    metric: str
    t: FloatArray
    n: IntArray
    mean: FloatArray
    std: FloatArray
    min: FloatArray
    max: FloatArray
    ci95: FloatArray
    final: bool = False

    def band(self, band: Band) -> tuple[FloatArray, FloatArray]:
        """The lower and upper edges of ``band`` around the mean.

        Args:
            band: ``"std"`` (mean ± one standard deviation), ``"minmax"`` or
                ``"ci95"`` (mean ± the confidence half-width).

        Raises:
            ConfigError: If ``band`` is unknown.
        """
        if band == "minmax":
            return self.min, self.max
        if band == "std":
            return self.mean - self.std, self.mean + self.std
        if band == "ci95":
            return self.mean - self.ci95, self.mean + self.ci95
        raise ConfigError("band", band, "'std', 'minmax' or 'ci95'")

    @classmethod
    def from_frame(
        cls, averaged: pd.DataFrame, metric: str, *, final: bool = True
    ) -> AverageSnapshot:
        """``metric``'s columns of an averaged timeline (``t`` or ``step``, ``m``,
        ``m_n``, ``m_std``...); ``t`` holds the steps of a timeline indexed by step.

        ``n`` is the metric's own count ``m_n`` (``n`` in a frame without it).
        Missing statistic columns read as NaN.

        Raises:
            ConfigError: If ``averaged`` has neither ``t`` nor ``step``, or no ``metric``.
        """
        axis = "t" if "t" in averaged.columns else "step"
        for needed in (axis, metric):
            if needed not in averaged.columns:
                raise ConfigError("averaged", list(averaged.columns), f"a column {needed!r}")
        rows = len(averaged)

        def column(name: str) -> FloatArray:
            if name in averaged.columns:
                return _frozen(averaged[name].to_numpy(dtype=float))
            return _frozen(np.full(rows, np.nan))

        count = f"{metric}_n" if f"{metric}_n" in averaged.columns else "n"
        counts = averaged[count].to_numpy() if count in averaged.columns else np.zeros(rows)
        n = np.array(counts, dtype=np.int64)
        n.flags.writeable = False
        return cls(
            metric=metric,
            t=column(axis),
            n=n,
            mean=column(metric),
            std=column(f"{metric}_std"),
            min=column(f"{metric}_min"),
            max=column(f"{metric}_max"),
            ci95=column(f"{metric}_ci95"),
            final=final,
        )


@dataclass(frozen=True, slots=True)
class LiveSnapshot:
    """What the live chart shows at one moment; never changes once handed out.

    Attributes:
        version: Grows by one whenever the model's content changes; equal versions
            mean equal content.
        time: The model clock's reading when the snapshot was taken (seconds).
        metrics: The metrics, in order of first appearance (or as configured).
        instances: Every instance seen, ascending.
        failed: The instances that failed.
        finished: The instances that finished.
        lines: Every instance's line per metric, ordered by metric then instance.
        averages: The average of each metric that has one.
        step: The average's grid step in seconds (``None`` until it is known;
            1 on a step axis).
        samples: Samples received so far, over every instance.
        latest: Each instance's latest sample offset, in seconds since it started
            (on a step axis too).
        axis: ``"t"`` (lines and averages over seconds) or ``"step"`` (over the
            samples' ``step`` values, as the result averages timelines that have one).
    """

    version: int
    time: float
    metrics: tuple[str, ...]
    instances: tuple[int, ...]
    failed: frozenset[int]
    finished: frozenset[int]
    lines: tuple[LineSnapshot, ...]
    averages: Mapping[str, AverageSnapshot]
    step: float | None
    samples: int
    latest: Mapping[int, float] = field(default_factory=dict)
    axis: Axis = "t"

    @property
    def empty(self) -> bool:
        """Whether nothing has been received yet (a chart shows a placeholder)."""
        return self.samples == 0

    def lines_of(self, metric: str) -> tuple[LineSnapshot, ...]:
        """The instances' lines of ``metric``, by instance."""
        return tuple(line for line in self.lines if line.metric == metric)


# --------------------------------------------------------------------------------------
# One line: streaming min/max decimation
# --------------------------------------------------------------------------------------


class _MinMaxLine:
    """One instance's samples of one metric, kept to a fixed number of points.

    Samples fill buckets of ``size`` samples each; a bucket keeps its minimum and
    maximum (with their times). When every bucket is used, neighbours merge in
    pairs and ``size`` doubles, so memory is fixed and each sample costs O(1)
    amortised. The first and the latest sample are always kept.
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

    def extend(self, t: FloatArray, y: FloatArray) -> None:
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
        half = self._count // 2  # the bucket count is even: pairs merge exactly
        a, b = slice(0, 2 * half, 2), slice(1, 2 * half, 2)
        lo_from_b = self._lo_y[b] < self._lo_y[a]
        hi_from_b = self._hi_y[b] > self._hi_y[a]
        self._lo_t[:half] = np.where(lo_from_b, self._lo_t[b], self._lo_t[a])
        self._lo_y[:half] = np.where(lo_from_b, self._lo_y[b], self._lo_y[a])
        self._hi_t[:half] = np.where(hi_from_b, self._hi_t[b], self._hi_t[a])
        self._hi_y[:half] = np.where(hi_from_b, self._hi_y[b], self._hi_y[a])
        self._count = half
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
        return _frozen(t[keep]), _frozen(y[keep])


# --------------------------------------------------------------------------------------
# The running average on the final grid
# --------------------------------------------------------------------------------------


class _GridCursor:
    """Where one instance's line of one metric stands on the grid."""

    __slots__ = ("last_t", "last_y", "next_k", "waiting")

    def __init__(self) -> None:
        self.last_t = math.nan
        self.last_y = math.nan
        self.next_k = -1  # the first grid index not yet given a value; -1: no sample yet
        self.waiting: list[tuple[FloatArray, FloatArray]] = []  # samples before the step is known


class _MetricGrid:
    """Every instance's values of one metric on the grid, and their statistics.

    ``values[row, col]`` is instance ``row``'s value at grid index ``col * stride``
    (NaN: not covered). Statistics are cached per column and recomputed from the
    first column that changed. A summed grid (a counter) holds each instance's
    counts per grid point; an instance that has counted anything counts 0 at
    every other point, as in the final average.
    """

    __slots__ = ("_capacity", "_dirty_from", "_stats", "members", "stride", "summed", "values")

    def __init__(self, rows: int, capacity: int, *, summed: bool = False) -> None:
        self._capacity = capacity
        self.values = np.full((rows, 16), np.nan)
        self.members = np.zeros(rows, dtype=bool)  # summed: the rows that have counted
        self.summed = summed
        self.stride = 1
        self._stats = np.full((6, 0), np.nan)  # n, mean, std, min, max, ci95
        self._dirty_from = 0

    @property
    def columns(self) -> int:
        return self._stats.shape[1]

    def ensure(self, rows: int, columns: int) -> None:
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
        if columns > self._stats.shape[1]:
            stats = np.full((6, columns), np.nan)
            stats[:, : self._stats.shape[1]] = self._stats
            self._stats = stats

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
        if not self.members[row]:
            self.members[row] = True
            self._dirty_from = 0  # its zeros count everywhere
        self._dirty_from = min(self._dirty_from, int(columns[0]))

    def clear_row(self, row: int) -> None:
        if row < self.values.shape[0]:
            self.values[row, :] = np.nan
            self.members[row] = False
            self._dirty_from = 0

    def _thin(self) -> None:
        """Keep every other grid point: the grid's step doubles, points stay final ones."""
        self.stride *= 2
        half = (self._stats.shape[1] + 1) // 2
        values = np.full_like(self.values, np.nan)
        values[:, :half] = self.values[:, : 2 * half : 2]
        self.values = values
        self._stats = self._stats[:, ::2].copy()
        self._dirty_from = min(self._dirty_from // 2, half)

    @property
    def changed(self) -> bool:
        return self._dirty_from < self._stats.shape[1]

    def statistics(self, rows: int) -> FloatArray:
        """Rows ``n, mean, std, min, max, ci95`` per grid column (recomputed where changed)."""
        start, stop = self._dirty_from, self._stats.shape[1]
        if start < stop:
            block = self.values[:rows, start:stop]
            if self.summed:
                counted = self.members[:rows, np.newaxis] & np.isnan(block)
                block = np.where(counted, 0.0, block)
            valid = ~np.isnan(block)
            n = valid.sum(axis=0)
            safe = np.maximum(n, 1)
            mean, std = mean_std(block)  # scaled: any magnitude
            low = np.where(valid, block, np.inf).min(axis=0)
            high = np.where(valid, block, -np.inf).max(axis=0)
            counts, where = np.unique(n, return_inverse=True)  # a few distinct n at most
            quantiles = np.array(
                [t_quantile(0.975, int(k) - 1) if k >= 2 else np.nan for k in counts]
            )
            quantiles = quantiles[where.reshape(-1)]
            with np.errstate(over="ignore"):  # inf: its true value is past the largest float
                ci95 = std * (quantiles / np.sqrt(safe))
            none, single = n == 0, n < 2
            stats = self._stats
            stats[0, start:stop] = n
            stats[1, start:stop] = np.where(none, np.nan, mean)
            stats[2, start:stop] = np.where(single, np.nan, std)
            stats[3, start:stop] = np.where(none, np.nan, low)
            stats[4, start:stop] = np.where(none, np.nan, high)
            stats[5, start:stop] = np.where(single, np.nan, ci95)
            self._dirty_from = stop
        return self._stats


# --------------------------------------------------------------------------------------
# Events as columns
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class _Columns:
    """A run of sample events as arrays: who, when, and each metric (NaN: not in a sample)."""

    owners: IntArray
    offsets: FloatArray
    values: dict[str, FloatArray]
    names: tuple[str, ...]  # the metrics in order of first appearance


def _columns(
    events: Sequence[InstanceEvent], fields: Sequence[tuple[Any, ...]] | None = None
) -> _Columns | None:
    """Sample events as columns, read at C speed (no Python loop per event).

    One transposition (``zip``, or ``fields`` when the caller has it) gives every
    field as a tuple; the metrics are read from their dicts once per metric.
    """
    _, instances, _, offsets, rows, _ = fields or tuple(zip(*events, strict=True))
    if not all(rows):  # a sample without values carries nothing to draw
        kept = [event for event in events if event.metrics]
        if not kept:
            return None
        _, instances, _, offsets, rows, _ = zip(*kept, strict=True)
    count = len(rows)
    values: dict[str, FloatArray] = {}
    # Usually every sample holds the same metrics. When each holds all of the first
    # sample's (else a KeyError) and no more (the sizes add up), those are all.
    first = rows[0]
    if sum(map(len, rows)) == len(first) * count:
        try:
            for metric in first:
                values[metric] = np.fromiter(map(itemgetter(metric), rows), np.float64, count)
        except KeyError:
            values = {}
    if not values:
        names: set[str] = set().union(*rows)
        ordered: dict[str, None] = {}
        for metrics in rows:  # in order of first appearance
            ordered.update(dict.fromkeys(metrics))
            if len(ordered) == len(names):
                break
        for metric in ordered:  # NaN where a sample lacks the metric
            values[metric] = np.array([d.get(metric, math.nan) for d in rows], np.float64)
    return _Columns(
        owners=np.fromiter(instances, np.int64, count),
        offsets=np.fromiter(offsets, np.float64, count),
        values=values,
        names=tuple(values),
    )


def _by_instance(owners: IntArray) -> dict[int, IntArray]:
    """Each instance's row positions, ascending."""
    if owners.shape[0] and bool((owners == owners[0]).all()):
        return {int(owners[0]): np.arange(owners.shape[0])}
    order = np.argsort(owners, kind="stable")
    cuts = np.flatnonzero(np.diff(owners[order])) + 1
    return {int(owners[part[0]]): part for part in np.split(order, cuts) if part.shape[0]}


def _merged(chunks: list[_Columns]) -> _Columns:
    """Consecutive chunks as one (a metric missing from a chunk is NaN there)."""
    if len(chunks) == 1:
        return chunks[0]
    names = tuple(dict.fromkeys(name for chunk in chunks for name in chunk.names))
    values = {
        name: np.concatenate(
            [
                chunk.values[name] if name in chunk.values else np.full(chunk.owners.size, np.nan)
                for chunk in chunks
            ]
        )
        for name in names
    }
    return _Columns(
        owners=np.concatenate([chunk.owners for chunk in chunks]),
        offsets=np.concatenate([chunk.offsets for chunk in chunks]),
        values=values,
        names=names,
    )


class _Feed:
    """An attempt's log the model reads from, and how many of its rows it has read."""

    __slots__ = ("log", "read")

    def __init__(self, log: SampleLog) -> None:
        self.log = log
        self.read = 0


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


class LiveTimelineModel:
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

    Raises:
        ConfigError: If ``max_points`` or ``max_grid_points`` is below 4,
            ``step`` is not a positive number, or ``max_gap`` or ``method`` is
            not one of the forms above.
    """

    event_types = (InstanceEvent, TimelineEvent)
    """What the model reads: a bus routes it only instance and timeline events."""

    sample_events = False
    """The model reads each attempt's log: a bus spares it the sample events of
    attempts whose log was announced (:meth:`labkit.EventBus.sample_route`)."""

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
    ) -> None:
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
        self._pending: list[Any] = []
        self._staged: list[_Columns | InstanceEvent | TimelineEvent] = []
        self._fed: set[int] = set()
        self.chunk_size = 1024
        """Events worth turning into columns at once (see :meth:`compact`)."""
        self._final: dict[str, AverageSnapshot] = {}
        self._clear()

    def _clear(self) -> None:
        self._metrics: list[str] = list(self._initial_metrics)
        self._lines: dict[tuple[int, str], _MinMaxLine] = {}
        self._cursors: dict[tuple[int, str], _GridCursor] = {}
        self._grids: dict[str, _MetricGrid] = {}
        self._rows: dict[int, int] = {}  # instance -> row in the grids
        self._latest: dict[int, float] = {}  # instance -> its latest sample's offset (s)
        self._failed: set[int] = set()
        self._finished: set[int] = set()
        self._step = self._fixed_step
        self._axis: Axis | None = self._fixed_axis
        self._early_times: dict[int, FloatArray] = {}  # sample times before the step is known
        self._gaps: dict[str, float] = self._given_gaps()  # each metric's max_gap, once known
        self._intervals: dict[str, list[FloatArray]] = {}  # seen before a gap is known
        self._seen: dict[tuple[int, str], float] = {}  # each line's latest time, till then
        self._feeds: dict[int, _Feed] = {}  # instance -> the log its samples are read from
        self._version = 0
        self._samples = 0
        self._snapshot: LiveSnapshot | None = None
        self._line_cache: dict[tuple[int, str], LineSnapshot] = {}
        self._average_cache: dict[str, AverageSnapshot] = {}
        self._final = {}

    # Receiving -----------------------------------------------------------------------

    def handle(self, event: Any) -> None:
        """Receive one event (an ``on_event`` callback); it is read at the next update.

        A sample of an instance whose log the model reads is let pass at once.
        """
        if event.__class__ is InstanceEvent:
            if event.kind == "sample":
                if event.instance in self._fed:
                    return
            elif event.kind == "started":
                self._fed.discard(event.instance)  # a new attempt: its own log comes next
        elif event.__class__ is TimelineEvent:
            self._fed.add(event.instance)
        pending = self._pending
        pending.append(event)
        if len(pending) >= self.chunk_size:
            self.compact()

    handle.event_types = event_types  # type: ignore[attr-defined]
    handle.sample_events = sample_events  # type: ignore[attr-defined]

    def __call__(self, event: Any) -> None:
        """Same as :meth:`handle`: the model itself can be an ``on_event`` callback."""
        self.handle(event)

    @property
    def pending(self) -> int:
        """Events received and not yet turned into columns (see :meth:`compact`)."""
        return len(self._pending)

    @property
    def inbox(self) -> list[Any]:
        """The list :meth:`handle` adds events to. A view on a hot path may append a
        ``sample`` event itself (one call less) when its instance is not in
        :attr:`fed`, and must call :meth:`compact` when the list reaches
        :attr:`chunk_size`; everything else goes through :meth:`handle`."""
        return self._pending

    @property
    def fed(self) -> set[int]:
        """Instances whose samples are read from their attempt's log: their ``sample``
        events carry nothing new (the set itself, for hot paths; never modify it)."""
        return self._fed

    @property
    def feeding(self) -> bool:
        """Whether some attempt's log is read at each update (its attempt has not ended,
        as of the last update): a view keeps its frames coming, since the attempt's
        samples may come with no event at all."""
        return bool(self._feeds)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics known so far, in order."""
        return tuple(self._metrics)

    @property
    def axis(self) -> Axis | None:
        """``"t"`` or ``"step"`` once known (see ``on``)."""
        return self._axis

    @property
    def step(self) -> float | None:
        """The average's grid step in seconds, once known."""
        return self._step

    def reset(self) -> None:
        """Forget every instance and sample (for a new run); configured metrics stay."""
        version = self._version
        self._pending.clear()
        self._staged.clear()
        self._fed.clear()
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

    # Reading events ------------------------------------------------------------------

    def compact(self) -> None:
        """Turn the events received so far into columns (numpy arrays), cheaply.

        :meth:`update` does this first; calling it every ``chunk_size`` events
        (as :meth:`handle` and the live chart do) also lets the event records go
        at once, instead of piling up until the next frame, where the garbage
        collector would walk them again and again.
        """
        if not self._pending:
            return
        events = self._pending[:]
        del self._pending[:]  # in place: views append to this list
        fields: tuple[tuple[Any, ...], ...] | None = None
        kinds: Sequence[str]
        if set(map(type, events)) == {InstanceEvent}:
            # Columns at C speed: a frame may read tens of thousands of events.
            fields = tuple(zip(*events, strict=True))
            kinds = fields[0]
        else:
            events = [event for event in events if type(event) in self.event_types]
            if not events:
                return
            kinds = [event.kind for event in events]
        staged = self._staged
        if kinds.count("sample") == len(kinds):
            chunk = _columns(events, fields)
            if chunk is not None:
                staged.append(chunk)
            return
        start = 0
        for position, kind in enumerate(kinds):
            if kind == "sample":
                continue
            if position > start:
                self._stage_samples(events, fields, start, position)
            staged.append(events[position])  # a state change, after the samples before it
            start = position + 1
        if start < len(kinds):
            self._stage_samples(events, fields, start, len(kinds))

    def _stage_samples(
        self,
        events: list[Any],
        fields: tuple[tuple[Any, ...], ...] | None,
        start: int,
        stop: int,
    ) -> None:
        """Stage the sample events ``events[start:stop]`` as columns (``fields``: all
        the events transposed, if they were)."""
        part = None if fields is None else tuple(column[start:stop] for column in fields)
        chunk = _columns(events[start:stop], part)
        if chunk is not None:
            self._staged.append(chunk)

    def update(self) -> bool:
        """Read every pending event, and the new rows of every log, into the lines and averages.

        Returns:
            Whether anything changed.
        """
        self.compact()
        changed = self._read_staged() if self._staged else False
        for instance in list(self._feeds):
            changed |= self._read_feed(instance)
        if changed:
            self._version += 1
        return changed

    def _read_staged(self) -> bool:
        """Read the staged chunks and state changes."""
        staged, self._staged = self._staged, []
        # Every chunk is read as one (per-line work is per read, not per chunk).
        # A state change concerns its own instance only: it applies after that
        # instance's samples received before it, and before the later ones.
        chunks = [item for item in staged if isinstance(item, _Columns)]
        changes: dict[int, list[tuple[int, InstanceEvent | TimelineEvent]]] = {}
        received = 0
        for item in staged:
            if isinstance(item, _Columns):
                received += item.owners.shape[0]
            else:
                changes.setdefault(item.instance, []).append((received, item))
        prepared = self._prepare(_merged(chunks)) if chunks else None
        groups = {} if prepared is None else _by_instance(prepared[0])
        empty = np.empty(0, dtype=np.int64)
        changed = False
        for instance in sorted(groups.keys() | changes.keys()):
            positions = groups.get(instance, empty)
            done = 0
            for before, event in changes.get(instance, ()):
                cut = int(np.searchsorted(positions, before))
                if cut > done and prepared is not None:
                    changed |= self._add_instance(instance, positions[done:cut], *prepared[1:])
                    done = cut
                changed |= self._apply(event)
            if done < positions.shape[0] and prepared is not None:
                changed |= self._add_instance(instance, positions[done:], *prepared[1:])
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
        chunk = _Columns(
            owners=np.full(count, instance, dtype=np.int64),
            offsets=offsets,
            values=values,
            names=tuple(values),
        )
        prepared = self._prepare(chunk)
        if prepared is None:
            return False
        return self._add_instance(instance, None, *prepared[1:])

    def _apply(self, event: InstanceEvent | TimelineEvent) -> bool:
        instance = event.instance
        if type(event) is TimelineEvent:
            self._feeds[instance] = _Feed(event.log)
            return False
        if event.kind == "started":
            self._feeds.pop(instance, None)  # the last attempt's: its samples go anyway
            had = instance in self._rows or instance in self._failed
            self._failed.discard(instance)
            self._finished.discard(instance)
            if had:
                self._forget(instance)
            return had
        if event.kind not in ("failed", "finished"):
            return False
        # The attempt ended: its log holds every sample it will have.
        read = self._read_feed(instance)
        self._feeds.pop(instance, None)
        if event.kind == "failed":
            if instance in self._failed:
                return read
            self._failed.add(instance)
            row = self._rows.get(instance)
            if row is not None:
                for grid in self._grids.values():
                    grid.clear_row(row)
            return True
        self._finished.add(instance)
        self._close_lines(instance)
        return True

    def _forget(self, instance: int) -> None:
        self._latest.pop(instance, None)
        for key in [key for key in self._lines if key[0] == instance]:
            del self._lines[key]
            self._line_cache.pop(key, None)
            self._cursors.pop(key, None)
        row = self._rows.get(instance)
        if row is not None:
            for grid in self._grids.values():
                grid.clear_row(row)

    def _prepare(
        self, chunk: _Columns
    ) -> tuple[IntArray, FloatArray, dict[str, FloatArray], FloatArray] | None:
        """The owners, the times (offsets or steps) and the metrics to draw of a chunk;
        learns new metrics and, with the first samples, the axis."""
        names = chunk.values.keys()
        columns: dict[str, FloatArray] = {}
        for metric in self._in_order(chunk.names):
            if metric not in self._metrics:
                if self._fixed_metrics:
                    continue
                self._metrics.append(metric)
            columns[metric] = chunk.values[metric]
        if self._axis is None:
            self._axis = "step" if "step" in names else "t"
            if self._axis == "step":
                self._step = 1.0
        times = chunk.offsets
        if self._axis == "step":
            # Lines run over the samples' steps; a sample without one is left out.
            columns.pop("step", None)
            if "step" in self._metrics:
                self._metrics.remove("step")
            steps = chunk.values.get("step")
            if steps is None:
                return None
            times = steps
        if not columns:
            return None
        return chunk.owners, times, columns, chunk.offsets

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
        if index is None:
            t, mine = times, offsets
        else:
            t, mine = times[index], offsets[index]
        if mine.shape[0]:
            latest = float(mine.max())
            self._latest[instance] = max(self._latest.get(instance, latest), latest)
        if self._axis == "step":
            stepped = ~np.isnan(t)
            if not stepped.all():
                index = np.flatnonzero(stepped) if index is None else index[stepped]
                t = t[stepped]
            if not t.shape[0]:
                return False
        if t.shape[0] > 1 and bool((t[1:] < t[:-1]).any()):
            by_time = np.argsort(t, kind="stable")
            index = by_time if index is None else index[by_time]
            t = t[by_time]
        if self._step is None:
            self._learn_step(instance, t)
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

    def _in_order(self, names: Sequence[str]) -> list[str]:
        """``names``: the known metrics in their order, then the new ones in theirs."""
        known = [metric for metric in self._metrics if metric in names]
        if len(known) == len(names):
            return known
        return known + [metric for metric in names if metric not in known]

    def _learn_step(self, instance: int, offsets: FloatArray) -> None:
        """Fix the step the final average would choose for the sample times seen so far.

        Until some instance has two distinct sample times there is no interval to
        go by: samples wait in their lines' cursors and are put on the grid then.
        """
        seen = self._early_times.get(instance)
        self._early_times[instance] = times = (
            offsets if seen is None else np.concatenate((seen, offsets))
        )
        if np.unique(times).shape[0] < 2:
            return
        # Each instance's distinct times, ascending: what averaging reads them as.
        self._step = default_step([np.unique(t) for t in self._early_times.values()])
        self._early_times.clear()
        self._flush()

    def _given_gaps(self) -> dict[str, float]:
        """The gaps ``max_gap`` fixes: one for every metric (``"*"``) or by name."""
        given = self._max_gap
        if given is None:
            return {}
        if isinstance(given, Mapping):
            return {name: float(value) for name, value in given.items() if value is not None}
        return {"*": float(given)}

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

    def _ready(self, key: tuple[int, str], t: FloatArray) -> bool:
        """Whether the metric of line ``key`` can be gridded (its gap is known or not
        needed); notes the intervals of the samples ``t`` on the way."""
        metric = key[1]
        if (
            metric in self._gaps
            or "*" in self._gaps
            or self._axis == "step"
            or self._method_of(metric) == "sum"
        ):
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
            if key[0] in self._failed:  # out of the average, as in the result
                cursor.waiting = []
                continue
            gridded = self._axis == "step" or self._method_of(key[1]) == "sum"
            if not gridded and self._gap_of(key[1]) is None:
                continue
            held, cursor.waiting = cursor.waiting, []
            for t, y in held:
                self._grid(key, cursor, t, y)

    def _add_line(self, instance: int, metric: str, t: FloatArray, y: FloatArray) -> None:
        key = (instance, metric)
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = _MinMaxLine(max((self.max_points - 4) // 2, 1))
            self._rows.setdefault(instance, len(self._rows))
        line.extend(t, y)
        self._line_cache.pop(key, None)
        self._samples += t.shape[0]
        if instance in self._failed:
            return
        cursor = self._cursors.get(key)
        if cursor is None:
            cursor = self._cursors[key] = _GridCursor()
        ready = self._ready(key, t) and self._step is not None
        if ready and not cursor.waiting:
            self._grid(key, cursor, t, y)
            return
        cursor.waiting.append((t, y))
        if ready:
            self._flush(key[1])

    def _grid(
        self, key: tuple[int, str], cursor: _GridCursor, t: FloatArray, y: FloatArray
    ) -> None:
        """Give the grid points up to the latest sample time their values, run by run:
        samples further apart than the metric's gap are not bridged.

        One pass of numpy for every run of the samples, however many gaps they hold.
        A run between gaps covers the grid points from the one nearest its first
        sample to the one nearest its last (held there, not extrapolated); the open
        run at the end covers the points its samples settle: up to the latest time
        (interpolated), or up to the point before the latest sample's own (held: a
        later sample may still round to that point).
        """
        step = self._step
        assert step is not None
        if self._axis == "step":
            self._place_steps(key, t, y)
            return
        if cursor.next_k >= 0 and not t[0] > cursor.last_t:  # t ascends: only a head can be late
            late = int(np.searchsorted(t, cursor.last_t, side="right"))
            t, y = t[late:], y[late:]  # late samples are drawn, not averaged
            if t.shape[0] == 0:
                return
        method = self._method_of(key[1])
        if method == "sum":
            self._count(key, cursor, t, y)
            return
        gap = self._gap_of(key[1])
        assert gap is not None
        continuing = cursor.next_k >= 0
        if continuing:  # the run so far ends with the line's last sample
            t = np.concatenate(((cursor.last_t,), t))
            y = np.concatenate(((cursor.last_y,), y))
        cursor.last_t, cursor.last_y = float(t[-1]), float(y[-1])
        breaks = np.flatnonzero(np.subtract(t[1:], t[:-1]) > gap) + 1
        firsts = np.concatenate(((0,), breaks))
        lasts = np.concatenate((breaks - 1, (t.shape[0] - 1,)))
        lo = np.floor(t[firsts] / step + 0.5).astype(np.int64)
        hi = np.floor(t[lasts] / step + 0.5).astype(np.int64)
        if continuing:
            lo[0] = cursor.next_k
        if method == "previous":
            hi[-1] -= 1
        else:
            hi[-1] = math.floor(t[-1] / step)
        cursor.next_k = max(int(hi[-1]) + 1, int(lo[-1]))
        if not bool((hi >= lo).any()):
            return
        grid = self._grid_of(key[1])
        stride = grid.reserve(int(hi.max()))  # thinned first: only kept points are computed
        first = -(-lo // stride) * stride
        counts = np.maximum((hi - first) // stride + 1, 0)
        total = int(counts.sum())
        if not total:
            return
        run = np.repeat(np.arange(counts.shape[0]), counts)
        offsets = np.repeat(np.cumsum(counts) - counts, counts)  # each run's first position
        ks = first[run] + stride * (np.arange(total) - offsets)
        if method == "previous":
            # The last sample whose nearest grid point is at or before each point.
            nearest = np.floor(t / step + 0.5)
            values = y[np.searchsorted(nearest, ks, side="right") - 1]
        else:
            # Each point's time, kept inside its own run: held at the run's ends.
            at = np.clip(ks * step, t[firsts][run], t[lasts][run])
            values = np.interp(at, t, y)
        grid.put(self._rows[key[0]], ks, values)

    def _close(self, key: tuple[int, str], cursor: _GridCursor) -> None:
        """End a finished line's run: it covers the grid point nearest its last sample
        too, holding that sample's value."""
        assert self._step is not None
        last_k = math.floor(cursor.last_t / self._step + 0.5)
        if cursor.next_k < 0 or last_k < cursor.next_k:
            return
        grid = self._grid_of(key[1])
        stride = grid.reserve(last_k)
        ks = np.arange(-(-cursor.next_k // stride) * stride, last_k + 1, stride, dtype=np.int64)
        cursor.next_k = last_k + 1
        grid.put(self._rows[key[0]], ks, np.full(ks.shape[0], cursor.last_y))

    def _grid_of(self, metric: str) -> _MetricGrid:
        grid = self._grids.get(metric)
        if grid is None:
            summed = self._axis != "step" and self._method_of(metric) == "sum"
            grid = _MetricGrid(len(self._rows), self.max_grid_points, summed=summed)
            self._grids[metric] = grid
        return grid

    def _count(
        self, key: tuple[int, str], cursor: _GridCursor, t: FloatArray, y: FloatArray
    ) -> None:
        """A counter's samples, each added at its nearest grid point."""
        step = self._step
        assert step is not None
        cursor.last_t, cursor.last_y = float(t[-1]), float(y[-1])
        cursor.next_k = 0  # samples before this one are late from now on
        ks = np.floor(t / step + 0.5).astype(np.int64)
        grid = self._grid_of(key[1])
        stride = grid.reserve(int(ks[-1]))
        kept = ks % stride == 0
        points, where = np.unique(ks[kept], return_inverse=True)
        counts = np.asarray(np.bincount(where, weights=y[kept]), dtype=np.float64)
        grid.add(self._rows[key[0]], points, counts)

    def _place_steps(self, key: tuple[int, str], steps: FloatArray, y: FloatArray) -> None:
        """On a step axis each sample is its step's value: no grid, no interpolation."""
        ks = np.rint(steps).astype(np.int64)
        if ks.shape[0] > 1 and bool((np.diff(ks) <= 0).any()):
            # One value per step, the latest recorded; steps ascending.
            last = np.unique(ks[::-1], return_index=True)[1]
            picked = ks.shape[0] - 1 - last
            ks, y = ks[picked], y[picked]
        ks, y = ks[ks >= 0], y[ks >= 0]
        grid = self._grid_of(key[1])
        if ks.size:
            on_grid = ks % grid.reserve(int(ks[-1])) == 0
            grid.put(self._rows[key[0]], ks[on_grid], y[on_grid])

    def _close_lines(self, instance: int) -> None:
        """A finished instance covers the grid point nearest its last sample too."""
        if instance in self._failed or self._axis == "step":
            return
        for metric in {metric for i, metric in self._cursors if i == instance}:
            if metric in self._intervals:  # too few samples to wait for more
                self._settle(metric)
                self._flush(metric)
        if self._step is None:
            return
        for key, cursor in self._cursors.items():
            if key[0] == instance and self._method_of(key[1]) != "sum":
                self._close(key, cursor)

    # Snapshots -----------------------------------------------------------------------

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
        lines = []
        for metric in self._metrics:
            for instance in sorted(i for i, m in self._lines if m == metric):
                key = (instance, metric)
                cached = self._line_cache.get(key)
                failed = instance in self._failed
                if cached is None or cached.failed != failed:
                    t, y = self._lines[key].points()
                    cached = LineSnapshot(instance, metric, t, y, self._lines[key].samples, failed)
                    self._line_cache[key] = cached
                lines.append(cached)
        averages: dict[str, AverageSnapshot] = {}
        for metric in self._metrics:
            final = self._final.get(metric)
            if final is not None:
                averages[metric] = final
                continue
            running = self._running_average(metric)
            if running is not None:
                averages[metric] = running
        self._snapshot = LiveSnapshot(
            version=self._version,
            time=self._clock.now(),
            metrics=tuple(self._metrics),
            instances=tuple(sorted(self._rows.keys() | self._failed | self._finished)),
            failed=frozenset(self._failed),
            finished=frozenset(self._finished),
            lines=tuple(lines),
            averages=averages,
            step=self._step,
            samples=self._samples,
            latest=dict(self._latest),
            axis=self._axis or "t",
        )
        return self._snapshot

    def _running_average(self, metric: str) -> AverageSnapshot | None:
        grid = self._grids.get(metric)
        if grid is None or self._step is None:
            return None
        cached = self._average_cache.get(metric)
        if cached is not None and not grid.changed:
            return cached
        stats = grid.statistics(len(self._rows))
        covered = np.flatnonzero(stats[0] > 0)
        # Columns no instance measured between measured ones stay, as NaN: a gap
        # is drawn as a break, not bridged.
        columns = np.arange(covered[0], covered[-1] + 1) if covered.size else covered
        mean = stats[1, columns]
        if metric in self._rounded and grid.summed:
            # On the running total, as the final average rounds a counter.
            running = np.floor(np.cumsum(mean) + 0.5)
            mean = np.diff(running, prepend=0.0)
        elif metric in self._rounded:
            mean = np.floor(mean + 0.5)
        counts = stats[0, columns].astype(np.int64)
        counts.flags.writeable = False
        average = AverageSnapshot(
            metric=metric,
            t=_frozen(columns * (grid.stride * self._step)),
            n=counts,
            mean=_frozen(mean),
            std=_frozen(stats[2, columns]),
            min=_frozen(stats[3, columns]),
            max=_frozen(stats[4, columns]),
            ci95=_frozen(stats[5, columns]),
        )
        self._average_cache[metric] = average
        return average


# --------------------------------------------------------------------------------------
# Frame timing
# --------------------------------------------------------------------------------------


class FrameBudget:
    """When the next frame is due: a rate cap and a share of the loop's time.

    Frames come at most ``updates_per_s`` a second, and far enough apart that
    drawing takes at most ``max_load`` of the time: after frames of typical cost
    ``d`` seconds the gap is at least ``d / max_load``. The typical cost is the
    median of the last five frames' (counting two ideal ones until five were
    drawn), so one slow frame (the first, which builds the traces; a garbage
    collection; a busy machine) does not hold the chart back for long, while
    frames that stay slow do stretch the gap. The first frame also waits one
    interval, so a first burst of samples is drawn in one frame.

    Args:
        updates_per_s: The most frames per second.
        max_load: The largest fraction of time drawing may take (0 < x <= 1).
        clock: Where time is read.

    Raises:
        ConfigError: If ``updates_per_s`` is not > 0 or ``max_load`` not in (0, 1].
    """

    __slots__ = (
        "_clock",
        "_costs",
        "_gap",
        "_interval",
        "_last",
        "_max_load",
        "frames",
        "last_cost",
        "max_cost",
        "total_cost",
    )

    _HISTORY = 5

    def __init__(
        self, updates_per_s: float = 4.0, max_load: float = 0.05, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        if not (isinstance(updates_per_s, int | float) and updates_per_s > 0):
            raise ConfigError("updates_per_s", updates_per_s, "a number > 0")
        if not (isinstance(max_load, int | float) and 0 < max_load <= 1):
            raise ConfigError("max_load", max_load, "a fraction > 0 and <= 1")
        self._clock = clock
        self._interval = 1.0 / updates_per_s
        self._max_load = float(max_load)
        self._gap = self._interval
        self._last: float | None = None
        self._costs: deque[float] = deque(maxlen=self._HISTORY)
        self.frames = 0
        """Frames drawn so far."""
        self.last_cost = 0.0
        """Seconds the latest frame took."""
        self.max_cost = 0.0
        """Seconds the longest frame took."""
        self.total_cost = 0.0
        """Seconds all frames took together."""
        self.reset()

    def delay(self) -> float:
        """Seconds from now until the next frame is due (0: draw now)."""
        now = self._clock.now()
        if self._last is None:
            self._last = now  # the first frame waits one interval too
        return max(self._last + self._gap - now, 0.0)

    def drew(self, started: float) -> None:
        """Note a frame whose drawing began at ``started`` (clock seconds) and ended now."""
        finished = self._clock.now()
        self.last_cost = max(finished - started, 0.0)
        self.max_cost = max(self.max_cost, self.last_cost)
        self.total_cost += self.last_cost
        self._last = finished
        self._costs.append(self.last_cost)
        ordered = sorted(self._costs)
        typical = ordered[(len(ordered) - 1) // 2]  # the lower median
        self._gap = max(self._interval, typical / self._max_load)
        self.frames += 1

    def reset(self) -> None:
        """Forget past frames: the next waits one interval from when it is asked for."""
        self._last = None
        self._gap = self._interval
        self._costs.clear()
        self._costs.extend((self._interval * self._max_load,) * 2)

    @property
    def now(self) -> float:
        """The budget clock's reading, in seconds."""
        return self._clock.now()
