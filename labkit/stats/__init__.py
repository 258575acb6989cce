"""Statistics for deciding from a few instances: intervals, comparisons, sample sizes.

Pure functions of numbers, no state. What each answers:

- :func:`t_quantile`, :func:`t_half_width`: Student's t quantile, any degrees of
  freedom >= 1, and the half-width of a mean's t interval (:mod:`.tdist`).
- :func:`mean`, :func:`median`, :func:`iqm`: an estimate with its confidence
  interval (:class:`Interval`), each by a method whose coverage holds at small N
  (:mod:`.intervals`).
- :func:`compare`: is B better than A? The t interval of the difference (paired
  by seed when both sides' instances share seeds, else Welch's), its p-value,
  the probability of improvement, and how many instances would tell
  (:mod:`.comparison`).
- :func:`power`, :func:`instances_per_side`, :func:`instances_needed`: sample
  sizes, for a comparison and for a precise mean (:mod:`.sizes`).

No scipy: ``import labkit`` stays light (see :mod:`.tdist`). The tests check
every function against scipy where it is installed.
"""

from __future__ import annotations

from labkit.stats.comparison import Comparison, Direction, compare, probability_of_improvement
from labkit.stats.intervals import Interval, format_spread, iqm, mean, median
from labkit.stats.samples import mean_std
from labkit.stats.sizes import instances_needed, instances_per_side, power
from labkit.stats.tdist import t_half_width, t_quantile

__all__ = (
    "Comparison",
    "Direction",
    "Interval",
    "compare",
    "format_spread",
    "instances_needed",
    "instances_per_side",
    "iqm",
    "mean",
    "mean_std",
    "median",
    "power",
    "probability_of_improvement",
    "t_half_width",
    "t_quantile",
)
