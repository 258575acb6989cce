"""What a sweep optimises: a summary figure, a recorded metric, or a function of the result.

An objective named by a string is looked up first among the summary figures
(``loss_last``, ``cpu_peak``, a key the function returned), then among the
recorded metrics (the last value of each instance, averaged over the instances
that succeeded). :func:`resolve_objective` checks a name against what an
experiment records before anything runs; :func:`objective_value` computes a
finished experiment's objective, :func:`instance_values` each instance's, and
:func:`live_value` a running instance's from the samples it recorded so far.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np

from labkit._checks import check, is_real
from labkit.errors import ConfigError
from labkit.experiment.spec import SummaryKind, summary_figures
from labkit.results import ExperimentResult, InstanceResult
from labkit.samplelog import SampleLog
from labkit.timeline.summaries import SUMMARY_RESERVED

__all__ = (
    "Objective",
    "check_objective",
    "instance_values",
    "live_value",
    "objective_name",
    "objective_value",
    "recorded_names",
    "resolve_objective",
)

Objective = str | Callable[[ExperimentResult], float]
"""A summary figure's name, a recorded metric's name, or a function of the result."""

ObjectiveKind = Literal["figure", "metric"]

_KINDS: tuple[str, ...] = get_args(SummaryKind)


def check_objective(objective: Any) -> None:
    """Refuse what is neither a name nor a function, as the sweep and its board do.

    Raises:
        ConfigError: ``objective`` is not a non-empty string or a callable.
    """
    check(
        (isinstance(objective, str) and bool(objective)) or callable(objective),
        "objective",
        objective,
        "a summary figure's name, a metric's name or a function of the ExperimentResult",
    )


def objective_name(objective: Objective) -> str:
    """How an objective is named in headings: its name, or the function's name."""
    if isinstance(objective, str):
        return objective
    return str(getattr(objective, "__name__", None) or "objective")


def recorded_names(result: ExperimentResult) -> tuple[list[str], list[str]]:
    """What ``result`` recorded that an objective may name: its summary figures and metrics.

    Returns:
        ``(figures, metrics)``: the numeric keys of the summary (not the counts of
        instances), and the columns of the successful instances' timelines other
        than the ``t`` and ``step`` axes, each in order of first appearance.
    """
    figures = [
        name
        for name, value in result.summary.items()
        if is_real(value, finite=False)
        and not isinstance(value, bool)
        and name not in _ABOUT_THE_RUN
    ]
    metrics = dict.fromkeys(
        str(column)
        for instance in result.instances
        if instance.ok
        for column in instance.timeline.columns
        if column not in ("t", "step")
    )
    return figures, list(metrics)


_ABOUT_THE_RUN = SUMMARY_RESERVED | {"num_succeeded", "all_failed"}
"""Summary entries that count instances: about the run, not what it measured."""


def resolve_objective(
    objective: str, *, figures: Iterable[str] = (), metrics: Iterable[str] = ()
) -> ObjectiveKind:
    """Which of what an experiment records ``objective`` names: a figure or a metric.

    A summary figure wins over a metric of the same name, as in
    :func:`objective_value`. Call it before anything runs with the names known
    then (``Experiment.summarize``'s figures, a stored run's names), or with
    :func:`recorded_names` of a result.

    Args:
        objective: The objective's name.
        figures: The summary figures the experiment records (``loss_last``...).
        metrics: The metrics it records (``loss``...).

    Returns:
        ``"figure"`` or ``"metric"``.

    Raises:
        ConfigError: ``objective`` names neither; the message lists what exists.
    """
    figure_names, metric_names = list(figures), list(metrics)
    if objective in figure_names:
        return "figure"
    if objective in metric_names:
        return "metric"
    listed = [
        f"a summary figure ({', '.join(figure_names)})" if figure_names else "",
        f"a recorded metric ({', '.join(metric_names)})" if metric_names else "",
    ]
    allowed = " or ".join(text for text in listed if text)
    raise ConfigError("objective", objective, allowed or "a name the experiment records")


def objective_value(result: ExperimentResult, objective: Objective) -> float:
    """The objective of one finished experiment.

    Args:
        result: The experiment's result.
        objective: A callable on the result; else a key of ``result.summary``;
            else a metric recorded in the timelines, whose last value in each
            successful instance is averaged over those instances.

    Returns:
        The value as a float.

    Raises:
        ConfigError: ``objective`` names neither a summary figure nor a metric
            (a ``ValueError``; the message lists what the result recorded).
        ValueError: The value is not a finite number.
    """
    if callable(objective):
        raw = objective(result)
    elif objective in result.summary:
        raw = result.summary[objective]
    else:
        last = [
            value
            for instance in result.instances
            if instance.ok
            for value in [_last(instance, objective)]
            if value is not None
        ]
        if not last:
            figures, metrics = recorded_names(result)
            resolve_objective(objective, figures=figures, metrics=metrics)
            raise ValueError(f"objective {objective!r} was never recorded by an instance")
        raw = float(np.mean(last))
    return _finite(raw)


def instance_values(
    name: str,
    params: Mapping[str, Any],
    instances: Sequence[InstanceResult],
    objective: Objective,
) -> list[float]:
    """The objective of each of ``instances``, each as a one-instance experiment.

    What a racing sweep compares and a trial's estimate averages: for a summary
    figure, each instance's figure; for a recorded metric, its last value; for a
    function, the function of a result holding that instance alone. A failed
    instance, or one whose objective cannot be computed, gives NaN (left out of
    comparisons and estimates; its place keeps the instances of two trials
    paired by index).
    """
    values: list[float] = []
    for instance in instances:
        try:
            values.append(_instance_value(name, params, instance, objective))
        except (KeyError, ValueError):
            values.append(math.nan)
    return values


def live_value(log: SampleLog, objective: Objective) -> float:
    """A running instance's objective from the samples it recorded so far; NaN if none.

    A metric's value is its latest; a figure named ``<metric>_<kind>`` (``last``,
    ``min``, ``max``, ``mean``, ``peak``) or ``error_count`` is the figure of the
    samples so far, computed as the instance's summary will be. A figure the
    function returns, or a function of the result, is known only at the end.
    """
    if not isinstance(objective, str) or not len(log):
        return math.nan
    names = log.names
    if objective in names:
        metric, kind = objective, "last"
    else:
        metric, _, kind = objective.rpartition("_")
        if objective == "error_count":
            metric, kind = "errors", ""
        elif metric not in names or kind not in _KINDS:
            return math.nan
    if metric not in names:
        return math.nan
    if kind == "last":
        return _latest(log, metric)
    figures = summary_figures(log.frame(), {metric: [kind]} if kind else None)
    raw = figures.get(f"{metric}_{kind}" if kind else objective, math.nan)
    return float(raw) if is_real(raw) else math.nan


def _latest(log: SampleLog, metric: str, tail: int = 64) -> float:
    """The last recorded (non-NaN) value of ``metric``, read from the log's end.

    A figure ``last`` of the whole timeline, without copying it: a watcher asks
    for every running instance's value at each redraw.
    """
    start = max(len(log) - tail, 0)
    while True:
        values = log.read(start)[1].get(metric, np.empty(0))
        recorded = values[~np.isnan(values)]
        if recorded.size or start == 0:
            break
        start = 0
    value = float(recorded[-1]) if recorded.size else math.nan
    return value if math.isfinite(value) else math.nan


def _instance_value(
    name: str, params: Mapping[str, Any], instance: InstanceResult, objective: Objective
) -> float:
    if not instance.ok:
        return math.nan
    if callable(objective):
        alone = ExperimentResult.build(name, dict(params), [instance], {})
        return objective_value(alone, objective)
    if objective in instance.summary:
        return _finite(instance.summary[objective])
    value = _last(instance, objective)
    return math.nan if value is None else _finite(value)


def _last(instance: InstanceResult, metric: str) -> float | None:
    """The last recorded (non-NaN) value of ``metric`` in the instance's timeline."""
    if metric not in instance.timeline.columns:
        return None
    values = instance.timeline[metric].dropna().to_numpy(dtype=float)
    return float(values[-1]) if values.size else None


def _finite(raw: Any) -> float:
    if not is_real(raw, finite=False):
        raise ValueError(f"objective is {raw!r}, not a number")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"objective is {value}")
    return value
