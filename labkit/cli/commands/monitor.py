"""``labkit monitor``: the machine, the GPU fleet and a store's running experiments."""

from __future__ import annotations

import argparse
import sys
import time

from labkit.cli import arguments
from labkit.cli.monitor_text import monitor_text
from labkit.cli.registry import Command
from labkit.cli.usage import EXIT_OK

__all__ = ("Monitor",)


class Monitor(Command):
    """Prints the monitor's block once, or every ``--interval`` seconds until Ctrl-C."""

    name = "monitor"
    help = "show the GPU fleet, the machine and running experiments"
    description = (
        "Show the machine, the GPU fleet and the experiments running in a store. With "
        "--interval, redraw in place in a terminal; piped, print one block per refresh."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--db", default="labkit.db", metavar="PATH", help="the store whose running runs to show"
        )
        parser.add_argument(
            "--interval",
            type=arguments.seconds,
            default=None,
            metavar="SECONDS",
            help="refresh every SECONDS until Ctrl-C (default: show once)",
        )

    def run(self, args: argparse.Namespace) -> int:
        # Screen-clearing codes only in a terminal: a pipe or a file gets plain blocks,
        # one per refresh, separated by a blank line.
        redraw = sys.stdout.isatty()
        first = True
        while True:
            text = monitor_text(args.db)
            if args.interval is None:
                print(text)
                return EXIT_OK
            if redraw:
                print("\033[2J\033[H" + text, flush=True)  # clear and redraw, like `watch`
            else:
                print(text if first else "\n" + text, flush=True)
            first = False
            time.sleep(args.interval)
