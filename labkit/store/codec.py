"""The store's JSON: canonical for fingerprints, strict for what it keeps, and
column-wise for timeline samples.

Everything the store writes goes through :func:`labkit._json.to_builtins`, the
one sanitiser: params and config as strict JSON values (anything else is refused,
as an identity must not depend on an object's ``repr``), summaries as builtins
(other objects kept as their ``str``). Samples are stored as column chunks
``{"t": [...], "<metric>": [...]}`` (:func:`labkit.store.writer.chunk_json` writes
one); :func:`join_chunks` joins them back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from labkit._json import to_builtins
from labkit.errors import ConfigError

__all__ = ("dumps", "fingerprint", "join_chunks", "plain")


def fingerprint(name: str, params: Mapping[str, Any], instances: int) -> str:
    """The stable key that resume looks an experiment up by.

    Args:
        name: The experiment's name.
        params: Its parameters: JSON values (numbers, strings, booleans, ``None``,
            lists and dicts of them). Every value is told apart exactly: ``1``,
            ``1.0`` and ``True`` differ, and so do ``0.0`` and ``-0.0``; NaN,
            ``inf``, ``-inf`` and ``None`` are four different values (written as
            the bare tokens ``NaN``, ``Infinity``, ``-Infinity`` and ``null``,
            which no string can spell). Tuples count as lists, and dict keys as
            strings, as in JSON.
        instances: How many instances it runs.

    Returns:
        The SHA-256 hex digest of the canonical JSON of the three (sorted keys,
        no whitespace), the same in every process and on every machine. For
        finite values this is strict JSON, so fingerprints of earlier stores
        still match.

    Raises:
        ConfigError: If ``params`` holds something that is not a JSON value.
    """
    canonical = json.dumps(
        {"instances": int(instances), "name": name, "params": plain(params, "params")},
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def join_chunks(texts: Sequence[str]) -> dict[str, list[Any]]:
    """Concatenate column chunks; a metric missing from a chunk is ``None`` there."""
    if not texts:
        return {"t": []}
    if len(texts) == 1:
        return dict(json.loads(texts[0]))
    joined: dict[str, list[Any]] = {"t": []}
    for text in texts:
        chunk = json.loads(text)
        size = len(chunk.get("t", ()))
        before = len(joined["t"])
        for name, values in chunk.items():
            joined.setdefault(name, [None] * before).extend(values)
        for values in joined.values():
            values.extend([None] * (before + size - len(values)))
    return joined


def dumps(value: Any) -> str:
    """Strict JSON (no NaN tokens): non-finite floats are written as ``null``.

    Raises:
        TypeError: ``value`` holds an object JSON has no form for.
    """
    try:
        return json.dumps(value, allow_nan=False, separators=_COMPACT, default=_numpy)
    except ValueError:  # a non-finite float: the slow path rewrites them as None
        return json.dumps(to_builtins(value, fallback=_not_json), separators=_COMPACT)


def plain(value: Any, option: str, *, strict: bool = True) -> Any:
    """``value`` as JSON builtins; numpy scalars unwrapped, tuples as lists.

    Non-finite floats stay: the fingerprint tells them apart from ``None``, and
    :func:`dumps` writes them as ``null`` where strict JSON is stored.

    Args:
        value: Params, config or a summary.
        option: The option's name, for the error.
        strict: Refuse anything that is not a JSON value (an identity must not
            depend on an object's ``repr``); otherwise keep it as its ``str``.

    Raises:
        ConfigError: With ``strict``, for a value that is not JSON.
    """

    def refuse(_: Any) -> Any:
        raise ConfigError(
            option, value, "JSON values (str, int, float, bool, None, lists and dicts of them)"
        )

    return to_builtins(value, finite=False, fallback=refuse if strict else str)


_COMPACT = (",", ":")


def _numpy(value: Any) -> Any:
    """``json.dumps``'s ``default``: numpy scalars and arrays as builtins."""
    return to_builtins(value, finite=False, fallback=_not_json)


def _not_json(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not a JSON value")
