"""Averaging of per-instance metric timelines and summaries.

One run is noise; N instances averaged are a measurement. This module puts the
instances' timelines on one time grid and reduces them to a mean with its spread,
averages their summaries, flags instances that behave differently from the rest,
and estimates how many instances a precise mean needs. Pure numpy and pandas.

Data formats:

- A *timeline* is a DataFrame with a float column ``t`` (seconds since the
  instance started) and one numeric column per metric (``cpu``, ``memory``,
  ``errors`` or the user's own names). NaN means "not sampled here"; inf (a
  diverging loss) is a non-finite sample: never an error, it is left out of the
  mean and spread and counted instead.
- An *averaged timeline* (:func:`average_timelines`) has the columns ``t``,
  ``n`` (how many instances' spans cover ``t``) and, for each metric ``m`` in
  order of first appearance: ``m`` (mean), ``m_std`` (sample standard deviation,
  ddof=1), ``m_min``, ``m_max``, ``m_ci95`` (half-width of the 95 %
  confidence interval of the mean, Student t), ``m_n`` (instances that measured
  ``m`` at ``t``: NaN statistics where it is 0, in a gap) and ``m_nonfinite``
  (instances with an inf sample of ``m`` nearest ``t``).
- A timeline may be indexed by step (an epoch, an iteration) instead: a
  ``step`` column in place of ``t``; instances are then aligned on equal steps
  exactly, and the averaged timeline has ``step`` instead of ``t``.
- A *summary* is a flat dict of one instance's figures
  (``{"cpu_peak": 45.2, "error_count": 7, "recovery_time": 1.5, ...}``);
  :func:`average_summaries` reduces many to one in the same format.

Alignment, in short: the grid starts at 0 and advances by ``step`` seconds. A
sample belongs to its *nearest* grid point (flooring jittered timestamps would
put half of them one step early), so an instance covers the grid points from
the one nearest its first sample to the one nearest its last, and contributes
nowhere else: no extrapolation. Inside that range its value at a grid time is
interpolated (``"linear"``, for gauges such as CPU %) or held from the last
sample at or before that grid point (``"previous"``), but never across a gap:
two samples of a metric more than ``max_gap`` apart (by default 3 times the
metric's median sampling interval). Counters such as ``errors`` are summed at
each sample's nearest grid point instead (``"sum"``), which keeps their totals.

Averaging streams, block by block over the grid: within a block of a few
thousand grid points every instance is interpolated (the search for each grid
point's bracketing samples is shared by all of an instance's metrics) and folded
into running statistics (count, shifted sum and sum of squares, min, max); the
block's mean, spread and interval are then written out while still in cache.
Memory is the output plus a fixed working set, never instances x grid.

The package, by concept: :mod:`~labkit.timeline.inputs` (input checks),
:mod:`~labkit.timeline.grid` (gridding), :mod:`~labkit.timeline.moments`
(streaming statistics: init/update/merge/finalize), :mod:`~labkit.timeline.averaging`
(the driver), :mod:`~labkit.timeline.summaries` and :mod:`~labkit.timeline.outliers`.
Student t quantiles and sample sizes live in :mod:`labkit.stats`.
"""

from __future__ import annotations

from labkit.stats import instances_needed, t_quantile
from labkit.timeline.averaging import average_timelines
from labkit.timeline.inputs import Method
from labkit.timeline.outliers import Outlier, detect_outliers
from labkit.timeline.summaries import (
    average_summaries,
    default_figure,
    figure_arrays,
    summarize_timeline,
)

__all__ = (
    "Method",
    "Outlier",
    "average_summaries",
    "average_timelines",
    "default_figure",
    "detect_outliers",
    "instances_needed",
    "summarize_timeline",
    "figure_arrays",
    "t_quantile",
)
