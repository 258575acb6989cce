"""Commands and the parser built from them.

A command is a small class: its name and help, the options it takes
(:meth:`Command.add_arguments`) and what it does with them (:meth:`Command.run`),
side by side. :func:`parser_for` gives each registered command its subparser.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import ClassVar

__all__ = ("Command", "HelpFormatter", "parser_for")

DESCRIPTION = "Run an experiment as N parallel instances, watch them, average them."


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default, unless its help already says it in words."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or action.required or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


class Command(ABC):
    """One ``labkit`` command.

    Attributes:
        name: What follows ``labkit`` on the command line.
        help: One line for ``labkit --help``.
        description: The paragraph ``labkit NAME --help`` opens with.
    """

    name: ClassVar[str]
    help: ClassVar[str]
    description: ClassVar[str]

    @abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's options to its subparser."""

    @abstractmethod
    def run(self, args: argparse.Namespace) -> int:
        """Do what the command line asks; returns the exit status.

        Raises:
            UsageError: The command line cannot work (exit status 2).
        """


def parser_for(commands: Iterable[Command]) -> argparse.ArgumentParser:
    """The ``labkit`` parser with a subcommand per command, in the order given.

    A parsed command line holds the command's name in ``command`` and the command
    itself in ``handler``.
    """
    parser = argparse.ArgumentParser(
        prog="labkit", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in commands:
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            formatter_class=HelpFormatter,
        )
        command.add_arguments(sub)
        sub.set_defaults(handler=command)
    return parser
