"""The experiment's spec: what to run, with which parameters, and how to summarise it."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import pandas as pd

from labkit._checks import check
from labkit.timeline import Method, default_figure, summarize_timeline
from labkit.timeline.inputs import check_max_gap, check_method

if TYPE_CHECKING:
    from labkit.experiment.context import InstanceContext

__all__ = (
    "MAX_DURATION",
    "MAX_INSTANCES",
    "Experiment",
    "SummaryKind",
    "averaging_config",
    "display_config",
    "summary_figures",
)

MAX_INSTANCES = 1024
"""The most instances one run may ask for (and the cap of ``instances="auto"``)."""

MAX_DURATION = 24 * 3600.0
"""The longest ``duration`` accepted, in seconds: E2B's longest sandbox life (Pro plan)."""

SummaryKind = Literal["last", "min", "max", "mean", "peak"]
"""How a metric's timeline becomes one figure of an instance's summary."""

_KINDS: tuple[str, ...] = get_args(SummaryKind)

InstanceFunction = Callable[["InstanceContext"], Any]


@dataclass(frozen=True, slots=True)
class Experiment:
    """A function to run as several parallel instances.

    Args:
        name: A short name, used in reports and the store.
        fn: ``async def fn(ctx)`` or a plain ``def fn(ctx)`` (run in a thread),
            given an :class:`~labkit.experiment.InstanceContext`. If it returns a
            mapping, its values join the instance's summary (``{"recovery_time":
            2.5}``); any other value that is not ``None`` is kept as
            ``summary["value"]``.
        params: Parameters every instance receives as ``ctx.params``.
        needs_sandbox: When true and ``run_experiment`` is given no
            ``sandbox_pool``, each instance gets a ``LocalSandbox`` (a real
            subprocess in a temporary directory) from a pool made for the run.
        description: One line for reports.
        summarize: How a metric becomes its instance's summary figure, by metric
            name: ``"last"`` (its last recorded value: what training runs
            compare), ``"min"``, ``"max"``, ``"mean"`` or ``"peak"`` (the
            largest finite value), or a list of these. Each figure is named
            ``<metric>_<kind>`` (``{"loss": "min"}`` gives ``loss_min`` instead
            of ``loss_last``). Metrics not named keep the defaults
            (:func:`labkit.timeline.default_figure`): ``m_last``, but
            ``cpu_peak`` and ``memory_peak`` for the sampler's resources and
            ``error_count`` for ``errors`` (which a kind named for ``errors``
            joins rather than replaces). ``last``, ``min``, ``max`` and
            ``mean`` read the values as recorded, inf included (a diverged loss
            stays visible as ``inf``); NaN means "not sampled" and is skipped.
        max_gap: How the averaged timeline treats a silence in a metric: the
            longest interval (seconds) between an instance's samples that is
            bridged; a longer one is a gap where that instance does not count
            (see :func:`labkit.timeline.average_timelines`). ``None``: 3 times
            the metric's median sampling interval. ``run_experiment(max_gap=)``
            overrides it.
        method: How each metric is put on the averaged timeline's grid:
            ``"linear"``, ``"previous"``, ``"sum"``, or ``{metric: method}``.
            ``None``: ``"sum"`` for ``errors`` (its total is kept), ``"linear"``
            for the rest. ``run_experiment(method=)`` overrides it.
        units: Each metric's unit, by metric name (``{"latency_ms": "ms"}``),
            shown on every chart axis, hover label and summary table beside
            the sampler's own (``cpu`` in %, ``memory`` in MB). Kept in the
            run's config, so a stored run shows them too.
        display_names: A name to show for a metric instead of its column name
            (``{"latency_ms": "latency"}``), on the same charts and tables.

    Raises:
        ConfigError: ``name`` is empty, ``fn`` is not callable, ``params`` is not
            a mapping with str keys, ``needs_sandbox`` is not a bool,
            ``summarize`` names a kind other than those above, or ``max_gap``
            or ``method`` is not one of the forms above, or ``units`` or
            ``display_names`` is not a mapping of metric names to non-empty str.
    """

    name: str
    fn: InstanceFunction
    params: Mapping[str, Any] | None = field(default=None, kw_only=True)
    needs_sandbox: bool = field(default=False, kw_only=True)
    description: str = field(default="", kw_only=True)
    summarize: Mapping[str, SummaryKind | Sequence[SummaryKind]] | None = field(
        default=None, kw_only=True
    )
    max_gap: float | Mapping[str, float | None] | None = field(default=None, kw_only=True)
    method: Method | Mapping[str, Method] | None = field(default=None, kw_only=True)
    units: Mapping[str, str] | None = field(default=None, kw_only=True)
    display_names: Mapping[str, str] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        check(isinstance(self.name, str) and bool(self.name), "name", self.name, "a non-empty str")
        check(callable(self.fn), "fn", self.fn, "a function taking an InstanceContext")
        check(
            self.params is None
            or (isinstance(self.params, Mapping) and all(isinstance(k, str) for k in self.params)),
            "params",
            self.params,
            "None or a dict with str keys",
        )
        check(
            isinstance(self.needs_sandbox, bool),
            "needs_sandbox",
            self.needs_sandbox,
            "True or False",
        )
        check(isinstance(self.description, str), "description", self.description, "a str")
        check_max_gap(self.max_gap)
        check_method(self.method)
        _check_labels("units", self.units)
        _check_labels("display_names", self.display_names)
        for option in ("max_gap", "method", "units", "display_names"):
            value = getattr(self, option)
            if isinstance(value, Mapping):
                object.__setattr__(self, option, MappingProxyType(dict(value)))
        object.__setattr__(self, "params", MappingProxyType(dict(self.params or {})))
        if self.summarize is not None:
            check(
                isinstance(self.summarize, Mapping),
                "summarize",
                self.summarize,
                "a dict {metric: kind or [kinds]}",
            )
            chosen: dict[str, tuple[str, ...]] = {}
            for metric, kinds in self.summarize.items():
                listed = (kinds,) if isinstance(kinds, str) else tuple(kinds)
                check(
                    isinstance(metric, str) and metric not in ("t", "step"),
                    "summarize",
                    metric,
                    "metric names (any str but the axes 't' and 'step')",
                )
                for kind in listed:
                    check(
                        kind in _KINDS,
                        f"summarize[{metric!r}]",
                        kind,
                        f"one of {', '.join(_KINDS)} (or a list of them)",
                    )
                check(bool(listed), f"summarize[{metric!r}]", kinds, "at least one kind")
                chosen[metric] = tuple(dict.fromkeys(listed))
            object.__setattr__(self, "summarize", MappingProxyType(chosen))

    def with_params(self, **params: Any) -> Experiment:
        """A copy with ``params`` merged over this experiment's own."""
        return replace(self, params={**(self.params or {}), **params})


def averaging_config(
    experiment: Experiment,
    max_gap: float | Mapping[str, float | None] | None,
    method: Method | Mapping[str, Method] | None,
) -> dict[str, Any]:
    """How a run averages its timelines, as its config keeps it (JSON values).

    ``max_gap`` and ``method`` (``run_experiment``'s) override the
    experiment's own; an infinite gap is written ``"inf"`` (JSON has no inf).
    ``ExperimentResult.build`` reads them back, so a stored run is averaged
    as it was.

    Raises:
        ConfigError: For a bad ``max_gap`` or ``method``.
    """
    check_max_gap(max_gap)
    check_method(method)
    gap = experiment.max_gap if max_gap is None else max_gap
    chosen = experiment.method if method is None else method
    config: dict[str, Any] = {}
    if gap is not None:
        config["max_gap"] = (
            {name: _seconds(value) for name, value in gap.items()}
            if isinstance(gap, Mapping)
            else _seconds(gap)
        )
    if chosen is not None:
        config["method"] = chosen if isinstance(chosen, str) else dict(chosen)
    return config


def display_config(experiment: Experiment) -> dict[str, Any]:
    """How a run's metrics are shown, as its config keeps it: ``units`` and
    ``display_names`` (plain dicts), each only when the experiment sets it.

    Charts and reports read them back from ``result.config``, so a stored run
    is shown as it was.
    """
    config: dict[str, Any] = {}
    for option in ("units", "display_names"):
        value = getattr(experiment, option)
        if value:
            config[option] = dict(value)
    return config


def _check_labels(option: str, value: Any) -> None:
    """Refuse anything but ``None`` or a mapping of metric names to non-empty str."""
    if value is None:
        return
    check(isinstance(value, Mapping), option, value, "None or a dict {metric: str}")
    for metric, text in value.items():
        check(
            isinstance(metric, str) and bool(metric) and metric not in ("t", "step"),
            option,
            metric,
            "metric names (any non-empty str but the axes 't' and 'step')",
        )
        check(
            isinstance(text, str) and bool(text.strip()),
            f"{option}[{metric!r}]",
            text,
            "a non-empty str",
        )


def _seconds(value: float | None) -> float | str | None:
    return "inf" if value is not None and math.isinf(value) else value


def summary_figures(
    timeline: pd.DataFrame, summarize: Mapping[str, Sequence[str]] | None
) -> dict[str, Any]:
    """An instance's summary figures from its timeline, as ``Experiment.summarize`` asks.

    Args:
        timeline: The instance's samples (``t`` and one column per metric).
        summarize: ``{metric: kinds}`` as validated by :class:`Experiment`, or
            ``None`` for the defaults only.

    Returns:
        Each metric not in ``summarize`` under its default name
        (:func:`labkit.timeline.summarize_timeline`: ``m_last``, ``cpu_peak``,
        ``memory_peak``, and ``error_count`` only when ``errors`` were
        recorded), and ``m_<kind>`` for each one in it (NaN where the metric
        was never recorded).
    """
    summary: dict[str, Any] = summarize_timeline(timeline)
    if not summarize:
        return summary
    for metric, kinds in summarize.items():
        if metric != "errors":
            summary.pop(default_figure(metric), None)
        values = (
            timeline[metric].to_numpy(dtype=float)
            if metric in timeline.columns
            else np.array([], dtype=float)
        )
        recorded = values[~np.isnan(values)]
        for kind in kinds:
            summary[f"{metric}_{kind}"] = _figure(recorded, kind)
    return summary


def _figure(recorded: np.ndarray, kind: str) -> float:
    """One figure of a metric's recorded (non-NaN) values, in time order."""
    if kind == "peak":
        finite = recorded[np.isfinite(recorded)]
        return float(finite.max()) if finite.size else math.nan
    if not recorded.size:
        return math.nan
    if kind == "last":
        return float(recorded[-1])
    if kind == "min":
        return float(recorded.min())
    if kind == "max":
        return float(recorded.max())
    return float(recorded.mean())
