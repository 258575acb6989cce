"""The ``labkit`` command line: ``demo``, ``run``, ``sweep``, ``history`` and ``monitor``.

Exit status: 0 when every instance succeeded, 1 when some failed (the report is
still written) or an ``--export`` failed (the result is still printed and
recorded), 2 on bad usage, with a message that says what to fix.

Where things are: :mod:`~labkit.cli.app` (the entry point), :mod:`~labkit.cli.registry`
(a command class and the parser built from the commands), :mod:`~labkit.cli.commands`
(one module per command, its options beside its action), :mod:`~labkit.cli.arguments`
(argument types, ``--param`` and ``--grid``), :mod:`~labkit.cli.options` (option groups
several commands share), :mod:`~labkit.cli.execute` (a run with its bars, store and
exports), and what is printed: :mod:`~labkit.cli.tables`, :mod:`~labkit.cli.progress`,
:mod:`~labkit.cli.monitor_text`, :mod:`~labkit.cli.trial_lines`.
"""

from __future__ import annotations

from labkit.cli.app import build_parser, main
from labkit.cli.arguments import parse_grid, parse_params
from labkit.cli.tables import format_summary
from labkit.cli.target import load_target
from labkit.cli.usage import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError

__all__ = (
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "format_summary",
    "load_target",
    "main",
    "parse_grid",
    "parse_params",
)
