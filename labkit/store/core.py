"""The :class:`Store` itself: recording, queries and upkeep over one SQLite file.

The parts it is built from: the schema and its migrations
(:mod:`labkit.store.schema`), the batching writer thread (:mod:`labkit.store.writer`)
and the JSON codec (:mod:`labkit.store.codec`); see :mod:`labkit.store` for how they
keep parallel writers fast and safe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import json
import math
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd

from labkit._checks import check, is_int, is_real
from labkit._json import to_builtins
from labkit.errors import MissingDependency, StoreError
from labkit.results import ExperimentResult, InstanceResult, frame_from_dict
from labkit.samplelog import SampleRows
from labkit.store.codec import dumps, fingerprint, join_chunks, plain
from labkit.store.filesystems import network_filesystem
from labkit.store.ownership import Owner, ended_here, started_here
from labkit.store.schema import check_version, migrate
from labkit.store.writer import CHUNK_ROWS, Writer, chunk_json

__all__ = ("HEARTBEAT_EVERY", "MISSED_HEARTBEATS", "Store", "StoreStats")

T = TypeVar("T")

HEARTBEAT_EVERY = 5.0
"""Seconds between heartbeats assumed for a run that has not said (``Store.heartbeat``)."""

MISSED_HEARTBEATS = 3
"""A running experiment whose heartbeat is older than this many intervals is ``interrupted``."""
_WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes kept in the -wal file after a checkpoint
_MAX_SECONDS = 86_400.0  # a longer wait or interval is a typo (inf stopped the writer)
_MAX_BATCH_ROWS = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreStats:
    """A snapshot of a store's writer.

    Attributes:
        path: The database file.
        pending_samples: Samples buffered, not yet committed.
        samples_written: Samples committed since the store was opened.
        samples_dropped: Samples whose batch could not be written (see
            :meth:`Store.close`).
        batches: Sample batches committed.
        last_batch_ms: How long the last batch took to encode and commit (ms).
    """

    path: Path
    pending_samples: int
    samples_written: int
    samples_dropped: int
    batches: int
    last_batch_ms: float


class Store:
    """A record of experiments in one SQLite file, shared safely by processes.

    Implements :class:`labkit.results.ExperimentRecorder` (``begin``, ``sample``,
    ``finish_instance``, ``finish``) for ``run_experiment``, and offers queries
    (:meth:`experiments`, :meth:`load`) and upkeep (:meth:`delete`,
    :meth:`export`). Use it as a context manager or call :meth:`close`.

    Args:
        path: The database file; created with its schema when missing.
        synchronous: ``"normal"``: a commit survives the process being killed at
            any moment (the WAL is in the OS's hands), but the last commits may be
            lost if the machine loses power. ``"full"``: fsync on every commit,
            which survives power loss too, at about a tenth of the commit rate.
        timeout: How long a store call waits for another process's write lock
            before it fails with :class:`~labkit.errors.StoreError` (s), counted
            from the call (SQLite's ``busy_timeout``, kept per call). The wait
            happens in the writer thread, never on an event loop; one longer than
            a few seconds is announced with a
            :class:`~labkit.errors.StoreLockWarning`.
        batch_rows: Commit buffered samples once this many are waiting.
        flush_interval: Commit buffered samples at least this often (s).
        checkpoint_interval: Checkpoint the WAL this often while writing (s).
        read_only: Only read: open the file read-only (never created, migrated or
            written; no writer thread), so a store on a read-only filesystem or
            in a directory one cannot write to can still be listed and loaded.
            Every write raises :class:`~labkit.errors.StoreError`.
        resume_wait: How long :meth:`begin` with ``resume=True`` waits for a
            live run of the same experiment (``running``, its heartbeat fresh)
            to end before refusing it (s); 0 refuses at once. A live run is
            never taken over.

    The file is watched: once it is deleted or replaced by another file (its
    folder removed, say), every call raises :class:`~labkit.errors.StoreError`
    saying so, instead of writing to a file no one can open again.

    Raises:
        ConfigError: For an option out of range: a bool or NaN where a number
            belongs, an infinite or absurd interval, a fractional ``batch_rows``.
        StoreError: If the database cannot be opened, is on a network filesystem,
            or was written by a newer labkit (unknown schema version).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = "labkit.db",
        *,
        synchronous: Literal["normal", "full"] = "normal",
        timeout: float = 30.0,
        batch_rows: int = 100,
        flush_interval: float = 0.25,
        checkpoint_interval: float = 10.0,
        read_only: bool = False,
        resume_wait: float = 0.0,
    ) -> None:
        _check_options(
            path,
            synchronous=synchronous,
            timeout=timeout,
            batch_rows=batch_rows,
            flush_interval=flush_interval,
            checkpoint_interval=checkpoint_interval,
            read_only=read_only,
            resume_wait=resume_wait,
        )
        self._path = Path(path).absolute()
        self._resume_wait = float(resume_wait)
        fstype = network_filesystem(self._path.parent)
        if fstype is not None:
            raise StoreError(
                f"{self._path} is on a network filesystem ({fstype}); SQLite's WAL "
                "needs a local disk. Put the store on a local path."
            )
        self._pragmas = (
            f"PRAGMA busy_timeout = {round(timeout * 1000)}",
            f"PRAGMA synchronous = {synchronous.upper()}",
            f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}",
        )
        self._closed = False
        self._read_lock = threading.Lock()
        self._writer: Writer | None = None
        # The runs this store began, by experiment id (see labkit.store.ownership).
        self._owners: dict[str, str] = {}
        self._lost: str | None = None
        self._reader = self._connect_read_only() if read_only else self._connect()
        try:
            if read_only:
                check_version(self._reader, self._path)
            else:
                migrate(self._reader, self._path)
            self._identity = _identity(self._path)
            if not read_only:
                self._writer = Writer(
                    self._connect,
                    path=self._path,
                    timeout=timeout,
                    batch_rows=batch_rows,
                    flush_interval=flush_interval,
                    checkpoint_interval=checkpoint_interval,
                    guard=self._check_file,
                    owners=self._owners,
                )
        except BaseException:
            self._reader.close()
            raise
        # Close the writer and reader even if the store is dropped without close().
        self._finalizer = weakref.finalize(self, _shutdown, self._writer, self._reader)

    # -- connections ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self._path}: {exc}") from exc
        try:
            for pragma in self._pragmas:
                conn.execute(pragma)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{self._path} cannot use WAL (journal_mode is {mode!r})")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open {self._path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_read_only(self) -> sqlite3.Connection:
        """A connection that never writes: ``mode=ro``, else ``immutable=1``.

        ``mode=ro`` still needs the WAL's shared-memory file; where it cannot be
        created (a read-only directory or filesystem), ``immutable=1`` reads the
        main file as it is: complete for a store closed cleanly (``close()``
        checkpoints the WAL into it).
        """
        if not self._path.is_file():
            raise StoreError(f"cannot read {self._path}: no such file (read_only creates none)")
        last: sqlite3.Error | None = None
        for flags in ("mode=ro", "immutable=1"):
            conn: sqlite3.Connection | None = None
            try:
                conn = sqlite3.connect(
                    f"{self._path.as_uri()}?{flags}",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                )
                conn.execute(self._pragmas[0])  # busy_timeout
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens lazily
                return conn
            except sqlite3.Error as exc:
                if conn is not None:
                    conn.close()
                last = exc
        raise StoreError(f"cannot read {self._path}: {last}") from last

    def _writable(self) -> Writer:
        self._check_open()
        if self._writer is None:
            raise StoreError(f"the store {self._path} was opened read_only: it cannot be written")
        return self._writer

    @contextmanager
    def _reading(self, what: str = "") -> Iterator[sqlite3.Connection]:
        """A short read transaction: one consistent snapshot, then let go of the WAL.

        Raises:
            StoreError: The file is gone or replaced, or SQLite or the JSON it
                holds failed (a damaged file), naming the file and ``what`` was read.
        """
        self._check_open()
        self._check_file()
        where = f"{self._path}{f' ({what})' if what else ''}"
        with self._read_lock:
            conn = self._reader
            try:
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"reading {where} failed: {exc}") from exc
            except (ValueError, TypeError) as exc:  # stored JSON that does not parse
                raise StoreError(f"reading {where} failed: damaged data: {exc}") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the store {self._path} is closed")

    def _check_file(self) -> None:
        """Refuse to go on with a file that is no longer the one opened.

        SQLite keeps writing to a deleted file through its open handle, and to its
        own handle of a file replaced at the same path: both would lose every
        write in silence.

        Raises:
            StoreError: The file was deleted or replaced since the store opened it.
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

    def _write(
        self,
        work: Callable[[sqlite3.Connection], T],
        what: str,
        *,
        finishing: tuple[str, int] | None = None,
    ) -> concurrent.futures.Future[T]:
        return self._writable().submit(work, what=what, finishing=finishing)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    # -- ExperimentRecorder ----------------------------------------------------------

    def begin(
        self,
        *,
        name: str,
        params: Mapping[str, Any],
        instances: int,
        config: Mapping[str, Any],
        resume: bool,
    ) -> tuple[str, dict[int, InstanceResult]]:
        """Create an experiment, or with ``resume=True`` find the last one like it.

        Blocks while it waits for the database (``run_experiment`` calls it in a
        thread, off the event loop).

        The experiment is then held by this run: its owner is written in the same
        ``BEGIN IMMEDIATE`` transaction that checks the one before, so of two
        runs resuming at once, one holds it and the other is refused, and no
        instance ever runs twice. Writes of a run that lost its experiment to
        another (its heartbeat had stopped long enough to read as dead) are
        refused.

        Args:
            name: The experiment's name.
            params: Its parameters (JSON values).
            instances: How many instances it runs.
            config: How it runs (JSON values); stored, not part of the identity.
            resume: Look for the latest experiment with the same name, params and
                instance count, whatever its status (``interrupted`` included);
                when found, keep the instances that succeeded and forget the
                others (they run again). An experiment whose run is alive
                (``running`` and its heartbeat fresh, its process not known to
                be dead) is never taken over: this waits up to ``resume_wait``
                seconds for it to end, then refuses.

        Returns:
            The experiment's id and the instances already finished successfully,
            by index (empty for a new experiment).

        Raises:
            ConfigError: If ``params`` or ``config`` are not JSON values.
            StoreError: If the store is closed or the write fails, or (with
                ``resume=True``) the experiment's run is still alive.
        """
        key = fingerprint(name, params, instances)
        params_json = dumps(plain(params, "params"))
        config_json = dumps(plain(config, "config"))
        owner = Owner.new()

        def work(conn: sqlite3.Connection) -> tuple[str, list[int]] | _Live:
            now = time.time()
            found = None
            if resume:
                found = conn.execute(
                    "SELECT id, status, heartbeat, heartbeat_every, owner FROM experiments "
                    "WHERE fingerprint = ? ORDER BY created DESC LIMIT 1",
                    (key,),
                ).fetchone()
            if found is None:
                experiment_id = uuid.uuid4().hex[:16]
                conn.execute(
                    "INSERT INTO experiments (id, name, params, config, instances, "
                    "fingerprint, status, created, heartbeat, heartbeat_every, owner) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                    (
                        experiment_id,
                        name,
                        params_json,
                        config_json,
                        instances,
                        key,
                        now,
                        now,
                        HEARTBEAT_EVERY,
                        str(owner),
                    ),
                )
                return experiment_id, []
            experiment_id, status, heartbeat, every, holder = found
            live = _live(experiment_id, status, heartbeat, every, Owner.parse(holder), now)
            if live is not None:
                return live
            conn.execute(
                "DELETE FROM samples WHERE experiment_id = ? AND instance NOT IN "
                "(SELECT idx FROM instances WHERE experiment_id = ? AND status = 'ok')",
                (experiment_id, experiment_id),
            )
            conn.execute(
                "DELETE FROM instances WHERE experiment_id = ? AND status != 'ok'",
                (experiment_id,),
            )
            conn.execute(
                "UPDATE experiments SET status = 'running', finished = NULL, summary = NULL, "
                "notes = NULL, config = ?, heartbeat = ?, heartbeat_every = ?, owner = ? "
                "WHERE id = ?",
                (config_json, now, HEARTBEAT_EVERY, str(owner), experiment_id),
            )
            done = conn.execute(
                "SELECT idx FROM instances WHERE experiment_id = ? AND idx < ?",
                (experiment_id, instances),
            ).fetchall()
            return experiment_id, [row[0] for row in done]

        what = f"beginning experiment {name!r}"
        deadline = time.monotonic() + self._resume_wait
        while True:
            begun = _result(self._write(work, what))
            if not isinstance(begun, _Live):
                break
            if time.monotonic() >= deadline:
                raise StoreError(begun.refusal(self._path, name, self._resume_wait))
            # Look again once the run could have beaten or ended.
            time.sleep(min(begun.every / 2, max(0.0, deadline - time.monotonic())))
        experiment_id, done = begun
        self._owners[experiment_id] = str(owner)
        started_here(str(owner))
        self._writable().reopen(experiment_id)
        if not done:
            return experiment_id, {}
        with self._reading(f"experiment {experiment_id}") as conn:
            loaded = self._instances(conn, experiment_id)
        return experiment_id, {index: loaded[index] for index in done if index in loaded}

    def heartbeat(self, experiment_id: str, *, every: float = HEARTBEAT_EVERY) -> None:
        """Note that the experiment's run is alive; ``run_experiment`` calls this.

        Never blocks (queued to the writer). An experiment still ``running``
        whose last heartbeat is older than :data:`MISSED_HEARTBEATS` times
        ``every`` reads as ``interrupted`` in :meth:`experiments`: its process
        died (killed, crashed, the machine lost power) without finishing it.

        Args:
            experiment_id: From :meth:`begin`.
            every: Seconds until the next heartbeat at the latest.

        Raises:
            ConfigError: ``every`` is not a number of seconds > 0.
            StoreError: If the store is closed.
        """
        check(
            isinstance(every, int | float) and math.isfinite(every) and every > 0,
            "every",
            every,
            "seconds > 0",
        )
        now = time.time()
        owner = self._owners.get(experiment_id)

        def work(conn: sqlite3.Connection) -> None:
            # A run that lost its experiment to another never beats for it again.
            conn.execute(
                "UPDATE experiments SET heartbeat = ?, heartbeat_every = ? "
                "WHERE id = ? AND (? IS NULL OR owner = ?)",
                (now, float(every), experiment_id, owner, owner),
            )

        self._write(work, f"the heartbeat of experiment {experiment_id}")

    def mark_interrupted(self, experiment_id: str) -> None:
        """Mark a running experiment ``interrupted`` now: its run was cancelled or raised.

        ``run_experiment`` calls this when it ends without finishing (Ctrl-C, a
        cancelled task), so the store says so at once instead of after a few
        missed heartbeats. Never blocks (queued to the writer); an experiment
        that is not ``running`` is left as it is.

        Raises:
            StoreError: If the store is closed.
        """
        owner = self._owners.pop(experiment_id, None)
        if owner is not None:
            ended_here(owner)

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE experiments SET status = 'interrupted' "
                "WHERE id = ? AND status = 'running' AND (? IS NULL OR owner = ?)",
                (experiment_id, owner, owner),
            )

        self._write(work, f"marking experiment {experiment_id} interrupted")

    def sample(
        self, experiment_id: str, instance: int, t: float, metrics: Mapping[str, float]
    ) -> None:
        """Buffer one timeline sample; it is committed with the next batch.

        Never blocks on the database: it is appended to the instance's buffer of
        float64 columns (8 bytes a value) until the writer commits it, in chunks.
        Samples still buffered when the process is killed are lost; a finished
        instance's timeline never is (see :meth:`finish_instance`).

        Args:
            experiment_id: From :meth:`begin`.
            instance: The instance's index.
            t: Seconds since the instance started.
            metrics: Metric name to value.

        Raises:
            StoreError: If the store is closed.
            TypeError: A value is not a number (nothing is buffered).
        """
        self._writable().add((experiment_id, instance), t, metrics)

    async def finish_instance(self, experiment_id: str, result: InstanceResult) -> None:
        """Record a finished (or failed) instance; committed before this returns.

        The instance's streamed samples are replaced by ``result.timeline``, so
        the stored timeline is exactly the one the run averaged. It is encoded
        and written in the writer thread, in chunks of at most ``CHUNK_ROWS``
        samples: however long the timeline, the event loop is not held up and
        no copy of it as Python objects or JSON text is ever built whole.

        Raises:
            StoreError: If the commit fails, or another run took the experiment
                over (see :meth:`begin`); the message names the instance.
        """
        row = (
            experiment_id,
            result.index,
            "ok" if result.ok else "failed",
            result.error,
            to_builtins(result.started),
            to_builtins(result.finished),
            dumps(to_builtins(result.summary)),
            dumps(list(result.gpu_uuids)),
            result.sandbox_id,
            result.attempts,
        )
        owner = self._owners.get(experiment_id)
        timeline = result.timeline
        what = f"recording instance {result.index} of experiment {experiment_id}"

        def work(conn: sqlite3.Connection) -> None:
            _check_owner(conn, experiment_id, owner)
            conn.execute(
                "DELETE FROM samples WHERE experiment_id = ? AND instance = ?",
                (experiment_id, result.index),
            )
            # The final timeline keeps inf and NaN as recorded (a diverged loss stays
            # inf when loaded); only the summaries are strict JSON. One chunk at a
            # time is encoded: executemany pulls them from the generator.
            conn.executemany(
                "INSERT INTO samples (experiment_id, instance, n, data) VALUES (?, ?, ?, ?)",
                (
                    (experiment_id, result.index, len(rows[0]), chunk_json(rows))
                    for rows in _timeline_chunks(timeline)
                ),
            )
            conn.execute(
                "INSERT OR REPLACE INTO instances (experiment_id, idx, status, error, started, "
                "finished, summary, gpu_uuids, sandbox_id, attempts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

        await asyncio.wrap_future(self._write(work, what, finishing=(experiment_id, result.index)))

    async def finish(self, experiment_id: str, result: ExperimentResult) -> None:
        """Mark the experiment finished (``"failed"`` if no instance succeeded).

        Stores the result's summary, config and notes (what failed after the
        instances ran: the experiment is finished all the same); committed
        before this returns. The run no longer holds the experiment.

        Raises:
            StoreError: If the experiment is unknown, another run took it over,
                or the commit fails.
        """
        status = "failed" if result.all_failed else "finished"
        summary = dumps(plain(result.summary, "summary", strict=False))
        # The run may have completed its config after begin() (the sandbox kind...).
        config = dumps(plain(result.config, "config", strict=False))
        notes = dumps(list(result.notes)) if result.notes else None
        owner = self._owners.pop(experiment_id, None)
        if owner is not None:
            ended_here(owner)

        def work(conn: sqlite3.Connection) -> None:
            _check_owner(conn, experiment_id, owner)
            conn.execute(
                "UPDATE experiments SET status = ?, summary = ?, config = ?, finished = ?, "
                "notes = ? WHERE id = ?",
                (status, summary, config, time.time(), notes, experiment_id),
            )

        await asyncio.wrap_future(self._write(work, f"finishing experiment {experiment_id}"))

    # -- queries ---------------------------------------------------------------------

    def experiments(self, *, now: float | None = None) -> pd.DataFrame:
        """Every experiment, oldest first, one row each.

        Args:
            now: The time to judge heartbeats against (UTC seconds since the
                epoch); default: now.

        Returns:
            Columns ``id``, ``name``, ``status`` (``running``, ``finished``,
            ``failed``, or ``interrupted``: its run was cancelled, or it is
            still marked running but its heartbeat is older than
            :data:`MISSED_HEARTBEATS` intervals, so its process died),
            ``instances`` (asked for), ``succeeded`` and ``failed`` (instances
            recorded so far), ``created`` and ``finished`` (UTC timestamps),
            ``params`` and ``summary`` (dicts), ``fingerprint``, ``heartbeat``
            (UTC timestamp of the last one), ``notes`` (list of what failed
            after the instances ran) and ``labels`` (dict: what the run was
            marked with, such as a sweep's ``{"sweep": id, "trial": n}``).
        """
        with self._reading("the list of experiments") as conn:
            rows = conn.execute(
                "SELECT e.id, e.name, "
                "CASE WHEN e.status = 'running' AND e.heartbeat < ? - ? * "
                "COALESCE(e.heartbeat_every, ?) THEN 'interrupted' ELSE e.status END, "
                "e.instances, "
                "COUNT(CASE WHEN i.status = 'ok' THEN 1 END), "
                "COUNT(CASE WHEN i.status = 'failed' THEN 1 END), "
                "e.created, e.finished, e.params, e.summary, e.fingerprint, e.heartbeat, "
                "e.notes, e.config "
                "FROM experiments AS e LEFT JOIN instances AS i ON i.experiment_id = e.id "
                "GROUP BY e.id ORDER BY e.created, e.rowid",
                (time.time() if now is None else now, MISSED_HEARTBEATS, HEARTBEAT_EVERY),
            ).fetchall()
            records = [self._experiment_row(row) for row in rows]
        columns = (
            "id",
            "name",
            "status",
            "instances",
            "succeeded",
            "failed",
            "created",
            "finished",
            "params",
            "summary",
            "fingerprint",
            "heartbeat",
            "notes",
            "labels",
        )
        frame = pd.DataFrame.from_records(records, columns=columns)
        for column in ("instances", "succeeded", "failed"):
            frame[column] = frame[column].astype("int64")
        for column in ("created", "finished", "heartbeat"):
            frame[column] = pd.to_datetime(frame[column].astype(float), unit="s", utc=True)
        return frame

    def _experiment_row(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """A row of :meth:`experiments` with its JSON parsed.

        Raises:
            StoreError: Its JSON is damaged (naming the experiment).
        """
        try:
            return (
                *row[:8],
                json.loads(row[8]),
                json.loads(row[9]) if row[9] else {},
                row[10],
                row[11],
                json.loads(row[12]) if row[12] else [],
                dict(json.loads(row[13]).get("labels") or {}) if row[13] else {},
            )
        except (ValueError, TypeError) as exc:
            raise StoreError(
                f"reading {self._path} failed: experiment {row[0]} is damaged: {exc}"
            ) from exc

    def find(self, name: str, params: Mapping[str, Any], instances: int) -> str | None:
        """The id of the last finished experiment with this name, params and count.

        Experiments still running, or whose every instance failed, are not found.
        """
        key = fingerprint(name, params, instances)
        with self._reading(f"experiment {name!r}") as conn:
            row = conn.execute(
                "SELECT id FROM experiments WHERE fingerprint = ? AND status = 'finished' "
                "ORDER BY created DESC LIMIT 1",
                (key,),
            ).fetchone()
        return None if row is None else str(row[0])

    def load(self, experiment_id: str) -> ExperimentResult:
        """Rebuild an experiment's result from its recorded instances.

        The average, summary and outliers are recomputed with
        :meth:`ExperimentResult.build` from the stored timelines, which are the
        ones the run averaged: the result equals the run's own. Instances that
        never finished (the process was killed) are not part of it.

        Raises:
            StoreError: If there is no such experiment, or what is stored of it
                cannot be read (a damaged file or damaged JSON): the message names
                the file, the experiment and, where it is one, the instance.
        """
        with self._reading(f"experiment {experiment_id}") as conn:
            row = conn.execute(
                "SELECT name, params, config, notes FROM experiments WHERE id = ?",
                (experiment_id,),
            ).fetchone()
            if row is None:
                raise StoreError(f"no experiment {experiment_id!r} in {self._path}")
            instances = self._instances(conn, experiment_id)
            name, params, config, notes = row
            params, config = json.loads(params), json.loads(config)
            notes = json.loads(notes) if notes else ()
        return ExperimentResult.build(
            name,
            params,
            list(instances.values()),
            config,
            experiment_id=experiment_id,
            notes=notes,
        )

    def _instances(self, conn: sqlite3.Connection, experiment_id: str) -> dict[int, InstanceResult]:
        """The recorded instances of an experiment, by index.

        Raises:
            StoreError: An instance's row or samples cannot be read (naming it).
        """
        rows = conn.execute(
            "SELECT idx, status, error, started, finished, summary, gpu_uuids, sandbox_id, "
            "attempts FROM instances WHERE experiment_id = ? ORDER BY idx",
            (experiment_id,),
        ).fetchall()
        chunks: dict[int, list[str]] = {}
        for instance, data in conn.execute(
            "SELECT instance, data FROM samples WHERE experiment_id = ? ORDER BY instance, id",
            (experiment_id,),
        ):
            chunks.setdefault(instance, []).append(data)
        loaded: dict[int, InstanceResult] = {}
        for row in rows:
            try:
                loaded[row[0]] = InstanceResult(
                    index=row[0],
                    ok=row[1] == "ok",
                    error=row[2],
                    timeline=frame_from_dict(join_chunks(chunks.get(row[0], []))),
                    summary=json.loads(row[5]),
                    started=row[3],
                    finished=row[4],
                    gpu_uuids=tuple(json.loads(row[6])),
                    sandbox_id=row[7],
                    attempts=row[8],
                )
            except (ValueError, TypeError) as exc:
                raise StoreError(
                    f"reading {self._path} failed: instance {row[0]} of experiment "
                    f"{experiment_id} is damaged: {exc}"
                ) from exc
        return loaded

    # -- upkeep ----------------------------------------------------------------------

    def delete(self, experiment_id: str) -> None:
        """Remove an experiment, its instances and its samples.

        Raises:
            StoreError: If there is no such experiment.
        """

        def work(conn: sqlite3.Connection) -> None:
            cursor = conn.execute("DELETE FROM experiments WHERE id = ?", (experiment_id,))
            if cursor.rowcount == 0:
                raise StoreError(f"no experiment {experiment_id!r} in {self._path}")
            conn.execute("DELETE FROM instances WHERE experiment_id = ?", (experiment_id,))
            conn.execute("DELETE FROM samples WHERE experiment_id = ?", (experiment_id,))

        _result(self._write(work, f"deleting experiment {experiment_id}"))

    def export(self, experiment_id: str, path: str | os.PathLike[str]) -> Path:
        """Write an experiment's per-instance timelines to a CSV or Parquet file.

        One row per sample: ``instance``, ``t`` and one column per metric. The
        format follows the suffix: ``.csv``, or ``.parquet``/``.pq``.

        Returns:
            The path written.

        Raises:
            ConfigError: For another suffix.
            MissingDependency: For Parquet without ``pyarrow`` installed.
            StoreError: If there is no such experiment.
        """
        target = Path(path)
        suffix = target.suffix.lower()
        check(suffix in (".csv", ".parquet", ".pq"), "path", str(path), "a .csv or .parquet file")
        if suffix != ".csv" and importlib.util.find_spec("pyarrow") is None:
            raise MissingDependency("pyarrow", "parquet", "Parquet export")
        result = self.load(experiment_id)
        frames = [
            instance.timeline.assign(instance=instance.index) for instance in result.instances
        ]
        if frames:
            table = pd.concat(frames, ignore_index=True)
            table = table[["instance", *(c for c in table.columns if c != "instance")]]
        else:
            table = pd.DataFrame({"instance": [], "t": []})
        if suffix == ".csv":
            table.to_csv(target, index=False)
        else:
            table.to_parquet(target, index=False)
        return target

    def flush(self) -> None:
        """Block until every sample buffered so far is committed.

        Raises:
            StoreError: If the store is closed.
        """
        _result(self._write(lambda conn: None, "flushing"))

    def stats(self) -> StoreStats:
        """A snapshot of the writer: buffered, written and dropped samples (all 0 read-only)."""
        writer = self._writer
        if writer is None:
            return StoreStats(
                path=self._path,
                pending_samples=0,
                samples_written=0,
                samples_dropped=0,
                batches=0,
                last_batch_ms=0.0,
            )
        return StoreStats(
            path=self._path,
            pending_samples=writer.pending_samples,
            samples_written=writer.samples_written,
            samples_dropped=writer.samples_dropped,
            batches=writer.batches,
            last_batch_ms=writer.last_batch_ms,
        )

    def close(self) -> None:
        """Commit what is buffered, truncate the WAL and close both connections.

        Safe to call twice.

        Raises:
            StoreError: If some sample batch could not be written while the store
                was open (finished instances are unaffected: they commit on their
                own); the store is closed all the same.
        """
        if self._closed:
            return
        self._closed = True
        self._finalizer()
        # Its runs can no longer write: a resume may take their experiments over.
        for owner in self._owners.values():
            ended_here(owner)
        self._owners.clear()
        writer = self._writer
        if writer is not None and writer.error is not None:
            raise StoreError(
                f"{writer.samples_dropped} samples could not be written to "
                f"{self._path}: {writer.error}"
            ) from writer.error

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Store({str(self._path)!r}, {state})"


def _shutdown(writer: Writer | None, reader: sqlite3.Connection) -> None:
    if writer is not None:
        writer.stop()
    reader.close()


def _result(future: concurrent.futures.Future[T]) -> T:
    return future.result()


def _identity(path: Path) -> tuple[int, int]:
    """The file at ``path`` as the filesystem knows it: device and inode.

    Raises:
        FileNotFoundError: Nothing is at ``path``.
    """
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


@dataclass(frozen=True, slots=True)
class _Live:
    """A resumed experiment whose run is alive: who holds it, when it last beat."""

    experiment_id: str
    owner: Owner | None
    age: float
    every: float

    def refusal(self, path: Path, name: str, waited: float) -> str:
        who = "another run" if self.owner is None else self.owner.describe()
        waiting = f", waited {waited:g} s for it to end" if waited else ""
        return (
            f"experiment {self.experiment_id} ({name!r}) in {path} is still running in "
            f"{who} (last heartbeat {self.age:.1f} s ago{waiting}): resume=True never "
            "takes over a live run. Let it finish or stop it, or wait for it with "
            f"Store(..., resume_wait=seconds); a run that died unnoticed reads as "
            f"interrupted {MISSED_HEARTBEATS * self.every:g} s after its last heartbeat."
        )


def _live(
    experiment_id: str,
    status: str,
    heartbeat: float | None,
    every: float | None,
    owner: Owner | None,
    now: float,
) -> _Live | None:
    """The live run that holds an experiment, or ``None`` when it may be taken over."""
    every = every or HEARTBEAT_EVERY
    age = now - (heartbeat or 0.0)
    if status != "running" or age > MISSED_HEARTBEATS * every:
        return None
    if owner is not None and owner.dead():
        return None
    return _Live(experiment_id, owner, age, every)


def _check_owner(conn: sqlite3.Connection, experiment_id: str, owner: str | None) -> None:
    """Refuse a write for an experiment that is gone or that another run took over.

    Raises:
        StoreError: Either.
    """
    row = conn.execute("SELECT owner FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
    if row is None:
        raise StoreError(f"no experiment {experiment_id!r}")
    if owner is not None and row[0] != owner:
        holder = Owner.parse(row[0])
        who = "another run" if holder is None else holder.describe()
        raise StoreError(
            f"experiment {experiment_id} was taken over by {who} (this run's heartbeat "
            "had stopped for long enough to read as dead)"
        )


def _timeline_chunks(timeline: pd.DataFrame) -> Iterator[SampleRows]:
    """A timeline as stored chunks of at most ``CHUNK_ROWS`` samples; one (maybe empty)
    chunk at least, so that an empty timeline keeps its columns."""
    offsets = timeline["t"].to_numpy(dtype=float) if "t" in timeline else np.empty(0)
    values = {
        str(name): timeline[name].to_numpy(dtype=float) for name in timeline.columns if name != "t"
    }
    for start in range(0, max(len(offsets), 1), CHUNK_ROWS):
        stop = start + CHUNK_ROWS
        yield offsets[start:stop], {name: column[start:stop] for name, column in values.items()}


def _check_options(
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
    """Refuse a bad option of :class:`Store`, naming it (ConfigError)."""
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
