"""Reading the command line's values: argparse types (``type=``) that refuse what
cannot work with a message saying what is allowed, and the ``KEY=VALUE`` forms of
``--param``, ``--grid`` and ``--summarize``."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from typing import Any, get_args

from labkit.cli.usage import UsageError
from labkit.experiment import MAX_INSTANCES, SummaryKind

__all__ = (
    "EXPORT_EXTRAS",
    "MAX_SECONDS",
    "PROMETHEUS_PORT",
    "SUMMARY_KINDS",
    "export_target",
    "instance_count",
    "instances",
    "non_negative_int",
    "parse_grid",
    "parse_params",
    "positive_int",
    "seconds",
    "seed",
    "summary_kinds",
    "sweep_instances",
)

SUMMARY_KINDS: tuple[str, ...] = get_args(SummaryKind)

MAX_SECONDS = 86_400.0  # a day: the longest duration, timeout or interval accepted

EXPORT_EXTRAS = {
    "mlflow": ("mlflow", "mlflow"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "prometheus": ("prometheus_client", "prometheus"),
}
"""Each ``--export`` target: the module it needs and the extra that installs it."""

PROMETHEUS_PORT = 9464
"""Where ``--export prometheus`` serves without ``=WHERE`` (the exporter's usual port)."""


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def seed(text: str) -> int:
    """A base seed, 0 to ``labkit.seeds.MAX_SEED``."""
    from labkit.seeds import MAX_SEED

    value = _int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {MAX_SEED}, got {text!r}")
    return value


def seconds(text: str) -> float:
    """A finite number of seconds, > 0 and at most a day."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
        raise argparse.ArgumentTypeError(
            f"expected seconds > 0 and <= {MAX_SECONDS:,.0f}, got {text!r}"
        )
    return value


def instance_count(text: str) -> int:
    """A number of instances (or trials at once), 1 to ``MAX_INSTANCES``."""
    value = _int(text)
    if not 1 <= value <= MAX_INSTANCES:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_INSTANCES}, got {text!r}")
    return value


def instances(text: str) -> int | str:
    """``-n`` of ``labkit run``: a number of instances or ``auto``."""
    if text == "auto":
        return text
    value = _int(text)
    if not 1 <= value <= MAX_INSTANCES:
        raise argparse.ArgumentTypeError(
            f"expected 1 to {MAX_INSTANCES} (the cap) or 'auto', got {text!r}"
        )
    return value


def sweep_instances(text: str) -> int | str:
    """``-n`` of ``labkit sweep``: as for ``labkit run``, or ``race``."""
    return text if text == "race" else instances(text)


def export_target(text: str) -> tuple[str, str | None]:
    """``TARGET[=WHERE]`` of ``--export`` as ``(target, where or None)``."""
    target, sep, where = text.partition("=")
    if target not in EXPORT_EXTRAS:
        raise argparse.ArgumentTypeError(
            f"expected mlflow, tensorboard or prometheus (optionally =WHERE), got {text!r}"
        )
    if sep and not where:
        raise argparse.ArgumentTypeError(f"{target}= needs a value after '=', got {text!r}")
    return target, where or None


def summary_kinds(text: str) -> dict[str, list[str]]:
    """``"loss=last,acc=max"`` as ``{"loss": ["last"], "acc": ["max"]}`` (a metric named
    twice gets both kinds)."""
    chosen: dict[str, list[str]] = {}
    for pair in text.split(","):
        metric, sep, kind = (part.strip() for part in pair.partition("="))
        if not sep or not metric or metric in ("t", "step"):
            raise argparse.ArgumentTypeError(
                f"expected METRIC=KIND pairs separated by commas, got {pair!r}"
            )
        if kind not in SUMMARY_KINDS:
            raise argparse.ArgumentTypeError(
                f"{metric}: expected a kind among {', '.join(SUMMARY_KINDS)}, got {kind!r}"
            )
        chosen.setdefault(metric, []).append(kind)
    return chosen


def parse_grid(pairs: Sequence[str]) -> dict[str, list[Any]]:
    """``["lr=0.1,0.01", "opt=adam"]`` as ``{"lr": [0.1, 0.01], "opt": ["adam"]}``.

    Raises:
        UsageError: A pair has no ``=``, an empty key or no values.
    """
    grid: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip() or not text:
            raise UsageError(f"--grid expects KEY=V1,V2,..., got {pair!r}")
        grid[key.strip()] = [_value("--grid", key, value) for value in text.split(",")]
    return grid


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` as ``{"a": 1, "b": "x"}``: values are JSON when they parse.

    Raises:
        UsageError: A pair has no ``=`` or an empty key, or a value is JSON's
            ``NaN``, ``Infinity`` or ``-Infinity`` (or holds one).
    """
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param expects KEY=VALUE, got {pair!r}")
        params[key.strip()] = _value("--param", key.strip(), text)
    return params


def _value(option: str, key: str, text: str) -> Any:
    """``text`` as JSON when it parses, else as the string; NaN and infinities refused."""

    def refuse(constant: str) -> Any:
        raise UsageError(
            f"{option} {key}={text}: {constant} is not a usable parameter value; give a "
            f"finite number, or '\"{constant}\"' (JSON-quoted) for the string"
        )

    try:
        value = json.loads(text, parse_constant=refuse)
    except json.JSONDecodeError:
        return text
    if _has_nonfinite(value):  # 1e999 parses as inf without parse_constant
        refuse(text)
    return value


def _has_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_has_nonfinite(item) for item in value)
    if isinstance(value, dict):
        return any(_has_nonfinite(item) for item in value.values())
    return False
