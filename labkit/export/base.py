"""What every exporter shares: the :class:`ExportReport` it returns, and a result's series.

An exporter never loses the result it was given: whatever goes wrong on the way
to the target (a tracking server that does not answer, a directory that cannot
be written) comes back in an :class:`ExportReport` with ``ok=False`` and the
error's text, and is logged as a warning; the result itself is untouched. Only
what the caller can fix before trying (a bad option, an extra not installed)
raises.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from labkit.errors import MissingDependency, error_text

__all__ = (
    "ExportReport",
    "averaged_metrics",
    "columns",
    "guarded",
    "is_by_step",
    "require",
    "series_axis",
)

log = logging.getLogger("labkit.export")

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportReport:
    """How one export went.

    Attributes:
        target: The exporter: ``"mlflow"``, ``"tensorboard"`` or ``"prometheus"``.
        destination: Where it wrote (a tracking URI, a directory, a URL).
        ok: Whether everything was written.
        error: ``"TypeName: message"`` when it was not, else ``None``.
        details: What was made there (run ids, run directories), by name.
    """

    target: str
    destination: str
    ok: bool
    error: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if self.ok:
            return f"export {self.target}: written to {self.destination}"
        return f"export {self.target}: failed ({self.destination}): {self.error}"


def require(package: str, extra: str, purpose: str) -> ModuleType:
    """Import ``package``, or say which labkit extra installs it.

    Raises:
        MissingDependency: ``package`` is not installed.
    """
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise MissingDependency(package, extra, purpose) from exc


def guarded(target: str, destination: str, write: Callable[[dict[str, Any]], None]) -> ExportReport:
    """Run ``write(details)`` and report how it went, never raising for the target's sake.

    ``write`` fills ``details`` as it goes, so a report of a failure still says
    what had been made before it (a parent run that exists, say).
    """
    details: dict[str, Any] = {}
    try:
        write(details)
    except Exception as exc:  # the target failed: report it, keep the result
        report = ExportReport(
            target=target,
            destination=destination,
            ok=False,
            error=error_text(exc),
            details=details,
        )
        log.warning("%s", report)
        return report
    return ExportReport(target=target, destination=destination, ok=True, details=details)


def series_axis(
    frame: pd.DataFrame, *, by_step: bool
) -> tuple[npt.NDArray[np.int64], FloatArray, npt.NDArray[np.bool_]]:
    """The integer step and the seconds of each row of a timeline, and the rows to keep.

    Step-indexed timelines (``by_step``) keep their own ``step`` (a row without one,
    a sampler's, is not kept); time-indexed ones are numbered by row (0, 1, ...),
    their seconds being ``t``. The seconds are NaN where a timeline has no ``t``
    (an averaged one indexed by step).
    """
    rows = len(frame)
    if by_step and "step" in frame:
        steps = frame["step"].to_numpy(dtype=float)
        keep = np.isfinite(steps)
        step = np.where(keep, steps, 0).astype(np.int64)
    else:
        step = np.arange(rows, dtype=np.int64)
        keep = np.ones(rows, dtype=bool)
    seconds = frame["t"].to_numpy(dtype=float) if "t" in frame else np.full(rows, np.nan)
    return step, seconds, keep


def averaged_metrics(averaged: pd.DataFrame) -> list[str]:
    """The metrics an averaged timeline holds: the columns that have a ``_ci95`` beside them."""
    columns = set(averaged.columns)
    return [str(c) for c in averaged.columns if f"{c}_ci95" in columns]


def is_by_step(averaged: pd.DataFrame) -> bool:
    """Whether the run's timelines are aligned on a ``step`` column instead of ``t``."""
    return "step" in averaged.columns and "t" not in averaged.columns


def columns(frame: pd.DataFrame, skip: tuple[str, ...]) -> Iterator[tuple[str, FloatArray]]:
    """Each numeric column of ``frame`` but those in ``skip``, as float64."""
    for name in frame.columns:
        if name in skip or not pd.api.types.is_numeric_dtype(frame[name]):
            continue
        yield str(name), frame[name].to_numpy(dtype=float)
