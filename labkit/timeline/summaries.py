"""Instances' summaries: one instance's figures from its timeline, and their average.

A *summary* is a flat dict of one instance's figures (``{"cpu_peak": 45.2,
"loss_last": 0.31, "error_count": 7, "recovery_time": 1.5, ...}``); :func:`average_summaries`
reduces many to one in the same format, :func:`figure_arrays` gives each
figure's values for tables and comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from labkit._checks import Shown, is_real
from labkit.errors import ConfigError, error_text
from labkit.timeline.inputs import FloatArray, as_float

SUMMARY_RESERVED = frozenset(
    {"ok", "error", "index", "num_instances", "num_failed", "errors", "recovery_times"}
)
RECOVERY_KEYS = ("recovery_time", "recovery_times")


_AXES = frozenset({"t", "step"})

PEAK_METRICS = ("cpu", "memory")
"""The resource metrics labkit's sampler records: their default figure is the peak."""


def default_figure(metric: str) -> str:
    """The name of a metric's default summary figure.

    ``error_count`` for ``errors`` (the sum of its per-interval counts),
    ``<metric>_peak`` for ``cpu`` and ``memory`` (the most the instance used),
    ``<metric>_last`` for every other metric (where a training loss or an
    accuracy ended up).
    """
    if metric == "errors":
        return "error_count"
    return f"{metric}_peak" if metric in PEAK_METRICS else f"{metric}_last"


def summarize_timeline(timeline: pd.DataFrame) -> dict[str, float | int]:
    """One instance's default summary figures from its timeline, in the summary format.

    Each metric gives its :func:`default_figure`: ``cpu_peak`` and
    ``memory_peak`` (the largest finite value), ``error_count`` (the sum of the
    ``errors`` samples, each counting the errors since the previous sample) and,
    for every other metric ``m``, ``m_last``: its last recorded value in time
    order (inf included: a diverged loss stays visible). ``t`` and ``step`` are
    the axes, not metrics. Missing values (NaN) are skipped; a metric with no
    value gives NaN, except ``errors``: without a recorded value there is no
    ``error_count``.

    Example:
        >>> summarize_timeline(pd.DataFrame({"t": [0.0, 1.0], "cpu": [40.0, 52.5],
        ...                                  "loss": [1.4, 0.3], "errors": [2, 1]}))
        {'cpu_peak': 52.5, 'loss_last': 0.3, 'error_count': 3}

    Raises:
        ConfigError: If ``timeline`` is not a DataFrame with a ``t`` column, or a
            metric is not numeric.
    """
    if not isinstance(timeline, pd.DataFrame):
        raise ConfigError("timeline", Shown(type(timeline).__name__), "a DataFrame")
    if "t" not in timeline.columns:
        raise ConfigError("timeline.columns", Shown(repr(list(timeline.columns))), "a 't' column")
    t = as_float(timeline["t"], "timeline['t']", "float seconds since the instance started")
    order = None if bool((t[1:] >= t[:-1]).all()) else np.argsort(t, kind="stable")
    summary: dict[str, float | int] = {}
    for name in timeline.columns:
        if name in _AXES:
            continue  # the time offset and a recorded step are axes, not metrics
        values = as_float(timeline[name], f"timeline[{name!r}]", "a numeric metric column")
        if name == "errors":
            finite = values[np.isfinite(values)]
            if finite.size:
                summary["error_count"] = math.floor(math.fsum(finite.tolist()) + 0.5)
        elif name in PEAK_METRICS:
            finite = values[np.isfinite(values)]
            summary[f"{name}_peak"] = float(finite.max()) if finite.size else math.nan
        else:
            ordered = values if order is None else values[order]
            recorded = ordered[~np.isnan(ordered)]
            summary[f"{name}_last"] = float(recorded[-1]) if recorded.size else math.nan
    return summary


def failure_text(summary: Mapping[str, Any] | None) -> str | None:
    """``None`` for a successful summary, else the failure's one-line text."""
    if summary is None:
        return "failed (no summary)"
    if summary.get("ok", True) is not False:
        return None
    error = summary.get("error")
    if isinstance(error, BaseException):
        return error_text(error)
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
        failed) and, when some instance recorded one, ``recovery_times`` (one
        entry per instance, in order: its ``recovery_time``, or ``None`` where
        it has none). E.g. cpu_peak 45.2, 52.8, 48.1 and error_count 7, 5, 6
        give ``{"cpu_peak": 48.7, "error_count": 6, "num_instances": 3,
        "num_failed": 0, "errors": {}}``.

    Raises:
        ConfigError: If ``summaries`` is not a sequence, is empty, or an item is
            neither a mapping nor ``None``.
    """
    items = _summary_list(summaries)
    rounded = {round_to_int} if isinstance(round_to_int, str) else set(round_to_int)
    seen = _gather(items)
    result: dict[str, Any] = {}
    for key in seen.order:
        if key in seen.numbers and key not in seen.others:
            result[key] = _mean(seen.numbers[key], rounded=key in rounded)
        elif key in seen.others and key not in seen.numbers:
            kept = seen.others[key]
            if len(kept) == seen.succeeded and all(_same(kept[0], v) for v in kept[1:]):
                result[key] = kept[0]
    result["num_instances"] = len(items)
    result["num_failed"] = len(seen.errors)
    result["errors"] = seen.errors
    if any(recovery is not None for recovery in seen.recovery):
        result["recovery_times"] = seen.recovery
    return result


def figure_arrays(summaries: Iterable[Mapping[str, Any] | None]) -> dict[str, FloatArray]:
    """Each numeric figure of the successful summaries, as one array per key.

    The keys :func:`average_summaries` averages, in order of first appearance;
    the values in instance order, NaN and inf left out (a figure with no finite
    value gives an empty array). Failed summaries (``None``, ``ok=False``) are
    skipped. Recovery times and the bookkeeping keys are not figures.
    """
    numbers = _gather(list(summaries)).numbers
    return {key: np.array(values, dtype=np.float64) for key, values in numbers.items()}


def _summary_list(summaries: Any) -> list[Any]:
    """``summaries`` as a list, refused when it is no sequence of summaries or is empty."""
    if isinstance(summaries, Mapping | str) or not isinstance(summaries, Iterable):
        raise ConfigError(
            "summaries",
            Shown(type(summaries).__name__),
            "a sequence of summaries (one dict per instance, None for a failed one)",
        )
    items = list(summaries)
    if not items:
        raise ConfigError("summaries", [], "at least one summary (a dict, or None if it failed)")
    return items


@dataclass
class _Gathered:
    """The successful summaries' values by key, and what the failed ones left."""

    numbers: dict[str, list[float]] = field(default_factory=dict)  # finite values only
    others: dict[str, list[Any]] = field(default_factory=dict)  # non-numeric values
    order: dict[str, None] = field(default_factory=dict)  # every key, first appearance first
    errors: dict[int, str] = field(default_factory=dict)  # position -> failure text
    recovery: list[Any] = field(default_factory=list)  # one per summary
    succeeded: int = 0


def _gather(items: list[Any]) -> _Gathered:
    """One pass over the summaries: each key's values, the failures, the recovery times.

    Raises:
        ConfigError: An item is neither a mapping nor ``None``.
    """
    seen = _Gathered()
    for position, summary in enumerate(items):
        if summary is not None and not isinstance(summary, Mapping):
            raise ConfigError(
                f"summaries[{position}]", Shown(type(summary).__name__), "a dict or None"
            )
        seen.recovery.append(_recovery_of(summary))
        failure = failure_text(summary)
        if failure is not None:
            seen.errors[position] = failure
            continue
        assert summary is not None
        seen.succeeded += 1
        for key, value in summary.items():
            if key in SUMMARY_RESERVED or key in RECOVERY_KEYS:
                continue
            seen.order.setdefault(key, None)
            if is_real(value, finite=False):
                kept = seen.numbers.setdefault(key, [])
                if math.isfinite(float(value)):
                    kept.append(float(value))
            else:
                seen.others.setdefault(key, []).append(value)
    return seen


def _mean(values: list[float], *, rounded: bool) -> float | int:
    """The mean of finite ``values`` (NaN for none), a whole number when ``rounded``."""
    if not values:
        return math.nan
    # Summed in units of the largest magnitude (a power of two, exact): fsum
    # overflows once the exact sum passes the largest float.
    exponent = math.frexp(max(map(abs, values)))[1]
    total = math.fsum(math.ldexp(value, -exponent) for value in values)
    mean = math.ldexp(total / len(values), exponent)
    if not math.isfinite(mean):
        return mean
    if rounded:
        return math.floor(mean + 0.5)
    # 15 significant digits drop binary noise only: 146.1 / 3 is 48.7, not 48.699999999999996.
    return float(f"{mean:.15g}")


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
