"""Charts of an experiment: every instance's timeline against the averaged one.

Pure functions from results to plotly figures; nothing here runs or measures
anything. :func:`timeline_figure` draws one subplot per metric sharing the time
axis: each instance a thin translucent line, the average a thick line on top, and
a band (standard deviation, min-max or 95 % confidence interval) filled around it.

The traces come from two builders, :func:`instance_traces` and
:func:`average_traces`, which the live chart (:mod:`labkit.widgets.live`) and the
HTML report use too, so the three charts cannot drift apart. They return plain
trace dicts (cheap to build many times a second; plotly validates them once).

Long timelines are decimated for display by :func:`decimate_indices`, which keeps
each bucket's minimum and maximum, so a million-sample result draws at once and
its peaks stay visible.
"""

from labkit.live import DEFAULT_MAX_POINTS, Band, decimate_indices
from labkit.plots.figure import (
    STAT_SUFFIXES,
    band_bounds,
    instance_lines,
    metric_names,
    timeline_figure,
)
from labkit.plots.style import (
    AVERAGE_COLOR,
    BAND_COLOR,
    DEFAULT_BAND,
    INSTANCE_COLORS,
    MANY_INSTANCES,
    METRIC_UNITS,
    OUTLIER_COLOR,
    PAPER_COLOR,
    SPREAD_HEADING,
    TEXT_COLOR,
    MetricLabels,
    XAxis,
    axis_title,
    figure_layout,
    time_title,
)
from labkit.plots.traces import InstanceLine, average_traces, instance_opacity, instance_traces

__all__ = (
    "AVERAGE_COLOR",
    "BAND_COLOR",
    "DEFAULT_BAND",
    "DEFAULT_MAX_POINTS",
    "INSTANCE_COLORS",
    "MANY_INSTANCES",
    "METRIC_UNITS",
    "OUTLIER_COLOR",
    "PAPER_COLOR",
    "SPREAD_HEADING",
    "STAT_SUFFIXES",
    "TEXT_COLOR",
    "Band",
    "InstanceLine",
    "MetricLabels",
    "XAxis",
    "average_traces",
    "axis_title",
    "band_bounds",
    "decimate_indices",
    "figure_layout",
    "instance_lines",
    "instance_opacity",
    "instance_traces",
    "metric_names",
    "time_title",
    "timeline_figure",
)
