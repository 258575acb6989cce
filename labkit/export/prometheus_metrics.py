"""A running experiment as Prometheus metrics: :class:`PrometheusExporter`.

The exporter is an event watcher (``on_event=exporter``) that serves, on
``http://ADDR:PORT/metrics``:

- ``labkit_instances{experiment, state}``: instances ``queued``, ``running``,
  ``succeeded`` and ``failed`` (by their latest attempt);
- ``labkit_metric_mean{experiment, metric}``, ``labkit_metric_ci95{...}`` and
  ``labkit_metric_instances{...}``: each metric's latest average, over the latest
  finite value of every instance that has not failed, its 95 % confidence
  half-width (from 2 instances on) and how many instances it averages;
- ``labkit_runner_tasks_total{experiment, event}``: the runner's counters, one per
  task event (``queued``, ``started``, ``retrying``, ``succeeded``, ``failed``,
  ``cancelled``).

It is built on ``prometheus_client`` (its text format and HTTP server, a custom
collector on a registry of its own) rather than a hand-written endpoint: the
format's escaping and content negotiation are the library's to get right. Watching
costs the run almost nothing: the exporter keeps each attempt's sample log (it
declines per-sample events) and reads only the rows new since the last scrape,
on the server's thread, when Prometheus asks.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from labkit._checks import check
from labkit.events import InstanceEvent, TaskEvent, TimelineEvent, Watcher
from labkit.export.base import require
from labkit.samplelog import SampleLog
from labkit.stats import t_half_width

__all__ = ("DEFAULT_PORT", "PrometheusExporter", "TASK_EVENTS", "export_prometheus")

DEFAULT_PORT = 9464
"""The port served when none is given (the one OpenTelemetry's Prometheus exporter uses)."""

TASK_EVENTS = ("queued", "started", "retrying", "succeeded", "failed", "cancelled")
"""The runner's task events, each counted in ``labkit_runner_tasks_total``."""

_STATES = ("queued", "running", "succeeded", "failed")


class PrometheusExporter(Watcher):
    """Serves a running experiment's state to Prometheus; pass it as ``on_event``.

    Build one with :func:`export_prometheus` (``lk.export.prometheus``), which also
    starts its HTTP server. Close it (or use it as a context manager) to stop serving.
    It follows one experiment at a time: a sweep's events, wrapped per trial
    (:class:`~labkit.events.TrialEvent`), are not among the events it reads.

    Args:
        experiment: The value of every series' ``experiment`` label.
    """

    def __init__(self, *, experiment: str = "") -> None:
        self.experiment = experiment
        self._lock = threading.Lock()
        self._tasks: Counter[str] = Counter()
        self._states: dict[int, str] = {}
        self._logs: dict[int, SampleLog] = {}
        self._read: dict[int, int] = {}  # instance -> rows of its log already read
        self._latest: dict[int, dict[str, float]] = {}  # instance -> metric -> last finite value
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.url: str | None = None

    def _count_task(self, event: TaskEvent) -> None:
        with self._lock:
            self._tasks[event.kind] += 1

    on_task_queued = on_task_started = on_task_retry = _count_task
    on_task_succeeded = on_task_failed = on_task_cancelled = _count_task

    def on_instance_started(self, event: InstanceEvent) -> None:
        with self._lock:
            self._states[event.instance] = "running"
            self._logs.pop(event.instance, None)  # this attempt's log is announced next
            self._latest[event.instance] = {}

    def on_samples(self, event: TimelineEvent) -> None:
        # A new attempt: its log replaces the last one's samples (read at scrapes).
        with self._lock:
            self._logs[event.instance] = event.log
            self._read[event.instance] = 0
            self._latest[event.instance] = {}

    def on_instance_finished(self, event: InstanceEvent) -> None:
        with self._lock:
            self._states[event.instance] = "succeeded"

    def on_instance_failed(self, event: InstanceEvent) -> None:
        with self._lock:
            self._states[event.instance] = "failed"

    def collect(self) -> Iterator[Any]:
        """The current series (``prometheus_client``'s collector protocol)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._lock:
            self._read_logs()
            states = Counter(self._states.values())
            # Started once = left the queue; a retry's start is not a first start.
            queued = self._tasks["queued"] - (self._tasks["started"] - self._tasks["retrying"])
            states["queued"] = max(queued, 0)
            tasks = dict(self._tasks)
            values: dict[str, list[float]] = {}
            for index, latest in self._latest.items():
                if self._states.get(index) == "failed":
                    continue
                for name, value in latest.items():
                    values.setdefault(name, []).append(value)
        label = [self.experiment]
        instances = GaugeMetricFamily(
            "labkit_instances", "Instances by state", labels=["experiment", "state"]
        )
        for state in _STATES:
            instances.add_metric([*label, state], states.get(state, 0))
        yield instances
        mean = GaugeMetricFamily(
            "labkit_metric_mean",
            "Each metric's average over the instances' latest values",
            labels=["experiment", "metric"],
        )
        ci95 = GaugeMetricFamily(
            "labkit_metric_ci95",
            "Half-width of the 95 % confidence interval of labkit_metric_mean",
            labels=["experiment", "metric"],
        )
        count = GaugeMetricFamily(
            "labkit_metric_instances",
            "Instances averaged in labkit_metric_mean",
            labels=["experiment", "metric"],
        )
        for name, samples in sorted(values.items()):
            data = np.asarray(samples, dtype=float)
            n = int(data.size)
            mean.add_metric([*label, name], float(data.mean()))
            count.add_metric([*label, name], n)
            if n > 1:
                half = t_half_width(float(data.std(ddof=1)), n)
                ci95.add_metric([*label, name], half)
        yield mean
        yield ci95
        yield count
        counters = CounterMetricFamily(
            "labkit_runner_tasks", "The runner's task events", labels=["experiment", "event"]
        )
        for kind in TASK_EVENTS:
            counters.add_metric([*label, kind], tasks.get(kind, 0))
        yield counters

    def _read_logs(self) -> None:
        """Fold the rows each log gained since the last scrape into the latest values."""
        for index, log in self._logs.items():
            start = self._read.get(index, 0)
            if len(log) <= start:
                continue
            offsets, columns = log.read(start)
            latest = self._latest.setdefault(index, {})
            for name, column in columns.items():
                finite = np.flatnonzero(np.isfinite(column))
                if finite.size:
                    latest[name] = float(column[finite[-1]])
            self._read[index] = start + len(offsets)

    def serve(self, *, port: int = DEFAULT_PORT, addr: str = "127.0.0.1") -> PrometheusExporter:
        """Start serving ``/metrics`` on ``addr:port`` (``port=0``: any free port; see ``url``).

        Raises:
            ConfigError: ``port`` is not 0 to 65535.
            OSError: The port cannot be bound.
        """
        check(
            isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 65535,
            "port",
            port,
            "an integer from 0 to 65535 (0: any free port)",
        )
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        self._server, self._thread = start_http_server(port, addr=addr, registry=registry)
        host, bound = self._server.server_address[:2]
        self.url = f"http://{host}:{bound}/metrics"
        return self

    @property
    def port(self) -> int | None:
        """The port served, once serving."""
        return None if self._server is None else int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving (idempotent); the series are no longer scraped."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> PrometheusExporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def export_prometheus(
    *, port: int = DEFAULT_PORT, addr: str = "127.0.0.1", experiment: str = ""
) -> PrometheusExporter:
    """Serve a running experiment to Prometheus: pass the exporter as ``on_event``.

    Example::

        with lk.export.prometheus(port=9464, experiment="train") as exporter:
            result = await lk.run_experiment(exp, instances=8, on_event=exporter)

    Args:
        port: The port of ``/metrics`` (0: any free port; ``exporter.url`` says which).
        addr: The address to listen on; the default serves this machine only.
        experiment: The ``experiment`` label of every series.

    Returns:
        The exporter, serving.

    Raises:
        ConfigError: ``port`` is out of range.
        MissingDependency: ``prometheus_client`` is not installed (``labkit[prometheus]``).
        OSError: The port cannot be bound (in use, not permitted).
    """
    require("prometheus_client", "prometheus", "serving metrics to Prometheus")
    return PrometheusExporter(experiment=experiment).serve(port=port, addr=addr)
