"""``labkit sweep``: one experiment over a grid of parameters, and its leaderboard."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any, TextIO

from labkit.cli import arguments
from labkit.cli.objective import CheckedObjective, refuse_before_run
from labkit.cli.options import add_instance_options, add_summarize_option
from labkit.cli.registry import Command
from labkit.cli.target import command_experiment
from labkit.cli.trial_lines import TrialLines
from labkit.cli.usage import EXIT_FAILED, EXIT_OK, UsageError
from labkit.experiment import Experiment

if TYPE_CHECKING:
    import pandas as pd

__all__ = ("Sweep",)


class Sweep(Command):
    """Runs ``MODULE:FUNCTION`` once per combination of ``--grid`` values."""

    name = "sweep"
    help = "run MODULE:FUNCTION over a grid of parameters and print the leaderboard"
    description = (
        "Run MODULE:FUNCTION once per combination of --grid values (each trial with its "
        "instances), print each trial as it ends and the leaderboard at the end. With -n "
        "race, trials are raced (labkit.Race): instances go only to trials not yet ruled "
        "out, and the decision printed is wrong at most 5 % of the time."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "target", metavar="MODULE:FUNCTION", help="what to run, as for `labkit run`"
        )
        parser.add_argument(
            "--grid",
            action="append",
            default=[],
            required=True,
            metavar="KEY=V1,V2,...",
            help="values of one parameter (each read as JSON when it parses; NaN and Infinity "
            "are refused); repeatable, required",
        )
        parser.add_argument(
            "--objective",
            required=True,
            metavar="NAME",
            help="a summary figure (score, loss_last) or a recorded metric; required",
        )
        parser.add_argument(
            "--direction",
            choices=("min", "max"),
            default="min",
            help="whether the lowest or the highest objective is best",
        )
        self._add_size_options(parser)
        parser.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a parameter every trial gets, as for `labkit run`; repeatable (default: none)",
        )
        add_summarize_option(parser)
        parser.add_argument(
            "--db", default="labkit.db", metavar="PATH", help="record the trials here"
        )
        parser.add_argument("--no-db", action="store_true", help="do not record the trials")
        parser.add_argument(
            "--json", action="store_true", help="print the trials as JSON on stdout"
        )
        add_instance_options(parser)

    @staticmethod
    def _add_size_options(parser: argparse.ArgumentParser) -> None:
        """``-n``, ``--max-parallel`` and ``--max-instances``: how big the sweep is."""
        parser.add_argument(
            "-n",
            "--instances",
            type=arguments.sweep_instances,
            default=1,
            metavar="N",
            help="instances per trial, 'auto', or 'race'",
        )
        parser.add_argument(
            "--max-parallel",
            type=arguments.instance_count,
            default=1,
            metavar="P",
            help="trials running at once",
        )
        parser.add_argument(
            "--max-instances",
            type=arguments.instance_count,
            default=None,
            metavar="N",
            help="the most instances one trial gets with -n auto or race (default: 32 for auto, "
            "10 for race)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from labkit.sweep import leaderboard

        experiment = command_experiment(args.target, args.summarize, args.param)
        grid = arguments.parse_grid(args.grid)
        refuse_before_run(args.objective)
        human = sys.stderr if args.json else sys.stdout
        frame = asyncio.run(self._sweep(args, experiment, grid, human))
        if args.json:
            print(frame.to_json(orient="records", default_handler=str))
        print("leaderboard:", file=human)
        print(leaderboard(frame), file=human)
        return EXIT_OK if (frame["status"] == "ok").any() else EXIT_FAILED

    @staticmethod
    async def _sweep(
        args: argparse.Namespace, experiment: Experiment, grid: dict[str, list[Any]], human: TextIO
    ) -> pd.DataFrame:
        """The sweep's frame; stopped at the first trial that shows the objective names
        nothing.

        Raises:
            UsageError: The objective is neither a summary figure nor a metric.
        """
        from labkit.store import Store
        from labkit.sweep import sweep

        objective = CheckedObjective(args.objective, experiment.name)
        instances, run_options = _size(args)
        store = None if args.no_db else Store(args.db)
        try:
            running = asyncio.ensure_future(
                sweep(
                    experiment,
                    grid,
                    instances=instances,
                    objective=objective,
                    direction=args.direction,
                    max_parallel=args.max_parallel,
                    store=store,
                    on_event=TrialLines(human, objective),
                    seed=args.seed,
                    **run_options,
                )
            )
            # Stops the sweep from inside a trial's objective, once it names nothing (the
            # task starts at the next await: nothing can call this before).
            objective.on_unknown = running.cancel
            try:
                return await running
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if objective.problem is None or (current is not None and current.cancelling()):
                    raise  # a Ctrl-C, not the objective
                raise UsageError(objective.problem) from None
        finally:
            if store is not None:
                store.close()


def _size(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The sweep's ``instances`` and the run options of ``--executor`` and
    ``--max-instances``: a race's cap is set on its ``labkit.Race``, the cap of
    ``-n auto`` is a run option, and a fixed count has none."""
    from labkit import Race

    run_options: dict[str, Any] = {"executor": "process"} if args.executor == "process" else {}
    instances: Any = args.instances
    if args.max_instances is not None and instances == "race":
        instances = Race(max_instances=args.max_instances)
    elif args.max_instances is not None and instances == "auto":
        run_options["max_instances"] = args.max_instances
    return instances, run_options
