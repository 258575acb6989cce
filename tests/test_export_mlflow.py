"""``lk.export.mlflow`` against MLflow's own local SQLite tracking store, read back."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import labkit as lk
from labkit.results import ExperimentResult, InstanceResult
from tests._exported import PARAMS, run_result, with_seeds

mlflow = pytest.importorskip("mlflow", reason="needs labkit[mlflow]")
pytest.importorskip("sqlalchemy", reason="MLflow's SQLite store needs labkit[mlflow]")
from mlflow import MlflowClient  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def history(client: Any, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def children(client: Any, experiment_id: str, parent: str) -> dict[int, Any]:
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    return {int(run.data.tags["labkit.instance"]): run for run in runs}


def assert_series(got: dict[int, float], steps: np.ndarray, values: np.ndarray) -> None:
    expected = {
        int(step): float(value)
        for step, value in zip(steps, values, strict=True)
        if not math.isnan(value)
    }
    assert got.keys() == expected.keys()
    for step, value in expected.items():
        assert got[step] == pytest.approx(value, rel=0, abs=1e-12)


def test_a_run_becomes_a_parent_run_with_a_nested_run_per_instance(tmp_path: Path) -> None:
    result = with_seeds(run_result())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    report = lk.export.mlflow(result, tracking_uri=uri, experiment_name="exported")

    assert report.ok, report.error
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("exported")
    assert experiment.experiment_id == report.details["experiment_id"]
    parent = client.get_run(report.details["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["lr"] == "0.01"
    assert json.loads(parent.data.params["optimizer"]) == PARAMS["optimizer"]
    assert parent.data.params["labkit.instances"] == "4"

    # The summary, each figure with its ci95, equal to labkit's own.
    table = result.summary_table()
    for figure in ("loss_last", "final", "acc_last"):
        mean, ci95 = table.loc[figure, "mean"], table.loc[figure, "ci95"]
        assert parent.data.metrics[f"summary/{figure}"] == pytest.approx(mean, abs=1e-12)
        assert parent.data.metrics[f"summary/{figure}_ci95"] == pytest.approx(ci95, abs=1e-12)
    assert parent.data.metrics["summary/num_failed"] == 1

    # The averaged timeline, per step: mean, ci95 bounds, n, t.
    averaged = result.averaged
    steps = np.arange(len(averaged))
    run_id = parent.info.run_id
    for metric in ("loss", "acc"):
        mean, ci95 = averaged[metric].to_numpy(), averaged[f"{metric}_ci95"].to_numpy()
        assert_series(history(client, run_id, metric), steps, mean)
        assert_series(history(client, run_id, f"{metric}/ci95_lower"), steps, mean - ci95)
        assert_series(history(client, run_id, f"{metric}/ci95_upper"), steps, mean + ci95)
    assert_series(history(client, run_id, "n"), steps, averaged["n"].to_numpy(dtype=float))
    assert_series(history(client, run_id, "t"), steps, averaged["t"].to_numpy())

    # One nested run per instance: its timeline, its summary, its seed, its failure.
    nested = children(client, experiment.experiment_id, run_id)
    assert sorted(nested) == [0, 1, 2, 3]
    assert set(report.details["instance_run_ids"].values()) == {
        run.info.run_id for run in nested.values()
    }
    for instance in result.instances:
        run = nested[instance.index]
        assert run.data.params["seed"] == str(1000 + instance.index)
        assert run.data.params["lr"] == "0.01"
        timeline = instance.timeline
        rows = np.arange(len(timeline))
        for column in ("t", "loss", "acc"):
            got = history(client, run.info.run_id, column)
            assert_series(got, rows, timeline[column].to_numpy())
        for key, value in instance.summary.items():
            assert run.data.metrics[f"summary/{key}"] == pytest.approx(value, abs=1e-12)
    assert nested[3].info.status == "FAILED"
    assert "instance 3 diverged" in nested[3].data.tags["labkit.error"]
    assert {nested[i].info.status for i in range(3)} == {"FINISHED"}


def test_a_run_aligned_on_steps_keeps_its_steps(tmp_path: Path) -> None:
    result = run_result(by_step=True, instances=3)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    report = lk.export.mlflow(result, tracking_uri=uri)

    assert report.ok, report.error
    client = MlflowClient(uri)
    parent = report.details["parent_run_id"]
    averaged = result.averaged
    steps = averaged["step"].to_numpy()
    assert sorted(history(client, parent, "loss")) == list(range(0, 50, 5))
    assert_series(history(client, parent, "loss"), steps, averaged["loss"].to_numpy())
    for index, run_id in report.details["instance_run_ids"].items():
        timeline = result.instances[index].timeline
        assert_series(
            history(client, run_id, "loss"), timeline["step"].to_numpy(), timeline["loss"]
        )
        assert client.get_metric_history(run_id, "step") == []


def test_writes_are_batched_within_mlflows_request_limits(tmp_path: Path) -> None:
    # 150 params, 3 instances x 1,500 steps: past every per-request limit, which
    # MLflow's store enforces on each request (it refuses an oversized one).
    base = run_result(by_step=True, instances=3)
    instances = []
    for instance in base.instances:
        steps = np.arange(1500, dtype=float)
        timeline = {"t": steps / 10, "step": steps, "loss": np.sin(steps + instance.index)}
        instances.append(
            InstanceResult(index=instance.index, ok=True, error=None, timeline=lk_frame(timeline))
        )
    params = {f"p{i:03d}": i for i in range(150)}
    result = ExperimentResult.build("wide", params, instances, base.config)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    report = lk.export.mlflow(result, tracking_uri=uri)

    assert report.ok, report.error
    client = MlflowClient(uri)
    parent = client.get_run(report.details["parent_run_id"])
    assert {k: v for k, v in parent.data.params.items() if k.startswith("p")} == {
        key: str(value) for key, value in params.items()
    }
    for index, run_id in report.details["instance_run_ids"].items():
        got = history(client, run_id, "loss")
        assert len(got) == 1500
        assert got[1499] == pytest.approx(math.sin(1499 + index), abs=1e-12)


def lk_frame(columns: dict[str, np.ndarray]) -> Any:
    import pandas as pd

    return pd.DataFrame(columns)


def test_a_tracking_server_that_does_not_answer_is_reported_and_the_result_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_result(instances=2)
    before = result.to_json()

    report = lk.export.mlflow(result, tracking_uri=f"http://127.0.0.1:{port}")

    assert not report.ok
    assert report.destination == f"http://127.0.0.1:{port}"
    assert "Connection" in (report.error or "") or "connect" in (report.error or "")
    assert "failed" in str(report)
    assert result.to_json() == before
