"""The checks of :class:`labkit.store.Store`'s options."""

from __future__ import annotations

import os

from labkit._checks import check, is_int, is_real

__all__ = ("check_options",)

_MAX_SECONDS = 86_400.0  # a longer wait or interval is a typo (inf stopped the writer)
_MAX_BATCH_ROWS = 1_000_000


def check_options(
    path: str | os.PathLike[str],
    *,
    synchronous: str,
    timeout: float,
    batch_rows: int,
    flush_interval: float,
    checkpoint_interval: float,
    read_only: bool,
    resume_wait: float,
) -> None:
    """Refuse a bad option of :class:`~labkit.store.Store`, naming it.

    Raises:
        ConfigError: Naming the first option out of range.
    """
    check(synchronous in ("normal", "full"), "synchronous", synchronous, '"normal" or "full"')
    check(
        is_real(timeout) and 0 <= timeout <= _MAX_SECONDS,
        "timeout",
        timeout,
        f"a finite number of seconds from 0 to {_MAX_SECONDS:,.0f}",
    )
    check(
        is_int(batch_rows) and 1 <= batch_rows <= _MAX_BATCH_ROWS,
        "batch_rows",
        batch_rows,
        f"an integer from 1 to {_MAX_BATCH_ROWS:,}",
    )
    for option, seconds in (
        ("flush_interval", flush_interval),
        ("checkpoint_interval", checkpoint_interval),
    ):
        check(
            is_real(seconds) and 0 < seconds <= _MAX_SECONDS,
            option,
            seconds,
            f"a finite number of seconds > 0 and <= {_MAX_SECONDS:,.0f}",
        )
    check(isinstance(read_only, bool), "read_only", read_only, "True or False")
    check(
        is_real(resume_wait) and 0 <= resume_wait <= _MAX_SECONDS,
        "resume_wait",
        resume_wait,
        f"a finite number of seconds from 0 to {_MAX_SECONDS:,.0f}",
    )
    check(
        isinstance(path, str | os.PathLike) and str(path) not in (":memory:", ""),
        "path",
        path,
        "a file path",
    )
