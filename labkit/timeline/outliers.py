"""Instances that stand apart: robust z-scores of summaries and of timeline shapes.

Summaries: each numeric key that :func:`~labkit.timeline.average_summaries` would
average is compared across the successful instances; an instance is flagged where
``|z| > threshold``. Timelines: the instances are aligned as in
:func:`~labkit.timeline.average_timelines`, the median curve is taken over the
instances at each grid point (where at least 3 have a value), and each instance's
RMS distance to it is compared across instances; unusually *large* distances are
flagged. The score is the robust z-score ``(x - median) / (1.4826 * MAD)`` of
Iglewicz and Hoaglin, whose threshold 3.5 is the default. With few instances the
MAD is only the smallest gap between them, so a difference must also matter in
practice: an instance is flagged only when it lies more than ``min_relative`` of
the metric's typical magnitude from the median (for summaries, of ``|median|``; for
timelines, of the median curve's mean ``|value|``).

Timeline mode holds instances x grid values per metric at once (a median is not a
running statistic): pass a coarser ``step`` for very long timelines.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from labkit._checks import Shown, is_real
from labkit.errors import ConfigError
from labkit.timeline.grid import BLOCK_POINTS, Gridder, Scratch, Series, layout
from labkit.timeline.inputs import (
    Axis,
    FloatArray,
    Instance,
    Method,
    read_timelines,
    resolve_methods,
    resolve_names,
    resolve_step,
    timeline_axis,
)
from labkit.timeline.summaries import RECOVERY_KEYS, SUMMARY_RESERVED, failure_text


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
    on: Axis | None = None,
) -> list[Outlier]:
    """Find instances whose behaviour differs from the rest, in their summaries or
    in their timelines' shapes (the module's text says how).

    Args:
        data: Either timelines (one DataFrame per instance) or summaries (one
            mapping per instance, ``None`` or ``ok=False`` for a failed one).
        threshold: The robust z-score above which an instance is flagged.
        min_relative: The smallest deviation worth flagging, as a fraction of the
            metric's typical magnitude (0 disables this floor).
        metrics: Only look at these metrics (summary keys or timeline columns).
        step: Timelines only: the grid step (see :func:`average_timelines`).
        method: Timelines only: ``"linear"``, ``"previous"`` or per metric.
        on: Timelines only: ``"t"``, ``"step"`` (instances compared at equal
            steps, no interpolation) or ``None`` (as :func:`average_timelines`).

    Returns:
        One :class:`Outlier` per flagged (instance, metric), the largest
        ``|score|`` first; empty with fewer than 3 usable instances.

    Raises:
        ConfigError: For a bad ``threshold``, ``metrics``, ``step`` or
            ``method``, for timelines that :func:`average_timelines` rejects,
            or for a mix of timelines and summaries.
    """
    items = _items(data, threshold, min_relative)
    frames = [isinstance(item, pd.DataFrame) for item in items]
    if items and all(frames):
        found = _timeline_outliers(
            [item for item in items if isinstance(item, pd.DataFrame)],
            threshold,
            min_relative,
            metrics,
            step,
            method,
            on,
        )
    elif not any(frames):
        found = _summary_outliers(items, threshold, min_relative, metrics)
    else:
        raise ConfigError("data", Shown("a mix of DataFrames and summaries"), "one kind")
    found.sort(key=lambda o: (-abs(o.score), o.instance, o.metric))
    return found


def _items(data: Any, threshold: Any, min_relative: Any) -> list[Any]:
    """:func:`detect_outliers`'s ``data`` as a list, its thresholds checked.

    Raises:
        ConfigError: A threshold is out of range, or ``data`` is not a sequence.
    """
    if not (is_real(threshold) and threshold > 0):
        raise ConfigError("threshold", threshold, "a finite number > 0 (a robust z-score)")
    if not (is_real(min_relative) and min_relative >= 0):
        raise ConfigError("min_relative", min_relative, "a fraction >= 0")
    if isinstance(data, pd.DataFrame | Mapping | str) or not isinstance(data, Iterable):
        kind = type(data).__name__
        raise ConfigError(
            "data",
            Shown(f"a single {kind}" if isinstance(data, pd.DataFrame | Mapping) else kind),
            "a sequence, one item per instance",
        )
    return list(data)


def _summary_outliers(
    items: Sequence[Any], threshold: float, min_relative: float, metrics: Iterable[str] | None
) -> list[Outlier]:
    columns: dict[str, list[tuple[int, float]]] = {}
    for position, summary in enumerate(items):
        if summary is not None and not isinstance(summary, Mapping):
            raise ConfigError(
                f"data[{position}]", Shown(type(summary).__name__), "a dict, None or a DataFrame"
            )
        if failure_text(summary) is not None:
            continue
        assert summary is not None
        for key, value in summary.items():
            if key in SUMMARY_RESERVED or key in RECOVERY_KEYS or not is_real(value, finite=False):
                continue
            if math.isfinite(float(value)):
                columns.setdefault(key, []).append((position, float(value)))
    wanted = list(columns) if metrics is None else resolve_names(metrics, "metrics", list(columns))
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


def _grid_stacks(
    instances: Sequence[Instance], wanted: Sequence[str], methods: Mapping[str, str], step: float
) -> Iterator[tuple[str, FloatArray]]:
    """Per metric: instances x grid values (NaN outside an instance's range)."""
    grid_layout = layout(instances, step, methods)
    size, series = grid_layout.size, grid_layout.series
    scratch = Scratch()
    gridder = Gridder(np.arange(size, dtype=np.float64) * step, step, scratch)
    for name in wanted:
        stack = np.full((len(instances), size), np.nan)
        only = {name: methods[name]}
        for row, parts in enumerate(series):
            for piece in parts:
                columns = dict(piece.metrics)
                if piece.k0 >= piece.stop or name not in columns:
                    continue
                single = Series(piece.t, [(name, columns[name])], piece.k0, piece.stop)
                for lo in range(piece.k0, piece.stop, BLOCK_POINTS):
                    hi = min(lo + BLOCK_POINTS, piece.stop)
                    for _, values in gridder.values(single, lo, hi, only):
                        stack[row, lo:hi] = values
        yield name, stack


def _step_stacks(
    instances: Sequence[Instance], wanted: Sequence[str]
) -> Iterator[tuple[str, FloatArray]]:
    """Per metric: instances x steps values, each at its own step (NaN where absent)."""
    steps = np.unique(np.concatenate([instance.t for instance in instances]))
    for name in wanted:
        stack = np.full((len(instances), steps.size), np.nan)
        for row, instance in enumerate(instances):
            found = instance.at_steps(name)
            if found is not None:
                at, values = found
                stack[row, np.searchsorted(steps, at)] = values
        yield name, stack


def _timeline_outliers(
    frames: Sequence[pd.DataFrame],
    threshold: float,
    min_relative: float,
    metrics: Iterable[str] | None,
    step: float | None,
    method: Any,
    on: Any,
) -> list[Outlier]:
    axis = timeline_axis(frames, on)
    instances, names, _ = read_timelines(frames, axis)
    methods = resolve_methods(method, names)
    wanted = names if metrics is None else resolve_names(metrics, "metrics", names)
    if axis == "step":
        if step is not None:
            raise ConfigError("step", step, "None for timelines indexed by step")
        stacks = _step_stacks(instances, wanted)
    else:
        stacks = _grid_stacks(instances, wanted, methods, resolve_step(step, instances))
    if len(instances) < 3:
        return []
    found: list[Outlier] = []
    for name, stack in stacks:
        present = ~np.isnan(stack)
        shared = present.sum(axis=0) >= 3
        if not shared.any():
            continue
        part = stack[:, shared]
        median_curve = _column_medians(part)
        distance = _rms_distances(part, median_curve)
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


def _column_medians(stack: FloatArray) -> FloatArray:
    """Each column's median over its non-NaN values, as ``np.nanmedian(stack, axis=0)``.

    numpy's own takes a masked-array path when there are fewer than 600 rows (a
    handful of instances over thousands of grid points): about 30 ms per 10,000
    columns, against well under 1 ms for one sort here.
    """
    ordered = np.sort(stack, axis=0)  # NaN sorts last
    count = stack.shape[0] - np.isnan(stack).sum(axis=0)
    columns = np.arange(stack.shape[1])
    low = ordered[np.maximum(count - 1, 0) // 2, columns]
    high = ordered[count // 2 - (count == 0), columns]
    return np.where(count > 0, (low + high) / 2, np.nan)


def _rms_distances(part: FloatArray, curve: FloatArray) -> FloatArray:
    """Each row's root-mean-square distance to ``curve`` over its non-NaN values
    (NaN for a row with none), all rows in one pass."""
    present = ~np.isnan(part)
    gap = np.where(present, part - curve, 0.0)
    counts = present.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.sqrt((gap * gap).sum(axis=1) / counts), np.nan)
