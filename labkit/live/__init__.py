"""The live chart's data, with no UI: lines, the running average and their model.

By idea, each in a module of its own:

- :mod:`~labkit.live.snapshots`: what a chart draws, as immutable records
  (:class:`LineSnapshot`, :class:`AverageSnapshot`, :class:`LiveSnapshot`),
  shared by the static chart, the report and the live chart;
- :mod:`~labkit.live.decimation`: keeping a line's shape in few points
  (:func:`decimate_indices` and :func:`decimate_line` for a whole series, a
  streaming min/max line for a live one's samples): peaks stay visible and memory
  stays fixed however long the run;
- :mod:`~labkit.live.grid` and :mod:`~labkit.live.average`: the running average,
  on the final average's grid and with its statistics kernel
  (:mod:`labkit.timeline.moments`), so that once every sample has arrived its
  mean, spread and ``n`` are the final average's;
- :mod:`~labkit.live.axes`: lines over seconds or over steps, two strategies;
- :mod:`~labkit.live.columns`: sample events turned into numpy columns;
- :mod:`~labkit.live.model`: :class:`LiveTimelineModel`, events in, snapshots out.

Frame pacing belongs to the widget that draws: :mod:`labkit.widgets.frames`.
"""

from __future__ import annotations

from labkit.live.decimation import DEFAULT_MAX_POINTS, decimate_indices, decimate_line
from labkit.live.model import LinePoints, LiveTimelineModel
from labkit.live.snapshots import AverageSnapshot, Axis, Band, LineSnapshot, LiveSnapshot

__all__ = (
    "DEFAULT_MAX_POINTS",
    "AverageSnapshot",
    "Axis",
    "Band",
    "LinePoints",
    "LineSnapshot",
    "LiveSnapshot",
    "LiveTimelineModel",
    "decimate_indices",
    "decimate_line",
)
