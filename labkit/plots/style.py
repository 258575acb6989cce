"""How charts look: the palette, the legend, metric names and units.

Every chart of labkit (the static figure, the live chart, the report) takes its
colours, layout and axis titles from here, so they read alike. The chart keeps a
white background of its own: in a dark notebook theme it stays a white card whose
text and lines keep their contrast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from labkit.errors import ConfigError
from labkit.live import Band

__all__ = (
    "AVERAGE_COLOR",
    "BAND_COLOR",
    "DEFAULT_BAND",
    "INSTANCE_COLORS",
    "MANY_COLOR",
    "MANY_INSTANCES",
    "METRIC_UNITS",
    "OUTLIER_COLOR",
    "PAPER_COLOR",
    "SPREAD_HEADING",
    "TEXT_COLOR",
    "MetricLabels",
    "XAxis",
    "axis_title",
    "figure_layout",
    "time_title",
)

# A qualitative palette (ColorBrewer's Dark2, its pale yellow swapped for a blue, its
# purple and green darkened): eight hues told apart at a glance, each at least 3:1
# against the white plot (WCAG's figure for graphics), none a red (the outliers').
INSTANCE_COLORS = (
    "#1f77b4",
    "#d95f02",
    "#1b9e77",
    "#6a3d9a",
    "#e7298a",
    "#4f8a10",
    "#a6761d",
    "#666666",
)
AVERAGE_COLOR = "#1f1f1f"
BAND_COLOR = "rgba(31, 31, 31, 0.15)"
OUTLIER_COLOR = "#d62728"
MANY_COLOR = "#1f77b4"
PAPER_COLOR = "#ffffff"
"""The chart's own background: it stays white in a dark notebook theme, so its text
(:data:`TEXT_COLOR`) and lines keep their contrast whatever surrounds them."""
TEXT_COLOR = "#2a3f5f"

DEFAULT_BAND: Band = "ci95"
"""The band drawn by default: the 95 % confidence interval of the mean, the same
spread the summary tables print after "±"."""

SPREAD_HEADING = "mean ± ci95 (min … max)"
"""How a summary figure reads (``ExperimentResult.summary_texts``): the heading of
every table that prints one, so "±" is never left unexplained."""

MANY_INSTANCES = 8
"""Above this many instances, the plain ones share one trace and one legend entry
(``instances (64)``): the legend stays short and the browser draws one line per metric."""

METRIC_UNITS: Mapping[str, str] = {"cpu": "%", "memory": "MB"}
"""Units of the metrics labkit's sampler records, for axis titles."""

_FIGURE_KINDS = ("last", "min", "max", "mean", "peak")

XAxis = Literal["time", "step"]
"""What a chart's horizontal axis counts: seconds since the instance started, or steps."""


@dataclass(frozen=True, slots=True)
class MetricLabels:
    """How metrics are shown: a display name and a unit per metric.

    Attributes:
        units: Units by metric name; the sampler's (:data:`METRIC_UNITS`) are
            known without being given.
        names: Display names by metric name; a metric not named shows its own.
    """

    units: Mapping[str, str] = field(default_factory=lambda: dict(METRIC_UNITS))
    names: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        config: Mapping[str, Any] | None = None,
        *,
        units: Mapping[str, str] | None = None,
        display_names: Mapping[str, str] | None = None,
    ) -> MetricLabels:
        """The labels a run's config keeps (``Experiment(units=, display_names=)``),
        with ``units`` and ``display_names`` given here over them.

        Raises:
            ConfigError: If ``units`` or ``display_names`` is not a mapping of str to str.
        """
        config = config or {}
        merged: list[dict[str, str]] = []
        for option, given in (("units", units), ("display_names", display_names)):
            if given is not None and not (
                isinstance(given, Mapping)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in given.items())
            ):
                raise ConfigError(option, given, "None or a dict {metric: str}")
            stored = config.get(option)
            merged.append({**(stored if isinstance(stored, Mapping) else {}), **(given or {})})
        return cls({**METRIC_UNITS, **merged[0]}, merged[1])

    def name(self, metric: str) -> str:
        """The metric's display name (its own name when none is given)."""
        return self.names.get(metric, metric)

    def unit(self, metric: str) -> str:
        """The metric's unit, ``""`` when unknown."""
        return self.units.get(metric, "")

    def title(self, metric: str) -> str:
        """An axis title: ``cpu (%)``, ``latency (ms)``, ``loss``."""
        unit = self.unit(metric)
        return f"{self.name(metric)} ({unit})" if unit else self.name(metric)

    def value(self, metric: str, value: str = "%{y:.4g}") -> str:
        """A hover line: ``cpu=%{y:.4g} %``."""
        unit = self.unit(metric)
        return f"{self.name(metric)}={value}" + (f" {unit}" if unit else "")

    def figure_unit(self, figure: str) -> str:
        """The unit of a summary figure named after its metric (``latency_ms_peak``:
        ``ms``); ``""`` for counts (``error_count``) and figures of no known metric."""
        for metric in sorted(self.units, key=len, reverse=True):
            if figure == metric or (
                figure.startswith(f"{metric}_") and figure[len(metric) + 1 :] in _FIGURE_KINDS
            ):
                return self.units[metric]
        return ""


def axis_title(metric: str, units: Mapping[str, str] = METRIC_UNITS) -> str:
    """A metric's axis title with its unit when known: ``cpu (%)``, ``memory (MB)``, ``loss``."""
    return MetricLabels(units).title(metric)


def time_title(x_axis: XAxis = "time") -> str:
    """The horizontal axis title: ``time (s)`` or ``step``."""
    return "time (s)" if x_axis == "time" else "step"


LEGEND_GAP = 52
"""Pixels between the plot's bottom edge and the legend: room for the time axis's
tick labels and title."""


def figure_layout(plot_height: float) -> dict[str, Any]:
    """The layout every chart shares: the width it is given, a white background of
    its own, and the legend under the time axis in rows that wrap instead of
    scrolling, the average and its band first.

    Args:
        plot_height: The height of the subplots' area (the figure's less its
            margins), in pixels: it places the legend a fixed distance below it.
    """
    return {
        "autosize": True,
        "hovermode": "closest",
        "template": "plotly_white",
        "paper_bgcolor": PAPER_COLOR,
        "plot_bgcolor": PAPER_COLOR,
        "font": {"color": TEXT_COLOR},
        "legend": {
            "groupclick": "togglegroup",
            "orientation": "h",
            "x": 0.0,
            "xanchor": "left",
            "y": -LEGEND_GAP / max(plot_height, 1.0),
            "yanchor": "top",
        },
    }
