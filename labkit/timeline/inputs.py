"""Reading and checking the timelines: numeric columns, finite times, metric names.

Also the options that depend on the input (``step``, ``method``, metric lists) and
the default grid step. Everything here raises :class:`~labkit.errors.ConfigError`
for bad input, naming where it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, TypeAlias, overload

import numpy as np
import numpy.typing as npt
import pandas as pd

from labkit._checks import Shown, is_real
from labkit.errors import ConfigError

Method = Literal["linear", "previous", "sum"]
"""How an instance's samples give its value at a grid time."""

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.intp]

METHODS: tuple[str, ...] = ("linear", "previous", "sum")
STAT_SUFFIXES = ("_std", "_min", "_max", "_ci95")
COUNT = "_n"
NONFINITE = "_nonfinite"
COUNTERS: tuple[str, ...] = ("errors",)
"""Metrics whose samples count events since the previous sample: averaged with
``"sum"`` unless ``method`` says otherwise, so that their totals are kept."""
GAP_FACTOR = 3.0
"""The default ``max_gap`` of a metric, in multiples of its median sampling interval."""
_FALLBACK_STEP = 1.0
_STEP_SAMPLE = 250_000  # intervals looked at for the default step, at most
_GAP_SAMPLE = 25_000  # ... and for a default max_gap (three times a median: a rougher need)


@dataclass(slots=True)
class Instance:
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

    def at_steps(self, name: str) -> tuple[FloatArray, FloatArray] | None:
        """Metric ``name``'s finite values by step, one per step (a repeated step
        keeps its last row), or ``None`` when the instance has none."""
        if name in self.clean:
            at, values = self.t, self.clean[name]
        elif name in self.ragged:
            at, values = self.ragged[name]
        else:
            return None
        last = np.flatnonzero(np.append(at[1:] != at[:-1], True))
        return at[last], values[last]


def as_float(values: Any, where: str, what: str) -> FloatArray:
    """A numeric pandas/numpy column as float64 (a view when it already is)."""
    dtype = getattr(values, "dtype", None)
    if isinstance(values, pd.Series):
        if dtype is not None and not isinstance(dtype, np.dtype):
            # Extension dtypes (Int64, Float64, boolean): pd.NA becomes NaN.
            if not pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
                raise ConfigError(where, Shown(f"a column of dtype {dtype}"), what)
            return values.to_numpy(dtype=np.float64, na_value=np.nan)
        values = values.to_numpy()
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise ConfigError(where, Shown(f"a column of dtype {array.dtype}"), what)
    return np.ascontiguousarray(array, dtype=np.float64)


def _all_finite(values: FloatArray) -> bool:
    # A finite sum proves every value finite (NaN and inf propagate); only when the
    # sum is not finite is the element-wise check needed.
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(values)
    return bool(np.isfinite(total)) or bool(np.isfinite(values).all())


Axis = Literal["t", "step"]
"""What a timeline is indexed by: seconds since the start, or a step (epoch, iteration)."""

_AXIS_TEXT = {
    "t": "a 't' column (seconds since the instance started)",
    "step": "a 'step' column (the epoch or iteration each row was recorded at)",
}


def timeline_axis(timelines: Sequence[Any], on: Any) -> Axis:
    """The axis to align on: ``on`` when given, else ``"step"`` when every frame has
    a ``step`` column, else ``"t"``."""
    if on is not None:
        if on not in _AXIS_TEXT:
            raise ConfigError(
                "on", on, "'t' (seconds), 'step', or None (step when every frame has one)"
            )
        return "step" if on == "step" else "t"
    frames = [frame for frame in timelines if isinstance(frame, pd.DataFrame | Mapping)]
    if frames and all("step" in frame for frame in frames):
        return "step"
    return "t"


def _and(names: set[str]) -> str:
    return " and ".join(repr(name) for name in sorted(names))


def read_timelines(timelines: Any, axis: Axis = "t") -> tuple[list[Instance], list[str], int]:
    """Check the input and return (instances with samples, metric names, instance count).

    With ``axis="step"`` the instances' ``t`` arrays hold their steps: rows
    without a step (NaN: a resource sample between steps) are left out, and a
    ``t`` column is not a metric.
    """
    frames = _frames(timelines, axis)
    skipped = {"t", "step"} if axis == "step" else {"t"}
    instances: list[Instance] = []
    metrics: dict[str, None] = {}  # insertion-ordered set
    for position, frame in enumerate(frames):
        instance = _read_one(frame, position, axis, skipped, metrics)
        if instance is not None:
            instances.append(instance)
    if not metrics:
        raise ConfigError(
            "timelines",
            Shown("timelines with only a 't' column"),
            "at least one metric column besides 't'",
        )
    _check_output_names(list(metrics), axis)
    return instances, list(metrics), len(frames)


def _frames(timelines: Any, axis: Axis) -> list[Any]:
    """The timelines as a non-empty list (one per instance)."""
    if isinstance(timelines, pd.DataFrame | Mapping):
        raise ConfigError(
            "timelines",
            Shown(f"a single {type(timelines).__name__}"),
            "a sequence of timelines (one DataFrame per instance): wrap it in a list",
        )
    try:
        frames = list(timelines)
    except TypeError:
        raise ConfigError(
            "timelines", Shown(type(timelines).__name__), "a sequence of DataFrames"
        ) from None
    if not frames:
        raise ConfigError(
            "timelines", [], f"at least one timeline (a DataFrame with {_AXIS_TEXT[axis]})"
        )
    return frames


def _read_one(
    frame: Any, position: int, axis: Axis, skipped: set[str], metrics: dict[str, None]
) -> Instance | None:
    """One timeline as an :class:`Instance` (None when it has no sample); its metric
    names are added to ``metrics``."""
    where = f"timelines[{position}]"
    if isinstance(frame, Mapping):
        frame = pd.DataFrame(dict(frame))
    elif not isinstance(frame, pd.DataFrame):
        raise ConfigError(
            where, Shown(type(frame).__name__), f"a DataFrame with {_AXIS_TEXT[axis]}"
        )
    names = _column_names(frame, where, axis)
    for name in names:
        if name not in skipped:
            metrics.setdefault(name, None)
    t_column = frame[axis]
    if axis == "t" and pd.api.types.is_timedelta64_dtype(t_column.dtype):
        raise ConfigError(
            f"{where}['t']",
            Shown("a timedelta column"),
            "float seconds since the instance started: use t.dt.total_seconds()",
        )
    t = as_float(t_column, f"{where}[{axis!r}]", _AXIS_TEXT[axis][2:])
    columns = {
        name: as_float(
            frame[name],
            f"{where}[{name!r}]",
            f"a numeric metric column (every column but {_and(skipped)} is a metric)",
        )
        for name in names
        if name not in skipped
    }
    if axis == "step" and np.isnan(t).any():
        stepped = ~np.isnan(t)  # rows between steps (resource samples) have none
        t = t[stepped]
        columns = {name: values[stepped] for name, values in columns.items()}
    if t.size == 0:
        return None
    t, columns = _in_time_order(frame, where, axis, t, columns)
    return _instance(position, t, columns)


def _column_names(frame: pd.DataFrame, where: str, axis: Axis) -> list[str]:
    """The frame's column names, checked: the axis present, unique, strings."""
    names = list(frame.columns)
    if axis not in names:
        hint = f" ('{axis}' is the index: call reset_index())" if frame.index.name == axis else ""
        raise ConfigError(
            f"{where}.columns", Shown(repr([str(c) for c in names])), f"{_AXIS_TEXT[axis]}{hint}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}.columns", Shown(repr(names)), "unique column names")
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"{where}.columns", Shown(repr(name)), "string column names")
    return names


def _in_time_order(
    frame: pd.DataFrame,
    where: str,
    axis: Axis,
    t: FloatArray,
    columns: dict[str, FloatArray],
) -> tuple[FloatArray, dict[str, FloatArray]]:
    """``t`` and the columns sorted by time, after checking the times are finite,
    not negative, and not repeated with conflicting values."""
    # Strictly increasing (the common case) means sorted without repeated times;
    # sorted with finite ends means all finite (NaN compares false): one pass.
    increasing = t.size < 2 or bool((t[1:] > t[:-1]).all())
    in_order = increasing or bool((t[1:] >= t[:-1]).all())
    if not (in_order and math.isfinite(t[0]) and math.isfinite(t[-1])) and not _all_finite(t):
        raise ConfigError(
            f"{where}[{axis!r}]",
            Shown("a column with NaN or inf"),
            "finite times in seconds" if axis == "t" else "finite steps",
        )
    if not in_order:
        order = np.argsort(t, kind="stable")
        t = t[order]
        columns = {name: values[order] for name, values in columns.items()}
    if axis == "t" and t[0] < 0:
        raise ConfigError(
            f"{where}['t']",
            Shown(f"{float(t[0])!r} at row {_rows(frame, 't', lambda times: times < 0)[0]!r}"),
            "times >= 0 (seconds since the instance started); shift the timeline "
            "so that it starts at 0",
        )
    if axis == "t" and not increasing:  # a repeated step keeps its last row, by design
        _check_repeated_times(frame, where, t, columns)
    return t, columns


def _instance(position: int, t: FloatArray, columns: dict[str, FloatArray]) -> Instance:
    """The instance's metrics split into all-finite columns and ragged ones."""
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
    return Instance(position, t, clean, ragged, nonfinite)


def _check_repeated_times(
    frame: pd.DataFrame, where: str, t: FloatArray, columns: Mapping[str, FloatArray]
) -> None:
    """Refuse two different finite values of one metric at one time (sorted ``t``).

    Rows that share a time are fine when they hold different metrics (a sampler's
    row beside ``ctx.record``'s) or repeat the same value; two values of a metric
    at one time would leave averaging to pick one of them.
    """
    for name, values in columns.items():
        finite = np.isfinite(values)
        times, kept = t[finite], values[finite]
        same = np.flatnonzero((times[1:] == times[:-1]) & (kept[1:] != kept[:-1]))
        if same.size:
            at = float(times[same[0]])
            rows = _rows(frame, "t", partial(np.equal, at), name)
            raise ConfigError(
                f"{where}[{name!r}]",
                Shown(
                    f"values {float(kept[same[0]])!r} and {float(kept[same[0] + 1])!r} at "
                    f"t={at!r} (rows {rows[0]!r} and {rows[1]!r})"
                ),
                "one value per metric per time: merge or drop the repeated rows",
            )


def _rows(frame: pd.DataFrame, axis: Axis, select: Any, metric: str | None = None) -> list[Any]:
    """Index labels of the rows whose time ``select`` picks and, with ``metric``, that
    hold a finite value of it. Only called to name the rows in an error."""
    chosen = select(frame[axis].to_numpy(dtype=float, na_value=np.nan))
    if metric is not None:
        chosen &= np.isfinite(frame[metric].to_numpy(dtype=float, na_value=np.nan))
    return list(frame.index[chosen])


def _check_output_names(metrics: Sequence[str], axis: Axis) -> None:
    taken = {axis, "n"} | {m + s for m in metrics for s in (*STAT_SUFFIXES, COUNT, NONFINITE)}
    clash = [m for m in metrics if m in taken]
    if clash:
        raise ConfigError(
            "timelines",
            Shown(f"a metric named {clash[0]!r}"),
            "metric names that do not clash with the output columns "
            f"({axis!r}, 'n' and '<metric>_std', '_min', '_max', '_ci95', '_n', '_nonfinite')",
        )


def resolve_methods(method: Any, metrics: Sequence[str]) -> dict[str, str]:
    """Each metric's method: ``None`` gives the defaults (``"sum"`` for the
    :data:`COUNTERS`, ``"linear"`` for the rest), a str applies to every metric, a
    mapping names some metrics (the others keep their default)."""
    allowed = "'linear', 'previous', 'sum', None, or a mapping of metric name to one of them"
    defaults = {name: "sum" if name in COUNTERS else "linear" for name in metrics}
    if method is None:
        return defaults
    if isinstance(method, str):
        if method not in METHODS:
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
        value = method.get(name, defaults[name])
        if value not in METHODS:
            raise ConfigError(f"method[{name!r}]", value, "'linear', 'previous' or 'sum'")
        resolved[name] = value
    return resolved


def check_method(method: Any) -> None:
    """Refuse a ``method`` that is not None, a method's name or a mapping of them.

    Raises:
        ConfigError: Naming the option (or ``method[metric]``) and the bad value.
    """
    if method is None or (isinstance(method, str) and method in METHODS):
        return
    if not isinstance(method, Mapping):
        raise ConfigError(
            "method", method, "'linear', 'previous', 'sum', None, or {metric: one of them}"
        )
    for name, value in method.items():
        if not isinstance(name, str):
            raise ConfigError("method", Shown(repr(name)), "metric names (str) as keys")
        if value not in METHODS:
            raise ConfigError(f"method[{name!r}]", value, "'linear', 'previous' or 'sum'")


def check_max_gap(max_gap: Any) -> None:
    """Refuse a ``max_gap`` that is not None, seconds > 0 (inf allowed) or a mapping of them.

    Raises:
        ConfigError: Naming the option (or ``max_gap[metric]``) and the bad value.
    """
    allowed = "seconds > 0 (math.inf: never a gap), None (the default), or {metric: seconds}"
    if max_gap is None:
        return
    if isinstance(max_gap, Mapping):
        for name, value in max_gap.items():
            if not isinstance(name, str):
                raise ConfigError("max_gap", Shown(repr(name)), "metric names (str) as keys")
            if value is not None and not (is_real(value, finite=False) and value > 0):
                raise ConfigError(f"max_gap[{name!r}]", value, "seconds > 0, math.inf or None")
        return
    if not (is_real(max_gap, finite=False) and max_gap > 0):
        raise ConfigError("max_gap", max_gap, allowed)


def resolve_max_gaps(
    max_gap: Any, instances: Sequence[Instance], metrics: Sequence[str], step: float
) -> dict[str, float]:
    """Each metric's longest interval between two of an instance's samples that is
    bridged (seconds; ``inf``: never a gap). At least ``step``: a shorter gap holds
    no grid point of its own.

    A metric without a value in ``max_gap`` gets :data:`GAP_FACTOR` times the median
    interval between consecutive samples of that metric, over every instance
    (:func:`median_interval`, from at most 25,000 evenly strided intervals);
    ``inf`` when no instance sampled it twice.

    Raises:
        ConfigError: For a bad ``max_gap`` or a mapping naming an unknown metric.
    """
    check_max_gap(max_gap)
    given: Mapping[str, Any]
    if isinstance(max_gap, Mapping):
        unknown = [name for name in max_gap if name not in metrics]
        if unknown:
            raise ConfigError(
                f"max_gap[{unknown[0]!r}]", max_gap[unknown[0]], f"a metric among {list(metrics)}"
            )
        given = max_gap
    else:
        given = dict.fromkeys(metrics, max_gap)
    gaps: dict[str, float] = {}
    medians: dict[tuple[int, ...], float] = {}  # metrics sampled at the same times share it
    for name in metrics:
        value = given.get(name)
        if value is None:
            times = metric_times(instances, name)
            key = tuple(id(t) for t in times)
            if key not in medians:
                medians[key] = median_interval(times, _GAP_SAMPLE)
            value = GAP_FACTOR * medians[key]
        gaps[name] = max(float(value), step)
    return gaps


def metric_times(instances: Sequence[Instance], name: str) -> list[FloatArray]:
    """Each instance's times of its finite samples of ``name`` (instances without it left out)."""
    times = []
    for instance in instances:
        if name in instance.clean:
            times.append(instance.t)
        elif name in instance.ragged:
            times.append(instance.ragged[name][0])
    return times


def resolve_names(names: Any, option: str, metrics: Sequence[str]) -> list[str]:
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


def resolve_step(step: Any, instances: Sequence[Instance]) -> float:
    if step is None:
        return _default_step(instances)
    if not is_real(step, finite=False):
        raise ConfigError("step", step, "a number of seconds > 0, or None for the default")
    value = float(step)
    if not (math.isfinite(value) and value > 0):
        raise ConfigError("step", step, "a finite number of seconds > 0, or None")
    return value


def _default_step(instances: Sequence[Instance]) -> float:
    return default_step([instance.t for instance in instances])


def default_step(times: Sequence[FloatArray]) -> float:
    """The grid step in seconds that averaging chooses for instances sampled at ``times``.

    ``times`` holds each instance's sample times (seconds, ascending). The step
    is the median interval between consecutive samples, over every instance
    (:func:`median_interval`), snapped to the shortest decimal within 1 % of
    it, so that grid times read cleanly (a jittered 10 ms sampler gives 0.01,
    not 0.0100613); 1.0 when no instance has two distinct sample times.
    """
    median = median_interval(times)
    return _FALLBACK_STEP if math.isinf(median) else _snap(median)


def median_interval(times: Sequence[FloatArray], at_most: int = _STEP_SAMPLE) -> float:
    """The median interval between consecutive distinct sample times, over every instance.

    ``times`` holds each instance's sample times (seconds, ascending). Beyond
    ``at_most`` intervals, an evenly strided sample of them is used.
    ``inf`` when no instance has two distinct sample times.
    """
    total = sum(max(t.size - 1, 0) for t in times)
    if total == 0:
        return math.inf
    # Long inputs: every k-th interval of every instance, at most ``at_most`` in
    # all, estimates the median well within the 1 % the step is snapped to.
    stride = -(-total // at_most)
    pieces = []
    for t in times:
        if t.size > 1:
            pieces.append(t[1::stride] - t[:-1:stride])
    gaps = np.concatenate(pieces)
    if not gaps.min() > 0:
        gaps = gaps[gaps > 0]  # repeated timestamps are not an interval
        if gaps.size == 0:
            return math.inf
    middle = gaps.size // 2
    if gaps.size % 2:
        gaps.partition(middle)
        return float(gaps[middle])
    gaps.partition((middle - 1, middle))
    return (float(gaps[middle - 1]) + float(gaps[middle])) / 2


def _snap(interval: float) -> float:
    """The shortest decimal within 1 % of ``interval`` (0.01006 -> 0.01, 0.125 stays)."""
    for digits in range(1, 16):
        snapped = float(f"{interval:.{digits}g}")
        if abs(snapped - interval) <= 0.01 * interval:
            return snapped
    return interval


@overload
def nearest_index(times: float, step: float) -> int: ...


@overload
def nearest_index(times: FloatArray, step: float) -> IntArray: ...


def nearest_index(times: float | FloatArray, step: float) -> int | IntArray:
    """The grid point a time belongs to: the nearest one, halves going up.

    The one rounding rule of every grid in labkit (the final average's spans,
    gaps, counters and inf counts, and the live chart's running average), so
    that a sample lands on the same grid point wherever it is placed. The
    scalar and the array forms round identically: ``floor(t / step + 1/2)``
    in float64 either way.

    Args:
        times: Seconds (or steps) since the instance started: a number or an array.
        step: The grid step, in the same unit (> 0).

    Returns:
        The grid index (``times / step`` rounded), an int or an integer array.
    """
    if isinstance(times, np.ndarray):
        position = np.divide(times, step)
        position += 0.5
        return np.floor(position, out=position).astype(np.intp)
    return math.floor(times / step + 0.5)
