"""The averaging driver: instances' timelines to one averaged timeline, block by block.

Averaging streams over the grid: within a block of ``block_points`` grid points
every instance is gridded (:mod:`labkit.timeline.grid`) and folded into running
statistics (:mod:`labkit.timeline.moments`), ``block_rows`` instances at a time
where they cover the whole block; the block's mean, spread and interval are then
written out while still in cache. Memory is the output plus a fixed working set,
never instances x grid. Timelines indexed by step are aligned exactly instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from labkit._checks import is_int
from labkit.errors import ConfigError
from labkit.timeline import moments
from labkit.timeline.grid import BLOCK_POINTS, Gridder, Layout, Scratch, Series, layout
from labkit.timeline.inputs import (
    COUNT,
    NONFINITE,
    STAT_SUFFIXES,
    Axis,
    FloatArray,
    Instance,
    IntArray,
    Method,
    check_max_gap,
    nearest_index,
    read_timelines,
    resolve_max_gaps,
    resolve_methods,
    resolve_names,
    resolve_step,
    timeline_axis,
)

BLOCK_ROWS = 8
"""Instances folded together per block by default."""


def average_timelines(
    timelines: Iterable[pd.DataFrame],
    *,
    step: float | None = None,
    method: Method | Mapping[str, Method] | None = None,
    round_to_int: Iterable[str] = (),
    on: Axis | None = None,
    max_gap: float | Mapping[str, float | None] | None = None,
) -> pd.DataFrame:
    """Average instances' timelines on one time grid, with their spread.

    The grid is ``t = 0, step, 2*step, ...``. Each instance covers the grid points
    from the one nearest its first sample to the one nearest its last, and only
    those (no extrapolation; a one-sample timeline covers one point): ``n``
    counts these instances. Within that span an instance contributes to a
    metric only where it measured it: two consecutive samples of the metric
    more than ``max_gap`` apart are a gap, never bridged, and the grid points
    strictly inside it get nothing from that instance (the point nearest each
    sample at its edges still does). ``<metric>_n`` counts the instances that
    contribute to the metric at each point; where it is 0 the metric's
    statistics are NaN (a chart draws a break there).

    Inside a run of samples without a gap, an instance's value at a grid time
    is interpolated or held, per ``method``; a counter is summed instead. A
    metric with NaN or inf samples in an instance is gridded from that
    instance's finite samples of it; an instance without a metric (column
    absent, or no finite value) does not contribute to it. Non-finite samples
    never make averaging fail: NaN means "not sampled", and each inf sample (a
    diverging loss) is left out of the mean and spread and counted in
    ``m_nonfinite`` at its nearest grid point instead (an inf between finite
    samples is bridged by them, as a NaN is, when they are within ``max_gap``).

    Indexed by step, the output has a ``step`` column (every step some
    instance recorded, ascending) instead of ``t``; ``n`` counts the instances
    with a row at that step, and a metric's statistics (and ``m_n``) the
    instances with a finite value of it there. Rows without a step (resource
    samples between steps) and a ``t`` column are left out.

    Memory grows with the grid length, not with instances x grid: instances are
    folded one at a time into running statistics.

    Args:
        timelines: One DataFrame per instance: a float column ``t`` (seconds since the
            instance started, >= 0; any order) and one numeric column per
            metric. A frame with no rows contributes nothing. Rows may share a
            ``t`` when they hold different metrics or the same value; two
            different values of one metric at one ``t`` are refused rather than
            one of them silently kept.
        step: Grid spacing in seconds. ``None``: the median interval between
            consecutive samples over all instances, snapped to the shortest
            decimal within 1 % of it (0.01006 gives 0.01); 1.0 when no instance
            has two distinct sample times.
        method: ``"linear"`` interpolates between samples (gauges such as CPU %),
            ``"previous"`` holds the last sample at or before the grid point,
            ``"sum"`` adds up the samples nearest each grid point (counters whose
            samples count events since the previous sample): an instance counts
            0 wherever it reported nothing, over the whole grid, so that
            ``<metric>_n`` is the number of instances with the metric everywhere
            and the averaged counts add up to the mean of the instances' totals.
            A mapping gives a method per metric. ``None`` (and metrics a mapping
            does not name): ``"sum"`` for ``errors``, ``"linear"`` for the rest.
        round_to_int: Metrics whose mean is rounded to a whole number after
            averaging (halves up), such as error counts. Spread columns are not.
            A summed metric is rounded on its running total (each count is the
            rounded total up to it minus the rounded total before it), so its
            rounded counts still add up to the rounded mean total.
        on: What the timelines are indexed by: ``"t"`` (seconds, on the grid
            above) or ``"step"`` (an epoch or iteration: instances are aligned
            on equal steps exactly, no grid and no interpolation; ``step``,
            ``method`` and ``max_gap`` do not apply). ``None``: ``"step"`` when
            every frame has a ``step`` column, else ``"t"``.
        max_gap: The longest interval, in seconds, between two consecutive
            samples of a metric in one instance that is bridged by ``method``;
            a longer one is a gap. ``None`` (the default): for each metric,
            3 times the median interval between consecutive samples of that
            metric over every instance (a sampler that misses two samples in a
            row leaves a gap; one that misses one does not); no gap for a
            metric no instance sampled twice. A number applies to every
            metric, ``math.inf`` bridges everything; a mapping gives seconds
            (or ``None``: the default) per metric. A gap no longer than
            ``step`` holds no grid point of its own and is always bridged.
            ``"sum"`` metrics have no gaps (the sample after a silence counts
            what happened during it).

    Returns:
        A DataFrame with ``t`` (grid seconds), ``n`` (instances whose span
        covers ``t``) and, per metric ``m`` in order of first appearance: ``m``
        (mean), ``m_std`` (sample standard deviation, ddof=1; NaN where fewer
        than 2 instances have a value), ``m_min``, ``m_max``, ``m_ci95``
        (half-width of the 95 % Student-t confidence interval of the mean; NaN
        below 2 values), ``m_n`` (int: instances that contribute a value of
        ``m`` at ``t``) and ``m_nonfinite`` (int: instances with an inf sample
        of ``m`` nearest ``t``). Grid points no instance covers are left out;
        when no timeline has a row, the frame has these columns and no rows.

    Raises:
        ConfigError: (a ``ValueError``) for empty input, a frame without ``t``
            (or ``step``), a non-numeric, non-finite or negative ``t`` (the
            message names the timeline and the row), two different values of a
            metric at one ``t`` (named likewise), an inf ``step``, a
            non-numeric metric, metric names that clash with output columns, or
            a bad ``step``, ``method``, ``round_to_int``, ``on`` or ``max_gap``.

    Example:
        >>> a = pd.DataFrame({"t": [0.0, 1.0], "errors": [7, 7]})
        >>> b = pd.DataFrame({"t": [0.0, 1.0], "errors": [5, 5]})
        >>> c = pd.DataFrame({"t": [0.0, 1.0], "errors": [6, 6]})
        >>> average_timelines([a, b, c], round_to_int=["errors"])["errors"].tolist()
        [6.0, 6.0]
        >>> gap = pd.DataFrame({"t": [0.0, 1.0, 2.0, 6.0, 7.0], "latency": [20.0] * 5})
        >>> whole = pd.DataFrame({"t": [float(t) for t in range(8)], "latency": [40.0] * 8})
        >>> out = average_timelines([gap, whole])
        >>> out["latency"].tolist()
        [30.0, 30.0, 30.0, 40.0, 40.0, 40.0, 30.0, 30.0]
        >>> out["latency_n"].tolist()
        [2, 2, 2, 1, 1, 1, 2, 2]
    """
    return average(
        timelines, step=step, method=method, round_to_int=round_to_int, on=on, max_gap=max_gap
    )


def average(
    timelines: Iterable[pd.DataFrame],
    *,
    step: float | None = None,
    method: Method | Mapping[str, Method] | None = None,
    round_to_int: Iterable[str] = (),
    on: Axis | None = None,
    max_gap: float | Mapping[str, float | None] | None = None,
    block_points: int = BLOCK_POINTS,
    block_rows: int = BLOCK_ROWS,
) -> pd.DataFrame:
    """:func:`average_timelines` with its block sizes as parameters.

    The result does not depend on them (up to rounding in the last bits); they
    trade cache use against per-block overhead. Tests pass small blocks to
    cross block edges.

    Args:
        timelines: As for :func:`average_timelines`.
        step: As for :func:`average_timelines`.
        method: As for :func:`average_timelines`.
        round_to_int: As for :func:`average_timelines`.
        on: As for :func:`average_timelines`.
        max_gap: As for :func:`average_timelines`.
        block_points: Grid points per block (>= 1).
        block_rows: Instances folded together within a block (>= 1).

    Raises:
        ConfigError: As :func:`average_timelines`, and for block sizes below 1.
    """
    for option, value in (("block_points", block_points), ("block_rows", block_rows)):
        if not is_int(value) or value < 1:
            raise ConfigError(option, value, "an integer >= 1")
    frames: Any = timelines
    if not isinstance(timelines, pd.DataFrame | Mapping):
        with contextlib.suppress(TypeError):  # read_timelines says what is wrong
            frames = list(timelines)
    axis = timeline_axis(frames if isinstance(frames, list) else [], on)
    check_max_gap(max_gap)
    instances, metrics, _ = read_timelines(frames, axis)
    methods = resolve_methods(method, metrics)
    rounded = set(resolve_names(round_to_int, "round_to_int", metrics))
    if axis == "step":
        if step is not None:
            raise ConfigError(
                "step", step, "None for timelines indexed by step (they align on equal steps)"
            )
        return _average_steps(instances, metrics, rounded)
    grid_step = resolve_step(step, instances)
    gaps = resolve_max_gaps(max_gap, instances, metrics, grid_step)

    grid_layout = layout(instances, grid_step, methods, gaps)
    return _average_grid(
        grid_layout, grid_step, instances, metrics, methods, rounded, block_points, block_rows
    )


def _average_grid(
    grid_layout: Layout,
    grid_step: float,
    instances: Sequence[Instance],
    metrics: Sequence[str],
    methods: Mapping[str, str],
    rounded: set[str],
    block_points: int,
    block_rows: int,
) -> pd.DataFrame:
    """The averaged frame of instances laid out on the grid, block by block over the
    grid: every instance within a block, then the block's statistics, so that each
    block's work stays in cache and the full-length arrays are written once."""
    size, series = grid_layout.size, grid_layout.series
    grid = np.arange(size, dtype=np.float64) * grid_step
    n = np.zeros(size, dtype=np.int64)
    for start, stop in grid_layout.spans:
        n[start:stop] += 1
    outputs = {name: [np.empty(size) for _ in range(5)] for name in metrics}
    counts = {name: np.empty(size, dtype=np.int64) for name in metrics}
    capacity = min(block_points, size)
    states = {
        name: moments.init(capacity, own_count=name not in grid_layout.shared) for name in metrics
    }
    half_widths = moments.HalfWidthTable(len(instances))
    scratch = Scratch()
    gridder = Gridder(grid, grid_step, scratch)
    # A summed counter is rounded on its running total, so that the rounded counts
    # still add up to the rounded average total.
    totals = dict.fromkeys((name for name in rounded if methods[name] == "sum"), 0.0)
    # A plain pass may overflow at extreme magnitudes: the block is then folded
    # again, scaled (see _fold_block), so its warnings say nothing.
    with np.errstate(over="ignore", invalid="ignore"):
        for lo in range(0, size, block_points):
            hi = min(lo + block_points, size)
            _fold_block(lo, hi, series, states, gridder, methods, scratch, block_rows)
            for name in metrics:
                mean = outputs[name][0][lo:hi]
                moments.finalize(
                    states[name],
                    n[lo:hi],
                    [array[lo:hi] for array in outputs[name]],
                    half_widths,
                    scratch,
                    round_mean=name in rounded and name not in totals,
                    count_out=counts[name][lo:hi],
                )
                if name in totals:
                    totals[name] = moments.round_running_total(mean, totals[name])
    return _frame(grid, n, outputs, counts, metrics, instances, size, grid_step)


def _fold_block(
    lo: int,
    hi: int,
    series: Sequence[Sequence[Series]],
    states: Mapping[str, Any],
    gridder: Gridder,
    methods: Mapping[str, str],
    scratch: Scratch,
    block_rows: int,
) -> None:
    """Fold every instance's values at grid points ``lo`` to ``hi`` into ``states``;
    again, scaled, for the metrics whose plain pass overflowed."""
    for state in states.values():
        moments.reset(state, hi - lo)
    _accumulate_block(lo, hi, series, states, gridder, methods, scratch, block_rows)
    extreme = {name for name, state in states.items() if moments.extreme(state)}
    if extreme:
        # Magnitudes past 2**+-400 (rare): fold the block again, those metrics
        # scaled, interpolating overflowing rises from the samples themselves.
        for name, state in states.items():
            if name in extreme:
                moments.rescale(state)
            else:
                moments.reset(state, hi - lo)
        gridder.careful = True
        _accumulate_block(lo, hi, series, states, gridder, methods, scratch, block_rows)
        gridder.careful = False


def _accumulate_block(
    lo: int,
    hi: int,
    series: Sequence[Sequence[Series]],
    states: Mapping[str, Any],
    gridder: Gridder,
    methods: Mapping[str, str],
    scratch: Scratch,
    block_rows: int,
) -> None:
    """Every instance's samples on grid points ``lo:hi`` into the moment states
    (started for the block by the caller)."""
    full: list[Series] = []  # series covering the whole block: folded together
    for parts in series:
        for part in parts:
            start, stop = max(lo, part.k0), min(hi, part.stop)
            if start >= stop:
                continue
            keep = gridder.keep(part, start, stop)
            if start == lo and stop == hi and keep is None:
                full.append(part)
                continue
            for name, values in gridder.values(part, start, stop, methods):
                moments.update(states[name], start - lo, values, scratch, keep)
    for first in range(0, len(full), block_rows):
        rows = full[first : first + block_rows]
        _fold_rows(rows, lo, hi, gridder, methods, states, scratch, block_rows)


def _frame(
    grid: FloatArray,
    n: IntArray,
    outputs: Mapping[str, list[FloatArray]],
    counts: Mapping[str, npt.NDArray[np.int64]],
    metrics: Sequence[str],
    instances: Sequence[Instance],
    size: int,
    grid_step: float,
) -> pd.DataFrame:
    """The averaged frame: grid points where no instance contributes are dropped."""
    nonfinite = _nonfinite_counts(
        instances, metrics, size, lambda times: nearest_index(times, grid_step)
    )
    keep = n > 0
    everywhere = bool(keep.all())
    columns: dict[str, Any] = {}
    columns["t"] = grid if everywhere else grid[keep]
    columns["n"] = n if everywhere else n[keep]
    for name in metrics:
        for suffix, values in zip(("", *STAT_SUFFIXES), outputs[name], strict=True):
            columns[name + suffix] = values if everywhere else values[keep]
        columns[name + COUNT] = counts[name] if everywhere else counts[name][keep]
        infinite = nonfinite[name]
        columns[name + NONFINITE] = infinite if everywhere else infinite[keep]
    return pd.DataFrame(columns, copy=False)


def _average_steps(
    instances: Sequence[Instance], metrics: Sequence[str], rounded: set[str]
) -> pd.DataFrame:
    """Timelines indexed by step: statistics over the instances at each equal step."""
    steps = (
        np.unique(np.concatenate([instance.t for instance in instances]))
        if instances
        else (np.array([], dtype=np.float64))
    )
    size = int(steps.size)
    n = np.zeros(size, dtype=np.int64)
    for instance in instances:
        n[np.searchsorted(steps, np.unique(instance.t))] += 1
    scratch = Scratch()
    half_widths = moments.HalfWidthTable(len(instances))
    columns: dict[str, Any] = {}
    columns["step"] = steps.astype(np.int64) if _whole(steps) else steps
    columns["n"] = n
    nonfinite = _nonfinite_counts(
        instances, metrics, size, lambda times: np.searchsorted(steps, times)
    )
    for name in metrics:
        state = moments.init(size, own_count=True)
        moments.reset(state, size)
        with np.errstate(over="ignore", invalid="ignore"):  # then folded again, scaled
            _fold_steps(state, instances, name, steps)
        if moments.extreme(state):  # magnitudes past 2**+-400
            moments.rescale(state)
            _fold_steps(state, instances, name, steps)
        outputs = [np.empty(size) for _ in range(5)]
        count = np.empty(size, dtype=np.int64)
        moments.finalize(
            state, n, outputs, half_widths, scratch, round_mean=name in rounded, count_out=count
        )
        for suffix, values in zip(("", *STAT_SUFFIXES), outputs, strict=True):
            columns[name + suffix] = values
        columns[name + COUNT] = count
        columns[name + NONFINITE] = nonfinite[name]
    return pd.DataFrame(columns, copy=False)


def _fold_steps(
    state: moments.Moments, instances: Sequence[Instance], name: str, steps: FloatArray
) -> None:
    """Every instance's values of metric ``name`` into ``state``, at their steps' rows."""
    for instance in instances:
        found = instance.at_steps(name)
        if found is not None:
            at, values = found
            moments.update_at(state, np.searchsorted(steps, at), values)


def _whole(values: FloatArray) -> bool:
    return bool(np.all(values == np.round(values))) and bool(np.all(np.abs(values) < 2.0**53))


def _nonfinite_counts(
    instances: Sequence[Instance],
    metrics: Sequence[str],
    size: int,
    position: Callable[[FloatArray], Any],
) -> dict[str, npt.NDArray[np.int64]]:
    """Per metric and output row: instances with an inf sample at (nearest) that row.

    ``position`` maps sample times (or steps) to output rows.
    """
    counts = {name: np.zeros(size, dtype=np.int64) for name in metrics}
    for instance in instances:
        for name, times in instance.nonfinite.items():
            points = np.asarray(position(times)).astype(np.intp)
            np.clip(points, 0, size - 1, out=points)
            counts[name][np.unique(points)] += 1
    return counts


def _fold_rows(
    rows: Sequence[Series],
    lo: int,
    hi: int,
    gridder: Gridder,
    methods: Mapping[str, str],
    states: Mapping[str, moments.Moments],
    scratch: Scratch,
    block_rows: int,
) -> None:
    """Grid a few series that cover block [lo, hi) and fold each metric in one go."""
    names = {name for series in rows for name, _ in series.metrics}
    size = hi - lo
    stacks = {
        name: scratch.floats(f"rows:{name}", block_rows * size).reshape(block_rows, size)
        for name in names
    }
    filled = dict.fromkeys(names, 0)
    for series in rows:
        outputs = {name: stacks[name][filled[name]] for name, _ in series.metrics}
        for name, _ in gridder.values(series, lo, hi, methods, outputs):
            filled[name] += 1
    for name in names:
        moments.update_rows(states[name], stacks[name][: filled[name]], scratch)
