"""``labkit``'s entry point: parse, run the command, turn what went wrong into an
exit status and one line on stderr."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from labkit.cli.commands import COMMANDS
from labkit.cli.registry import Command, parser_for
from labkit.cli.usage import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, UsageError
from labkit.errors import ConfigError, LabkitError, error_text

__all__ = ("build_parser", "main")


def build_parser() -> argparse.ArgumentParser:
    """The ``labkit`` parser, every command registered."""
    return parser_for(COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``labkit`` command; returns its exit status.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` by default.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    command: Command = args.handler
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning(args.command)
            return command.run(args)
    except (UsageError, ConfigError) as exc:
        print(f"labkit {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LabkitError as exc:
        print(f"labkit {args.command}: {error_text(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"labkit {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _show_warning(command: str) -> Callable[..., None]:
    """A warning as one line on stderr (``labkit run: warning: ...``), not a source line."""

    def show(message: Warning | str, *_: Any, **__: Any) -> None:
        print(f"labkit {command}: warning: {message}", file=sys.stderr)

    return show
