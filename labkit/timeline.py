"""Averaging of per-instance metric timelines and summaries.

One run is noise; N instances averaged are a measurement. This module puts the
instances' timelines on one time grid and reduces them to a mean with its spread,
averages their summaries, flags instances that behave differently from the rest,
and estimates how many instances a precise mean needs. Pure numpy and pandas.

Data formats:

- A *timeline* is a DataFrame with a float column ``t`` (seconds since the
  instance started) and one numeric column per metric (``cpu``, ``memory``,
  ``errors`` or the user's own names). NaN means "not sampled here"; inf (a
  diverging loss) is a non-finite sample: never an error, it is left out of the
  mean and spread and counted instead.
- An *averaged timeline* (:func:`average_timelines`) has the columns ``t``,
  ``n`` (how many instances contributed at ``t``) and, for each metric ``m`` in
  order of first appearance: ``m`` (mean), ``m_std`` (sample standard deviation,
  ddof=1), ``m_min``, ``m_max``, ``m_ci95`` (half-width of the 95 %
  confidence interval of the mean, Student t) and ``m_nonfinite`` (instances
  with an inf sample of ``m`` nearest ``t``).
- A *summary* is a flat dict of one instance's figures
  (``{"cpu_peak": 45.2, "error_count": 7, "recovery_time": 1.5, ...}``);
  :func:`average_summaries` reduces many to one in the same format.

Alignment, in short: the grid starts at 0 and advances by ``step`` seconds. A
sample belongs to its *nearest* grid point (flooring jittered timestamps would
put half of them one step early), so an instance covers the grid points from
the one nearest its first sample to the one nearest its last, and contributes
nowhere else: no extrapolation. Inside that range its value at a grid time is
interpolated (``"linear"``, for gauges such as CPU %) or held from the last
sample at or before that grid point (``"previous"``, for counters).

Averaging streams, block by block over the grid: within a block of a few
thousand grid points every instance is interpolated (the search for each grid
point's bracketing samples is shared by all of an instance's metrics) and folded
into running statistics (count, shifted sum and sum of squares, min, max); the
block's mean, spread and interval are then written out while still in cache.
Memory is the output plus a fixed working set, never instances x grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd

from labkit.errors import ConfigError
from labkit.stats import instances_needed, t_quantile

__all__ = (
    "Method",
    "Outlier",
    "average_summaries",
    "average_timelines",
    "detect_outliers",
    "instances_needed",
    "summarize_timeline",
    "summary_figures",
    "t_quantile",
)

Method = Literal["linear", "previous"]
"""How an instance's samples give its value at a grid time."""

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.intp]

_METHODS: tuple[str, ...] = ("linear", "previous")
_STAT_SUFFIXES = ("_std", "_min", "_max", "_ci95")
_NONFINITE = "_nonfinite"
_MAX_GRID_POINTS = 50_000_000
_BLOCK = 16_384  # grid points per block: a block's working set stays in cache
_ROWS = 8  # instances folded together per block
_FALLBACK_STEP = 1.0
_STEP_SAMPLE = 250_000  # intervals looked at for the default step, at most
_SUMMARY_RESERVED = frozenset(
    {"ok", "error", "index", "num_instances", "num_failed", "errors", "recovery_times"}
)
_RECOVERY_KEYS = ("recovery_time", "recovery_times")


class _Shown:
    """A value for :class:`ConfigError` whose repr is a short description, not the data."""

    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        self._text = text

    def __repr__(self) -> str:
        return self._text


# --------------------------------------------------------------------------------------
# Reading and checking the input
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Instance:
    """One instance's samples, sorted by time, as float64 arrays.

    ``clean`` holds the metrics without missing or non-finite values (they share
    ``t``); ``ragged`` holds the metrics with some NaN or inf, each with the times
    of its finite samples; ``nonfinite`` the times of each metric's inf samples.
    """

    position: int
    t: FloatArray
    clean: dict[str, FloatArray]
    ragged: dict[str, tuple[FloatArray, FloatArray]]
    nonfinite: dict[str, FloatArray]


def _as_float(values: Any, where: str, what: str) -> FloatArray:
    """A numeric pandas/numpy column as float64 (a view when it already is)."""
    dtype = getattr(values, "dtype", None)
    if isinstance(values, pd.Series):
        if dtype is not None and not isinstance(dtype, np.dtype):
            # Extension dtypes (Int64, Float64, boolean): pd.NA becomes NaN.
            if not pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
                raise ConfigError(where, _Shown(f"a column of dtype {dtype}"), what)
            return values.to_numpy(dtype=np.float64, na_value=np.nan)
        values = values.to_numpy()
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise ConfigError(where, _Shown(f"a column of dtype {array.dtype}"), what)
    return np.ascontiguousarray(array, dtype=np.float64)


def _all_finite(values: FloatArray) -> bool:
    # A finite sum proves every value finite (NaN and inf propagate); only when the
    # sum is not finite is the element-wise check needed.
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(values)
    return bool(np.isfinite(total)) or bool(np.isfinite(values).all())


def _read_timelines(timelines: Any) -> tuple[list[_Instance], list[str], int]:
    """Check the input and return (instances with samples, metric names, instance count)."""
    if isinstance(timelines, pd.DataFrame | Mapping):
        raise ConfigError(
            "timelines",
            _Shown(f"a single {type(timelines).__name__}"),
            "a sequence of timelines (one DataFrame per instance): wrap it in a list",
        )
    try:
        frames = list(timelines)
    except TypeError:
        raise ConfigError(
            "timelines", _Shown(type(timelines).__name__), "a sequence of DataFrames"
        ) from None
    if not frames:
        raise ConfigError("timelines", [], "at least one timeline (a DataFrame with a 't' column)")

    instances: list[_Instance] = []
    metrics: dict[str, None] = {}  # insertion-ordered set
    for position, frame in enumerate(frames):
        where = f"timelines[{position}]"
        if isinstance(frame, Mapping):
            frame = pd.DataFrame(dict(frame))
        elif not isinstance(frame, pd.DataFrame):
            raise ConfigError(where, _Shown(type(frame).__name__), "a DataFrame with a 't' column")
        names = list(frame.columns)
        if "t" not in names:
            hint = " ('t' is the index: call reset_index())" if frame.index.name == "t" else ""
            raise ConfigError(
                f"{where}.columns",
                _Shown(repr([str(c) for c in names])),
                f"a 't' column (seconds since the instance started){hint}",
            )
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}.columns", _Shown(repr(names)), "unique column names")
        for name in names:
            if not isinstance(name, str):
                raise ConfigError(f"{where}.columns", _Shown(repr(name)), "string column names")
            if name != "t":
                metrics.setdefault(name, None)

        t_column = frame["t"]
        if pd.api.types.is_timedelta64_dtype(t_column.dtype):
            raise ConfigError(
                f"{where}['t']",
                _Shown("a timedelta column"),
                "float seconds since the instance started: use t.dt.total_seconds()",
            )
        t = _as_float(t_column, f"{where}['t']", "float seconds since the instance started")
        if t.size == 0:
            continue
        columns = {
            name: _as_float(
                frame[name],
                f"{where}[{name!r}]",
                "a numeric metric column (every column but 't' is a metric)",
            )
            for name in names
            if name != "t"
        }
        # Sorted with finite ends means all finite (NaN compares false): one pass.
        in_order = t.size < 2 or bool((t[1:] >= t[:-1]).all())
        if not (in_order and math.isfinite(t[0]) and math.isfinite(t[-1])) and not _all_finite(t):
            raise ConfigError(
                f"{where}['t']", _Shown("a column with NaN or inf"), "finite times in seconds"
            )
        if not in_order:
            order = np.argsort(t, kind="stable")
            t = t[order]
            columns = {name: values[order] for name, values in columns.items()}

        clean: dict[str, FloatArray] = {}
        ragged: dict[str, tuple[FloatArray, FloatArray]] = {}
        nonfinite: dict[str, FloatArray] = {}
        for name, values in columns.items():
            if _all_finite(values):
                clean[name] = values
                continue
            # A diverging metric (inf) is a measurement, not bad input: its inf
            # samples are counted, and only its finite samples are averaged.
            infinite = np.isinf(values)
            if infinite.any():
                nonfinite[name] = t[infinite]
            valid = np.isfinite(values)
            if valid.any():
                ragged[name] = (t[valid], values[valid])
            # No finite value in this instance: it lacks the metric.
        instances.append(_Instance(position, t, clean, ragged, nonfinite))

    if not metrics:
        raise ConfigError(
            "timelines",
            _Shown("timelines with only a 't' column"),
            "at least one metric column besides 't'",
        )
    _check_output_names(list(metrics))
    return instances, list(metrics), len(frames)


def _check_output_names(metrics: Sequence[str]) -> None:
    taken = {"t", "n"} | {m + s for m in metrics for s in (*_STAT_SUFFIXES, _NONFINITE)}
    clash = [m for m in metrics if m in taken]
    if clash:
        raise ConfigError(
            "timelines",
            _Shown(f"a metric named {clash[0]!r}"),
            "metric names that do not clash with the output columns "
            "('n' and '<metric>_std', '_min', '_max', '_ci95', '_nonfinite')",
        )


def _resolve_methods(method: Any, metrics: Sequence[str]) -> dict[str, str]:
    allowed = "'linear', 'previous', or a mapping of metric name to one of them"
    if isinstance(method, str):
        if method not in _METHODS:
            raise ConfigError("method", method, allowed)
        return dict.fromkeys(metrics, method)
    if not isinstance(method, Mapping):
        raise ConfigError("method", method, allowed)
    unknown = [name for name in method if name not in metrics]
    if unknown:
        raise ConfigError(
            f"method[{unknown[0]!r}]", method[unknown[0]], f"a metric among {list(metrics)}"
        )
    resolved = {}
    for name in metrics:
        value = method.get(name, "linear")
        if value not in _METHODS:
            raise ConfigError(f"method[{name!r}]", value, "'linear' or 'previous'")
        resolved[name] = value
    return resolved


def _resolve_names(names: Any, option: str, metrics: Sequence[str]) -> list[str]:
    if isinstance(names, str):
        names = (names,)
    try:
        wanted = list(names)
    except TypeError:
        raise ConfigError(option, names, "a sequence of metric names") from None
    unknown = [name for name in wanted if name not in metrics]
    if unknown:
        raise ConfigError(option, unknown[0], f"a metric among {list(metrics)}")
    return wanted


def _resolve_step(step: Any, instances: Sequence[_Instance]) -> float:
    if step is None:
        return _default_step(instances)
    if isinstance(step, bool) or not isinstance(step, int | float | np.integer | np.floating):
        raise ConfigError("step", step, "a number of seconds > 0, or None for the default")
    value = float(step)
    if not (math.isfinite(value) and value > 0):
        raise ConfigError("step", step, "a finite number of seconds > 0, or None")
    return value


def _default_step(instances: Sequence[_Instance]) -> float:
    """The median interval between consecutive samples, over every instance.

    Snapped to the shortest decimal within 1 % of it, so that grid times read
    cleanly (a jittered 10 ms sampler gives 0.01, not 0.0100613). Beyond
    ``_STEP_SAMPLE`` intervals, an evenly strided sample of them is used.
    """
    total = sum(max(instance.t.size - 1, 0) for instance in instances)
    if total == 0:
        return _FALLBACK_STEP
    # Long inputs: every k-th interval of every instance, at most _STEP_SAMPLE in
    # all, estimates the median well within the 1 % the step is snapped to.
    stride = -(-total // _STEP_SAMPLE)
    pieces = []
    for instance in instances:
        t = instance.t
        if t.size > 1:
            pieces.append(t[1::stride] - t[:-1:stride])
    gaps = np.concatenate(pieces)
    if not gaps.min() > 0:
        gaps = gaps[gaps > 0]  # repeated timestamps are not an interval
        if gaps.size == 0:
            return _FALLBACK_STEP
    middle = gaps.size // 2
    if gaps.size % 2:
        gaps.partition(middle)
        return _snap(float(gaps[middle]))
    else:
        gaps.partition((middle - 1, middle))
        median = (float(gaps[middle - 1]) + float(gaps[middle])) / 2
    return _snap(median)


def _snap(interval: float) -> float:
    """The shortest decimal within 1 % of ``interval`` (0.01006 -> 0.01, 0.125 stays)."""
    for digits in range(1, 16):
        snapped = float(f"{interval:.{digits}g}")
        if abs(snapped - interval) <= 0.01 * interval:
            return snapped
    return interval


def _nearest_index(times: float, step: float) -> int:
    """The grid point nearest ``times`` (halves go up), as the vector code computes it."""
    return math.floor(times / step + 0.5)


# --------------------------------------------------------------------------------------
# One instance onto the grid
# --------------------------------------------------------------------------------------


class _Scratch:
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
class _Series:
    """Samples that share one time array, and the grid points [k0, stop) they cover.

    An instance gives one series for its metrics without gaps, plus one per
    metric with NaN samples (that metric's valid samples only).
    """

    t: FloatArray
    metrics: list[tuple[str, FloatArray]]
    k0: int
    stop: int

    @classmethod
    def of(cls, t: FloatArray, metrics: list[tuple[str, FloatArray]], step: float) -> _Series:
        k0 = max(_nearest_index(float(t[0]), step), 0)
        return cls(t, metrics, k0, _nearest_index(float(t[-1]), step) + 1)


def _series_of(instance: _Instance, step: float) -> list[_Series]:
    series = [_Series.of(instance.t, list(instance.clean.items()), step)]
    series += [_Series.of(t, [(name, v)], step) for name, (t, v) in instance.ragged.items()]
    return series


class _Gridder:
    """Puts a series on a block of grid points [lo, hi), one metric at a time.

    Which sample brackets each grid point, and the interpolation weight, depend
    only on the times: they are worked out once per series and block and reused
    for each metric. Only the samples near the block are touched (a window found
    by binary search), so a block's work stays in cache.
    """

    __slots__ = ("_grid", "_scratch", "_step")

    def __init__(self, grid: FloatArray, step: float, scratch: _Scratch) -> None:
        self._grid = grid
        self._step = step
        self._scratch = scratch

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
        series: _Series,
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


# --------------------------------------------------------------------------------------
# Streaming statistics
# --------------------------------------------------------------------------------------


def _uncovered(covered: list[list[int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """The parts of [lo, hi) not in ``covered`` (sorted, disjoint); marks them covered."""
    gaps: list[tuple[int, int]] = []
    cursor = lo
    for start, stop in covered:
        if stop <= cursor:
            continue
        if start >= hi:
            break
        if start > cursor:
            gaps.append((cursor, start))
        cursor = max(cursor, stop)
        if cursor >= hi:
            break
    if cursor < hi:
        gaps.append((cursor, hi))
    merged = sorted([*covered, [lo, hi]])
    covered.clear()
    for start, stop in merged:
        if covered and start <= covered[-1][1]:
            covered[-1][1] = max(covered[-1][1], stop)
        else:
            covered.append([start, stop])
    return gaps


class _BlockStats:
    """Running statistics of one metric over one block of grid points.

    Sums are taken of deviations from a per-point *shift*: the value of the first
    instance that reached that point. Identical instances thus add exact zeros
    (zero spread, exactly), and since the shift is one of the data the classic
    cancellation of ``sum(x^2) - sum(x)^2/n`` loses at most a factor n+1 in
    relative precision of the variance (Chan, Golub and LeVeque's shifted data).

    Only a block's worth lives here: a finished block is turned into its final
    statistics at once, while it is still in cache, and the buffers are reused.
    """

    __slots__ = ("count", "covered", "high", "low", "shift", "size", "sum1", "sum2")

    def __init__(self, capacity: int, *, own_count: bool) -> None:
        self.shift = np.empty(capacity)
        self.sum1 = np.empty(capacity)
        self.sum2 = np.empty(capacity)
        self.low = np.empty(capacity)
        self.high = np.empty(capacity)
        self.count: npt.NDArray[np.int64] | None = (
            np.empty(capacity, dtype=np.int64) if own_count else None
        )
        """Values per point; ``None`` when every instance has the metric wherever it
        has samples, so that the overall ``n`` is the count."""
        self.covered: list[list[int]] = []
        self.size = 0

    def reset(self, size: int) -> None:
        self.size = size
        self.sum1[:size] = 0.0
        self.sum2[:size] = 0.0
        self.low[:size] = np.inf
        self.high[:size] = -np.inf
        if self.count is not None:
            self.count[:size] = 0
        self.covered = []

    def add(self, start: int, x: FloatArray, scratch: _Scratch) -> None:
        """Add one instance's values at block points start..start+len(x)-1."""
        stop = start + x.size
        for lo, hi in _uncovered(self.covered, start, stop):
            self.shift[lo:hi] = x[lo - start : hi - start]
        deviation = scratch.floats("deviation", x.size)
        np.subtract(x, self.shift[start:stop], out=deviation)
        sum1 = self.sum1[start:stop]
        sum1 += deviation
        deviation *= deviation
        sum2 = self.sum2[start:stop]
        sum2 += deviation
        low = self.low[start:stop]
        np.minimum(low, x, out=low)
        high = self.high[start:stop]
        np.maximum(high, x, out=high)
        if self.count is not None:
            self.count[start:stop] += 1

    def fold(self, rows: FloatArray, scratch: _Scratch) -> None:
        """Add several instances that cover the whole block: ``rows`` is (instances, size)."""
        count, size = rows.shape
        for lo, hi in _uncovered(self.covered, 0, size):
            self.shift[lo:hi] = rows[0, lo:hi]
        deviation = scratch.floats("deviations", count * size).reshape(count, size)
        np.subtract(rows, self.shift[:size], out=deviation)
        total = scratch.floats("total", size)
        np.add.reduce(deviation, axis=0, out=total)
        self.sum1[:size] += total
        deviation *= deviation
        np.add.reduce(deviation, axis=0, out=total)
        self.sum2[:size] += total
        np.minimum.reduce(rows, axis=0, out=total)
        np.minimum(self.low[:size], total, out=self.low[:size])
        np.maximum.reduce(rows, axis=0, out=total)
        np.maximum(self.high[:size], total, out=self.high[:size])
        if self.count is not None:
            self.count[:size] += count

    def finish(
        self,
        n: npt.NDArray[np.int64],
        out: Sequence[FloatArray],
        quantiles: _QuantileTable,
        scratch: _Scratch,
        *,
        round_mean: bool,
    ) -> None:
        """Write mean, std, min, max and ci95 of the block into ``out`` (five arrays)."""
        size = self.size
        mean, std, low, high, ci95 = out
        counts = n if self.count is None else self.count[:size]
        sum1, sum2 = self.sum1[:size], self.sum2[:size]
        least, most = int(counts.min()), int(counts.max())
        offset = scratch.floats("offset", size)
        if least == most and least >= 2:
            # Every point has the same number of values (the usual case): scalars.
            np.multiply(sum1, 1.0 / least, out=offset)
            np.add(self.shift[:size], offset, out=mean)
            # M2 = sum(d^2) - sum(d)^2/n with d the shifted values, clipped at 0
            # against rounding.
            offset *= sum1
            np.subtract(sum2, offset, out=std)
            np.maximum(std, 0.0, out=std)
            std *= 1.0 / (least - 1)
            np.sqrt(std, out=std)
            np.multiply(std, quantiles.get(least) / math.sqrt(least), out=ci95)
        else:
            count = scratch.floats("count", size)
            np.copyto(count, counts, casting="unsafe")
            with np.errstate(divide="ignore", invalid="ignore"):
                np.divide(sum1, count, out=offset)
                np.add(self.shift[:size], offset, out=mean)
                offset *= sum1
                np.subtract(sum2, offset, out=std)
                np.maximum(std, 0.0, out=std)
                count -= 1.0
                std /= count
                np.sqrt(std, out=std)
                quantiles.take(counts, least, most, out=ci95)
                count += 1.0
                np.sqrt(count, out=count)
                ci95 *= std
                ci95 /= count
        # The mean of values within [low, high] lies there too: keep rounding from
        # stepping an ulp outside.
        np.maximum(mean, self.low[:size], out=mean)
        np.minimum(mean, self.high[:size], out=mean)
        low[:] = self.low[:size]
        high[:] = self.high[:size]
        if least < 2:
            few = counts < 2
            std[few] = np.nan  # undefined for one value; ci95's quantile is NaN too
            ci95[few] = np.nan
            empty = counts == 0
            mean[empty] = np.nan
            low[empty] = np.nan
            high[empty] = np.nan
        if round_mean:
            mean += 0.5
            np.floor(mean, out=mean)


class _QuantileTable:
    """Student t quantiles for the 95 % interval, by number of values (NaN below 2)."""

    __slots__ = ("_known", "_table")

    def __init__(self, instances: int) -> None:
        self._table = np.full(instances + 1, np.nan)
        self._known = np.zeros(instances + 1, dtype=bool)
        self._known[:2] = True

    def get(self, count: int) -> float:
        """The quantile for ``count`` values."""
        if not self._known[count]:
            self._table[count] = t_quantile(0.975, count - 1)
            self._known[count] = True
        return float(self._table[count])

    def take(self, counts: npt.NDArray[np.int64], least: int, most: int, out: FloatArray) -> None:
        """The quantile for each of ``counts`` (whose extremes are given) into ``out``."""
        if not self._known[least : most + 1].all():
            present = np.flatnonzero(np.bincount(counts - least)) + least
            for count in present.tolist():
                self.get(count)
        np.take(self._table, counts, out=out, mode="clip")


def _fold_rows(
    rows: Sequence[_Series],
    lo: int,
    hi: int,
    gridder: _Gridder,
    methods: Mapping[str, str],
    stats: Mapping[str, _BlockStats],
    scratch: _Scratch,
) -> None:
    """Grid a few series that cover block [lo, hi) and fold each metric in one go."""
    names = {name for series in rows for name, _ in series.metrics}
    size = hi - lo
    stacks = {
        name: scratch.floats(f"rows:{name}", _ROWS * size).reshape(_ROWS, size) for name in names
    }
    filled = dict.fromkeys(names, 0)
    for series in rows:
        outputs = {name: stacks[name][filled[name]] for name, _ in series.metrics}
        for name, _ in gridder.values(series, lo, hi, methods, outputs):
            filled[name] += 1
    for name in names:
        stats[name].fold(stacks[name][: filled[name]], scratch)


def _layout(instances: Sequence[_Instance], step: float) -> tuple[int, list[list[_Series]]]:
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


# --------------------------------------------------------------------------------------
# Public: averaging
# --------------------------------------------------------------------------------------


def average_timelines(
    timelines: Iterable[pd.DataFrame],
    *,
    step: float | None = None,
    method: Method | Mapping[str, Method] = "linear",
    round_to_int: Iterable[str] = (),
) -> pd.DataFrame:
    """Average instances' timelines on one time grid, with their spread.

    The grid is ``t = 0, step, 2*step, ...``. Each instance covers the grid points
    from the one nearest its first sample to the one nearest its last, and only
    those (no extrapolation; a one-sample timeline covers one point). Inside, its
    value at a grid time is interpolated or held, per ``method``. A metric with
    NaN or inf samples in an instance is gridded from that instance's finite
    samples of it; an instance without a metric (column absent, or no finite
    value) does not contribute to it. Non-finite samples never make averaging
    fail: NaN means "not sampled", and each inf sample (a diverging loss) is
    left out of the mean and spread and counted in ``m_nonfinite`` at its
    nearest grid point instead (an inf between finite samples is bridged by
    them, as a NaN is).

    Memory grows with the grid length, not with instances x grid: instances are
    folded one at a time into running statistics.

    Args:
        timelines: One DataFrame per instance: a float column ``t`` (seconds since
            the instance started; any order) and one numeric column per metric. A
            frame with no rows contributes nothing.
        step: Grid spacing in seconds. ``None``: the median interval between
            consecutive samples over all instances, snapped to the shortest
            decimal within 1 % of it (0.01006 gives 0.01); 1.0 when no instance
            has two distinct sample times.
        method: ``"linear"`` interpolates between samples (gauges such as CPU %),
            ``"previous"`` holds the last sample at or before the grid point
            (counters); a mapping gives a method per metric (others: linear).
        round_to_int: Metrics whose mean is rounded to a whole number after
            averaging (halves up), such as error counts. Spread columns are not.

    Returns:
        A DataFrame with ``t`` (grid seconds), ``n`` (instances that cover ``t``)
        and, per metric ``m`` in order of first appearance: ``m`` (mean),
        ``m_std`` (sample standard deviation, ddof=1; NaN where fewer than 2
        instances have a value), ``m_min``, ``m_max`` and ``m_ci95`` (half-width
        of the 95 % Student-t confidence interval of the mean; NaN below 2
        values) and ``m_nonfinite`` (int: instances with an inf sample of ``m``
        nearest ``t``). Statistics of a metric some instances lack at ``t`` use
        only the instances that have it (all NaN where none has). Grid points
        no instance covers are left out; when no timeline has a row, the frame
        has these columns and no rows.

    Raises:
        ConfigError: (a ``ValueError``) for empty input, a frame without ``t``, a
            non-numeric or non-finite ``t``, a non-numeric metric, metric names
            that clash with output columns, or a bad ``step``, ``method`` or
            ``round_to_int``.

    Example:
        >>> a = pd.DataFrame({"t": [0.0, 1.0], "errors": [7, 7]})
        >>> b = pd.DataFrame({"t": [0.0, 1.0], "errors": [5, 5]})
        >>> c = pd.DataFrame({"t": [0.0, 1.0], "errors": [6, 6]})
        >>> average_timelines([a, b, c], round_to_int=["errors"])["errors"].tolist()
        [6.0, 6.0]
    """
    instances, metrics, _ = _read_timelines(timelines)
    methods = _resolve_methods(method, metrics)
    rounded = set(_resolve_names(round_to_int, "round_to_int", metrics))
    grid_step = _resolve_step(step, instances)

    size, series = _layout(instances, grid_step)
    # A metric needs its own count where some instance lacks it (absent, or gaps).
    partial = {
        name
        for instance, parts in zip(instances, series, strict=True)
        if parts[0].k0 < parts[0].stop
        for name in metrics
        if name not in instance.clean
    }
    grid = np.arange(size, dtype=np.float64) * grid_step
    n = np.zeros(size, dtype=np.int64)
    outputs = {name: [np.empty(size) for _ in range(5)] for name in metrics}
    capacity = min(_BLOCK, size)
    stats = {name: _BlockStats(capacity, own_count=name in partial) for name in metrics}
    quantiles = _QuantileTable(len(instances))
    scratch = _Scratch()
    gridder = _Gridder(grid, grid_step, scratch)
    # Block by block over the grid, every instance within a block, then the block's
    # statistics: each block's work stays in cache, and the full-length arrays are
    # written once.
    for lo in range(0, size, _BLOCK):
        hi = min(lo + _BLOCK, size)
        for block in stats.values():
            block.reset(hi - lo)
        full: list[_Series] = []  # series covering the whole block: folded together
        for parts in series:
            for part in parts:
                start, stop = max(lo, part.k0), min(hi, part.stop)
                if start >= stop:
                    continue
                if start == lo and stop == hi and part is parts[0]:
                    full.append(part)
                    continue
                for name, values in gridder.values(part, start, stop, methods):
                    stats[name].add(start - lo, values, scratch)
            whole = parts[0]  # the instance's own span: its first to last sample
            start, stop = max(lo, whole.k0), min(hi, whole.stop)
            if start < stop:
                n[start:stop] += 1
        for first in range(0, len(full), _ROWS):
            _fold_rows(full[first : first + _ROWS], lo, hi, gridder, methods, stats, scratch)
        for name in metrics:
            stats[name].finish(
                n[lo:hi],
                [array[lo:hi] for array in outputs[name]],
                quantiles,
                scratch,
                round_mean=name in rounded,
            )

    nonfinite = _nonfinite_counts(instances, metrics, size, grid_step)
    keep = n > 0
    everywhere = bool(keep.all())
    columns: dict[str, Any] = {}
    columns["t"] = grid if everywhere else grid[keep]
    columns["n"] = n if everywhere else n[keep]
    for name in metrics:
        for suffix, values in zip(("", *_STAT_SUFFIXES), outputs[name], strict=True):
            columns[name + suffix] = values if everywhere else values[keep]
        counts = nonfinite[name]
        columns[name + _NONFINITE] = counts if everywhere else counts[keep]
    return pd.DataFrame(columns, copy=False)


def _nonfinite_counts(
    instances: Sequence[_Instance], metrics: Sequence[str], size: int, step: float
) -> dict[str, npt.NDArray[np.int64]]:
    """Per metric and grid point: instances with an inf sample nearest that point."""
    counts = {name: np.zeros(size, dtype=np.int64) for name in metrics}
    for instance in instances:
        for name, times in instance.nonfinite.items():
            points = np.floor(times / step + 0.5).astype(np.intp)
            np.clip(points, 0, size - 1, out=points)
            counts[name][np.unique(points)] += 1
    return counts


def summarize_timeline(timeline: pd.DataFrame) -> dict[str, float | int]:
    """One instance's summary figures from its timeline, in the summary format.

    Every metric ``m`` gives ``m_peak`` (its largest value), except ``errors``,
    whose samples count the errors since the previous sample: it gives
    ``error_count``, their sum. Missing values (NaN) are ignored; a metric with
    no value gives NaN (``error_count``: 0).

    Example:
        >>> summarize_timeline(pd.DataFrame({"t": [0.0, 1.0], "cpu": [40.0, 52.5],
        ...                                  "errors": [2, 1]}))
        {'cpu_peak': 52.5, 'error_count': 3}

    Raises:
        ConfigError: If ``timeline`` is not a DataFrame with a ``t`` column, or a
            metric is not numeric.
    """
    if not isinstance(timeline, pd.DataFrame):
        raise ConfigError("timeline", _Shown(type(timeline).__name__), "a DataFrame")
    if "t" not in timeline.columns:
        raise ConfigError("timeline.columns", _Shown(repr(list(timeline.columns))), "a 't' column")
    summary: dict[str, float | int] = {}
    for name in timeline.columns:
        if name == "t":
            continue
        values = _as_float(timeline[name], f"timeline[{name!r}]", "a numeric metric column")
        finite = values[np.isfinite(values)]
        if name == "errors":
            summary["error_count"] = math.floor(math.fsum(finite.tolist()) + 0.5)
        else:
            summary[f"{name}_peak"] = float(finite.max()) if finite.size else math.nan
    return summary


# --------------------------------------------------------------------------------------
# Public: summaries
# --------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def _failure_text(summary: Mapping[str, Any] | None) -> str | None:
    """``None`` for a successful summary, else the failure's one-line text."""
    if summary is None:
        return "failed (no summary)"
    if summary.get("ok", True) is not False:
        return None
    error = summary.get("error")
    if isinstance(error, BaseException):
        message = str(error)
        return f"{type(error).__name__}: {message}" if message else type(error).__name__
    return "failed" if error is None else str(error)


def average_summaries(
    summaries: Iterable[Mapping[str, Any] | None],
    *,
    round_to_int: Iterable[str] = ("error_count",),
) -> dict[str, Any]:
    """Average instances' summaries into one summary of the same format.

    Numeric values (peaks, error totals, the function's own numbers) are averaged
    over the instances that succeeded and have a finite value for the key.
    Non-numeric values are kept when every successful instance agrees on them
    (parameters, scenario names) and dropped otherwise. Recovery times are never
    averaged: each instance's ``recovery_time`` stays in ``recovery_times``.

    Args:
        summaries: One per instance, in instance order. A failed instance is
            ``None`` or a mapping with ``ok=False`` (and its ``error``: an
            exception or a text); it is left out of every mean but counted.
        round_to_int: Keys whose mean is rounded to a whole number (halves up)
            and returned as an ``int``.

    Returns:
        A dict with the averaged keys in order of first appearance, then
        ``num_instances`` (every instance given, failed ones included),
        ``num_failed``, ``errors`` (``{position: "TypeName: message"}`` for each
        failed instance, by its position in ``summaries``; empty when none
        failed) and ``recovery_times`` (one entry per instance, in order: its
        ``recovery_time``, or ``None`` where it has none). E.g. cpu_peak 45.2,
        52.8, 48.1 and error_count 7, 5, 6 give ``{"cpu_peak": 48.7,
        "error_count": 6, "num_instances": 3, "num_failed": 0, "errors": {},
        "recovery_times": [None, None, None]}``.

    Raises:
        ConfigError: If ``summaries`` is empty or an item is neither a mapping
            nor ``None``.
    """
    items = list(summaries)
    if not items:
        raise ConfigError("summaries", [], "at least one summary (a dict, or None if it failed)")
    rounded = {round_to_int} if isinstance(round_to_int, str) else set(round_to_int)

    numbers: dict[str, list[float]] = {}
    others: dict[str, list[Any]] = {}
    order: dict[str, None] = {}
    errors: dict[int, str] = {}
    recovery: list[Any] = []
    succeeded = 0
    for position, summary in enumerate(items):
        if summary is not None and not isinstance(summary, Mapping):
            raise ConfigError(
                f"summaries[{position}]", _Shown(type(summary).__name__), "a dict or None"
            )
        recovery.append(_recovery_of(summary))
        failure = _failure_text(summary)
        if failure is not None:
            errors[position] = failure
            continue
        assert summary is not None
        succeeded += 1
        for key, value in summary.items():
            if key in _SUMMARY_RESERVED or key in _RECOVERY_KEYS:
                continue
            order.setdefault(key, None)
            if _is_number(value):
                if math.isfinite(float(value)):
                    numbers.setdefault(key, []).append(float(value))
                else:
                    numbers.setdefault(key, [])
            else:
                others.setdefault(key, []).append(value)

    result: dict[str, Any] = {}
    for key in order:
        if key in numbers and key not in others:
            values = numbers[key]
            mean = math.fsum(values) / len(values) if values else math.nan
            if key in rounded and math.isfinite(mean):
                result[key] = math.floor(mean + 0.5)
            elif math.isfinite(mean):
                # 15 significant digits drop binary noise only: 146.1 / 3 is 48.7,
                # not 48.699999999999996.
                result[key] = float(f"{mean:.15g}")
            else:
                result[key] = mean
        elif key in others and key not in numbers:
            kept = others[key]
            if len(kept) == succeeded and all(_same(kept[0], v) for v in kept[1:]):
                result[key] = kept[0]
    result["num_instances"] = len(items)
    result["num_failed"] = len(errors)
    result["errors"] = errors
    result["recovery_times"] = recovery
    return result


def summary_figures(summaries: Iterable[Mapping[str, Any] | None]) -> dict[str, FloatArray]:
    """Each numeric figure of the successful summaries, as one array per key.

    The keys :func:`average_summaries` averages, in order of first appearance;
    the values in instance order, NaN and inf left out (a figure with no finite
    value gives an empty array). Failed summaries (``None``, ``ok=False``) are
    skipped. Recovery times and the bookkeeping keys are not figures.
    """
    figures: dict[str, list[float]] = {}
    for summary in summaries:
        if summary is None or _failure_text(summary) is not None:
            continue
        for key, value in summary.items():
            if key in _SUMMARY_RESERVED or key in _RECOVERY_KEYS or not _is_number(value):
                continue
            kept = figures.setdefault(key, [])
            if math.isfinite(float(value)):
                kept.append(float(value))
    return {key: np.array(values, dtype=np.float64) for key, values in figures.items()}


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # e.g. arrays of different shapes
        return False


def _recovery_of(summary: Mapping[str, Any] | None) -> Any:
    if summary is None:
        return None
    if "recovery_time" in summary:
        return summary["recovery_time"]
    return summary.get("recovery_times")


# --------------------------------------------------------------------------------------
# Public: outliers
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outlier:
    """An instance that stands apart from the others in one metric.

    ``pd.DataFrame(detect_outliers(...))`` gives a table of them.

    Attributes:
        instance: The instance's position in the sequence given to
            :func:`detect_outliers` (failed summaries keep their positions).
        metric: The summary key (``"cpu_peak"``) or timeline metric (``"cpu"``).
        score: The robust z-score: how many robust standard deviations (scaled
            median absolute deviations) the instance is from the median; signed
            for summaries, always positive for timelines.
        value: What was compared: the instance's summary value, or for a
            timeline its RMS distance to the median curve (in the metric's units).
        median: The median of that quantity over the instances.
    """

    instance: int
    metric: str
    score: float
    value: float
    median: float


_MAD_TO_SIGMA = 1.482602218505602  # 1 / Phi^-1(3/4): MAD of a normal sample -> sigma
_MEAN_AD_TO_SIGMA = 1.2533141373155001  # sqrt(pi/2): mean absolute deviation -> sigma


def _robust_scores(values: FloatArray) -> tuple[FloatArray, float]:
    """Robust z-scores (Iglewicz-Hoaglin) of ``values`` and their median.

    When more than half the values are equal the MAD is 0; the mean absolute
    deviation then takes its place (as in IBM SPSS's modified z). Differences
    below 1e-9 of the values' magnitude are treated as rounding noise.
    """
    median = float(np.median(values))
    deviation = np.abs(values - median)
    scale = float(np.median(deviation)) * _MAD_TO_SIGMA
    if scale == 0.0:
        scale = float(deviation.mean()) * _MEAN_AD_TO_SIGMA
    floor = 1e-9 * max(abs(median), float(np.abs(values).mean()))
    if scale <= floor:
        return np.zeros_like(values), median
    return (values - median) / scale, median


def detect_outliers(
    data: Sequence[pd.DataFrame] | Sequence[Mapping[str, Any] | None],
    *,
    threshold: float = 3.5,
    min_relative: float = 0.1,
    metrics: Iterable[str] | None = None,
    step: float | None = None,
    method: Method | Mapping[str, Method] = "linear",
) -> list[Outlier]:
    """Find instances whose behaviour differs from the rest.

    Summaries: each numeric key that :func:`average_summaries` would average is
    compared across the successful instances; an instance is flagged where
    ``|z| > threshold``. Timelines: the instances are aligned as in
    :func:`average_timelines`, the median curve is taken over the instances at
    each grid point (where at least 3 have a value), and each instance's RMS
    distance to it is compared across instances; unusually *large* distances are
    flagged. The score is the robust z-score ``(x - median) / (1.4826 * MAD)``
    of Iglewicz and Hoaglin, whose threshold 3.5 is the default. With few
    instances the MAD is only the smallest gap between them, so a difference must
    also matter in practice: an instance is flagged only when it lies more than
    ``min_relative`` of the metric's typical magnitude from the median (for
    summaries, of ``|median|``; for timelines, of the median curve's mean ``|value|``).

    Timeline mode holds instances x grid values per metric at once (a median is
    not a running statistic): pass a coarser ``step`` for very long timelines.

    Args:
        data: Either timelines (one DataFrame per instance) or summaries (one
            mapping per instance, ``None`` or ``ok=False`` for a failed one).
        threshold: The robust z-score above which an instance is flagged.
        min_relative: The smallest deviation worth flagging, as a fraction of the
            metric's typical magnitude (0 disables this floor).
        metrics: Only look at these metrics (summary keys or timeline columns).
        step: Timelines only: the grid step (see :func:`average_timelines`).
        method: Timelines only: ``"linear"``, ``"previous"`` or per metric.

    Returns:
        One :class:`Outlier` per flagged (instance, metric), the largest
        ``|score|`` first; empty with fewer than 3 usable instances.

    Raises:
        ConfigError: For a bad ``threshold``, ``metrics``, ``step`` or
            ``method``, for timelines that :func:`average_timelines` rejects,
            or for a mix of timelines and summaries.
    """
    if isinstance(threshold, bool) or not (
        isinstance(threshold, int | float) and math.isfinite(threshold) and threshold > 0
    ):
        raise ConfigError("threshold", threshold, "a finite number > 0 (a robust z-score)")
    if isinstance(min_relative, bool) or not (
        isinstance(min_relative, int | float) and 0 <= min_relative < math.inf
    ):
        raise ConfigError("min_relative", min_relative, "a fraction >= 0")
    if isinstance(data, pd.DataFrame | Mapping):
        raise ConfigError(
            "data", _Shown(f"a single {type(data).__name__}"), "a sequence, one item per instance"
        )
    items = list(data)
    frames = [isinstance(item, pd.DataFrame) for item in items]
    if items and all(frames):
        found = _timeline_outliers(
            [item for item in items if isinstance(item, pd.DataFrame)],
            threshold,
            min_relative,
            metrics,
            step,
            method,
        )
    elif not any(frames):
        found = _summary_outliers(items, threshold, min_relative, metrics)
    else:
        raise ConfigError("data", _Shown("a mix of DataFrames and summaries"), "one kind")
    found.sort(key=lambda o: (-abs(o.score), o.instance, o.metric))
    return found


def _summary_outliers(
    items: Sequence[Any], threshold: float, min_relative: float, metrics: Iterable[str] | None
) -> list[Outlier]:
    columns: dict[str, list[tuple[int, float]]] = {}
    for position, summary in enumerate(items):
        if summary is not None and not isinstance(summary, Mapping):
            raise ConfigError(
                f"data[{position}]", _Shown(type(summary).__name__), "a dict, None or a DataFrame"
            )
        if _failure_text(summary) is not None:
            continue
        assert summary is not None
        for key, value in summary.items():
            if key in _SUMMARY_RESERVED or key in _RECOVERY_KEYS or not _is_number(value):
                continue
            if math.isfinite(float(value)):
                columns.setdefault(key, []).append((position, float(value)))
    wanted = list(columns) if metrics is None else _resolve_names(metrics, "metrics", list(columns))
    found: list[Outlier] = []
    for key in wanted:
        pairs = columns[key]
        if len(pairs) < 3:
            continue
        values = np.array([value for _, value in pairs])
        scores, median = _robust_scores(values)
        floor = min_relative * abs(median)
        for (position, value), score in zip(pairs, scores, strict=True):
            if abs(score) > threshold and abs(value - median) > floor:
                found.append(Outlier(position, key, float(score), value, median))
    return found


def _timeline_outliers(
    frames: Sequence[pd.DataFrame],
    threshold: float,
    min_relative: float,
    metrics: Iterable[str] | None,
    step: float | None,
    method: Any,
) -> list[Outlier]:
    instances, names, _ = _read_timelines(frames)
    methods = _resolve_methods(method, names)
    wanted = names if metrics is None else _resolve_names(metrics, "metrics", names)
    grid_step = _resolve_step(step, instances)
    if len(instances) < 3:
        return []
    size, series = _layout(instances, grid_step)
    scratch = _Scratch()
    gridder = _Gridder(np.arange(size, dtype=np.float64) * grid_step, grid_step, scratch)
    found: list[Outlier] = []
    for name in wanted:
        stack = np.full((len(instances), size), np.nan)
        only = {name: methods[name]}
        for row, parts in enumerate(series):
            for piece in parts:
                columns = dict(piece.metrics)
                if piece.k0 >= piece.stop or name not in columns:
                    continue
                single = _Series(piece.t, [(name, columns[name])], piece.k0, piece.stop)
                for lo in range(piece.k0, piece.stop, _BLOCK):
                    hi = min(lo + _BLOCK, piece.stop)
                    for _, values in gridder.values(single, lo, hi, only):
                        stack[row, lo:hi] = values
        present = ~np.isnan(stack)
        shared = present.sum(axis=0) >= 3
        if not shared.any():
            continue
        part = stack[:, shared]
        median_curve = np.nanmedian(part, axis=0)
        distance = np.full(len(instances), np.nan)
        for row in range(len(instances)):
            mine = present[row, shared]
            if mine.any():
                gap = part[row, mine] - median_curve[mine]
                distance[row] = math.sqrt(float(np.mean(gap * gap)))
        usable = np.flatnonzero(~np.isnan(distance))
        if usable.size < 3:
            continue
        scores, median = _robust_scores(distance[usable])
        floor = min_relative * float(np.mean(np.abs(median_curve)))
        for index, score in zip(usable.tolist(), scores.tolist(), strict=True):
            if score > threshold and distance[index] > floor:
                position = instances[index].position
                found.append(Outlier(position, name, score, float(distance[index]), median))
    return found
