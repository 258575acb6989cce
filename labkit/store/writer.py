"""The store's one writer: a thread that owns a connection and commits in batches.

Samples are buffered without blocking (``deque.append``) and committed every
``batch_rows`` rows or ``flush_interval`` seconds; commands (every other write)
are queued behind them, so a command runs after every sample appended before it.
A thread (not an asyncio task) serves scripts, notebooks and several event loops
alike, and keeps SQLite's blocking calls off the loop.
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from labkit.errors import StoreError
from labkit.store.codec import Row, columns, dumps
from labkit.store.schema import immediate

__all__ = ("Writer", "checkpoint")

T = TypeVar("T")


@dataclass(slots=True)
class _Command:
    work: Callable[[sqlite3.Connection], Any]
    future: concurrent.futures.Future[Any]
    finishing: tuple[str, int] | None


class Writer:
    """The one thread that writes: sample batches, then queued commands, in order."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        batch_rows: int,
        flush_interval: float,
        checkpoint_interval: float,
    ) -> None:
        self.samples: deque[Row] = deque()
        self.commands: deque[_Command] = deque()
        self.samples_written = 0
        self.samples_dropped = 0
        self.batches = 0
        self.last_batch_ms = 0.0
        self.error: BaseException | None = None
        self._batch_rows = batch_rows
        self._flush_interval = flush_interval
        self._checkpoint_interval = checkpoint_interval
        # Instances already finished in this store: late samples for them are dropped
        # instead of being appended after their final timeline.
        self._finished: set[tuple[str, int]] = set()
        self._finished_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._conn = connect()
        self._thread = threading.Thread(target=self._run, name="labkit-store-writer", daemon=True)
        self._thread.start()

    def add(self, row: Row) -> None:
        # deque.append is atomic: no lock on the hot path.
        self.samples.append(row)
        # is_set() takes no lock; set() does, so call it once per batch, not per sample.
        if len(self.samples) >= self._batch_rows and not self._wake.is_set():
            self._wake.set()

    def submit(
        self,
        work: Callable[[sqlite3.Connection], T],
        *,
        finishing: tuple[str, int] | None = None,
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._stopping:
            future.set_exception(StoreError("the store is closed"))
            return future
        self.commands.append(_Command(work, future, finishing))
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
                # Commands first, then samples: every sample appended before a command
                # was queued is in this drain, so it is committed before the command runs.
                commands = _drain(self.commands)
                rows = _drain(self.samples)
                finishing = {c.finishing for c in commands if c.finishing is not None}
                if rows:
                    self._write_samples(conn, rows, finishing)
                for command in commands:
                    self._execute(conn, command)
                if time.monotonic() - last_checkpoint >= self._checkpoint_interval:
                    checkpoint(conn, "PASSIVE")
                    last_checkpoint = time.monotonic()
                if stopping and not self.commands and not self.samples:
                    break
        finally:
            checkpoint(conn, "TRUNCATE")
            conn.close()
            for command in _drain(self.commands):
                command.future.set_exception(StoreError("the store is closed"))

    def _write_samples(
        self, conn: sqlite3.Connection, rows: list[Row], finishing: set[tuple[str, int]]
    ) -> None:
        started = time.perf_counter()
        groups: dict[tuple[str, int], list[Row]] = {}
        with self._finished_lock:
            skip = finishing | self._finished
        for row in rows:
            key = (row[0], row[1])
            if key not in skip:
                groups.setdefault(key, []).append(row)
        try:
            chunks = [
                (key[0], key[1], len(group), dumps(columns(group))) for key, group in groups.items()
            ]
            with immediate(conn):
                conn.executemany(
                    "INSERT INTO samples (experiment_id, instance, n, data) VALUES (?, ?, ?, ?)",
                    chunks,
                )
        except (sqlite3.Error, StoreError, TypeError, ValueError) as exc:
            # Dropped samples are counted and reported by close(); a finished
            # instance still commits its whole timeline on its own.
            self.error = exc
            self.samples_dropped += len(rows)
            return
        self.samples_written += sum(chunk[2] for chunk in chunks)
        self.batches += 1
        self.last_batch_ms = (time.perf_counter() - started) * 1000

    def _execute(self, conn: sqlite3.Connection, command: _Command) -> None:
        if not command.future.set_running_or_notify_cancel():
            return
        try:
            with immediate(conn):
                value = command.work(conn)
        except StoreError as exc:
            command.future.set_exception(exc)
        except Exception as exc:
            error = StoreError(f"writing to the store failed: {exc}")
            error.__cause__ = exc
            command.future.set_exception(error)
        else:
            if command.finishing is not None:
                with self._finished_lock:
                    self._finished.add(command.finishing)
            command.future.set_result(value)


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
