"""Exporters: an experiment's result into the tools people already keep their runs in.

- :func:`mlflow` (``lk.export.mlflow(result)``): a parent run with the parameters,
  the summary with its ci95 and the averaged timeline, and a nested run per instance
  (``labkit[mlflow]``).
- :func:`tensorboard` (``lk.export.tensorboard(result, "runs/train")``): a run
  directory per instance and an ``average`` run with its band (``labkit[tensorboard]``).
- :func:`prometheus` (``on_event=lk.export.prometheus(port=9464)``): a live
  ``/metrics`` endpoint for a running experiment (``labkit[prometheus]``).
- Arrow and Polars need no exporter: ``result.to_arrow()`` (``labkit[arrow]``).

The result exporters return an :class:`ExportReport` and never raise for the
target's sake: a store that cannot be reached or written is reported
(``report.ok`` is false, ``report.error`` says why, a warning is logged) and the
result is left as it was.
"""

from __future__ import annotations

from labkit.export.base import ExportReport
from labkit.export.mlflow_runs import export_mlflow as mlflow
from labkit.export.prometheus_metrics import PrometheusExporter
from labkit.export.prometheus_metrics import export_prometheus as prometheus
from labkit.export.tensorboard_runs import export_tensorboard as tensorboard

__all__ = ("ExportReport", "PrometheusExporter", "mlflow", "prometheus", "tensorboard")
