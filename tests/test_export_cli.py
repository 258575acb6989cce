"""``labkit run ... --export TARGET[=WHERE]``: the run is exported, and kept when that fails."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

WORKLOAD = textwrap.dedent(
    """
    async def work(ctx):
        for step in range(4):
            ctx.record(value=float(step + ctx.index))
    """
)


def labkit(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    (cwd / "work.py").write_text(WORKLOAD)
    return subprocess.run(
        [sys.executable, "-m", "labkit.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_run_exports_to_mlflow_and_tensorboard(tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="needs labkit[mlflow]")
    pytest.importorskip("tensorboard", reason="needs labkit[tensorboard]")
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = labkit(
        "run", "work:work", "-n", "3", "--no-db", "--json", "--no-progress",
        "--export", f"mlflow={uri}", "--export", "tensorboard=tb",
        cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["summary"]["num_instances"] == 3
    assert f"export mlflow: written to {uri}" in done.stderr
    assert "export tensorboard: written to tb" in done.stderr
    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("work").experiment_id]
    )
    assert len(runs) == 4  # the parent and one per instance
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == [
        "average",
        "instance_0",
        "instance_1",
        "instance_2",
    ]


@pytest.mark.slow
def test_an_export_that_fails_is_reported_and_the_result_still_printed(tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="needs labkit[mlflow]")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    done = labkit(
        "run", "work:work", "-n", "2", "--json", "--db", "lab.db",
        "--export", f"mlflow=http://127.0.0.1:{port}",
        cwd=tmp_path,
        env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"},
    )  # fmt: skip

    assert done.returncode == 1
    assert f"export mlflow: failed (http://127.0.0.1:{port})" in done.stderr
    result = json.loads(done.stdout)
    assert [i["ok"] for i in result["instances"]] == [True, True]
    assert "recorded in lab.db" in done.stderr


def test_an_unknown_target_is_refused_before_anything_runs(tmp_path: Path) -> None:
    done = labkit("run", "work:work", "--no-db", "--export", "wandb", cwd=tmp_path)

    assert done.returncode == 2
    assert "expected mlflow, tensorboard or prometheus" in done.stderr
    assert "work: 1 instances" not in done.stdout


def test_a_prometheus_port_in_use_is_refused_before_anything_runs(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client", reason="needs labkit[prometheus]")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = labkit(
            "run", "work:work", "--no-db", "--export", f"prometheus=127.0.0.1:{port}",
            cwd=tmp_path,
        )  # fmt: skip

    assert done.returncode == 2
    assert f"--export prometheus=127.0.0.1:{port}: cannot serve there" in done.stderr
    assert "work: 1 instances" not in done.stdout


def test_prometheus_serves_while_the_run_lasts(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client", reason="needs labkit[prometheus]")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    done = labkit("run", "work:work", "--no-db", "--export", f"prometheus={port}", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert f"prometheus: serving http://127.0.0.1:{port}/metrics while the run lasts" in done.stdout
