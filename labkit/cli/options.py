"""Options that several commands share, each group added by one function, so that
``run``, ``demo`` and ``sweep`` spell and explain them the same way."""

from __future__ import annotations

import argparse

from labkit.cli import arguments

__all__ = ("add_instance_options", "add_output_options", "add_summarize_option")


def add_summarize_option(parser: argparse.ArgumentParser) -> None:
    """``--summarize METRIC=KIND,...``: which summary figure each metric gives."""
    parser.add_argument(
        "--summarize",
        action="append",
        type=arguments.summary_kinds,
        default=[],
        metavar="METRIC=KIND,...",
        help=f"how a recorded metric becomes each instance's summary figure, KIND one of "
        f"{', '.join(arguments.SUMMARY_KINDS)} (loss=last,acc=max gives loss_last and acc_max); "
        "repeatable (default: the last value, the peak for cpu and memory)",
    )


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """Where a run goes besides the terminal: ``--db``, ``--json``, bars, ``--export``."""
    parser.add_argument("--db", default="labkit.db", metavar="PATH", help="record the run here")
    parser.add_argument("--no-db", action="store_true", help="do not record the run")
    parser.add_argument(
        "--json", action="store_true", help="print the result as JSON on stdout (no table)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--export",
        action="append",
        type=arguments.export_target,
        default=[],
        metavar="TARGET[=WHERE]",
        help="also send the run to mlflow[=TRACKING_URI] (default: MLflow's own), "
        "tensorboard[=LOGDIR] (default: runs/NAME-TIME) or prometheus[=[HOST:]PORT] "
        f"(live while it runs; default: 127.0.0.1:{arguments.PROMETHEUS_PORT}); repeatable "
        "(default: none)",
    )


def add_instance_options(parser: argparse.ArgumentParser) -> None:
    """``--executor`` and ``--seed``: where instances run and how they are seeded."""
    parser.add_argument(
        "--executor",
        choices=("thread", "process"),
        default="thread",
        help="where each instance's function runs: 'thread' (this process: async on the "
        "event loop, sync in a thread) or 'process' (a worker process each: CPU-bound "
        "Python runs on all cores, a timeout kills the instance's whole process tree)",
    )
    parser.add_argument(
        "--seed",
        type=arguments.seed,
        default=0,
        metavar="N",
        help="base seed: instance i gets ctx.seed derived from N and i (the same i, the "
        "same seed in every trial of a sweep)",
    )
