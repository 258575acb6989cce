"""Running one experiment from the command line (``labkit demo`` and ``labkit run``):
sandboxes, store, progress bars and exports around ``run_experiment``, then the
summary, the report and the exit status."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from labkit.cli.exports import export_result, start_exports
from labkit.cli.progress import ProgressBars
from labkit.cli.tables import format_summary
from labkit.cli.usage import EXIT_FAILED, EXIT_OK, UsageError
from labkit.events import EventBus
from labkit.experiment import Experiment, estimate_cost, run_experiment
from labkit.progress import reads_duration
from labkit.results import ExperimentResult

if TYPE_CHECKING:
    from labkit.export import PrometheusExporter
    from labkit.sandbox.pool import SandboxPool

__all__ = ("check_report_path", "execute")


def execute(
    args: argparse.Namespace,
    experiment: Experiment,
    *,
    instances: int | str,
    duration: float | None,
    report: str | None,
    options: dict[str, Any],
) -> int:
    """Run ``experiment`` as the command line asks (``args``: the output options) and
    print what came of it; returns the exit status.

    Raises:
        UsageError: The report path, an export target or the sandbox choice is bad.
    """
    human = sys.stderr if args.json else sys.stdout
    if report is not None:
        check_report_path(report)
    exporter = start_exports(args.export, experiment.name, human)
    result = asyncio.run(
        _run_with_progress(
            experiment,
            instances=instances,
            duration=duration,
            db=None if args.no_db else args.db,
            progress=not args.no_progress,
            out=human,
            options=options,
            exporter=exporter,
        )
    )
    if args.json:
        print(result.to_json(), file=sys.stdout)
    else:
        print(format_summary(result), file=human)
    if report is not None:
        from labkit.report import write_html

        written = write_html(result, report)
        print(f"report: {written}", file=human)
    if result.experiment_id is not None:
        print(f"recorded in {args.db} as {result.experiment_id}", file=human)
    exported = export_result(args.export, result, human)
    return EXIT_OK if result.ok and exported else EXIT_FAILED


def check_report_path(report: str) -> None:
    """Refuse, before the run, a report path that could not be written after it.

    Raises:
        UsageError: ``report`` is a directory, or its directory is missing or not
            writable.
    """
    path = Path(report)
    if path.is_dir():
        raise UsageError(f"--report {report}: is a directory; give a file name like report.html")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise UsageError(f"--report {report}: the directory {path.parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"--report {report}: not writable here")


def _sandbox_pool(
    kind: str, planned: int, duration: float | None, out: TextIO
) -> SandboxPool | None:
    """The pool ``--sandbox local`` or ``e2b`` asks for (E2B's cost printed first), or
    ``None`` for ``auto`` and ``none``."""
    if kind not in ("local", "e2b"):
        return None
    from labkit.sandbox.pool import SandboxPool

    if kind == "local":
        from labkit.sandbox.local import LocalSandbox

        return SandboxPool(LocalSandbox, max_size=planned)
    from labkit.sandbox.e2b import E2BSandbox

    cost = estimate_cost(instances=planned, duration=duration or 300.0)
    print(
        f"E2B: {planned} sandboxes x {duration or 300.0:g} s: about ${cost:.4f} "
        "at E2B's published rates (2 vCPU, 512 MiB each)",
        file=out,
    )
    return SandboxPool(E2BSandbox, max_size=planned)


async def _run_with_progress(
    experiment: Experiment,
    *,
    instances: int | str,
    duration: float | None,
    db: str | None,
    progress: bool,
    out: TextIO,
    options: dict[str, Any],
    exporter: PrometheusExporter | None = None,
) -> ExperimentResult:
    planned = instances if isinstance(instances, int) else options.get("max_instances", 32)
    sandbox_pool = _sandbox_pool(options.pop("sandbox", "auto"), planned, duration, out)
    expected = duration if duration and reads_duration(experiment.fn) else None
    bars = ProgressBars(instances if isinstance(instances, int) else 0, expected, enabled=progress)
    on_event: Any = bars
    if exporter is not None:  # serves the run to Prometheus while it lasts
        on_event = EventBus()
        on_event.subscribe(bars)
        on_event.subscribe(exporter)
    store = None
    if db is not None:
        from labkit.store import Store

        store = Store(db)
    try:
        return await run_experiment(
            experiment,
            instances=instances,  # type: ignore[arg-type]
            duration=duration,
            sandbox_pool=sandbox_pool,
            store=store,
            on_event=on_event,
            **options,
        )
    finally:
        bars.close()
        if exporter is not None:
            exporter.close()
        if sandbox_pool is not None:
            await sandbox_pool.close()
        if store is not None:
            store.close()
