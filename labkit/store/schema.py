"""The store's schema and its migrations.

The schema is a list of migrations; a database that has had the first ``k``
applied has ``PRAGMA user_version = k``. Opening a store applies the missing ones
in one ``BEGIN IMMEDIATE`` transaction (so two processes opening a new file at
once migrate it once), and refuses a file of a newer labkit. A file already at the
latest version is only read: opening it never waits for another process's lock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from labkit.errors import StoreError

__all__ = ("MIGRATIONS", "check_version", "immediate", "migrate")

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE experiments (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            params TEXT NOT NULL,
            config TEXT NOT NULL,
            instances INTEGER NOT NULL,
            fingerprint TEXT NOT NULL,
            status TEXT NOT NULL,
            summary TEXT,
            created REAL NOT NULL,
            finished REAL
        )""",
        "CREATE INDEX experiments_by_fingerprint ON experiments (fingerprint, created)",
        """CREATE TABLE instances (
            experiment_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            status TEXT NOT NULL,
            error TEXT,
            started REAL,
            finished REAL,
            summary TEXT NOT NULL,
            gpu_uuids TEXT NOT NULL,
            sandbox_id TEXT,
            attempts INTEGER NOT NULL,
            PRIMARY KEY (experiment_id, idx)
        ) WITHOUT ROWID""",
        """CREATE TABLE samples (
            id INTEGER PRIMARY KEY,
            experiment_id TEXT NOT NULL,
            instance INTEGER NOT NULL,
            n INTEGER NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX samples_by_instance ON samples (experiment_id, instance, id)",
    ),
    (
        "ALTER TABLE experiments ADD COLUMN heartbeat REAL",
        "ALTER TABLE experiments ADD COLUMN heartbeat_every REAL",
        "ALTER TABLE experiments ADD COLUMN notes TEXT",
    ),
    # The run that holds a running experiment (see labkit.store.ownership).
    ("ALTER TABLE experiments ADD COLUMN owner TEXT",),
)
"""Schema migrations; after applying the first k, ``PRAGMA user_version`` is k."""


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the database on ``conn`` to the latest schema version.

    Raises:
        StoreError: The file has a schema version newer than :data:`MIGRATIONS`
            knows, or it cannot be read or written (a full disk, a damaged file).
    """
    if _version(conn, path) == len(MIGRATIONS):
        return
    with immediate(conn, path):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{path} has schema version {version}, newer than this labkit "
                f"knows ({len(MIGRATIONS)}): upgrade labkit to open it"
            )
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                conn.execute(statement)
        # PRAGMA takes no parameters; the value is an int we computed.
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")


def check_version(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse, without writing, a database this labkit cannot read as it is.

    Raises:
        StoreError: The file's schema is newer than :data:`MIGRATIONS` knows, or
            older (it needs migrating, which a read-only store cannot do).
    """
    version = _version(conn, path)
    if version > len(MIGRATIONS):
        raise StoreError(
            f"{path} has schema version {version}, newer than this labkit "
            f"knows ({len(MIGRATIONS)}): upgrade labkit to open it"
        )
    if version < len(MIGRATIONS):
        raise StoreError(
            f"{path} has schema version {version}, older than this labkit's "
            f"({len(MIGRATIONS)}): open it once without read_only to upgrade it"
        )


def _version(conn: sqlite3.Connection, path: Path) -> int:
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc


@contextmanager
def immediate(conn: sqlite3.Connection, path: Path) -> Iterator[None]:
    """A write transaction that takes the write lock up front (``BEGIN IMMEDIATE``).

    Raises:
        StoreError: The lock cannot be had, a statement or the commit fails (a
            full disk, a damaged file): every SQLite error names ``path``.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot write to the store {path}: {exc}") from exc
    try:
        yield
        conn.execute("COMMIT")
    except BaseException as exc:
        # SQLite may have rolled back already (a full disk): nothing left to undo.
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"cannot write to the store {path}: {exc}") from exc
        raise
