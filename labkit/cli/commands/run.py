"""``labkit run``: one experiment as parallel instances."""

from __future__ import annotations

import argparse
from typing import Any

from labkit.cli import arguments
from labkit.cli.execute import execute
from labkit.cli.options import add_instance_options, add_output_options, add_summarize_option
from labkit.cli.registry import Command
from labkit.cli.target import command_experiment
from labkit.cli.usage import UsageError
from labkit.experiment import MAX_INSTANCES, Experiment

__all__ = ("Run",)


class Run(Command):
    """Runs ``MODULE:FUNCTION`` with the run options of ``run_experiment``."""

    name = "run"
    help = "run MODULE:FUNCTION as parallel instances"
    description = (
        "Run MODULE:FUNCTION as parallel instances. FUNCTION is an Experiment, a function "
        "taking the instance context (async or not), or a function with no required "
        "arguments that returns an Experiment (labkit.scenarios:cpu_stress)."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "target",
            metavar="MODULE:FUNCTION",
            help="what to run, importable from the current directory (mypkg.exp:train)",
        )
        parser.add_argument(
            "-n",
            "--instances",
            type=arguments.instances,
            default=1,
            metavar="N",
            help=f"instances, 1 to {MAX_INSTANCES}, or 'auto' (as many as the summary needs)",
        )
        parser.add_argument(
            "--duration",
            type=arguments.seconds,
            default=None,
            metavar="SECONDS",
            help="how long each instance is meant to run (default: until its function returns)",
        )
        parser.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a parameter for ctx.params (VALUE is read as JSON when it parses; NaN and "
            "Infinity are refused); repeatable (default: none)",
        )
        parser.add_argument(
            "--gpus-per-instance",
            type=arguments.non_negative_int,
            default=0,
            metavar="G",
            help="GPUs each instance holds (CUDA_VISIBLE_DEVICES is set for it)",
        )
        parser.add_argument(
            "--sandbox",
            choices=("auto", "none", "local", "e2b"),
            default="auto",
            help="where instances run: 'auto' gives local sandboxes to experiments that need "
            "one; 'e2b' uses E2B cloud sandboxes (E2B_API_KEY) and shows their cost first",
        )
        self._add_attempt_options(parser)
        parser.add_argument(
            "--report",
            default=None,
            metavar="PATH",
            help="write a standalone HTML report here, a file (default: no report)",
        )
        add_summarize_option(parser)
        add_instance_options(parser)
        add_output_options(parser)

    @staticmethod
    def _add_attempt_options(parser: argparse.ArgumentParser) -> None:
        """``--timeout``, ``--retries`` and ``--sample-every``: how each attempt runs."""
        parser.add_argument(
            "--timeout",
            type=arguments.seconds,
            default=None,
            metavar="SECONDS",
            help="fail an instance attempt that runs longer (default: no limit)",
        )
        parser.add_argument(
            "--retries",
            type=arguments.non_negative_int,
            default=0,
            metavar="N",
            help="retry a failed instance up to N times",
        )
        parser.add_argument(
            "--sample-every",
            type=arguments.seconds,
            default=1.0,
            metavar="SECONDS",
            help="seconds between resource samples of an instance's sandbox",
        )

    def run(self, args: argparse.Namespace) -> int:
        experiment = command_experiment(args.target, args.summarize, args.param)
        return execute(
            args,
            experiment,
            instances=args.instances,
            duration=args.duration,
            report=args.report,
            options=self._run_options(args, experiment),
        )

    @staticmethod
    def _run_options(args: argparse.Namespace, experiment: Experiment) -> dict[str, Any]:
        """The ``run_experiment`` options the command line gives.

        Raises:
            UsageError: The sandbox and executor choices cannot run ``experiment``.
        """
        options: dict[str, Any] = {
            "gpus_per_instance": args.gpus_per_instance,
            "sample_every": args.sample_every,
        }
        if args.timeout is not None:
            options["timeout"] = args.timeout
        if args.retries:
            from labkit.policies import Retry

            options["retry"] = Retry(attempts=args.retries + 1)
        if args.sandbox == "none" and experiment.needs_sandbox:
            raise UsageError(f"{experiment.name} runs in a sandbox: use --sandbox local or e2b")
        if args.executor == "process" and (
            args.sandbox in ("local", "e2b")
            or (args.sandbox == "auto" and experiment.needs_sandbox)
        ):
            raise UsageError(
                f"--executor process runs each instance in a worker process; {experiment.name} "
                "runs in a sandbox (a process already): leave --executor at 'thread'"
            )
        options["sandbox"] = args.sandbox
        options["seed"] = args.seed
        if args.executor == "process":
            options["executor"] = "process"
        return options
