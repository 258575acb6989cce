"""Checks of user input, shared by every module that validates options.

:func:`check` raises :class:`~labkit.errors.ConfigError` naming the option, its
value and what is allowed; :func:`is_real` and :func:`is_int` are labkit's one
"a number, not a bool" test; :class:`Shown` stands in for a value too big or too
raw to print in an error message.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from labkit.errors import ConfigError

__all__ = ("Shown", "check", "is_int", "is_real")


def check(condition: bool, option: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigError` unless ``condition`` holds.

    Raises:
        ConfigError: ``condition`` is false; it names ``option``, ``value`` and ``allowed``.
    """
    if not condition:
        raise ConfigError(option, value, allowed)


def is_real(value: object, *, finite: bool = True) -> bool:
    """Whether ``value`` is a real number, never a bool; finite unless ``finite=False``.

    The one "a number, not a bool" check of labkit: an ``int``, a ``float`` or
    another real number (numpy's integer and floating scalars, ``Fraction``).
    ``True`` is an ``int`` to Python but never a number to labkit, nor is numpy's
    ``bool_``.

    Args:
        value: What the user passed.
        finite: Refuse NaN, ``inf`` and ``-inf``; with ``False`` they count as
            numbers (a range check after it refuses NaN, which compares with nothing).
    """
    kind = type(value)
    if kind is int:
        return True
    if kind is not float and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        return False
    if not finite or isinstance(value, numbers.Integral):
        return True  # an integer is finite, also past float's range (isfinite would overflow)
    return math.isfinite(value)  # type: ignore[arg-type]


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer (a Python ``int``, never a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


class Shown:
    """A value for :class:`ConfigError` whose repr is a short description, not the data.

    Args:
        text: What the message shows in place of the value (``"a 3-d array"``).
    """

    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        self._text = text

    def __repr__(self) -> str:
        return self._text
