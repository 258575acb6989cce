"""Sample sizes: the power of Welch's test, the instances per side it needs to detect
a difference, and the instances that make a mean's interval as tight as wanted."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from statistics import NormalDist

import numpy as np

from labkit._checks import Shown, is_real
from labkit.errors import ConfigError
from labkit.stats.samples import confidence_level, mean_std
from labkit.stats.tdist import t_cdf, t_half_width, t_quantile

__all__ = (
    "POWER",
    "instances_needed",
    "instances_per_side",
    "per_side_needed",
    "power",
    "welch_power",
    "welch_se_df",
)

POWER = 0.8
"""The default chance of detecting a difference (of :func:`instances_per_side`)."""


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
    level = confidence_level(confidence)
    n_b = n_a if n_b is None else n_b
    for option, n in (("n_a", n_a), ("n_b", n_b)):
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
            raise ConfigError(option, n, "an integer >= 2 (instances)")
    for option, std in (("std_a", std_a), ("std_b", std_b)):
        if not (is_real(std) and std >= 0):
            raise ConfigError(option, std, "a finite standard deviation >= 0")
    if not is_real(difference):
        raise ConfigError("difference", difference, "a finite number")
    return welch_power(abs(difference), std_a, std_b, int(n_a), int(n_b), level)


def welch_se_df(std_a: float, std_b: float, n_a: int, n_b: int) -> tuple[float, float]:
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


def welch_power(
    difference: float, std_a: float, std_b: float, n_a: int, n_b: int, level: float
) -> float:
    se, df = welch_se_df(std_a, std_b, n_a, n_b)
    if se == 0.0:
        return 1.0 if difference > 0 else 1.0 - level
    critical = t_quantile(0.5 + level / 2, df)
    shift = difference / se
    return (1.0 - t_cdf(critical - shift, df)) + t_cdf(-critical - shift, df)


def instances_per_side(
    difference: float,
    std_a: float,
    std_b: float | None = None,
    *,
    confidence: float = 0.95,
    power: float = POWER,
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
    level = confidence_level(confidence)
    if not (is_real(power) and 0.0 < power < 1.0):
        raise ConfigError("power", power, "a probability strictly between 0 and 1 (0.8)")
    if not (is_real(difference) and difference > 0):
        raise ConfigError("difference", difference, "a finite difference > 0 to detect")
    std_b = std_a if std_b is None else std_b
    for option, std in (("std_a", std_a), ("std_b", std_b)):
        if not (is_real(std) and std >= 0):
            raise ConfigError(option, std, "a finite standard deviation >= 0")
    return per_side_needed(difference, std_a, std_b, level, power)


def per_side_needed(
    difference: float, std_a: float, std_b: float, level: float, target: float
) -> int:
    """:func:`instances_per_side` of checked numbers (a power ``target`` in (0, 1))."""
    scale = max(std_a, std_b)
    if scale == 0.0:
        return 2
    # The normal approximation is a lower bound to start from.
    z = NormalDist().inv_cdf(0.5 + level / 2) + NormalDist().inv_cdf(target)
    ratio_a, ratio_b = std_a / scale, std_b / scale  # squares in range at any magnitude
    guess = max(2, math.floor(z * z * (ratio_a**2 + ratio_b**2) / (difference / scale) ** 2))
    return _smallest(lambda n: welch_power(difference, std_a, std_b, n, n, level) >= target, guess)


def _smallest(enough: Callable[[int], bool], guess: int) -> int:
    """The smallest n >= ``guess`` for which ``enough(n)`` holds, ``enough`` being
    monotone (false, then true from some n on): step up from the guess, doubling,
    then bisect."""
    if enough(guess):
        return guess
    low, high = guess, guess + 1
    while not enough(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if enough(middle):
            high = middle
        else:
            low = middle
    return high


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
    center, spread = _pilot(values)
    if spread == 0.0:
        return 2
    allowed = rel_half_width * abs(center) / spread  # the largest t(n-1)/sqrt(n) that will do
    # t(n-1)/sqrt(n) decreases in n and exceeds z/sqrt(n): the normal guess is a lower bound.
    guess = max(2, math.ceil((NormalDist().inv_cdf(0.5 + confidence / 2) / allowed) ** 2))
    return _smallest(lambda n: t_half_width(1.0, n, confidence) <= allowed, guess)


def _pilot(values: Iterable[float]) -> tuple[float, float]:
    """A pilot's mean and spread (ddof=1), checked: >= 2 finite values, mean not 0.

    Raises:
        ConfigError: Fewer than 2 values, a non-finite or non-numeric one, or mean 0.
    """
    array = np.asarray(values if isinstance(values, np.ndarray) else list(values))
    if array.dtype.kind not in "biuf":
        raise ConfigError("values", Shown(f"an array of dtype {array.dtype}"), "numbers")
    pilot = array.astype(np.float64)
    if pilot.ndim != 1 or pilot.size < 2:
        raise ConfigError("values", Shown(f"{pilot.size} value(s)"), "a pilot of >= 2 values")
    if not bool(np.isfinite(pilot).all()):
        raise ConfigError("values", Shown("a pilot with NaN or inf"), "finite values")
    average, deviation = mean_std(pilot)
    if float(average) == 0.0:
        raise ConfigError(
            "values", Shown("a pilot whose mean is 0"), "a nonzero mean (the width is relative)"
        )
    return float(average), float(deviation)
