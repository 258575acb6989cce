"""An experiment as TensorBoard runs: one run directory per instance and an ``average`` run.

Under ``logdir``: ``instance_00``, ``instance_01``, ... (each instance's timeline,
one scalar per metric) and ``average`` (per metric the mean under the metric's own
name, so TensorBoard draws it in the same chart as the instances, and the band as
two scalars, ``<metric>/lower`` and ``<metric>/upper``; ``n`` beside them).

Scalars are written as TensorBoard's scalar summaries holding float64 tensors, so
what TensorBoard reads back is labkit's value exactly. Steps follow the MLflow
exporter: a ``step`` column where the timelines have one, else the sample's number,
with ``wall_time`` the export's start plus ``t`` (TensorBoard's "relative" axis
then shows seconds).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from labkit._checks import check
from labkit.export.base import (
    ExportReport,
    averaged_metrics,
    columns,
    guarded,
    is_by_step,
    require,
    series_axis,
)
from labkit.results import ExperimentResult

__all__ = ("AVERAGE_RUN", "export_tensorboard")

AVERAGE_RUN = "average"
"""The run directory of the averaged timeline."""

Band = Literal["ci95", "std"]


def export_tensorboard(
    result: ExperimentResult, logdir: str | Path, *, band: Band = "ci95"
) -> ExportReport:
    """Write ``result`` as TensorBoard runs under ``logdir`` (``tensorboard --logdir``).

    Args:
        result: The experiment to write; it is only read.
        logdir: The directory of this experiment's runs (made if missing). Runs
            already there are added to, as TensorBoard does with any writer.
        band: The band around the mean: ``"ci95"`` (the 95 % confidence interval of
            the mean) or ``"std"`` (one standard deviation either side).

    Returns:
        How it went: ``details["runs"]`` maps each run's name to its directory. A
        directory that cannot be written gives ``ok=False`` and the error.

    Raises:
        ConfigError: ``band`` is not ``"ci95"`` or ``"std"``.
        MissingDependency: TensorBoard is not installed (``labkit[tensorboard]``).
    """
    check(band in ("ci95", "std"), "band", band, '"ci95" or "std"')
    require("tensorboard", "tensorboard", "exporting to TensorBoard")
    root = Path(logdir)

    def write(details: dict[str, Any]) -> None:
        runs: dict[str, str] = {}
        details["runs"] = runs
        started = time.time()
        by_step = is_by_step(result.averaged)
        width = len(str(max(len(result.instances) - 1, 0)))
        for instance in result.instances:
            name = f"instance_{instance.index:0{width}d}"
            frame = instance.timeline
            step, seconds, keep = series_axis(frame, by_step=by_step)
            series = dict(columns(frame, skip=("step", "t") if by_step else ("t",)))
            runs[name] = _write_run(root / name, series, step, seconds, keep, started)
        averaged = result.averaged
        step, seconds, keep = series_axis(averaged, by_step=by_step)
        series = {"n": averaged["n"].to_numpy(dtype=float)}
        for metric in averaged_metrics(averaged):
            mean = averaged[metric].to_numpy(dtype=float)
            spread = averaged[f"{metric}_{band}"].to_numpy(dtype=float)
            series[metric] = mean
            series[f"{metric}/lower"] = mean - spread
            series[f"{metric}/upper"] = mean + spread
        runs[AVERAGE_RUN] = _write_run(root / AVERAGE_RUN, series, step, seconds, keep, started)

    return guarded("tensorboard", str(root), write)


def _write_run(
    directory: Path,
    series: Mapping[str, npt.NDArray[np.float64]],
    step: npt.NDArray[np.int64],
    seconds: npt.NDArray[np.float64],
    keep: npt.NDArray[np.bool_],
    started: float,
) -> str:
    """One event file in ``directory``: an event per row, a scalar per metric sampled there."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.scalar import metadata
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    directory.mkdir(parents=True, exist_ok=True)
    scalar = metadata.create_summary_metadata(display_name="", description="")
    names = list(series)
    # One list per metric, then rows: tolist() once instead of a numpy scalar per value.
    values = [series[name].tolist() for name in names]
    wall = np.where(np.isfinite(seconds), started + seconds, started).tolist()
    steps = step.tolist()
    writer = EventFileWriter(str(directory))
    try:
        for row in np.flatnonzero(keep).tolist():
            points = [
                summary_pb2.Summary.Value(tag=name, metadata=scalar, tensor=_double(column[row]))
                for name, column in zip(names, values, strict=True)
                if not math.isnan(column[row])  # NaN: not sampled there
            ]
            if points:
                summary = summary_pb2.Summary(value=points)
                writer.add_event(
                    event_pb2.Event(wall_time=wall[row], step=steps[row], summary=summary)
                )
    finally:
        writer.close()
    return str(directory)


def _double(value: float) -> Any:
    """A float64 scalar tensor: TensorBoard keeps it whole (a ``simple_value`` is float32)."""
    from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_DOUBLE,
        double_val=[value],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(),
    )
