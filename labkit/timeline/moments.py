"""Streaming statistics of one metric over a block of grid points.

Plain functions over a small state, the way dask's ``moment_chunk`` /
``moment_combine`` / ``moment_agg`` read: :func:`init` allocates a state for
blocks of up to ``capacity`` points, :func:`reset` starts a block,
:func:`update`, :func:`update_rows` (the final average) and
:func:`update_ragged` (the live chart's running average) fold instances' values in,
:func:`merge` combines two states over the same points (partial results from
elsewhere), and :func:`finalize` writes the block's mean, standard deviation,
min, max and 95 % interval.

Sums are taken of deviations from a per-point *shift*: the value of the first
instance that reached that point. Identical instances thus add exact zeros
(zero spread, exactly), and since the shift is one of the data the classic
cancellation of ``sum(x^2) - sum(x)^2/n`` loses at most a factor n+1 in relative
precision of the variance (Chan, Golub and LeVeque's shifted data). Only a
block's worth lives in a state: a finished block is turned into its statistics
while still in cache, and the buffers are reused for the next.

Squares overflow past about 1e154 and underflow below about 1e-154, so sums of
plain values are exact enough only for magnitudes in [2**-400, 2**400]. A block
with a point outside that range (:func:`extreme`, known once the block is
folded: its extremes say so) is folded again with each point's values scaled by
a power of two that brings its largest magnitude just under 1
(:func:`rescale`); powers of two scale without rounding, so every finite input
gives a finite mean and spread (wherever the true ones are finite), correctly
rounded up to the shifted sums' error. Usual data never leave the range and
pay one check per block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from labkit.stats.tdist import t_half_width
from labkit.timeline.grid import Scratch
from labkit.timeline.inputs import FloatArray

# Magnitudes whose squares (and those of their deviations, down to an ulp) stay
# normal floats, with room for sums over millions of values.
_SAFE_HIGH = 2.0**400
_SAFE_LOW = 2.0**-400
# Scale exponents: 2**-_LEAST_EXPONENT is still a finite float.
_LEAST_EXPONENT = -1021
_MOST_EXPONENT = 1024  # frexp's exponent of the largest finite float

__all__ = (
    "Moments",
    "HalfWidthTable",
    "finalize",
    "init",
    "extreme",
    "merge",
    "rescale",
    "reset",
    "round_running_total",
    "update",
    "update_at",
    "update_ragged",
    "update_rows",
)


@dataclass(slots=True)
class Moments:
    """The running statistics of one block: per point shift, shifted sums, extremes.

    Attributes:
        shift: The first value seen at each point (the shift of the sums).
        sum1: Sum of the values' deviations from the shift.
        sum2: Sum of the squared deviations.
        low: Smallest value seen.
        high: Largest value seen.
        count: Values per point; ``None`` when every instance has the metric
            wherever it has samples, so that the caller's ``n`` is the count.
        covered: The points that have a shift, as sorted disjoint [start, stop).
        size: The points of the current block.
        exponent: Per point e of the scale 2**e the sums are taken in; only
            meaningful while ``scaled``.
        inverse: Per point 2**-e, the factor values are multiplied by.
        scaled: Whether this block's values are folded in scaled (see
            :func:`rescale`); shift and sums are then in units of 2**e.
    """

    shift: FloatArray
    sum1: FloatArray
    sum2: FloatArray
    low: FloatArray
    high: FloatArray
    count: npt.NDArray[np.int64] | None
    covered: list[list[int]]
    size: int
    exponent: npt.NDArray[np.int64]
    inverse: FloatArray
    scaled: bool


def init(capacity: int, *, own_count: bool) -> Moments:
    """A state for blocks of up to ``capacity`` points (call :func:`reset` before use)."""
    return Moments(
        shift=np.empty(capacity),
        sum1=np.empty(capacity),
        sum2=np.empty(capacity),
        low=np.empty(capacity),
        high=np.empty(capacity),
        count=np.empty(capacity, dtype=np.int64) if own_count else None,
        covered=[],
        size=0,
        exponent=np.zeros(capacity, dtype=np.int64),
        inverse=np.empty(capacity),
        scaled=False,
    )


def reset(state: Moments, size: int) -> None:
    """Start a block of ``size`` points with nothing seen, in plain (unscaled) values."""
    state.scaled = False
    _clear(state, size)


def extreme(state: Moments) -> bool:
    """Whether the folded block needs folding again scaled (see :func:`rescale`).

    True when a point's largest magnitude lies outside [2**-400, 2**400] (zero
    excepted), or a folded value was not finite (an interpolation between
    samples of opposite signs near the largest float overflowed), in a block
    folded plain.
    """
    if state.scaled:
        return False
    size = state.size
    low, high = state.low[:size], state.high[:size]
    # Two reductions, no float temporaries: this runs for every block. NaN (a
    # non-finite folded value) fails the comparisons: extreme too.
    if not (low.min() >= -_SAFE_HIGH and high.max() <= _SAFE_HIGH):
        return True
    small = (high < _SAFE_LOW) & (low > -_SAFE_LOW)  # empty points (inf, -inf) too
    if not small.any():
        return False
    low, high = low[small], high[small]
    return bool(((low <= high) & ((low != 0.0) | (high != 0.0))).any())


def rescale(state: Moments) -> None:
    """Start the block again, to fold each point's values scaled by 2**-e.

    e is the exponent of the point's largest magnitude seen in the first pass
    (``|x| < 2**e``), so scaled values lie in (-1, 1): squares neither overflow
    nor lose the precision of small deviations. A point whose first pass saw a
    non-finite value gets the largest exponent (its values are near the
    largest float).
    """
    size = state.size
    largest = np.maximum(-state.low[:size], state.high[:size])
    _, exponent = np.frexp(np.where(np.isnan(largest), np.inf, largest))
    exponent = np.where(np.isfinite(largest), exponent, _MOST_EXPONENT)
    np.clip(exponent, _LEAST_EXPONENT, _MOST_EXPONENT, out=state.exponent[:size])
    np.ldexp(1.0, -state.exponent[:size], out=state.inverse[:size])
    state.scaled = True
    _clear(state, size)


def _clear(state: Moments, size: int) -> None:
    state.size = size
    state.sum1[:size] = 0.0
    state.sum2[:size] = 0.0
    state.low[:size] = np.inf
    state.high[:size] = -np.inf
    if state.count is not None:
        state.count[:size] = 0
    state.covered = []


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


def update(
    state: Moments,
    start: int,
    x: FloatArray,
    scratch: Scratch,
    keep: npt.NDArray[np.bool_] | None = None,
) -> None:
    """Add one instance's values at block points start..start+len(x)-1; with ``keep``,
    only where it is true (the state must have its own count)."""
    stop = start + x.size
    low = state.low[start:stop]
    high = state.high[start:stop]
    if keep is None:
        np.minimum(low, x, out=low)
        np.maximum(high, x, out=high)
    else:
        np.minimum(low, x, out=low, where=keep)
        np.maximum(high, x, out=high, where=keep)
    if state.scaled:
        if keep is not None:
            # A value left out may be far larger than the point's scale: scaled, it
            # could overflow, and inf times 0 is NaN. Left-out values count as 0.
            x = np.where(keep, x, 0.0)
        x = np.multiply(x, state.inverse[start:stop], out=scratch.floats("scaled", x.size))
    for lo, hi in _uncovered(state.covered, start, stop):
        state.shift[lo:hi] = x[lo - start : hi - start]
    if keep is not None and state.count is not None:
        # A value left out may lie far from the data (a gap interpolated across a
        # spike): a point's shift is its first value counted. Its sums are still
        # zero then, so moving its shift changes nothing else.
        first = np.logical_and(keep, state.count[start:stop] == 0)
        np.copyto(state.shift[start:stop], x, where=first)
    deviation = scratch.floats("deviation", x.size)
    np.subtract(x, state.shift[start:stop], out=deviation)
    if keep is not None:
        deviation *= keep
    sum1 = state.sum1[start:stop]
    sum1 += deviation
    deviation *= deviation
    sum2 = state.sum2[start:stop]
    sum2 += deviation
    if state.count is not None:
        state.count[start:stop] += 1 if keep is None else keep
    elif keep is not None:
        raise ValueError("update with keep needs a state with its own count")


def update_rows(state: Moments, rows: FloatArray, scratch: Scratch) -> None:
    """Add several instances that cover the whole block: ``rows`` is (instances, size)."""
    count, size = rows.shape
    raw = rows
    if state.scaled:
        rows = np.multiply(
            rows, state.inverse[:size], out=scratch.floats("scaled", rows.size).reshape(rows.shape)
        )
    for lo, hi in _uncovered(state.covered, 0, size):
        state.shift[lo:hi] = rows[0, lo:hi]
    _add_deviations(state, rows, scratch)
    total = scratch.floats("total", size)
    np.minimum.reduce(raw, axis=0, out=total)
    np.minimum(state.low[:size], total, out=state.low[:size])
    np.maximum.reduce(raw, axis=0, out=total)
    np.maximum(state.high[:size], total, out=state.high[:size])
    if state.count is not None:
        state.count[:size] += count


def update_at(state: Moments, positions: npt.NDArray[np.intp], x: FloatArray) -> None:
    """Add one instance's values at scattered block points (distinct ``positions``).

    For states with their own count: a point's shift is its first value by count,
    not by ``covered``, so a state is filled either with this or with
    :func:`update` / :func:`update_rows`, not both.
    """
    if state.count is None:
        raise ValueError("update_at needs a state with its own count")
    state.low[positions] = np.minimum(state.low[positions], x)
    state.high[positions] = np.maximum(state.high[positions], x)
    if state.scaled:
        x = x * state.inverse[positions]
    fresh = state.count[positions] == 0
    state.shift[positions[fresh]] = x[fresh]
    deviation = x - state.shift[positions]
    state.sum1[positions] += deviation
    state.sum2[positions] += deviation * deviation
    state.count[positions] += 1


def update_ragged(state: Moments, rows: FloatArray, scratch: Scratch) -> None:
    """Add several instances' values where each has one: ``rows`` is (instances, size),
    NaN where an instance has no value at that point (a gap, or not there yet).

    For states with their own count, filled with this alone: as with
    :func:`update_at`, a point's shift is its first value by count (the first
    instance in ``rows`` with a value there, when nothing was seen before).
    """
    if state.count is None:
        raise ValueError("update_ragged needs a state with its own count")
    size = rows.shape[1]
    valid = ~np.isnan(rows)
    present = valid.sum(axis=0)
    values = np.where(valid, rows, 0.0)  # a left-out value: a finite stand-in, never counted
    low, high = state.low[:size], state.high[:size]
    np.minimum(low, np.where(valid, rows, np.inf).min(axis=0, initial=np.inf), out=low)
    np.maximum(high, np.where(valid, rows, -np.inf).max(axis=0, initial=-np.inf), out=high)
    if state.scaled:
        values *= state.inverse[:size]
    fresh = (state.count[:size] == 0) & (present > 0)
    if fresh.any():
        first = valid.argmax(axis=0)  # the first instance with a value at each point
        points = np.flatnonzero(fresh)
        state.shift[points] = values[first[points], points]
    _add_deviations(state, values, scratch, valid)
    state.count[:size] += present


def _add_deviations(
    state: Moments,
    rows: FloatArray,
    scratch: Scratch,
    valid: npt.NDArray[np.bool_] | None = None,
) -> None:
    """Add the rows' deviations from each point's shift, and their squares, to the
    sums (only where ``valid``, when given)."""
    count, size = rows.shape
    deviation = scratch.floats("deviations", count * size).reshape(count, size)
    np.subtract(rows, state.shift[:size], out=deviation)
    if valid is not None:
        deviation *= valid
    total = scratch.floats("total", size)
    np.add.reduce(deviation, axis=0, out=total)
    state.sum1[:size] += total
    deviation *= deviation
    np.add.reduce(deviation, axis=0, out=total)
    state.sum2[:size] += total


def merge(state: Moments, other: Moments) -> None:
    """Fold ``other`` (the same block points, other instances) into ``state``.

    Re-centres other's sums on state's shift: with d = shift_b - shift_a,
    ``sum(x - a) = sum1_b + n_b d`` and ``sum((x - a)^2) = sum2_b + 2 d sum1_b
    + n_b d^2``. Where ``state`` has seen nothing it takes other's values as they are.

    Raises:
        ValueError: If the blocks differ in size, a state has no own count, or
            one is scaled (merge plain states; :func:`extreme` still applies).
    """
    if state.count is None or other.count is None or state.size != other.size:
        raise ValueError("merge needs two states of one block size, both with their own count")
    if state.scaled or other.scaled:
        raise ValueError("merge needs two plain (unscaled) states")
    size = state.size
    count_a, count_b = state.count[:size], other.count[:size]
    fresh = (count_a == 0) & (count_b > 0)
    both = (count_a > 0) & (count_b > 0)
    delta = np.where(both, other.shift[:size] - state.shift[:size], 0.0)
    sum1_b, sum2_b = np.where(count_b > 0, other.sum1[:size], 0.0), other.sum2[:size]
    state.sum2[:size] += np.where(
        count_b > 0, sum2_b + 2.0 * delta * sum1_b + count_b * delta * delta, 0.0
    )
    state.sum1[:size] += sum1_b + count_b * delta
    state.shift[:size] = np.where(fresh, other.shift[:size], state.shift[:size])
    np.minimum(state.low[:size], other.low[:size], out=state.low[:size])
    np.maximum(state.high[:size], other.high[:size], out=state.high[:size])
    count_a += count_b
    for start, stop in other.covered:
        _uncovered(state.covered, start, stop)


def finalize(
    state: Moments,
    n: npt.NDArray[np.int64],
    out: Sequence[FloatArray],
    half_widths: HalfWidthTable,
    scratch: Scratch,
    *,
    round_mean: bool,
    count_out: npt.NDArray[np.int64] | None = None,
) -> None:
    """Write mean, std, min, max and ci95 of the block into ``out`` (five arrays),
    and the number of values at each point into ``count_out`` when given.

    ``n`` is the number of instances at each point, used where the state keeps
    no count of its own. A scaled state's mean and spread are scaled back;
    where the true spread or interval exceeds the largest float it is inf.
    """
    with np.errstate(over="ignore"):  # inf is the answer past the largest float
        _finalize(state, n, out, half_widths, scratch, round_mean=round_mean, count_out=count_out)


def _finalize(
    state: Moments,
    n: npt.NDArray[np.int64],
    out: Sequence[FloatArray],
    half_widths: HalfWidthTable,
    scratch: Scratch,
    *,
    round_mean: bool,
    count_out: npt.NDArray[np.int64] | None,
) -> None:
    size = state.size
    mean, std, low, high, ci95 = out
    counts = n if state.count is None else state.count[:size]
    if count_out is not None:
        count_out[:] = counts
    least, most = int(counts.min()), int(counts.max())
    if least == most and least >= 2:
        _spread_even(state, least, mean, std, scratch)
        np.multiply(std, half_widths.get(least), out=ci95)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            _spread_uneven(state, counts, mean, std, scratch)
            half_widths.take(counts, least, most, out=ci95)
            ci95 *= std
    # The mean of values within [low, high] lies there too: keep rounding from
    # stepping an ulp outside.
    np.maximum(mean, state.low[:size], out=mean)
    np.minimum(mean, state.high[:size], out=mean)
    low[:] = state.low[:size]
    high[:] = state.high[:size]
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


def _spread_even(
    state: Moments,
    count: int,
    mean: FloatArray,
    std: FloatArray,
    scratch: Scratch,
) -> None:
    """Mean and standard deviation where every point has ``count`` (>= 2) values (the
    usual case): scalar factors."""
    size = state.size
    sum1, sum2 = state.sum1[:size], state.sum2[:size]
    offset = scratch.floats("offset", size)
    np.multiply(sum1, 1.0 / count, out=offset)
    np.add(state.shift[:size], offset, out=mean)
    # M2 = sum(d^2) - sum(d)^2/n with d the shifted values, clipped at 0 against rounding.
    offset *= sum1
    np.subtract(sum2, offset, out=std)
    np.maximum(std, 0.0, out=std)
    std *= 1.0 / (count - 1)
    np.sqrt(std, out=std)
    _unscale(state, mean, std)


def _spread_uneven(
    state: Moments,
    counts: npt.NDArray[np.int64],
    mean: FloatArray,
    std: FloatArray,
    scratch: Scratch,
) -> None:
    """Mean and standard deviation with ``counts`` values per point (NaN below 1 and 2
    values)."""
    size = state.size
    sum1, sum2 = state.sum1[:size], state.sum2[:size]
    offset = scratch.floats("offset", size)
    count = scratch.floats("count", size)
    np.copyto(count, counts, casting="unsafe")
    np.divide(sum1, count, out=offset)
    np.add(state.shift[:size], offset, out=mean)
    offset *= sum1
    np.subtract(sum2, offset, out=std)
    np.maximum(std, 0.0, out=std)
    count -= 1.0
    std /= count
    np.sqrt(std, out=std)
    _unscale(state, mean, std)


def round_running_total(mean: FloatArray, before: float) -> float:
    """Round counts in place so that their running total is the rounded running total.

    How a summed counter's mean is rounded (``round_to_int``): ``before`` is
    the unrounded total of the counts before these; returns it with these
    added. Each count becomes ``round(total up to it) - round(total before
    it)`` (halves up): whole numbers whose sum is within 0.5 of the sum of the
    unrounded ones, however many there are.
    """
    running = np.cumsum(mean)
    running += before
    after = float(running[-1]) if running.size else before
    np.floor(running + 0.5, out=running)
    mean[1:] = running[1:] - running[:-1]
    if mean.size:
        mean[0] = running[0] - math.floor(before + 0.5)
    return after


def _unscale(state: Moments, mean: FloatArray, std: FloatArray) -> None:
    """A scaled state's mean and spread back in the values' units (exact: powers of two)."""
    if state.scaled:
        exponent = state.exponent[: state.size]
        np.ldexp(mean, exponent, out=mean)
        np.ldexp(std, exponent, out=std)


class HalfWidthTable:
    """The 95 % t interval's half-width per unit of spread (``t_half_width(1.0, n)``),
    by number of values ``n`` (NaN below 2), computed once per ``n``."""

    __slots__ = ("_known", "_table")

    def __init__(self, instances: int) -> None:
        self._table = np.full(instances + 1, np.nan)
        self._known = np.zeros(instances + 1, dtype=bool)
        self._known[:2] = True

    def get(self, count: int) -> float:
        """The half-width per unit of spread for ``count`` values."""
        if not self._known[count]:
            self._table[count] = t_half_width(1.0, count)
            self._known[count] = True
        return float(self._table[count])

    def take(self, counts: npt.NDArray[np.int64], least: int, most: int, out: FloatArray) -> None:
        """The half-width per unit of spread for each of ``counts`` (whose extremes are
        given) into ``out``."""
        if not self._known[least : most + 1].all():
            present = np.flatnonzero(np.bincount(counts - least)) + least
            for count in present.tolist():
                self.get(count)
        np.take(self._table, counts, out=out, mode="clip")
