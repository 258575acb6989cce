"""The store's one writer: a thread that owns a connection and commits in batches.

Samples are not copied to it: the writer follows each running attempt's
:class:`~labkit.samplelog.SampleLog` (float64 columns, the one carrier of samples)
and commits the rows it gained every ``flush_interval`` seconds, in chunks of at
most :data:`CHUNK_ROWS` samples each, so no batch and no finished timeline is ever
encoded whole. Samples given one by one (:meth:`Writer.add`) go to a log of the
writer's own, committed also once ``batch_rows`` of them wait.
Commands (every other write) are queued behind them, so a command runs after every
sample added before it. A thread (not an asyncio task) serves scripts, notebooks
and several event loops alike, and keeps SQLite's blocking calls off the loop.

Every transaction starts with ``BEGIN IMMEDIATE`` after checking that the file is
still the one the store opened, and waits for another process's write lock at
most until its deadline: ``timeout`` seconds after the call that asked for it. A
wait longer than :data:`LOCK_WARNING_AFTER` seconds is announced with a
:class:`~labkit.errors.StoreLockWarning`.
"""

from __future__ import annotations

import concurrent.futures
import json
import sqlite3
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from labkit.errors import StoreError, StoreLockWarning
from labkit.samplelog import SampleLog, SampleRows

__all__ = ("CHUNK_ROWS", "LOCK_WARNING_AFTER", "Writer", "checkpoint", "chunk_json")

T = TypeVar("T")

CHUNK_ROWS = 16_384
"""Samples per stored chunk: encoding one holds the GIL for a few milliseconds."""

LOCK_WARNING_AFTER = 2.0
"""Seconds a transaction waits for another process's lock before a warning says so."""

Key = tuple[str, int]
"""An instance: its experiment's id and its index."""


@dataclass(slots=True)
class _Followed:
    """A log the writer commits from: the rows up to ``taken`` are in a batch already."""

    log: SampleLog
    own: bool = False
    """The writer's own log, for samples given one by one (not a run's)."""
    taken: int = 0


@dataclass(slots=True)
class _Command:
    work: Callable[[sqlite3.Connection], Any]
    future: concurrent.futures.Future[Any]
    finishing: Key | None
    deadline: float
    what: str


class Writer:
    """The one thread that writes: sample batches, then queued commands, in order.

    Args:
        connect: Opens the writer's connection.
        path: The database file, for messages.
        timeout: How long a call waits for another process's write lock (s).
        batch_rows: Commit buffered samples once this many are waiting.
        flush_interval: Commit buffered samples at least this often (s).
        checkpoint_interval: Checkpoint the WAL this often (s).
        guard: Called before every transaction; raises :class:`StoreError` when
            the file may no longer be written (deleted or replaced).
        owners: The runs this store holds, by experiment id: samples of an
            experiment that another run took over are not written.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        path: Path,
        timeout: float,
        batch_rows: int,
        flush_interval: float,
        checkpoint_interval: float,
        guard: Callable[[], None],
        owners: Mapping[str, str],
    ) -> None:
        self.commands: deque[_Command] = deque()
        self.samples_written = 0
        self.samples_dropped = 0
        self.batches = 0
        self.last_batch_ms = 0.0
        self.error: BaseException | None = None
        self._path = path
        self._timeout = timeout
        self._batch_rows = batch_rows
        self._flush_interval = flush_interval
        self._checkpoint_interval = checkpoint_interval
        self._guard = guard
        self._owners = owners
        # The logs followed, by instance. The lock makes following, adding a sample
        # and taking a batch exclusive; a log's own appends need no lock (see SampleLog).
        self._followed: dict[Key, _Followed] = {}
        self._added = 0  # samples given one by one since the last batch
        self._lock = threading.Lock()
        # Instances already finished in this store: late samples for them are dropped
        # instead of being appended after their final timeline.
        self._finished: set[Key] = set()
        self._finished_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._conn = connect()
        self._thread = threading.Thread(target=self._run, name="labkit-store-writer", daemon=True)
        self._thread.start()

    @property
    def pending_samples(self) -> int:
        """Samples recorded in the logs followed and not yet taken for a batch."""
        with self._lock:
            return sum(len(f.log) - f.taken for f in self._followed.values())

    def follow(self, key: Key, log: SampleLog | None) -> None:
        """Commit instance ``key``'s samples from ``log`` from now on (an attempt began).

        ``None`` stops following it (the attempt ended: code that runs on records
        into its own log, never the store). Rows of a log followed before and not
        committed yet are left out: they belong to an attempt that is over.
        """
        with self._lock:
            if log is None:
                self._followed.pop(key, None)
            else:
                self._followed[key] = _Followed(log)

    def add(self, key: Key, t: float, metrics: Mapping[str, float]) -> None:
        """Add one sample of instance ``key`` to the writer's own log for it (never
        waits for the database).

        Raises:
            TypeError: A value is not a number (nothing is added).
        """
        with self._lock:
            followed = self._followed.get(key)
            if followed is None or not followed.own:
                followed = self._followed[key] = _Followed(SampleLog(), own=True)
            followed.log.append(t, metrics)
            self._added += 1
            full = self._added >= self._batch_rows
        # is_set() takes no lock; set() does, so call it once per batch, not per sample.
        if full and not self._wake.is_set():
            self._wake.set()

    def _take(self) -> tuple[list[tuple[Key, SampleLog, int, int]], int]:
        """The rows each followed log gained since the last batch, and their count."""
        taken: list[tuple[Key, SampleLog, int, int]] = []
        count = 0
        with self._lock:
            self._added = 0
            for key, followed in self._followed.items():
                end = len(followed.log)
                if end > followed.taken:
                    taken.append((key, followed.log, followed.taken, end))
                    count += end - followed.taken
                    followed.taken = end
        return taken, count

    def submit(
        self,
        work: Callable[[sqlite3.Connection], T],
        *,
        what: str,
        finishing: Key | None = None,
    ) -> concurrent.futures.Future[T]:
        """Queue ``work`` to run in its own transaction; ``what`` names it in errors."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._stopping:
            future.set_exception(StoreError(f"{what} failed: the store {self._path} is closed"))
            return future
        deadline = time.monotonic() + self._timeout
        self.commands.append(_Command(work, future, finishing, deadline, what))
        self._wake.set()
        return future

    def reopen(self, experiment_id: str) -> None:
        """An experiment is (re)begun: its instances may record samples again."""
        with self._finished_lock:
            self._finished = {key for key in self._finished if key[0] != experiment_id}

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        conn = self._conn
        last_checkpoint = time.monotonic()
        try:
            while True:
                self._wake.wait(self._flush_interval)
                self._wake.clear()
                stopping = self._stopping
                # Commands first, then samples: every sample added before a command
                # was queued is in this drain, so it is committed before the command runs.
                commands = _drain(self.commands)
                pending, count = self._take()
                finishing = {c.finishing for c in commands if c.finishing is not None}
                if pending:
                    self._write_samples(conn, pending, count, finishing)
                for command in commands:
                    self._execute(conn, command)
                if time.monotonic() - last_checkpoint >= self._checkpoint_interval:
                    checkpoint(conn, "PASSIVE")
                    last_checkpoint = time.monotonic()
                if stopping and not self.commands and not self.pending_samples:
                    break
        finally:
            checkpoint(conn, "TRUNCATE")
            conn.close()
            for command in _drain(self.commands):
                command.future.set_exception(
                    StoreError(f"{command.what} failed: the store {self._path} is closed")
                )

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection, deadline: float) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, waiting for the lock until ``deadline``.

        Raises:
            StoreError: The file was deleted or replaced, the lock stayed taken
                past the deadline, or SQLite failed (a full disk, a damaged file).
        """
        self._guard()
        self._begin(conn, deadline)
        try:
            yield
        except BaseException:
            # SQLite may have rolled back already (a full disk): nothing left to undo.
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise StoreError(f"cannot commit to {self._path}: {exc}") from exc

    def _begin(self, conn: sqlite3.Connection, deadline: float) -> None:
        started = time.monotonic()
        # Two waits: up to the warning, then (having said so) up to the deadline.
        for until in (min(deadline, started + LOCK_WARNING_AFTER), deadline):
            wait = max(0.0, until - time.monotonic())
            conn.execute(f"PRAGMA busy_timeout = {round(wait * 1000)}")
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                # Extended codes (SQLITE_BUSY_SNAPSHOT...) keep the primary one in the low byte.
                if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise StoreError(f"cannot write to {self._path}: {exc}") from exc
                if until >= deadline:
                    waited = time.monotonic() - started
                    raise StoreError(
                        f"{self._path} stayed locked by another process for {waited:.1f} s "
                        f"(the store's timeout is {self._timeout:g} s): {exc}"
                    ) from exc
                warnings.warn(
                    f"the labkit store {self._path} is locked by another process: "
                    f"waited {LOCK_WARNING_AFTER:g} s so far, waiting up to "
                    f"{max(0.0, deadline - time.monotonic()):.1f} s more",
                    StoreLockWarning,
                    stacklevel=1,
                )
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write to {self._path}: {exc}") from exc
            else:
                return

    def _write_samples(
        self,
        conn: sqlite3.Connection,
        pending: list[tuple[Key, SampleLog, int, int]],
        count: int,
        finishing: set[Key],
    ) -> None:
        started = time.perf_counter()
        with self._finished_lock:
            skip = finishing | self._finished
        logs = [entry for entry in pending if entry[0] not in skip]
        if not logs:
            return
        written = 0

        def chunks(mine: set[str]) -> Iterator[tuple[str, int, int, str]]:
            nonlocal written
            for (experiment_id, instance), log, first, end in logs:
                if experiment_id not in mine:
                    continue
                for start in range(first, end, CHUNK_ROWS):
                    rows = log.read(start, min(start + CHUNK_ROWS, end))
                    written += len(rows[0])
                    yield experiment_id, instance, len(rows[0]), chunk_json(rows)

        try:
            with self._transaction(conn, time.monotonic() + self._timeout):
                # Samples of an experiment another run took over are not written:
                # they would mix with that run's own.
                mine = {
                    experiment_id
                    for experiment_id in {entry[0][0] for entry in logs}
                    if _owned(conn, experiment_id, self._owners.get(experiment_id))
                }
                # executemany pulls one chunk at a time: one chunk's JSON in memory.
                conn.executemany(
                    "INSERT INTO samples (experiment_id, instance, n, data) VALUES (?, ?, ?, ?)",
                    chunks(mine),
                )
        except (sqlite3.Error, StoreError) as exc:
            # Dropped samples are counted and reported by close(); a finished
            # instance still commits its whole timeline on its own.
            self.error = exc if isinstance(exc, StoreError) else _store_error(self._path, exc)
            self.samples_dropped += count
            return
        self.samples_written += written
        self.batches += 1
        self.last_batch_ms = (time.perf_counter() - started) * 1000

    def _execute(self, conn: sqlite3.Connection, command: _Command) -> None:
        if not command.future.set_running_or_notify_cancel():
            return
        try:
            with self._transaction(conn, command.deadline):
                value = command.work(conn)
        except StoreError as exc:
            where = "" if str(self._path) in str(exc) else f" ({self._path})"
            error = StoreError(f"{command.what} failed{where}: {exc}")
            error.__cause__ = exc
            command.future.set_exception(error)
        except Exception as exc:
            error = StoreError(f"{command.what} failed ({self._path}): {exc}")
            error.__cause__ = exc
            command.future.set_exception(error)
        else:
            if command.finishing is not None:
                with self._finished_lock:
                    self._finished.add(command.finishing)
                self.follow(command.finishing, None)
            command.future.set_result(value)


def chunk_json(rows: SampleRows) -> str:
    """One stored chunk, ``{"t": [...], "<metric>": [...]}``; NaN and inf as recorded.

    A metric a sample lacks is NaN in a :class:`~labkit.samplelog.SampleLog` and
    is stored so: it loads as NaN, as a
    missing value does.
    """
    offsets, values = rows
    data = {"t": offsets.tolist(), **{name: column.tolist() for name, column in values.items()}}
    return json.dumps(data, separators=(",", ":"))


def _owned(conn: sqlite3.Connection, experiment_id: str, owner: str | None) -> bool:
    """Whether the experiment is still there and, if this store began it, still its run's."""
    row = conn.execute("SELECT owner FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
    return row is not None and (owner is None or row[0] == owner)


def _store_error(path: Path, exc: BaseException) -> StoreError:
    error = StoreError(f"writing to {path} failed: {exc}")
    error.__cause__ = exc
    return error


def checkpoint(conn: sqlite3.Connection, mode: Literal["PASSIVE", "TRUNCATE"]) -> None:
    # A checkpoint that cannot complete (a reader pins the WAL) is retried next
    # time; it must never take the writer down.
    with suppress(sqlite3.Error):
        conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()


def _drain(queue: deque[T]) -> list[T]:
    items: list[T] = []
    # popleft is atomic; appends racing with the drain are picked up next round.
    while queue:
        items.append(queue.popleft())
    return items
