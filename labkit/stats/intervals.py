"""An estimate with its confidence interval: the mean, the median, the IQM, and the
``mean ± ci95 (min … max)`` text of a figure.

Each interval is computed by a method whose coverage holds at small N; the tests
check it by simulation, and the figures are in each function's docstring.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from labkit.stats.samples import confidence_level, finite_values, mean_std
from labkit.stats.tdist import t_half_width, t_quantile

__all__ = ("Interval", "format_spread", "iqm", "mean", "median")


@dataclass(frozen=True, slots=True)
class Interval:
    """An estimate and its confidence interval.

    Attributes:
        estimate: The statistic itself (mean, median, IQM).
        low: The interval's lower end.
        high: The interval's upper end.
        confidence: The interval's coverage level. For the median this is the
            level the order statistics attain (at least the one asked for,
            except at N < 6 where the range of the data is all there is).
        n: How many finite values it is computed from.
        method: How the interval was computed, in a few words.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    n: int
    method: str

    @property
    def half_width(self) -> float:
        """Half the interval's width (the ``± x`` of ``mean ± x``)."""
        return (self.high - self.low) / 2.0

    def __repr__(self) -> str:
        level = f"{100 * self.confidence:.3g} %"
        return (
            f"Interval({self.estimate:.6g}, {level} CI {self.low:.6g} to {self.high:.6g}, "
            f"n={self.n}, {self.method})"
        )


def mean(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """The mean with its Student t interval ``mean ± t(n-1) * s / sqrt(n)``.

    Exact for normal data at any N >= 2 (measured by simulation, 4,000 samples
    each, 95 % asked: 94.9 to 95.2 % at N = 3, 5, 10, 30). Skewed data make it
    under-cover at small N: lognormal (sigma 1) 84 % at N = 3, 82 % at N = 5,
    84 % at N = 10, 89 % at N = 30; :func:`median` or :func:`iqm` hold better.

    Args:
        values: The instances' figures; NaN and inf are left out.
        confidence: The interval's level, 0 < confidence < 1.

    Returns:
        An :class:`Interval`; with one value its ends are NaN.

    Raises:
        ConfigError: With no finite value, or a bad ``confidence``.
    """
    level = confidence_level(confidence)
    data = finite_values(values, "values", at_least=1)
    average, spread = mean_std(data)
    center = float(average)
    if data.size < 2:
        return Interval(center, math.nan, math.nan, level, 1, "Student t")
    half = t_half_width(float(spread), int(data.size), level)
    return Interval(center, center - half, center + half, level, int(data.size), "Student t")


@functools.lru_cache(maxsize=1024)
def _median_ranks(n: int, confidence: float) -> tuple[int, int, float]:
    """The order statistics (0-based) bounding the median's interval, and its level.

    The number of values below the median is Binomial(n, 1/2): the interval
    between the k-th smallest and k-th largest covers it with probability
    ``1 - 2 P(B < k)``; the largest k reaching ``confidence`` is chosen.
    """
    # [x_(k), x_(n-1-k)] (0-based) misses the median when B <= k values lie below
    # it, or above: coverage 1 - 2 P(B <= k). k = 0 (the range) is the widest.
    best, attained = 0, 1.0 - 2.0 * 0.5**n
    cumulative = 0.0
    for k in range((n - 1) // 2):
        cumulative += math.comb(n, k) * 0.5**n
        coverage = 1.0 - 2.0 * (cumulative + math.comb(n, k + 1) * 0.5**n)
        if coverage < confidence:
            break
        best, attained = k + 1, coverage
    return best, n - 1 - best, attained


def median(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """The median with a distribution-free order-statistic (binomial) interval.

    The interval runs from the k-th smallest to the k-th largest value, with k
    the largest whose binomial coverage ``1 - 2 P(Binomial(n, 1/2) < k)``
    reaches ``confidence``. Its coverage holds for any continuous distribution
    and any N (no bootstrap, which under-covers at small N); it is conservative
    (the attained level, in ``confidence`` of the result, is 97.9 % at N = 10 for
    95 % asked). Below N = 6 no pair of order statistics reaches 95 %: the
    interval is then the data's range, whose level ``1 - 2^(1-n)`` (75 % at
    N = 3, 93.75 % at N = 5) is what the result reports.

    Args:
        values: The instances' figures; NaN and inf are left out.
        confidence: The level asked for, 0 < confidence < 1.

    Returns:
        An :class:`Interval` whose ``confidence`` is the level attained.

    Raises:
        ConfigError: With no finite value, or a bad ``confidence``.
    """
    level = confidence_level(confidence)
    data = np.sort(finite_values(values, "values", at_least=1))
    n = int(data.size)
    center = float(np.median(data))
    low_rank, high_rank, attained = _median_ranks(n, level)
    return Interval(
        center,
        float(data[low_rank]),
        float(data[high_rank]),
        attained,
        n,
        "order statistics (binomial)",
    )


def iqm(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """The interquartile mean (25 % trimmed mean) with Yuen's trimmed-t interval.

    The estimate is the mean of the values left after removing ``floor(n/4)``
    from each end (rliable's IQM, ``scipy.stats.trim_mean(x, 0.25)``). Its
    interval is Tukey and McLaughlin's / Yuen's: the winsorised variance gives
    the standard error ``sqrt((n-1) s_w^2 / (h (h-1)))`` with h the values kept,
    and Student t with h-1 degrees of freedom the width. With no value trimmed
    (N < 4) it is the mean's t interval. Coverage of the population IQM measured
    by simulation (95 % asked, 4,000 samples each): normal data 94.9, 94.0, 93.9
    and 94.7 % at N = 3, 5, 10, 30; lognormal (sigma 1) 93.1, 92.1, 92.9 and
    94.0 %. The percentile bootstrap, by contrast, covers 76 % at N = 3.

    Args:
        values: The instances' figures; NaN and inf are left out.
        confidence: The interval's level, 0 < confidence < 1.

    Returns:
        An :class:`Interval`; with one value its ends are NaN.

    Raises:
        ConfigError: With no finite value, or a bad ``confidence``.
    """
    level = confidence_level(confidence)
    data = np.sort(finite_values(values, "values", at_least=1))
    n = int(data.size)
    cut = n // 4
    kept = data[cut : n - cut]
    center = float(mean_std(kept)[0])
    h = int(kept.size)
    method = "Yuen trimmed t"
    if h < 2:
        return Interval(center, math.nan, math.nan, level, n, method)
    winsorised = np.clip(data, kept[0], kept[-1])
    spread = float(mean_std(winsorised)[1])
    half = t_quantile(0.5 + level / 2, h - 1) * spread * math.sqrt((n - 1) / (h * (h - 1)))
    return Interval(center, center - half, center + half, level, n, method)


def format_spread(mean: float, ci95: float, low: float, high: float) -> str:
    """``mean ± ci95 (min … max)``, the way hyperfine prints a timing.

    Digits follow the interval: the half-width keeps two significant digits and
    the other numbers as many decimals (``48.7 ± 2.1 (45.2 … 52.8)``). Without
    an interval (one instance: ``ci95`` NaN) the mean alone, to 4 digits, and
    without spread ``3 ± 0 (3 … 3)``; a missing mean is ``-``.

    Args:
        mean: The figure's mean over the instances.
        ci95: Half-width of its 95 % interval (NaN when undefined).
        low: The smallest instance's value.
        high: The largest instance's value.
    """
    if not math.isfinite(mean):
        return "-"
    if not (math.isfinite(ci95) and ci95 > 0):
        text = f"{mean:.4g}"
        if math.isfinite(ci95):  # no spread at all
            return f"{text} ± 0 ({low:.4g} … {high:.4g})"
        return text
    decimals = min(max(1 - math.floor(math.log10(ci95)), 0), 12)

    def fixed(value: float) -> str:
        return f"{value:.{decimals}f}"

    return f"{fixed(mean)} ± {fixed(ci95)} ({fixed(low)} … {fixed(high)})"
