"""The SQLite file of a store: opening connections to it, and watching that it is
still the file that was opened.

A connection runs in autocommit mode (``isolation_level=None``: the store writes
its own ``BEGIN``/``COMMIT``) with the store's pragmas, in WAL mode. A read-only
connection never writes: ``mode=ro``, else ``immutable=1``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from labkit.errors import StoreError

__all__ = ("FileWatch", "connect", "connect_read_only", "pragmas")

_WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes kept in the -wal file after a checkpoint


def pragmas(timeout: float, synchronous: str) -> tuple[str, ...]:
    """The pragmas of every connection; the first sets the lock wait (busy_timeout).

    Args:
        timeout: Seconds to wait for another process's write lock.
        synchronous: ``"normal"`` or ``"full"``.
    """
    return (
        f"PRAGMA busy_timeout = {round(timeout * 1000)}",
        f"PRAGMA synchronous = {synchronous.upper()}",
        f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}",
    )


def connect(path: Path, settings: Sequence[str]) -> sqlite3.Connection:
    """A read-write connection to ``path`` in WAL mode, with the pragmas ``settings``.

    Raises:
        StoreError: The file cannot be opened, or cannot use WAL.
    """
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    try:
        for pragma in settings:
            conn.execute(pragma)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{path} cannot use WAL (journal_mode is {mode!r})")
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot open {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def connect_read_only(path: Path, busy_timeout: str) -> sqlite3.Connection:
    """A connection that never writes: ``mode=ro``, else ``immutable=1``.

    ``mode=ro`` still needs the WAL's shared-memory file; where it cannot be
    created (a read-only directory or filesystem), ``immutable=1`` reads the
    main file as it is: complete for a store closed cleanly (``close()``
    checkpoints the WAL into it).

    Args:
        path: The database file.
        busy_timeout: The ``PRAGMA busy_timeout`` statement to run.

    Raises:
        StoreError: There is no such file, or neither way can read it.
    """
    if not path.is_file():
        raise StoreError(f"cannot read {path}: no such file (read_only creates none)")
    last: sqlite3.Error | None = None
    for flags in ("mode=ro", "immutable=1"):
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                f"{path.as_uri()}?{flags}",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(busy_timeout)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens lazily
            return conn
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            last = exc
    raise StoreError(f"cannot read {path}: {last}") from last


class FileWatch:
    """Whether the file at a path is still the one opened (its device and inode).

    SQLite keeps writing to a deleted file through its open handle, and to its
    own handle of a file replaced at the same path: both would lose every write
    in silence, so every store call checks first.

    Args:
        path: The file just opened.
    """

    __slots__ = ("_identity", "_lost", "_path")

    def __init__(self, path: Path) -> None:
        self._path = path
        self._identity = _identity(path)
        self._lost: str | None = None

    def check(self) -> None:
        """Refuse to go on with a file that is no longer the one opened.

        Raises:
            StoreError: The file was deleted or replaced since it was opened.
        """
        if self._lost is None:
            try:
                now = _identity(self._path)
            except FileNotFoundError:
                self._lost = "was deleted (its file or folder removed)"
            else:
                if now != self._identity:
                    self._lost = "was replaced by another file"
        if self._lost is not None:
            raise StoreError(
                f"the store {self._path} {self._lost} after it was opened: nothing written "
                "since can be kept; open a new Store to record again"
            )


def _identity(path: Path) -> tuple[int, int]:
    """The file at ``path`` as the filesystem knows it: device and inode.

    Raises:
        FileNotFoundError: Nothing is at ``path``.
    """
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino
