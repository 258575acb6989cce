"""An experiment as MLflow runs: a parent run for the average, a nested run per instance.

The parent run holds the experiment's parameters, its summary (each figure's mean
as ``summary/<figure>`` and its 95 % half-width as ``summary/<figure>_ci95``) and
the averaged timeline: per step ``<metric>`` (the mean), ``<metric>/ci95_lower``,
``<metric>/ci95_upper``, ``n`` (instances contributing) and ``t`` (seconds). Each
instance is a nested run (MLflow's ``mlflow.parentRunId`` tag) with its timeline,
its summary figures, its seed as a parameter and its error as a tag when it failed.

Steps: a timeline aligned on a ``step`` column keeps its steps; a timeline in
seconds is numbered by sample (0, 1, ...) and its seconds go along as the metric
``t`` and as each value's timestamp (the export's start plus ``t``). NaN samples
("not sampled") are not written.

Each run is written with one ``MlflowClient.log_batch`` call, which MLflow's client
splits into requests within the tracking server's per-request limits (1,000
metrics, 100 parameters and 100 tags, 1,000 entities in all): no request is
refused for its size, however long the timelines.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from labkit._json import to_builtins
from labkit.export.base import (
    ExportReport,
    averaged_metrics,
    columns,
    guarded,
    is_by_step,
    require,
    series_axis,
)
from labkit.results import ExperimentResult, InstanceResult

__all__ = ("export_mlflow",)

_MAX_TAG_LENGTH = 8000  # MLflow refuses longer tag values; an error text is cut to fit


def export_mlflow(
    result: ExperimentResult,
    *,
    tracking_uri: str | None = None,
    experiment_name: str | None = None,
    run_name: str | None = None,
) -> ExportReport:
    """Write ``result`` to MLflow as a parent run with one nested run per instance.

    Args:
        result: The experiment to write; it is only read.
        tracking_uri: Where MLflow keeps runs (``sqlite:///mlflow.db``, a server's
            ``http://...``); default: MLflow's own (``MLFLOW_TRACKING_URI``, else
            its local default).
        experiment_name: The MLflow experiment the runs go to (made if missing);
            default: the result's name.
        run_name: The parent run's name; default: the result's name.

    Returns:
        How it went: ``details`` holds ``experiment_id``, ``parent_run_id`` and
        ``instance_run_ids`` (instance index -> run id). A tracking store that
        cannot be reached or refuses a write gives ``ok=False`` and the error;
        runs made before the failure are marked ``FAILED``.

    Raises:
        MissingDependency: MLflow is not installed (``pip install 'labkit[mlflow]'``).
    """
    require("mlflow", "mlflow", "exporting to MLflow")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    destination = str(client.tracking_uri)

    def write(details: dict[str, Any]) -> None:
        _write(client, result, experiment_name or result.name, run_name or result.name, details)

    return guarded("mlflow", destination, write)


def _write(
    client: Any,
    result: ExperimentResult,
    experiment_name: str,
    run_name: str,
    details: dict[str, Any],
) -> None:
    found = client.get_experiment_by_name(experiment_name)
    experiment_id = (
        found.experiment_id if found is not None else client.create_experiment(experiment_name)
    )
    details["experiment_id"] = experiment_id
    started_ms = int(time.time() * 1000)
    by_step = is_by_step(result.averaged)
    params = _params(result.params)
    run_ids: dict[int, str] = {}
    details["instance_run_ids"] = run_ids
    # Tags go with the run's creation: one transaction fewer per run than a batch's.
    parent = client.create_run(
        experiment_id,
        run_name=run_name,
        tags=_tags(
            {
                "labkit.experiment": result.name,
                "labkit.experiment_id": result.experiment_id,
                "labkit.notes": "\n".join(result.notes) or None,
            }
        ),
    )
    parent_id = parent.info.run_id
    details["parent_run_id"] = parent_id
    current = parent_id
    try:
        config = _params({f"labkit.{key}": value for key, value in result.config.items()})
        metrics = _parent_metrics(result, started_ms, by_step)
        client.log_batch(parent_id, metrics=metrics, params=params + config)
        for instance in result.instances:
            current = _instance_run(client, experiment_id, parent_id, instance)
            run_ids[instance.index] = current
            _log_instance(client, current, instance, params, started_ms, by_step)
        client.set_terminated(parent_id, "FINISHED")
    except BaseException:
        for run_id in dict.fromkeys((current, parent_id)):
            # The store is failing already: its first error is the one told.
            with contextlib.suppress(Exception):
                client.set_terminated(run_id, "FAILED")
        raise


def _instance_run(client: Any, experiment_id: str, parent_id: str, instance: InstanceResult) -> str:
    """Create the child run of ``instance`` under the run ``parent_id``; its id."""
    run = client.create_run(
        experiment_id,
        run_name=f"instance {instance.index}",
        tags=_tags(
            {
                "mlflow.parentRunId": parent_id,
                "labkit.instance": instance.index,
                "labkit.ok": instance.ok,
                "labkit.error": instance.error,
                "labkit.attempts": instance.attempts,
            }
        ),
    )
    return str(run.info.run_id)


def _log_instance(
    client: Any,
    run_id: str,
    instance: InstanceResult,
    params: list[Any],
    started_ms: int,
    by_step: bool,
) -> None:
    """Log ``instance``'s metrics and params to its run, and end the run as it ended."""
    from mlflow.entities import RunStatus

    # One call per run: MLflow's client splits it into requests within the
    # server's limits itself.
    client.log_batch(
        run_id,
        metrics=_instance_metrics(instance, started_ms, by_step),
        params=params + _params(_instance_params(instance)),
    )
    status = RunStatus.FINISHED if instance.ok else RunStatus.FAILED
    client.set_terminated(run_id, RunStatus.to_string(status))


def _instance_params(instance: InstanceResult) -> dict[str, Any]:
    params: dict[str, Any] = {"labkit.instance": instance.index}
    seed = getattr(instance, "seed", None)
    if seed is not None:
        params["seed"] = seed
    return params


def _params(values: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(str(key), _text(value)) for key, value in values.items() if value is not None]


def _tags(values: Mapping[str, Any]) -> dict[str, str]:
    return {
        key: _text(value)[:_MAX_TAG_LENGTH] for key, value in values.items() if value is not None
    }


def _text(value: Any) -> str:
    """A parameter's or tag's value as MLflow keeps it: strings as they are, else JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(to_builtins(value), sort_keys=True)


def _parent_metrics(result: ExperimentResult, started_ms: int, by_step: bool) -> list[Any]:
    averaged = result.averaged
    step, seconds, keep = series_axis(averaged, by_step=by_step)
    stamps = _stamps(started_ms, seconds)
    metrics: list[Any] = []
    series: dict[str, npt.NDArray[np.float64]] = {"n": averaged["n"].to_numpy(dtype=float)}
    if not by_step:
        series["t"] = seconds
    for name in averaged_metrics(averaged):
        mean = averaged[name].to_numpy(dtype=float)
        ci95 = averaged[f"{name}_ci95"].to_numpy(dtype=float)
        series[name] = mean
        series[f"{name}/ci95_lower"] = mean - ci95
        series[f"{name}/ci95_upper"] = mean + ci95
        if f"{name}_n" in averaged:
            series[f"{name}/n"] = averaged[f"{name}_n"].to_numpy(dtype=float)
    for key, values in series.items():
        metrics += _series(key, values, stamps, step, keep)
    table = result.summary_table()
    figures: dict[str, float] = {}
    for figure, mean, ci95 in zip(
        table.index, table["mean"].tolist(), table["ci95"].tolist(), strict=True
    ):
        figures[f"summary/{figure}"] = mean
        figures[f"summary/{figure}_ci95"] = ci95
    for count in ("num_instances", "num_succeeded", "num_failed"):
        if count in result.summary:
            figures[f"summary/{count}"] = float(result.summary[count])
    return metrics + _figures(figures, started_ms)


def _instance_metrics(instance: InstanceResult, started_ms: int, by_step: bool) -> list[Any]:
    frame = instance.timeline
    step, seconds, keep = series_axis(frame, by_step=by_step)
    stamps = _stamps(started_ms, seconds)
    metrics: list[Any] = []
    for key, values in columns(frame, skip=("step",) if by_step else ()):
        metrics += _series(key, values, stamps, step, keep)
    figures = {
        f"summary/{key}": float(value)
        for key, value in instance.summary.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    return metrics + _figures(figures, started_ms)


def _stamps(started_ms: int, seconds: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Each row's timestamp in ms: the export's start plus ``t`` (the start itself without)."""
    offsets = np.where(np.isfinite(seconds), np.round(seconds * 1000.0), 0.0)
    return (started_ms + offsets).astype(np.int64)


def _series(
    key: str,
    values: npt.NDArray[np.float64],
    stamps: npt.NDArray[np.int64],
    step: npt.NDArray[np.int64],
    keep: npt.NDArray[np.bool_],
) -> list[Any]:
    from mlflow.entities import Metric

    written = keep & ~np.isnan(values)  # NaN: not sampled there
    return [
        Metric(key, value, stamp, at)
        for value, stamp, at in zip(
            values[written].tolist(),
            stamps[written].tolist(),
            step[written].tolist(),
            strict=True,
        )
    ]


def _figures(figures: Mapping[str, float], started_ms: int) -> list[Any]:
    from mlflow.entities import Metric

    return [
        Metric(key, value, started_ms, 0) for key, value in figures.items() if not math.isnan(value)
    ]
