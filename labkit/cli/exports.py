"""``--export``: checked and started before a run, the result sent after it."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from labkit.cli.arguments import EXPORT_EXTRAS, PROMETHEUS_PORT
from labkit.cli.usage import UsageError

if TYPE_CHECKING:
    from labkit.export import PrometheusExporter
    from labkit.results import ExperimentResult

__all__ = ("export_result", "start_exports")


def start_exports(
    targets: Sequence[tuple[str, str | None]], name: str, out: TextIO
) -> PrometheusExporter | None:
    """Check that every ``--export`` target's extra is installed, before anything runs, and
    start serving Prometheus when asked; returns the Prometheus exporter or ``None``.

    Raises:
        UsageError: An extra is missing, or the Prometheus address is bad or taken.
    """
    from labkit.errors import MissingDependency
    from labkit.export.base import require

    for target, _ in targets:
        try:
            require(*EXPORT_EXTRAS[target], f"--export {target}")
        except MissingDependency as exc:
            raise UsageError(str(exc)) from exc
    served = [where for target, where in targets if target == "prometheus"]
    if not served:
        return None
    from labkit.export import prometheus

    host, _, port = (served[-1] or str(PROMETHEUS_PORT)).rpartition(":")
    try:
        exporter = prometheus(port=int(port), addr=host or "127.0.0.1", experiment=name)
    except (ValueError, OSError) as exc:
        raise UsageError(f"--export prometheus={served[-1]}: cannot serve there: {exc}") from exc
    print(f"prometheus: serving {exporter.url} while the run lasts", file=out, flush=True)
    return exporter


def export_result(
    targets: Sequence[tuple[str, str | None]], result: ExperimentResult, out: TextIO
) -> bool:
    """Send ``result`` to each ``--export`` target; a failure is printed, never raised.

    Returns:
        Whether every export succeeded.
    """
    from labkit import export

    ok = True
    for target, where in targets:
        if target == "mlflow":
            report = export.mlflow(result, tracking_uri=where)
        elif target == "tensorboard":
            logdir = where or f"runs/{result.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            report = export.tensorboard(result, logdir)
        else:
            continue  # prometheus served the run while it lasted
        print(report, file=out if report.ok else sys.stderr)
        ok = ok and report.ok
    return ok
