"""Statistics for deciding from a few instances: intervals, comparisons, sample sizes.

Pure functions of numbers, no state. What each answers:

- :func:`t_quantile`: Student's t quantile, any degrees of freedom >= 1.
- :func:`mean`, :func:`median`, :func:`iqm`: an estimate with its confidence
  interval (:class:`Interval`), each by a method whose coverage holds at small N
  (the tests check it by simulation; the figures are in each docstring).
- :func:`compare`: is B better than A? The t interval of the difference (paired
  by seed when both sides' instances share seeds, else Welch's), its p-value,
  the probability of improvement, and how many instances would tell.
- :func:`power`, :func:`instances_per_side`, :func:`instances_needed`: sample
  sizes, for a comparison and for a precise mean.

No scipy: ``import labkit`` stays light (``scipy.stats`` alone takes about half a
second to import), and the only special functions needed here, Student's t
distribution and its quantile for fractional degrees of freedom (Welch), come
from the regularised incomplete beta function, about forty lines below. The
tests check every function against scipy where it is installed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from labkit._checks import Shown, is_real
from labkit.errors import ConfigError

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
    "t_quantile",
)

Direction = Literal["min", "max"]
"""Which way is better: ``"min"`` (a loss, a latency) or ``"max"`` (an accuracy)."""

FloatArray: TypeAlias = npt.NDArray[np.float64]

_NORMAL = NormalDist()
_TINY = 1e-300
_POWER = 0.8


# --------------------------------------------------------------------------------------
# Student's t: integer degrees of freedom (exact finite series)
# --------------------------------------------------------------------------------------

_CORNISH_FISHER_DF = 1_000


def _t_central_probability(x: float, df: int) -> float:
    """P(|T| <= x) for Student's t with integer ``df`` (Abramowitz-Stegun 26.7.3/4).

    Finite series in cos^2 of theta = atan(x / sqrt(df)); every term is positive,
    so the sum is accurate to a few ulp.
    """
    theta = math.atan(x / math.sqrt(df))
    sin, cos = math.sin(theta), math.cos(theta)
    c2 = cos * cos
    if df % 2 == 1:
        if df == 1:
            return 2.0 * theta / math.pi
        k = np.arange(1, (df - 1) // 2, dtype=np.float64)
        terms = np.cumprod((2.0 * k) / (2.0 * k + 1.0) * c2)
        series = 1.0 + math.fsum(terms.tolist())
        return 2.0 / math.pi * (theta + sin * cos * series)
    k = np.arange(1, df // 2, dtype=np.float64)
    terms = np.cumprod((2.0 * k - 1.0) / (2.0 * k) * c2)
    return sin * (1.0 + math.fsum(terms.tolist()))


def _t_tail_probability(x: float, df: int) -> float:
    """P(|T| > x) for Student's t with integer ``df``, accurate in the far tail.

    The complements of the series of :func:`_t_central_probability`: with
    c = cos(theta) their infinite continuations sum to exactly 1, so the tail is
    the continuation alone, summed here term by term (all positive) instead of
    as ``1 - P(|T| <= x)``, which would cancel away a tiny tail's digits.
    """
    theta = math.atan(x / math.sqrt(df))
    sin, cos = math.sin(theta), math.cos(theta)
    c2 = cos * cos
    if c2 == 0.0:
        return 0.0
    if c2 > 0.5:
        # Where the continuation converges slowly the tail is seldom tiny: take the
        # complement when it keeps at least 12 significant digits.
        complement = 1.0 - _t_central_probability(x, df)
        if complement > 1e-4 or c2 > 0.9999:
            return complement
    odd = df % 2 == 1
    if odd:
        first = (df - 1) // 2
        log_coefficient = (
            math.lgamma(first + 1) + math.lgamma(0.5) - math.log(2.0) - math.lgamma(first + 1.5)
        )
        factor = 2.0 / math.pi * sin * cos
    else:
        first = df // 2
        log_coefficient = math.lgamma(first + 0.5) - math.lgamma(0.5) - math.lgamma(first + 1)
        factor = sin
    last = math.exp(log_coefficient + first * math.log(c2))
    total = last
    k = first + 1
    block = min(max(256, int(45.0 / (1.0 - c2))), 1 << 16)  # mostly a single block
    while last > 1e-18 * total:
        ks = np.arange(k, k + block, dtype=np.float64)
        ratios = ((2.0 * ks) / (2.0 * ks + 1.0) if odd else (2.0 * ks - 1.0) / (2.0 * ks)) * c2
        terms = last * np.cumprod(ratios)
        total += float(terms.sum())
        last = float(terms[-1])
        k += block
    return factor * total


def _t_density(x: float, df: float) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))


def _cornish_fisher(z: float, df: float) -> float:
    """Abramowitz-Stegun 26.7.5: t quantile from the normal one, in powers of 1/df."""
    z2 = z * z
    g1 = (z2 + 1) * z / 4
    g2 = ((5 * z2 + 16) * z2 + 3) * z / 96
    g3 = (((3 * z2 + 19) * z2 + 17) * z2 - 15) * z / 384
    g4 = ((((79 * z2 + 776) * z2 + 1482) * z2 - 1920) * z2 - 945) * z / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


@functools.lru_cache(maxsize=4096)
def _t_quantile_int(p: float, dof: int) -> float:
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -_t_quantile_int(1.0 - p, dof)
    if dof == 1:
        return 1.0 / math.tan(math.pi * (1.0 - p))  # cot, exact in the far tail too
    if dof == 2:
        return (2.0 * p - 1.0) / math.sqrt(2.0 * p * (1.0 - p))
    z = _NORMAL.inv_cdf(p)
    guess = _cornish_fisher(z, dof)
    if dof > _CORNISH_FISHER_DF:
        return guess
    if p <= 0.9:
        # Central part: solve P(|T| <= x) = 2p - 1.
        def excess_and_slope(x: float) -> tuple[float, float]:
            error = _t_central_probability(x, dof) - (2.0 * p - 1.0)
            return error, 2.0 * _t_density(x, dof)
    else:
        # Tail: solve log P(|T| > x) = log(2(1 - p)); 1 - p is exact for p >= 0.5,
        # and the logarithm keeps Newton's steps nearly linear in the power-law tail.
        log_alpha = math.log(2.0 * (1.0 - p))

        def excess_and_slope(x: float) -> tuple[float, float]:
            tail = _t_tail_probability(x, dof)
            if tail <= 0.0:
                return math.inf, math.inf
            return log_alpha - math.log(tail), 2.0 * _t_density(x, dof) / tail

    # Bracket the root, then Newton steps that fall back to bisection outside it.
    low, high = 0.0, max(guess, 1.0)
    while excess_and_slope(high)[0] < 0:
        low, high = high, high * 2.0
    x = min(max(guess, low), high)
    for _ in range(200):
        error, slope = excess_and_slope(x)
        if error == 0.0:
            return x
        if error < 0:
            low = x
        else:
            high = x
        following = x - error / slope if math.isfinite(error) else math.nan
        if not low < following < high:
            following = 0.5 * (low + high)
        if abs(following - x) <= 4e-16 * x:
            return following
        x = following
    return x


# --------------------------------------------------------------------------------------
# Student's t: any degrees of freedom (regularised incomplete beta)
# --------------------------------------------------------------------------------------


def _betainc(a: float, b: float, x: float, y: float) -> float:
    """The regularised incomplete beta I_x(a, b), with ``y = 1 - x`` given exactly.

    Lentz's continued fraction (Numerical Recipes, 6.4), evaluated on the side of
    the symmetry ``I_x(a, b) = 1 - I_y(b, a)`` where it converges fast.
    """
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, y, x)
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    )
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for term in (
            m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0)),
        ):
            d = 1.0 + term * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + term / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return math.exp(log_front) * h / a


def _t_two_sided(x: float, df: float) -> float:
    """P(|T| > |x|) for Student's t with ``df`` > 0 degrees of freedom."""
    x2 = x * x
    if math.isinf(x2):
        return 0.0
    return _betainc(df / 2.0, 0.5, df / (df + x2), x2 / (df + x2))


def _t_quantile_float(p: float, df: float) -> float:
    """The quantile for fractional ``df``: Newton between the integer neighbours' quantiles."""
    if p < 0.5:
        return -_t_quantile_float(1.0 - p, df)
    if p == 0.5:
        return 0.0
    below, above = math.floor(df), math.ceil(df)
    # The quantile falls as df grows: the integer neighbours bracket it.
    high, low = _t_quantile_int(p, max(below, 1)), _t_quantile_int(p, above)
    alpha = 2.0 * (1.0 - p)
    log_alpha = math.log(alpha)
    x = low + (high - low) * (above - df) if above > below else low
    for _ in range(60):
        tail = _t_two_sided(x, df)
        if tail <= 0.0:
            high = x
            x = 0.5 * (low + high)
            continue
        error = math.log(tail) - log_alpha  # > 0: x is too small
        if error == 0.0:
            return x
        if error > 0:
            low = x
        else:
            high = x
        following = x + error * tail / (2.0 * _t_density(x, df))
        if not low < following < high:
            following = 0.5 * (low + high)
        if abs(following - x) <= 4e-16 * x:
            return following
        x = following
    return x


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom.

    Integer ``df``: exact closed forms for 1 and 2; up to 1,000 a safeguarded
    Newton iteration on the exact finite series of the distribution function
    (Abramowitz-Stegun 26.7.3/4; in the far tail on the series of its
    complement, so that tiny tails keep their digits); above, the Cornish-Fisher
    expansion 26.7.5 (relative error below 1e-11 there). Fractional ``df``
    (Welch's test): Newton's method on the regularised incomplete beta function,
    inside the bracket the two integer neighbours' quantiles give. Agrees with
    scipy to about 1e-10 for 1e-9 <= p <= 1 - 1e-9. Integer results are cached.

    Args:
        p: A probability, 0 < p < 1 (0.975 for a two-sided 95 % interval).
        df: Degrees of freedom, a number >= 1.

    Raises:
        ConfigError: If ``p`` or ``df`` is out of range.

    Example:
        >>> round(t_quantile(0.975, 2), 6)
        4.302653
    """
    if not (is_real(p) and 0.0 < p < 1.0):
        raise ConfigError("p", p, "a probability strictly between 0 and 1")
    if not is_real(df, finite=False):
        raise ConfigError("df", df, "a number >= 1 (degrees of freedom)")
    if not (df >= 1 and math.isfinite(df)):
        raise ConfigError("df", df, "a finite number >= 1 (degrees of freedom)")
    if float(df).is_integer():
        return _t_quantile_int(float(p), int(df))
    return _t_quantile_float(float(p), float(df))


def _t_cdf(x: float, df: float) -> float:
    """P(T <= x)."""
    half = 0.5 * _t_two_sided(x, df)
    return 1.0 - half if x > 0 else half


# --------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------


def _values(values: Any, option: str, *, at_least: int) -> FloatArray:
    """Finite float64 values from a sequence or array; NaN and inf are left out."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable | np.ndarray):
        raise ConfigError(option, Shown(type(values).__name__), "a sequence of numbers")
    array = np.asarray(values if isinstance(values, np.ndarray) else list(values))
    if array.dtype.kind not in "iuf" or array.ndim != 1:
        raise ConfigError(
            option,
            Shown(f"an array of dtype {array.dtype}, {array.ndim}-d"),
            "numbers (not bools), 1-d",
        )
    data = array.astype(np.float64, copy=False)
    finite = data[np.isfinite(data)]
    if finite.size < at_least:
        raise ConfigError(
            option, Shown(f"{finite.size} finite value(s)"), f"at least {at_least} finite values"
        )
    return finite


def mean_std(values: npt.ArrayLike, *, axis: int = 0) -> tuple[FloatArray, FloatArray]:
    """Mean and sample standard deviation (ddof=1) along ``axis``, at any magnitude.

    NaN values are left out (NaN means "not sampled"); the mean is NaN where no
    value is left, the deviation where fewer than 2 are. Each column is scaled
    by the power of two that brings its largest magnitude just under 1 before
    squaring (without rounding: powers of two), so that values from 1e-300 to
    1e300 give finite, correctly rounded results wherever the true ones are
    finite (a plain sum of squares overflows past 1e154 and underflows below
    1e-154), and identical values give exactly zero spread.

    Args:
        values: Finite numbers or NaN.
        axis: The axis the statistics are taken along.

    Returns:
        ``(mean, std)``, arrays of the shape of ``values`` without ``axis``
        (0-d for 1-d input).
    """
    data = np.asarray(values, dtype=np.float64)
    valid = ~np.isnan(data)
    count = valid.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        largest = np.max(np.where(valid, np.abs(data), 0.0), axis=axis, initial=0.0)
        # |x| < 2**e; clipped so that 2**-e stays a finite float.
        exponent = np.clip(np.frexp(largest)[1], -1021, 1024)
        scaled = data * np.expand_dims(np.ldexp(1.0, -exponent), axis)
        center = np.where(valid, scaled, 0.0).sum(axis=axis) / count
        deviation = np.where(valid, scaled - np.expand_dims(center, axis), 0.0)
        spread = np.sqrt((deviation * deviation).sum(axis=axis) / (count - 1))
        mean = np.ldexp(center, exponent)
        std = np.where(count >= 2, np.ldexp(spread, exponent), np.nan)
    return mean, std


def _confidence(confidence: Any) -> float:
    if not (is_real(confidence) and 0.0 < confidence < 1.0):
        raise ConfigError("confidence", confidence, "a level strictly between 0 and 1 (0.95)")
    return float(confidence)


# --------------------------------------------------------------------------------------
# Estimates with their intervals
# --------------------------------------------------------------------------------------


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
    level = _confidence(confidence)
    data = _values(values, "values", at_least=1)
    average, spread = mean_std(data)
    center = float(average)
    if data.size < 2:
        return Interval(center, math.nan, math.nan, level, 1, "Student t")
    half = t_quantile(0.5 + level / 2, data.size - 1) * float(spread)
    half /= math.sqrt(data.size)
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
    level = _confidence(confidence)
    data = np.sort(_values(values, "values", at_least=1))
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
    level = _confidence(confidence)
    data = np.sort(_values(values, "values", at_least=1))
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


# --------------------------------------------------------------------------------------
# Comparing two configurations
# --------------------------------------------------------------------------------------


def probability_of_improvement(
    a: Iterable[float], b: Iterable[float], *, direction: Direction = "min"
) -> float:
    """P(an instance of B is better than one of A), ties counting one half.

    rliable's probability of improvement (the Mann-Whitney U statistic over
    ``n_a * n_b``): 0.5 means neither tends to be better. Computed by sorting,
    O(n log n).

    Args:
        a: A's figures; NaN and inf are left out.
        b: B's figures; NaN and inf are left out.
        direction: ``"min"`` when lower is better, ``"max"`` when higher is.

    Raises:
        ConfigError: If a side has no finite value or ``direction`` is bad.
    """
    _direction(direction)
    return _improvement(
        _values(a, "a", at_least=1), _values(b, "b", at_least=1), direction == "min"
    )


def _improvement(a: FloatArray, b: FloatArray, lower_is_better: bool) -> float:
    ordered = np.sort(a)
    below = np.searchsorted(ordered, b, side="left")  # a's values < each b
    not_above = np.searchsorted(ordered, b, side="right")  # a's values <= each b
    ties = float((not_above - below).sum())
    b_higher = float(below.sum())
    b_lower = a.size * b.size - b_higher - ties
    wins = b_lower if lower_is_better else b_higher
    return (wins + 0.5 * ties) / (a.size * b.size)


def _direction(direction: Any) -> None:
    if direction not in ("min", "max"):
        raise ConfigError("direction", direction, "'min' (lower is better) or 'max'")


def power(
    difference: float,
    std_a: float,
    std_b: float,
    n_a: int,
    n_b: int | None = None,
    *,
    confidence: float = 0.95,
) -> float:
    """The chance that Welch's test at ``confidence`` detects a true ``difference``.

    The usual approximation of the noncentral t by a shifted central t with the
    Welch-Satterthwaite degrees of freedom: ``P(T > t_c - d/se) + P(T < -t_c -
    d/se)``. The tests check it by simulation (within 2 points of the rate
    measured at 80 %).

    Args:
        difference: The true difference of the means, in the metric's units.
        std_a: A's standard deviation (per instance).
        std_b: B's standard deviation.
        n_a: Instances of A, >= 2.
        n_b: Instances of B, >= 2 (default: ``n_a``).
        confidence: The test's level, 0 < confidence < 1.

    Returns:
        A probability; 1.0 when there is no spread and ``difference`` is not 0.

    Raises:
        ConfigError: For fewer than 2 instances a side, a negative or
            non-finite spread, or a bad ``confidence``.
    """
    level = _confidence(confidence)
    n_b = n_a if n_b is None else n_b
    for option, n in (("n_a", n_a), ("n_b", n_b)):
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
            raise ConfigError(option, n, "an integer >= 2 (instances)")
    for option, std in (("std_a", std_a), ("std_b", std_b)):
        if not (is_real(std) and std >= 0):
            raise ConfigError(option, std, "a finite standard deviation >= 0")
    if not is_real(difference):
        raise ConfigError("difference", difference, "a finite number")
    return _power(abs(difference), std_a, std_b, int(n_a), int(n_b), level)


def _welch_df(std_a: float, std_b: float, n_a: int, n_b: int) -> tuple[float, float]:
    """(standard error of the difference of means, Welch-Satterthwaite df)."""
    scale = max(std_a, std_b)
    if scale == 0.0:
        return 0.0, math.inf
    # In units of the larger spread: the fourth powers below stay finite at any magnitude.
    ratio_a, ratio_b = std_a / scale, std_b / scale
    va, vb = ratio_a * ratio_a / n_a, ratio_b * ratio_b / n_b
    se2 = va + vb
    df = se2 * se2 / (va * va / (n_a - 1) + vb * vb / (n_b - 1))
    return scale * math.sqrt(se2), max(df, 1.0)


def _power(
    difference: float, std_a: float, std_b: float, n_a: int, n_b: int, level: float
) -> float:
    se, df = _welch_df(std_a, std_b, n_a, n_b)
    if se == 0.0:
        return 1.0 if difference > 0 else 1.0 - level
    critical = t_quantile(0.5 + level / 2, df)
    shift = difference / se
    return (1.0 - _t_cdf(critical - shift, df)) + _t_cdf(-critical - shift, df)


def instances_per_side(
    difference: float,
    std_a: float,
    std_b: float | None = None,
    *,
    confidence: float = 0.95,
    power: float = _POWER,
) -> int:
    """Instances per side for Welch's test to detect ``difference`` with ``power``.

    The smallest n (the same for both sides) whose :func:`power` reaches the
    target, as in Colas, Sigaud and Oudeyer (2018), "How many random seeds?".

    Args:
        difference: The difference worth detecting, in the metric's units (> 0).
        std_a: A's standard deviation per instance.
        std_b: B's (default: ``std_a``).
        confidence: The test's level, 0 < confidence < 1.
        power: The chance of detecting it, 0 < power < 1 (0.8).

    Returns:
        n >= 2 per side.

    Raises:
        ConfigError: If ``difference`` is not > 0, a spread is negative, or a
            level is out of range.
    """
    level = _confidence(confidence)
    if not (is_real(power) and 0.0 < power < 1.0):
        raise ConfigError("power", power, "a probability strictly between 0 and 1 (0.8)")
    if not (is_real(difference) and difference > 0):
        raise ConfigError("difference", difference, "a finite difference > 0 to detect")
    std_b = std_a if std_b is None else std_b
    for option, std in (("std_a", std_a), ("std_b", std_b)):
        if not (is_real(std) and std >= 0):
            raise ConfigError(option, std, "a finite standard deviation >= 0")
    return _instances_per_side(difference, std_a, std_b, level, power)


def _instances_per_side(
    difference: float, std_a: float, std_b: float, level: float, target: float
) -> int:
    scale = max(std_a, std_b)
    if scale == 0.0:
        return 2
    # The normal approximation is a lower bound: step up from it, doubling, then bisect.
    z = _NORMAL.inv_cdf(0.5 + level / 2) + _NORMAL.inv_cdf(target)
    ratio_a, ratio_b = std_a / scale, std_b / scale  # squares in range at any magnitude
    low = max(2, math.floor(z * z * (ratio_a**2 + ratio_b**2) / (difference / scale) ** 2))
    if _power(difference, std_a, std_b, low, low, level) >= target:
        return low
    high = low + 1
    while _power(difference, std_a, std_b, high, high, level) < target:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if _power(difference, std_a, std_b, middle, middle, level) >= target:
            high = middle
        else:
            low = middle
    return high


@dataclass(frozen=True, slots=True)
class Comparison:
    """What two sets of instances say about which configuration is better.

    The difference is ``b - a`` in the metric's units; its interval is the
    paired t interval over the pairs when ``paired`` (``scipy.stats.ttest_rel``'s),
    else Welch's (no equal-variance assumption). ``repr`` reads as a sentence
    that names the method, e.g. ``b is 3.2 % lower than a (95 % CI 1.1 % to 5.3 %,
    p = 0.004, 8 vs 8 instances, Welch)`` or ``(..., 8 pairs by seed, paired t)``.

    Attributes:
        metric: The figure compared (``None`` for plain numbers).
        direction: ``"min"`` (lower is better) or ``"max"``.
        confidence: The level of the interval and the decision.
        min_effect: The smallest difference that matters (metric's units).
        mean_a: A's mean.
        mean_b: B's mean.
        std_a: A's sample standard deviation (ddof=1).
        std_b: B's.
        n_a: A's instances (finite values; when paired, the pairs).
        n_b: B's.
        difference: ``mean_b - mean_a``.
        low: The difference's interval, lower end.
        high: Its upper end.
        df: Welch-Satterthwaite degrees of freedom (inf without spread); when
            paired, pairs minus one.
        relative: ``difference / |mean_a|`` (NaN when ``mean_a`` is 0).
        relative_low: ``low / |mean_a|``.
        relative_high: ``high / |mean_a|``.
        p_value: Two-sided p-value of Welch's t-test for equal means.
        probability_of_improvement: P(an instance of B beats one of A), ties 1/2.
        better: ``"b"`` when the whole interval shows B better by more than
            ``min_effect``, ``"a"`` likewise for A, ``None`` when these
            instances cannot tell (its false-positive rate is
            ``1 - confidence`` when A and B are the same).
        pairing: ``"seed"`` (results' instances matched by ``ctx.seed``),
            ``"position"`` (two sequences, element by element) or ``None``
            (Welch).
        std_difference: When paired, the standard deviation (ddof=1) of the
            pairs' differences; NaN otherwise.
        paired: Whether the instances were compared pair by pair (a property).
        instances_needed: Instances per side (pairs, when paired) for a new
            comparison to detect a difference of ``min_effect`` (or, when it
            is 0, of the observed size) with power 0.8 at ``confidence``, from
            the spread the comparison used; ``None`` when there is no
            difference to detect (a property, computed when read).
        equivalent: Whether the interval lies within ``±min_effect`` (a property).
    """

    metric: str | None
    direction: Direction
    confidence: float
    min_effect: float
    mean_a: float
    mean_b: float
    std_a: float
    std_b: float
    n_a: int
    n_b: int
    difference: float
    low: float
    high: float
    df: float
    relative: float
    relative_low: float
    relative_high: float
    p_value: float
    probability_of_improvement: float
    better: Literal["a", "b"] | None
    pairing: Literal["seed", "position"] | None = None
    std_difference: float = math.nan

    @property
    def paired(self) -> bool:
        """Whether the instances were compared pair by pair (the paired t interval)."""
        return self.pairing is not None

    @property
    def equivalent(self) -> bool:
        """Whether the whole interval lies within ``±min_effect``: A and B differ by
        less than what matters, at ``confidence`` (always False when it is 0)."""
        return self.min_effect > 0 and -self.min_effect < self.low and self.high < self.min_effect

    @property
    def instances_needed(self) -> int | None:
        """Instances per side to detect ``min_effect`` (or, when it is 0, the
        observed difference) with power 0.8 at ``confidence``, from these spreads.

        When paired, pairs for the paired t test, from the spread of the
        differences (a one-sample t power: Welch's with no spread on one side).
        ``None`` when there is no difference to detect. Computed when asked.
        """
        target = self.min_effect if self.min_effect > 0 else abs(self.difference)
        if not target > 0:
            return None
        if self.paired:
            return _instances_per_side(target, self.std_difference, 0.0, self.confidence, _POWER)
        return _instances_per_side(target, self.std_a, self.std_b, self.confidence, _POWER)

    def __repr__(self) -> str:
        if self.pairing == "seed":
            counts = f"{self.n_a} pairs by seed, paired t"
        elif self.pairing == "position":
            counts = f"{self.n_a} pairs, paired t"
        else:
            counts = f"{self.n_a} vs {self.n_b} instances, Welch"
        level = f"{100 * self.confidence:.3g} %"
        what = "" if self.metric is None else f"{self.metric}: "
        if self.difference == 0.0:
            return f"{what}b equals a ({self.mean_a:.4g}; p = 1, {counts})"
        word = "lower" if self.difference < 0 else "higher"
        sign = -1.0 if self.difference < 0 else 1.0
        if math.isfinite(self.relative):
            size = _percent(abs(self.relative))
            ends = sorted((sign * self.relative_low, sign * self.relative_high))
            interval = f"{_percent(ends[0])} to {_percent(ends[1])}"
        else:
            size = f"{abs(self.difference):.3g}"
            ends = sorted((sign * self.low, sign * self.high))
            interval = f"{ends[0]:.3g} to {ends[1]:.3g}"
        text = (
            f"{what}b is {size} {word} than a ({level} CI {interval}, "
            f"p = {_p_text(self.p_value)}, {counts})"
        )
        if self.equivalent:
            text += f": equivalent within ±{self.min_effect:.3g}"
        elif self.better is None:
            text += ": these instances cannot tell them apart"
            if self.instances_needed is not None:
                text += f" (about {self.instances_needed} per side would)"
        return text


def _percent(fraction: float) -> str:
    """3.2 %, 0.14 %, 16.0 %: one decimal, two significant digits below 1 %."""
    value = 100 * fraction
    return f"{value:.2g} %" if abs(value) < 1 else f"{value:.1f} %"


def _p_text(p: float) -> str:
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


def _figures(side: Any, option: str, metric: str | None) -> tuple[FloatArray, list[Any] | None]:
    """The numbers to compare and, for a result, each one's seed (``None`` for a sequence).

    A sequence is taken as is (NaN and inf left out). A result gives its
    succeeded instances' figure ``metric`` with their seeds; a non-finite figure
    is left out with its seed.
    """
    if not _is_result(side):
        return _values(side, option, at_least=2), None
    if metric is None:
        raise ConfigError("metric", None, "the summary figure to compare (e.g. 'loss_last')")
    found = [
        (instance.summary[metric], getattr(instance, "seed", None))
        for instance in side.instances
        if instance.ok and metric in instance.summary
    ]
    if not found:
        names = sorted(
            {key for instance in side.instances if instance.ok for key in instance.summary}
        )
        raise ConfigError("metric", metric, f"a summary figure of {option}'s instances: {names}")
    values = _values([value for value, _ in found], f"{option}[{metric!r}]", at_least=2)
    seeds = [
        seed
        for value, seed in found
        if is_real(value, finite=False) and math.isfinite(float(value))
    ]
    return values, seeds


def _pairs(
    a: Any, b: Any, metric: str | None, paired: bool | None
) -> tuple[FloatArray, FloatArray, Literal["seed", "position"] | None]:
    """Both sides' figures, matched pair by pair when ``paired`` (or, with ``None``, when
    both are results whose instances share at least 2 seeds).

    Results pair by seed (each seed at most once a side); two sequences pair
    element by element, a pair with a NaN or inf side left out.
    """
    if paired is not None and not isinstance(paired, bool):
        raise ConfigError("paired", paired, "None (pair by seed when possible), True or False")
    if paired and not _is_result(a) and not _is_result(b):
        xa, xb = _position_pairs(a, "a"), _position_pairs(b, "b")
        if xa.size != xb.size:
            raise ConfigError(
                "paired",
                paired,
                f"two sequences of equal length to pair (a has {xa.size}, b {xb.size})",
            )
        kept = np.isfinite(xa) & np.isfinite(xb)
        if int(kept.sum()) < 2:
            raise ConfigError("paired", paired, "at least 2 pairs with both sides finite")
        return xa[kept], xb[kept], "position"
    xa, seeds_a = _figures(a, "a", metric)
    xb, seeds_b = _figures(b, "b", metric)
    if paired is False:
        return xa, xb, None
    shared = _shared_seeds(seeds_a, seeds_b)
    if len(shared) >= 2 and seeds_a is not None and seeds_b is not None:
        where_a = {seed: i for i, seed in enumerate(seeds_a)}
        where_b = {seed: i for i, seed in enumerate(seeds_b)}
        pick_a = np.array([where_a[seed] for seed in shared])
        pick_b = np.array([where_b[seed] for seed in shared])
        return xa[pick_a], xb[pick_b], "seed"
    if paired:
        raise ConfigError(
            "paired",
            paired,
            "results whose instances share at least 2 seeds (ctx.seed), or two sequences of"
            f" equal length ({len(shared)} seed(s) shared)",
        )
    return xa, xb, None


def _is_result(side: Any) -> bool:
    return getattr(side, "instances", None) is not None and not isinstance(side, np.ndarray)


def _position_pairs(side: Any, option: str) -> FloatArray:
    """A sequence's numbers in order, NaN and inf kept (their pairs are left out)."""
    if isinstance(side, str | bytes) or not isinstance(side, Iterable | np.ndarray):
        raise ConfigError(option, Shown(type(side).__name__), "a sequence of numbers")
    array = np.asarray(side if isinstance(side, np.ndarray) else list(side))
    if array.dtype.kind not in "iuf" or array.ndim != 1:
        raise ConfigError(
            option,
            Shown(f"an array of dtype {array.dtype}, {array.ndim}-d"),
            "numbers (not bools), 1-d",
        )
    return array.astype(np.float64, copy=False)


def _shared_seeds(seeds_a: list[Any] | None, seeds_b: list[Any] | None) -> list[Any]:
    """Seeds both sides have, in A's order; none unless every figure has a unique seed."""
    if seeds_a is None or seeds_b is None:
        return []
    for seeds in (seeds_a, seeds_b):
        if any(seed is None for seed in seeds) or len(set(seeds)) != len(seeds):
            return []
    others = set(seeds_b)
    return [seed for seed in seeds_a if seed in others]


def compare(
    a: Any,
    b: Any,
    *,
    metric: str | None = None,
    direction: Direction = "min",
    confidence: float = 0.95,
    min_effect: float = 0.0,
    paired: bool | None = None,
) -> Comparison:
    """Is configuration B better than A, by how much, and how sure can one be?

    When the instances pair up (``paired``), the paired t interval of the mean
    difference over the pairs decides (equal to ``scipy.stats.ttest_rel(b, a)``'s
    interval and p-value): instance *i* of two configurations run with the same
    seed share their data order, initialisation or workload, so the spread of
    their differences is often far smaller than either side's, and so is the
    interval. Otherwise Welch's t interval of ``mean_b - mean_a`` at
    ``confidence`` decides. Either way B is
    ``better`` when the whole interval lies beyond ``min_effect`` on B's good
    side, A when it lies beyond it on A's. With ``min_effect=0`` this is Welch's
    two-sided test: when A and B do not differ, ``better`` is not ``None`` with
    probability ``1 - confidence``; the tests check that rate, the power at
    ``instances_needed`` and the interval's coverage by simulation on normal and
    lognormal data at N from 3 to 30. Welch's test is a little conservative at
    small N and on skewed data: measured at 95 % (3,000 experiments each), the
    false-positive rate is 3.9, 4.0, 4.3 and 4.5 % on normal data at N = 3, 5,
    10 and 30, and 2.2, 1.9, 2.9 and 3.9 % on lognormal data. The paired
    interval's false-positive rate is ``1 - confidence`` for normal differences
    (the tests measure 5 ± 1 % at 95 %).

    Args:
        a: An ``ExperimentResult`` (its succeeded instances' summary figure
            ``metric``) or a sequence of numbers, one per instance.
        b: Likewise.
        metric: The summary figure to compare (``"loss_last"``); needed for
            results, a label for numbers.
        direction: ``"min"`` when lower is better, ``"max"`` when higher is.
        confidence: The level of the interval, 0 < confidence < 1.
        min_effect: The smallest difference that matters, in the metric's units
            (>= 0): a smaller one never makes a side ``better``.
        paired: ``None``: pair two results' instances by seed (``ctx.seed``)
            when every figure has a seed and at least 2 seeds are shared
            (unshared ones are left out), else Welch. ``True``: pair them
            (two sequences pair element by element); ``False``: Welch.

    Returns:
        A frozen :class:`Comparison` (``paired`` and ``pairing`` say which
        interval was used). NaN and inf figures are left out (with their pair).

    Raises:
        ConfigError: If a side has fewer than 2 finite figures, ``metric`` is
            missing or unknown for a result, ``paired=True`` finds fewer than
            2 pairs (or sequences of unequal length), or an option is out of
            range.

    Example:
        >>> compare([10.1, 10.3, 9.9, 10.2], [9.1, 9.0, 9.3, 9.2]).better
        'b'
    """
    _direction(direction)
    if metric is not None and not (isinstance(metric, str) and metric):
        raise ConfigError("metric", metric, "None or a summary figure's name (a non-empty str)")
    level = _confidence(confidence)
    if not (is_real(min_effect) and min_effect >= 0):
        raise ConfigError("min_effect", min_effect, "a difference >= 0 in the metric's units")
    xa, xb, pairing = _pairs(a, b, metric, paired)
    n_a, n_b = int(xa.size), int(xb.size)
    (center_a, spread_a), (center_b, spread_b) = mean_std(xa), mean_std(xb)
    mean_a, mean_b = float(center_a), float(center_b)
    std_a, std_b = float(spread_a), float(spread_b)
    std_difference = math.nan
    if pairing is None:
        difference = mean_b - mean_a
        se, df = _welch_df(std_a, std_b, n_a, n_b)
    else:
        center_d, spread_d = mean_std(xb - xa)
        difference, std_difference = float(center_d), float(spread_d)
        se = std_difference / math.sqrt(n_a)
        df = float(n_a - 1) if se > 0 else math.inf
    if se == 0.0:
        half, p_value = 0.0, (1.0 if difference == 0.0 else 0.0)
    else:
        half = t_quantile(0.5 + level / 2, df) * se
        p_value = _t_two_sided(difference / se, df)
    low, high = difference - half, difference + half
    good_low, good_high = (-high, -low) if direction == "min" else (low, high)
    better: Literal["a", "b"] | None = None
    if good_low > min_effect:
        better = "b"
    elif good_high < -min_effect:
        better = "a"
    scale = abs(mean_a)
    return Comparison(
        metric=metric,
        direction=direction,
        confidence=level,
        min_effect=float(min_effect),
        mean_a=mean_a,
        mean_b=mean_b,
        std_a=std_a,
        std_b=std_b,
        n_a=n_a,
        n_b=n_b,
        difference=difference,
        low=low,
        high=high,
        df=df,
        relative=difference / scale if scale else math.nan,
        relative_low=low / scale if scale else math.nan,
        relative_high=high / scale if scale else math.nan,
        p_value=p_value,
        probability_of_improvement=_improvement(xa, xb, direction == "min"),
        better=better,
        pairing=pairing,
        std_difference=std_difference,
    )


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Sample size for a precise mean
# --------------------------------------------------------------------------------------


def instances_needed(
    values: Iterable[float], rel_half_width: float = 0.05, confidence: float = 0.95
) -> int:
    """How many instances make the mean's confidence interval that tight, from a pilot.

    Finds the smallest n >= 2 with ``t(n-1) * s / sqrt(n) <= rel_half_width *
    |mean|``, where mean and s (ddof=1) come from the pilot ``values`` and t is
    the two-sided Student t quantile at ``confidence``. The answer counts the
    pilot's instances: run ``max(0, needed - len(values))`` more. A noisier
    pilot never needs fewer instances. To tell two configurations apart, see
    :func:`instances_per_side` (or ``compare(...).instances_needed``).

    Args:
        values: The metric measured by each pilot instance (at least 2, finite).
        rel_half_width: The wanted half-width of the interval as a fraction of
            the mean (0.05: the mean within +-5 %).
        confidence: The interval's confidence level, 0 < confidence < 1.

    Returns:
        The total number of instances (2 when the pilot has no spread).

    Raises:
        ConfigError: If ``rel_half_width`` or ``confidence`` is out of range, the
            pilot has fewer than 2 values or a non-finite one, or its mean is 0
            (a relative width is then undefined).

    Example:
        >>> instances_needed([90.0, 100.0, 110.0])  # mean 100, s 10: +-5 needs 18
        18
    """
    if not (is_real(rel_half_width) and rel_half_width > 0):
        raise ConfigError("rel_half_width", rel_half_width, "a finite fraction of the mean > 0")
    if not (is_real(confidence) and 0.0 < confidence < 1.0):
        raise ConfigError("confidence", confidence, "a level strictly between 0 and 1")
    array = np.asarray(values if isinstance(values, np.ndarray) else list(values))
    if array.dtype.kind not in "biuf":
        raise ConfigError("values", Shown(f"an array of dtype {array.dtype}"), "numbers")
    pilot = array.astype(np.float64)
    if pilot.ndim != 1 or pilot.size < 2:
        raise ConfigError("values", Shown(f"{pilot.size} value(s)"), "a pilot of >= 2 values")
    if not bool(np.isfinite(pilot).all()):
        raise ConfigError("values", Shown("a pilot with NaN or inf"), "finite values")
    average, deviation = mean_std(pilot)
    center, spread = float(average), float(deviation)
    if center == 0.0:
        raise ConfigError(
            "values", Shown("a pilot whose mean is 0"), "a nonzero mean (the width is relative)"
        )
    if spread == 0.0:
        return 2
    allowed = rel_half_width * abs(center) / spread  # the largest t(n-1)/sqrt(n) that will do
    p = 0.5 + confidence / 2

    def tight_enough(n: int) -> bool:
        return _t_quantile_int(p, n - 1) / math.sqrt(n) <= allowed

    if tight_enough(2):
        return 2
    # t(n-1)/sqrt(n) decreases in n: bracket by doubling from the normal guess, then bisect.
    z = _NORMAL.inv_cdf(p)
    low = 2
    high = max(3, math.ceil((z / allowed) ** 2))
    while not tight_enough(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if tight_enough(middle):
            high = middle
        else:
            low = middle
    return high
