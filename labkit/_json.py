"""The one JSON sanitiser: any value as the builtins JSON can hold.

Results (``to_dict``), run reports and the store all turn user values into JSON
through :func:`to_builtins`; they differ only in what they do with a non-finite
float and with an object JSON has no form for, which they say by argument.
numpy is recognised by its shape (``item``/``tolist``), never imported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ("to_builtins",)


def to_builtins(value: Any, *, finite: bool = True, fallback: Callable[[Any], Any] = str) -> Any:
    """``value`` as JSON builtins: ``None``, bool, int, float, str, lists and dicts.

    numpy scalars (and 0-d arrays) are unwrapped, numpy arrays, tuples and lists
    become lists, mapping keys become strings.

    Args:
        value: Anything.
        finite: Write NaN, ``inf`` and ``-inf`` as ``None`` (strict JSON); with
            ``False`` they are kept (Python's ``json`` writes them as tokens).
        fallback: Called with any other object; its return value is used (``str``
            or ``repr``), or it raises to refuse the object.

    Returns:
        A new value made of builtins (``value`` itself when it already is one
        that needs no change).

    Raises:
        Exception: Whatever ``fallback`` raises.
    """
    kind = type(value)
    if value is None or kind is str or kind is int or kind is bool:
        return value
    if kind is float:
        return value if not finite or math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {
            str(key): to_builtins(item, finite=finite, fallback=fallback)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [to_builtins(item, finite=finite, fallback=fallback) for item in value]
    shape = getattr(value, "shape", None)
    if shape == ():  # a numpy scalar or a 0-d array
        item = getattr(value, "item", None)
        if callable(item):
            return to_builtins(item(), finite=finite, fallback=fallback)
    elif shape is not None:  # a numpy array
        tolist = getattr(value, "tolist", None)
        if callable(tolist):
            return to_builtins(tolist(), finite=finite, fallback=fallback)
    if isinstance(value, float):
        return float(value) if not finite or math.isfinite(value) else None
    if isinstance(value, bool | int | str):
        return value
    return fallback(value)
