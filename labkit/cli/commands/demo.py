"""``labkit demo``: a built-in scenario with a few local instances, and its report."""

from __future__ import annotations

import argparse

from labkit.cli import arguments
from labkit.cli.execute import execute
from labkit.cli.options import add_output_options
from labkit.cli.registry import Command
from labkit.experiment import MAX_INSTANCES

__all__ = ("Demo",)

DEMO_SCENARIO = "error_burst"


class Demo(Command):
    """Runs a scenario of :mod:`labkit.scenarios` and writes a standalone report."""

    name = "demo"
    help = "run a built-in scenario with 3 local instances and write a report"
    description = (
        "Run a built-in scenario (real subprocesses, about 20 s), print the averaged "
        "summary, write a standalone HTML report and record the run."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from labkit.scenarios import INTENSITIES, SCENARIOS

        parser.add_argument(
            "--scenario",
            choices=sorted(SCENARIOS),
            default=DEMO_SCENARIO,
            help="the built-in workload to run",
        )
        parser.add_argument(
            "--intensity", choices=INTENSITIES, default="medium", help="how hard the workload works"
        )
        parser.add_argument(
            "-n",
            "--instances",
            type=arguments.instance_count,
            default=3,
            metavar="N",
            help=f"parallel instances, 1 to {MAX_INSTANCES}",
        )
        parser.add_argument(
            "--duration",
            type=arguments.seconds,
            default=20.0,
            metavar="SECONDS",
            help="how long each instance runs",
        )
        parser.add_argument(
            "--report",
            default="labkit-demo.html",
            metavar="PATH",
            help="write the standalone HTML report here (a file, not a directory)",
        )
        add_output_options(parser)

    def run(self, args: argparse.Namespace) -> int:
        from labkit.scenarios import scenario

        return execute(
            args,
            scenario(args.scenario, args.intensity),
            instances=args.instances,
            duration=args.duration,
            report=args.report,
            options={"sample_every": 1.0 if args.duration >= 5 else 0.25},
        )
