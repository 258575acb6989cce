"""Student's t distribution, without scipy: its quantile, distribution function and
the half-width of a mean's t interval.

``scipy.stats`` alone takes about half a second to import, and ``import labkit``
stays light; the only special functions needed, the t distribution and its
quantile for fractional degrees of freedom (Welch), come from exact finite
series for integer degrees of freedom and from the regularised incomplete beta
function for the rest. The tests check every function against scipy where it is
installed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from statistics import NormalDist

import numpy as np

from labkit._checks import is_real
from labkit.errors import ConfigError

__all__ = ("t_cdf", "t_half_width", "t_quantile", "t_two_sided")

_TINY = 1e-300


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


def _newton_in_bracket(
    excess_and_slope: Callable[[float], tuple[float, float]],
    x: float,
    low: float,
    high: float,
    *,
    steps: int,
) -> float:
    """The root in [low, high] of an excess that grows with x, from ``x``: Newton's
    steps, and bisection where a step would leave the bracket (or the excess is not
    finite); done at a step of 4e-16 relative, or after ``steps``."""
    for _ in range(steps):
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
    z = NormalDist().inv_cdf(p)
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
    return _newton_in_bracket(excess_and_slope, x, low, high, steps=200)


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


def t_two_sided(x: float, df: float) -> float:
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
    log_alpha = math.log(2.0 * (1.0 - p))
    x = low + (high - low) * (above - df) if above > below else low

    def excess_and_slope(x: float) -> tuple[float, float]:
        tail = t_two_sided(x, df)
        if tail <= 0.0:
            return math.inf, math.inf  # past the last float's tail: x is too large
        return log_alpha - math.log(tail), 2.0 * _t_density(x, df) / tail

    return _newton_in_bracket(excess_and_slope, x, low, high, steps=60)


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


def t_cdf(x: float, df: float) -> float:
    """P(T <= x)."""
    half = 0.5 * t_two_sided(x, df)
    return 1.0 - half if x > 0 else half


def t_half_width(std: float, n: int, confidence: float = 0.95) -> float:
    """Half-width of the Student t interval of a mean of ``n`` values.

    ``t((1 + confidence) / 2, n - 1) * std / sqrt(n)``: the one formula of every
    ``ci95`` labkit reports (the averaged timelines, a result's summary table) and
    of :func:`labkit.stats.mean`'s interval.

    Args:
        std: The values' sample standard deviation (ddof=1), in their units; with
            1.0, the half-width per unit of spread.
        n: How many values (an int).
        confidence: The interval's level, 0 < confidence < 1 (checked as
            :func:`t_quantile` checks ``p``).

    Returns:
        The half-width, in ``std``'s units; NaN for fewer than 2 values.

    Raises:
        ConfigError: If ``confidence`` is out of range.
    """
    if n < 2:
        return math.nan
    return t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
