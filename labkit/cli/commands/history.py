"""``labkit history``: the experiments a store recorded, newest last."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labkit.cli import arguments
from labkit.cli.registry import Command
from labkit.cli.stored import open_to_read
from labkit.cli.tables import history_table
from labkit.cli.usage import EXIT_OK

__all__ = ("History",)


class History(Command):
    """Lists a store's experiments as a table (or JSON), reading the store only."""

    name = "history"
    help = "list the experiments recorded in a store"
    description = (
        "List the experiments recorded in a store, newest last. The store is only read: "
        "a read-only file or directory works."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--db", default="labkit.db", metavar="PATH", help="the store to read")
        parser.add_argument(
            "--limit",
            type=arguments.positive_int,
            default=20,
            metavar="N",
            help="show the last N experiments",
        )
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def run(self, args: argparse.Namespace) -> int:
        if not Path(args.db).exists():
            print(f"no experiments recorded yet: {args.db} does not exist", file=sys.stderr)
            return EXIT_OK
        with open_to_read(args.db) as store:
            frame = store.experiments()
        frame = frame.tail(args.limit)
        if args.json:
            print(frame.to_json(orient="records", date_format="iso", default_handler=str))
        elif frame.empty:
            print(f"no experiments recorded in {args.db}")
        else:
            print(history_table(frame))
        return EXIT_OK
