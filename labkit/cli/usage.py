"""What a command tells the shell: its exit statuses, and the error that means
"fix the command line" (exit status 2)."""

from __future__ import annotations

__all__ = ("EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "UsageError")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


class UsageError(Exception):
    """A bad command line; the message says what to fix (exit status 2)."""
