"""``lk.export.prometheus``: a running experiment scraped by a real Prometheus server."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import labkit as lk
from labkit.errors import ConfigError
from labkit.stats import t_quantile

pytest.importorskip("prometheus_client", reason="needs labkit[prometheus]")
from prometheus_client.parser import text_string_to_metric_families

STEPS = 20


async def climb(ctx: lk.InstanceContext) -> None:
    for step in range(STEPS):
        ctx.record(value=10.0 * ctx.index + step + 0.125, other=float(-step))
        await asyncio.sleep(0.1)
    if ctx.index == 4:
        raise RuntimeError("the last instance fails")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real Prometheus (Debian's) on 127.0.0.1; the test writes its scrape target."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Debian's prometheus is not installed (apt-get install prometheus)")
    targets = tmp_path / "targets.json"
    targets.write_text("[]")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n"
        "scrape_configs:\n  - job_name: labkit\n    file_sd_configs:\n"
        f"      - files: ['{targets}']\n        refresh_interval: 1s\n"
    )
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address={address}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("w"),
    )
    try:
        api = f"http://{address}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{api}/-/ready", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log = (tmp_path / "prometheus.log").read_text()[-2000:]
                pytest.fail(f"prometheus did not start: {log}")
            time.sleep(0.1)
        yield api, targets
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(api: str, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
    """An instant query: each series' labels (without Prometheus's own) -> its value."""
    url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as answer:
        body = json.load(answer)
    assert body["status"] == "success", body
    found = {}
    for series in body["data"]["result"]:
        labels = {
            k: v for k, v in series["metric"].items() if k not in ("__name__", "instance", "job")
        }
        found[tuple(sorted(labels.items()))] = float(series["value"][1])
    return found


def ci95(values: list[float]) -> float:
    data = np.asarray(values)
    return t_quantile(0.975, data.size - 1) * float(data.std(ddof=1)) / math.sqrt(data.size)


@pytest.mark.slow
def test_prometheus_scrapes_a_running_experiment_and_its_end(
    prometheus_server: tuple[str, Path],
) -> None:
    api, targets = prometheus_server
    exporter = lk.export.prometheus(port=0, experiment="climb")
    assert exporter.port is not None
    targets.write_text(json.dumps([{"targets": [f"127.0.0.1:{exporter.port}"]}]))
    deadline = time.monotonic() + 30
    while query(api, 'up{job="labkit"}') != {(): 1.0}:  # scraped before the run starts
        assert time.monotonic() < deadline, "Prometheus never scraped the exporter"
        time.sleep(0.2)
    seen_running: list[float] = []

    async def run_and_watch() -> lk.ExperimentResult:
        task = asyncio.create_task(
            lk.run_experiment(lk.Experiment("climb", climb), instances=5, on_event=exporter)
        )
        while not task.done():
            found = await asyncio.to_thread(
                query, api, 'labkit_instances{experiment="climb",state="running"}'
            )
            seen_running.extend(found.values())
            await asyncio.sleep(0.2)
        return await task

    with exporter:
        result = asyncio.run(run_and_watch())
        # The last scrape after the end: every instance done, the counters final.
        deadline = time.monotonic() + 20
        while True:
            states = {dict(k)["state"]: v for k, v in query(api, "labkit_instances").items()}
            if states.get("succeeded") == 4 and states.get("failed") == 1:
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.2)
        means = {dict(k)["metric"]: v for k, v in query(api, "labkit_metric_mean").items()}
        halves = {dict(k)["metric"]: v for k, v in query(api, "labkit_metric_ci95").items()}
        counts = {dict(k)["metric"]: v for k, v in query(api, "labkit_metric_instances").items()}
        tasks = {dict(k)["event"]: v for k, v in query(api, "labkit_runner_tasks_total").items()}
        dashboard = [query(api, promql) for promql in dashboard_queries("climb", "value")]

    assert max(seen_running) > 0  # Prometheus saw instances running, live
    assert states == {"queued": 0, "running": 0, "succeeded": 4, "failed": 1}
    # The latest average is over the instances that did not fail: their last values.
    last = [float(i.timeline["value"].iloc[-1]) for i in result.instances if i.ok]
    assert last == [10.0 * index + STEPS - 1 + 0.125 for index in range(4)]
    assert means["value"] == pytest.approx(float(np.mean(last)), rel=1e-12)
    assert halves["value"] == pytest.approx(ci95(last), rel=1e-12)
    assert counts == {"value": 4, "other": 4}
    assert means["other"] == -(STEPS - 1)
    assert halves["other"] == 0.0
    assert tasks["queued"] == 5 and tasks["succeeded"] == 4 and tasks["failed"] == 1
    # Every query of the Grafana dashboard in examples/ finds its series.
    assert len(dashboard) == 6 and all(dashboard), dashboard


def dashboard_queries(experiment: str, metric: str) -> list[str]:
    path = Path(__file__).parents[1] / "examples" / "grafana-labkit.json"
    panels = json.loads(path.read_text())["panels"]
    return [
        target["expr"].replace("$experiment", experiment).replace("$metric", metric)
        for panel in panels
        for target in panel.get("targets", ())
    ]


def test_closing_the_exporter_stops_serving() -> None:
    exporter = lk.export.prometheus(port=0)
    url = exporter.url
    assert url is not None
    with urllib.request.urlopen(url, timeout=5) as answer:
        families = {f.name for f in text_string_to_metric_families(answer.read().decode())}
    assert {"labkit_instances", "labkit_runner_tasks"} <= families

    exporter.close()

    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


def test_a_port_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigError, match="port"):
        lk.export.prometheus(port=70000)


def test_samples_read_from_each_attempts_log_count_as_its_latest_values() -> None:
    exporter = lk.export.PrometheusExporter(experiment="remote")
    bus = lk.EventBus()
    bus.subscribe(exporter)
    assert not bus.route(lk.InstanceEvent, "sample")  # no event is built per sample
    for index, value in enumerate((1.0, 3.0, math.inf)):
        log = lk.SampleLog()
        bus.emit(lk.InstanceEvent("started", index, 0.0))
        bus.emit(lk.TimelineEvent(index, 0.0, log))
        log.append(0.1, {"x": value - 1})
        log.append(0.2, {"x": value})

    families = {family.name: family for family in exporter.collect()}

    (mean,) = families["labkit_metric_mean"].samples
    assert mean.value == 2.0  # the last samples, 1 and 3; inf is no value to average
    (count,) = families["labkit_metric_instances"].samples
    assert count.value == 2
