"""Text tables the command line prints: a run's averaged summary and the store's
history."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from labkit.results import ExperimentResult

__all__ = ("format_summary", "history_table", "params_text")

SPREAD_HEADING = "mean ± ci95 (min … max)"
"""What a figure's cell says: the mean over the instances that succeeded, the
half-width of its 95 % interval, and the smallest and largest instance's value."""

_HISTORY_COLUMNS = ("id", "name", "status", "instances", "succeeded", "failed", "created")


def format_summary(result: ExperimentResult) -> str:
    """The averaged summary as a two-column text table, then the failures.

    When some figure has a spread, a heading names what its cells say
    (``mean ± ci95 (min … max)``).
    """
    summary = result.summary
    lines = [f"{result.name}: {len(result.instances)} instances"]
    if result.all_failed:
        lines.append("ALL INSTANCES FAILED: there is no average.")
    elif result.failed:
        lines.append(
            f"{len(result.failed)} of {len(result.instances)} instances failed; "
            f"averaged over the {len(result.instances) - len(result.failed)} that succeeded."
        )
    spread = result.summary_texts()  # a figure as mean ± ci95 (min … max)
    rows = [
        (key, spread.get(key) or _cell(value))
        for key, value in summary.items()
        if key not in ("errors", "all_failed") and not isinstance(value, Mapping)
    ]
    if any(" ± " in text for _, text in rows):
        rows.insert(0, ("figure", SPREAD_HEADING))
    if rows:
        width = max(len(key) for key, _ in rows)
        lines.append("")
        lines += [f"  {key.ljust(width)}  {value}" for key, value in rows]
    for instance in result.failed:
        lines.append(f"  instance {instance.index} failed: {instance.error}")
    if result.outliers:
        marks = ", ".join(
            f"{metric}: {', '.join(map(str, indices))}"
            for metric, indices in result.outliers.items()
        )
        lines.append(f"  outliers: {marks}")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_cell(item) for item in value) + "]"
    if value is None:
        return "-"
    return str(value)


def history_table(frame: pd.DataFrame) -> str:
    """``store.experiments()`` rows as ``labkit history`` prints them: times to the
    second, a sweep's runs with their sweep and trial, and each run's parameters."""
    shown = frame[[column for column in _HISTORY_COLUMNS if column in frame]].copy()
    if "created" in shown:
        shown["created"] = shown["created"].dt.strftime("%Y-%m-%d %H:%M:%S")
    labels = list(frame["labels"]) if "labels" in frame else []
    if any("sweep" in label for label in labels):
        # Which sweep, and which of its trials, each run was.
        shown["sweep"] = [label.get("sweep", "-") for label in labels]
        shown["trial"] = [label.get("trial", "-") for label in labels]
    if "params" in frame:
        # A sweep's trials share a name: their parameters tell them apart.
        shown["params"] = [params_text(params) for params in frame["params"]]
    return str(shown.to_string(index=False))


def params_text(params: Any) -> str:
    """``lr=0.1 batch=32`` (``-`` without parameters), as the sweep's leaderboard writes them."""
    if not isinstance(params, dict) or not params:
        return "-"
    return " ".join(f"{name}={value!r}" for name, value in params.items())
