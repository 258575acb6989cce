"""The numbers the estimators work on: checked input and a mean and spread at any
magnitude."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from labkit._checks import Shown, is_real
from labkit.errors import ConfigError

__all__ = ("FloatArray", "confidence_level", "finite_values", "mean_std", "numbers_1d")

FloatArray: TypeAlias = npt.NDArray[np.float64]


def numbers_1d(values: Any, option: str) -> FloatArray:
    """A sequence's or 1-d array's numbers as float64, in order, NaN and inf kept.

    Raises:
        ConfigError: ``values`` is not a sequence of numbers (bools refused), or not 1-d.
    """
    if isinstance(values, str | bytes) or not isinstance(values, Iterable | np.ndarray):
        raise ConfigError(option, Shown(type(values).__name__), "a sequence of numbers")
    array = np.asarray(values if isinstance(values, np.ndarray) else list(values))
    if array.dtype.kind not in "iuf" or array.ndim != 1:
        raise ConfigError(
            option,
            Shown(f"an array of dtype {array.dtype}, {array.ndim}-d"),
            "numbers (not bools), 1-d",
        )
    return array.astype(np.float64, copy=False)


def finite_values(values: Any, option: str, *, at_least: int) -> FloatArray:
    """Finite float64 values from a sequence or array; NaN and inf are left out.

    Raises:
        ConfigError: ``values`` is not a 1-d sequence of numbers, or has fewer than
            ``at_least`` finite ones.
    """
    data = numbers_1d(values, option)
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


def confidence_level(confidence: Any) -> float:
    """``confidence`` as a float, checked.

    Raises:
        ConfigError: It is not a level strictly between 0 and 1.
    """
    if not (is_real(confidence) and 0.0 < confidence < 1.0):
        raise ConfigError("confidence", confidence, "a level strictly between 0 and 1 (0.95)")
    return float(confidence)
