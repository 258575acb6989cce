"""The ``labkit`` commands, in the order ``labkit --help`` lists them."""

from __future__ import annotations

from labkit.cli.commands.demo import Demo
from labkit.cli.commands.history import History
from labkit.cli.commands.monitor import Monitor
from labkit.cli.commands.run import Run
from labkit.cli.commands.sweep import Sweep
from labkit.cli.registry import Command

__all__ = ("COMMANDS", "Demo", "History", "Monitor", "Run", "Sweep")

COMMANDS: tuple[Command, ...] = (Demo(), Run(), Sweep(), History(), Monitor())
