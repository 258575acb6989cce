"""What exporting costs: MLflow against its client's fastest batched writes, and Prometheus.

1. MLflow: a result of 16 instances x 10,000 steps x 3 metrics goes to a fresh
   local SQLite tracking store through ``lk.export.mlflow``. The baseline, on
   another fresh store in the same run, writes the same runs, tags, params and
   points the fastest way MLflow's client allows: every entity built beforehand
   (not timed), then per run one ``create_run`` with its tags, one
   ``MlflowClient.log_batch`` and its end. Export and baseline alternate, best of 2.
   Every request that reaches the store is checked against MLflow's per-request limits (1,000
   metrics, 100 params, 100 tags, 1,000 entities): the count of those past a limit
   is printed (it must be 0), with the ratio export/baseline (the goal: under 2).
2. Prometheus: the wall time of an experiment (8 instances recording 3 metrics,
   60,000 samples each) watched by ``lk.export.prometheus`` and scraped every
   second by another process (Prometheus' own default is once a minute), against the same run
   unwatched; best of 7 of each, alternating which goes first, after a warm-up run. The goal: under
   2 % more. Beside it, the same for the process's CPU time, and the CPU time the
   exporter's own code took (its event handler and its scrapes, timed per thread)
   as a share of the watched run's: on a shared machine whose other work blurs
   wall times by more than 2 %, that share is what watching costs.

Run: ``python benchmarks/bench_export.py`` (``--quick``: 1,000 steps, 3 rounds).
Not a test: the numbers depend on the machine and the disk.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import labkit as lk
from labkit.export.mlflow_runs import _instance_metrics, _params, _parent_metrics
from labkit.export.prometheus_metrics import PrometheusExporter
from labkit.results import ExperimentResult, InstanceResult

INSTANCES = 16
METRICS = ("loss", "accuracy", "grad_norm")
SAMPLES = 60_000  # per instance, in the Prometheus part
SCRAPE_EVERY = 1.0  # seconds


def synthetic_result(steps: int) -> ExperimentResult:
    rng = np.random.default_rng(0)
    instances = []
    for index in range(INSTANCES):
        step = np.arange(steps, dtype=float)
        columns: dict[str, Any] = {"t": step * 0.01, "step": step}
        for metric in METRICS:
            columns[metric] = np.cumsum(rng.normal(size=steps))
        instances.append(
            InstanceResult(index=index, ok=True, error=None, timeline=pd.DataFrame(columns))
        )
    return ExperimentResult.build("bench", {"lr": 0.01}, instances, {"instances": INSTANCES})


class RequestCheck:
    """Counts the requests reaching MLflow's SQL store, and those past its limits."""

    def __init__(self) -> None:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from mlflow.utils import validation

        self.requests = 0
        self.over_limit = 0
        original = SqlAlchemyStore.log_batch
        check = self

        def log_batch(store: Any, run_id: str, metrics: Any, params: Any, tags: Any) -> Any:
            check.requests += 1
            if (
                len(metrics) > validation.MAX_METRICS_PER_BATCH
                or len(params) > validation.MAX_PARAMS_TAGS_PER_BATCH
                or len(tags) > validation.MAX_PARAMS_TAGS_PER_BATCH
                or len(metrics) + len(params) + len(tags) > validation.MAX_ENTITIES_PER_BATCH
            ):
                check.over_limit += 1
            return original(store, run_id, metrics, params, tags)

        SqlAlchemyStore.log_batch = log_batch  # type: ignore[method-assign]


def mlflow_baseline(result: ExperimentResult, uri: str) -> tuple[float, int]:
    """Seconds to write what the export writes (runs, tags, params, metrics) with every
    entity built beforehand: one ``create_run`` with its tags and one ``log_batch`` per
    run, then its end."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.create_experiment("baseline")
    started = int(time.time() * 1000)
    params = _params(result.params)
    config = _params({f"labkit.{key}": value for key, value in result.config.items()})
    runs = [(_parent_metrics(result, started, True), params + config, {"labkit.experiment": "b"})]
    for instance in result.instances:
        tags = {"labkit.instance": str(instance.index), "labkit.ok": "true"}
        extra = _params({"labkit.instance": instance.index})
        runs.append((_instance_metrics(instance, started, True), params + extra, tags))
    points = sum(len(metrics) for metrics, _, _ in runs)
    begin = time.perf_counter()
    parent = ""
    for number, (metrics, run_params, tags) in enumerate(runs):
        if number:
            tags = {**tags, "mlflow.parentRunId": parent}
        run_id = client.create_run(experiment, run_name=f"run {number}", tags=tags).info.run_id
        parent = parent or run_id
        client.log_batch(run_id, metrics=metrics, params=run_params)
        client.set_terminated(run_id)
    return time.perf_counter() - begin, points


def bench_mlflow(steps: int) -> None:
    from mlflow import MlflowClient

    result = synthetic_result(steps)
    check = RequestCheck()
    with tempfile.TemporaryDirectory() as folder:
        baselines, exports = [], []
        for attempt in range(2):
            base_uri = f"sqlite:///{Path(folder) / f'baseline{attempt}.db'}"
            export_uri = f"sqlite:///{Path(folder) / f'export{attempt}.db'}"
            for uri in (base_uri, export_uri):  # make the schemas before timing
                MlflowClient(uri).search_experiments()
            begin = time.perf_counter()
            report = lk.export.mlflow(result, tracking_uri=export_uri, experiment_name="export")
            exports.append(time.perf_counter() - begin)
            assert report.ok, report.error
            seconds, points = mlflow_baseline(result, base_uri)
            baselines.append(seconds)
        baseline, exported = min(baselines), min(exports)
    print(
        f"mlflow: {INSTANCES} instances x {steps:,} steps x {len(METRICS)} metrics, "
        f"{points:,} metric points per export, {check.requests:,} requests in all"
    )
    print(f"  baseline (prebuilt entities, one log_batch per run): {baseline:.2f} s (best of 2)")
    print(f"  lk.export.mlflow:                                   {exported:.2f} s (best of 2)")
    print(f"  export / baseline: {exported / baseline:.2f}x (goal: < 2x)")
    print(f"  requests past MLflow's per-request limits: {check.over_limit} (goal: 0)")


async def _record(ctx: lk.InstanceContext) -> None:
    for step in range(SAMPLES):
        ctx.record(loss=1.0 / (step + 1), accuracy=step * 1e-5, grad_norm=float(step % 7))
        if step % 50 == 0:
            await asyncio.sleep(0)


SCRAPER = """
import sys, time, urllib.request
while True:
    time.sleep(float(sys.argv[2]))
    with urllib.request.urlopen(sys.argv[1], timeout=5) as answer:
        answer.read()
"""


def _timed(on_event: Any = None) -> tuple[float, float]:
    """Wall and CPU seconds of one run of the benchmark's experiment."""
    experiment = lk.Experiment("watched", _record)
    wall, cpu = time.perf_counter(), time.process_time()
    asyncio.run(lk.run_experiment(experiment, instances=8, on_event=on_event))
    return time.perf_counter() - wall, time.process_time() - cpu


class TimedExporter(PrometheusExporter):
    """The exporter, counting the CPU time its own code takes (events and scrapes)."""

    def __init__(self) -> None:
        super().__init__(experiment="watched")
        self.cpu = 0.0
        self.scrapes = 0

    def __call__(self, event: Any) -> None:
        begin = time.thread_time()
        super().__call__(event)
        self.cpu += time.thread_time() - begin

    def collect(self) -> Iterator[Any]:
        begin = time.thread_time()
        families = list(super().collect())
        self.cpu += time.thread_time() - begin
        self.scrapes += 1
        return iter(families)


def bench_prometheus(rounds: int) -> None:
    _timed()  # warm-up, not counted
    bare: list[tuple[float, float]] = []
    watched: list[tuple[float, float]] = []
    shares: list[float] = []
    for round_ in range(rounds):
        if round_ % 2:  # alternate which goes first
            bare.append(_timed())
        with TimedExporter().serve(port=0) as exporter:
            assert exporter.url is not None
            # The scraper is another process, as Prometheus is, up and scraping before
            # the run starts (a starting interpreter would compete for the CPU).
            scraper = subprocess.Popen(
                [sys.executable, "-c", SCRAPER, exporter.url, str(SCRAPE_EVERY)]
            )
            try:
                while not exporter.scrapes:
                    time.sleep(0.05)
                watched.append(_timed(exporter))
            finally:
                scraper.kill()
                scraper.wait()
            shares.append(exporter.cpu / watched[-1][1])
        if not round_ % 2:
            bare.append(_timed())
    wall = min(w for w, _ in watched) / min(w for w, _ in bare)
    cpu = min(c for _, c in watched) / min(c for _, c in bare)
    print(
        f"prometheus: 8 instances x {SAMPLES:,} samples x 3 metrics, "
        f"scraped every {SCRAPE_EVERY:g} s, best of {rounds}"
    )
    print(f"  bare: {min(w for w, _ in bare):.3f} s, watched: {min(w for w, _ in watched):.3f} s")
    print(f"  watched / bare, wall time: {wall:.4f} (goal: < 1.02)")
    print(f"  watched / bare, CPU time:  {cpu:.4f}")
    print(
        "  the exporter's own CPU time (events and scrapes) / the watched run's CPU time: "
        f"{100 * max(shares):.3f} % (the largest of {rounds})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 steps, 3 rounds")
    args = parser.parse_args()
    bench_mlflow(1_000 if args.quick else 10_000)
    bench_prometheus(3 if args.quick else 7)


if __name__ == "__main__":
    main()
