"""The experiment store: every run recorded in one SQLite file, safe to resume.

:class:`Store` keeps experiments, their instances and their timeline samples in one
SQLite database (``labkit.db`` by default) and implements
:class:`labkit.results.ExperimentRecorder`, so ``run_experiment(..., store=store)``
records as it runs and ``resume=True`` reruns only what is missing.

How it stays fast and safe under parallel writers:

- WAL journal, ``synchronous=NORMAL`` (``"full"`` on request), a busy timeout, and
  every write transaction begun with ``BEGIN IMMEDIATE``: a deferred transaction
  that reads and then writes fails at once with "database is locked" when another
  connection committed in between, whatever the timeout.
- One writer per store: a background thread that owns its own connection. Samples
  are buffered without blocking and committed in batches (every ``batch_rows`` rows
  or ``flush_interval`` seconds); everything else the writer does is queued behind
  them, so a finished instance is committed, samples and all, before
  :meth:`Store.finish_instance` returns. A thread (not an asyncio task) serves
  scripts, notebooks and several event loops alike, and keeps SQLite's blocking
  calls off the loop.
- Reads use a second connection and short transactions; the writer checkpoints the
  WAL every ``checkpoint_interval`` seconds and truncates it on close, and
  ``journal_size_limit`` caps the file kept after a checkpoint.
- WAL needs every process on one host with working shared memory, which network
  filesystems do not give. A database on NFS, SMB/CIFS, sshfs and the like is
  refused with a :class:`~labkit.errors.StoreError` rather than silently risking
  corruption: put the database on a local disk.

Samples are stored column-wise: each row of ``samples`` holds a chunk of one
instance's timeline as JSON ``{"t": [...], "<metric>": [...]}`` (``null`` where a
sample lacks a metric). A batch therefore costs one row per instance instead of
one per sample and metric, and loading a timeline parses a few large JSON arrays
instead of building millions of Python tuples. When an instance finishes, its
streamed chunks are replaced by its final timeline, so :meth:`Store.load` rebuilds
exactly the timelines, and hence the average, that the run produced: an inf or
NaN sample is kept as recorded (written with the ``NaN``/``Infinity`` tokens that
Python's ``json`` reads; summaries and params are strict JSON, non-finite as null).

Resume: an experiment is identified by its fingerprint, a SHA-256 of the canonical
JSON of its name, params and instance count (exact for NaN, inf and ``None``: see
:func:`fingerprint`). Instances that succeeded are loaded, not rerun; instances that
failed or never finished (a killed process) run again.

Liveness: a run writes a heartbeat (:meth:`Store.heartbeat`) every few seconds. An
experiment still marked ``running`` whose heartbeat is older than
:data:`MISSED_HEARTBEATS` intervals reads as ``interrupted`` (its process died);
``resume=True`` picks it up like any unfinished run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib.util
import itertools
import json
import math
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import pandas as pd

from labkit.errors import ConfigError, MissingDependency, StoreError, check
from labkit.results import ExperimentResult, InstanceResult, frame_from_dict

__all__ = ("Store", "StoreStats", "fingerprint", "network_filesystem")

T = TypeVar("T")

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
)
"""Schema migrations; after applying the first k, ``PRAGMA user_version`` is k."""

NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb3",
        "smbfs",
        "9p",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "fuse.sshfs",
        "fuse.glusterfs",
        "fuse.s3fs",
        "fuse.rclone",
        "fuse.gcsfuse",
        "davfs",
    }
)
"""Filesystem types (as in ``/proc/mounts``) on which SQLite's WAL is unsafe."""

HEARTBEAT_EVERY = 5.0
"""Seconds between heartbeats assumed for a run that has not said (``Store.heartbeat``)."""

MISSED_HEARTBEATS = 3
"""A running experiment whose heartbeat is older than this many intervals is ``interrupted``."""

_MOUNTS = Path("/proc/mounts")
_WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes kept in the -wal file after a checkpoint


def fingerprint(name: str, params: Mapping[str, Any], instances: int) -> str:
    """The stable key that resume looks an experiment up by.

    Args:
        name: The experiment's name.
        params: Its parameters: JSON values (numbers, strings, booleans, ``None``,
            lists and dicts of them). Every value is told apart exactly: ``1``,
            ``1.0`` and ``True`` differ, and so do ``0.0`` and ``-0.0``; NaN,
            ``inf``, ``-inf`` and ``None`` are four different values (written as
            the bare tokens ``NaN``, ``Infinity``, ``-Infinity`` and ``null``,
            which no string can spell). Tuples count as lists, and dict keys as
            strings, as in JSON.
        instances: How many instances it runs.

    Returns:
        The SHA-256 hex digest of the canonical JSON of the three (sorted keys,
        no whitespace), the same in every process and on every machine. For
        finite values this is strict JSON, so fingerprints of earlier stores
        still match.

    Raises:
        ConfigError: If ``params`` holds something that is not a JSON value.
    """
    canonical = json.dumps(
        {"instances": int(instances), "name": name, "params": _plain(params, "params")},
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def network_filesystem(path: str | os.PathLike[str], mounts: Path | None = None) -> str | None:
    """The network filesystem type that ``path`` lives on, or ``None`` if local.

    Args:
        path: A file or directory; its nearest existing ancestor is resolved.
        mounts: A file in ``/proc/mounts`` format (default: ``/proc/mounts``).
            Where it does not exist (macOS, Windows) the answer is ``None``:
            nothing is known, nothing is refused.

    Returns:
        The ``fstype`` of the mount holding ``path`` when it is in
        :data:`NETWORK_FILESYSTEMS`, else ``None``.
    """
    try:
        text = (mounts or _MOUNTS).read_text()
    except OSError:
        return None
    target = Path(path).absolute()
    while not target.exists() and target != target.parent:
        target = target.parent
    resolved = str(target.resolve())
    best, best_type = "", None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        # /proc/mounts escapes spaces and the like as octal (\040).
        mount_point = fields[1].encode().decode("unicode_escape")
        inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fields[2]
    return best_type if best_type in NETWORK_FILESYSTEMS else None


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
        timeout: How long a write waits for another process's lock before failing
            (s); SQLite's ``busy_timeout``.
        batch_rows: Commit buffered samples once this many are waiting.
        flush_interval: Commit buffered samples at least this often (s).
        checkpoint_interval: Checkpoint the WAL this often while writing (s).

    Raises:
        ConfigError: For an option out of range.
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
    ) -> None:
        check(synchronous in ("normal", "full"), "synchronous", synchronous, '"normal" or "full"')
        check(timeout >= 0, "timeout", timeout, "seconds >= 0")
        check(batch_rows >= 1, "batch_rows", batch_rows, "an integer >= 1")
        check(flush_interval > 0, "flush_interval", flush_interval, "seconds > 0")
        check(checkpoint_interval > 0, "checkpoint_interval", checkpoint_interval, "seconds > 0")
        check(str(path) != ":memory:" and str(path) != "", "path", path, "a file path")
        self._path = Path(path).absolute()
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
        self._reader = self._connect()
        try:
            self._migrate(self._reader)
            self._writer = _Writer(
                self._connect,
                batch_rows=batch_rows,
                flush_interval=flush_interval,
                checkpoint_interval=checkpoint_interval,
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

    def _migrate(self, conn: sqlite3.Connection) -> None:
        with _immediate(conn, self._path):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"{self._path} has schema version {version}, newer than this labkit "
                    f"knows ({len(MIGRATIONS)}): upgrade labkit to open it"
                )
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    conn.execute(statement)
            # PRAGMA takes no parameters; the value is an int we computed.
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A short read transaction: one consistent snapshot, then let go of the WAL."""
        self._check_open()
        with self._read_lock:
            conn = self._reader
            conn.execute("BEGIN")
            try:
                yield conn
            except sqlite3.Error as exc:
                raise StoreError(f"reading {self._path} failed: {exc}") from exc
            finally:
                conn.execute("COMMIT")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the store {self._path} is closed")

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> concurrent.futures.Future[T]:
        self._check_open()
        return self._writer.submit(work)

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

        Args:
            name: The experiment's name.
            params: Its parameters (JSON values).
            instances: How many instances it runs.
            config: How it runs (JSON values); stored, not part of the identity.
            resume: Look for the latest experiment with the same name, params and
                instance count, whatever its status (``interrupted`` included);
                when found, keep the instances that succeeded and forget the
                others (they run again).

        Returns:
            The experiment's id and the instances already finished successfully,
            by index (empty for a new experiment).

        Raises:
            ConfigError: If ``params`` or ``config`` are not JSON values.
            StoreError: If the store is closed or the write fails.
        """
        key = fingerprint(name, params, instances)
        params_json = _dumps(_plain(params, "params"))
        config_json = _dumps(_plain(config, "config"))

        def work(conn: sqlite3.Connection) -> tuple[str, list[int]]:
            found = None
            if resume:
                found = conn.execute(
                    "SELECT id FROM experiments WHERE fingerprint = ? "
                    "ORDER BY created DESC LIMIT 1",
                    (key,),
                ).fetchone()
            if found is None:
                experiment_id = uuid.uuid4().hex[:16]
                now = time.time()
                conn.execute(
                    "INSERT INTO experiments (id, name, params, config, instances, "
                    "fingerprint, status, created, heartbeat, heartbeat_every) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
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
                    ),
                )
                return experiment_id, []
            experiment_id = found[0]
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
                "notes = NULL, config = ?, heartbeat = ? WHERE id = ?",
                (config_json, time.time(), experiment_id),
            )
            done = conn.execute(
                "SELECT idx FROM instances WHERE experiment_id = ? AND idx < ?",
                (experiment_id, instances),
            ).fetchall()
            return experiment_id, [row[0] for row in done]

        experiment_id, done = _result(self._write(work))
        self._writer.reopen(experiment_id)
        if not done:
            return experiment_id, {}
        with self._reading() as conn:
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

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE experiments SET heartbeat = ?, heartbeat_every = ? WHERE id = ?",
                (now, float(every), experiment_id),
            )

        self._write(work)

    def mark_interrupted(self, experiment_id: str) -> None:
        """Mark a running experiment ``interrupted`` now: its run was cancelled or raised.

        ``run_experiment`` calls this when it ends without finishing (Ctrl-C, a
        cancelled task), so the store says so at once instead of after a few
        missed heartbeats. Never blocks (queued to the writer); an experiment
        that is not ``running`` is left as it is.

        Raises:
            StoreError: If the store is closed.
        """

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE experiments SET status = 'interrupted' WHERE id = ? AND status = 'running'",
                (experiment_id,),
            )

        self._write(work)

    def sample(
        self, experiment_id: str, instance: int, t: float, metrics: Mapping[str, float]
    ) -> None:
        """Buffer one timeline sample; it is committed with the next batch.

        Never blocks on the database. Samples still buffered when the process is
        killed are lost; a finished instance's timeline never is (see
        :meth:`finish_instance`).

        Args:
            experiment_id: From :meth:`begin`.
            instance: The instance's index.
            t: Seconds since the instance started.
            metrics: Metric name to value.

        Raises:
            StoreError: If the store is closed.
        """
        self._check_open()
        self._writer.add((experiment_id, instance, t, dict(metrics)))

    async def finish_instance(self, experiment_id: str, result: InstanceResult) -> None:
        """Record a finished (or failed) instance; committed before this returns.

        The instance's streamed samples are replaced by ``result.timeline``, so
        the stored timeline is exactly the one the run averaged.

        Raises:
            StoreError: If the commit fails.
        """
        data = result.to_dict()
        row = (
            experiment_id,
            result.index,
            "ok" if result.ok else "failed",
            result.error,
            data["started"],
            data["finished"],
            _dumps(data["summary"]),
            _dumps(data["gpu_uuids"]),
            result.sandbox_id,
            result.attempts,
        )
        # The final timeline keeps inf and NaN as recorded (a diverged loss stays
        # inf when loaded); only the summaries are strict JSON.
        timeline = {
            str(column): result.timeline[column].to_numpy(dtype=float).tolist()
            for column in result.timeline.columns
        }

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM samples WHERE experiment_id = ? AND instance = ?",
                (experiment_id, result.index),
            )
            conn.execute(
                "INSERT INTO samples (experiment_id, instance, n, data) VALUES (?, ?, ?, ?)",
                (
                    experiment_id,
                    result.index,
                    len(timeline.get("t", ())),
                    json.dumps(timeline, separators=(",", ":")),
                ),
            )
            conn.execute(
                "INSERT OR REPLACE INTO instances (experiment_id, idx, status, error, started, "
                "finished, summary, gpu_uuids, sandbox_id, attempts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

        self._check_open()
        await asyncio.wrap_future(
            self._writer.submit(work, finishing=(experiment_id, result.index))
        )

    async def finish(self, experiment_id: str, result: ExperimentResult) -> None:
        """Mark the experiment finished (``"failed"`` if no instance succeeded).

        Stores the result's summary, config and notes (what failed after the
        instances ran: the experiment is finished all the same); committed
        before this returns.

        Raises:
            StoreError: If the experiment is unknown or the commit fails.
        """
        status = "failed" if result.all_failed else "finished"
        summary = _dumps(_plain(result.summary, "summary", strict=False))
        # The run may have completed its config after begin() (the sandbox kind...).
        config = _dumps(_plain(result.config, "config", strict=False))
        notes = _dumps(list(result.notes)) if result.notes else None

        def work(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE experiments SET status = ?, summary = ?, config = ?, finished = ?, "
                "notes = ? WHERE id = ?",
                (status, summary, config, time.time(), notes, experiment_id),
            )
            if cursor.rowcount == 0:
                raise StoreError(f"no experiment {experiment_id!r} in {self._path}")

        await asyncio.wrap_future(self._write(work))

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
            (UTC timestamp of the last one) and ``notes`` (list of what failed
            after the instances ran).
        """
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT e.id, e.name, "
                "CASE WHEN e.status = 'running' AND e.heartbeat < ? - ? * "
                "COALESCE(e.heartbeat_every, ?) THEN 'interrupted' ELSE e.status END, "
                "e.instances, "
                "COUNT(CASE WHEN i.status = 'ok' THEN 1 END), "
                "COUNT(CASE WHEN i.status = 'failed' THEN 1 END), "
                "e.created, e.finished, e.params, e.summary, e.fingerprint, e.heartbeat, "
                "e.notes "
                "FROM experiments AS e LEFT JOIN instances AS i ON i.experiment_id = e.id "
                "GROUP BY e.id ORDER BY e.created, e.rowid",
                (time.time() if now is None else now, MISSED_HEARTBEATS, HEARTBEAT_EVERY),
            ).fetchall()
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
        )
        records = [
            (
                *row[:8],
                json.loads(row[8]),
                json.loads(row[9]) if row[9] else {},
                row[10],
                row[11],
                json.loads(row[12]) if row[12] else [],
            )
            for row in rows
        ]
        frame = pd.DataFrame.from_records(records, columns=columns)
        for column in ("instances", "succeeded", "failed"):
            frame[column] = frame[column].astype("int64")
        for column in ("created", "finished", "heartbeat"):
            frame[column] = pd.to_datetime(frame[column].astype(float), unit="s", utc=True)
        return frame

    def find(self, name: str, params: Mapping[str, Any], instances: int) -> str | None:
        """The id of the last finished experiment with this name, params and count.

        Experiments still running, or whose every instance failed, are not found.
        """
        key = fingerprint(name, params, instances)
        with self._reading() as conn:
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
            StoreError: If there is no such experiment.
        """
        with self._reading() as conn:
            row = conn.execute(
                "SELECT name, params, config, notes FROM experiments WHERE id = ?",
                (experiment_id,),
            ).fetchone()
            if row is None:
                raise StoreError(f"no experiment {experiment_id!r} in {self._path}")
            instances = self._instances(conn, experiment_id)
        name, params, config, notes = row
        return ExperimentResult.build(
            name,
            json.loads(params),
            list(instances.values()),
            json.loads(config),
            experiment_id=experiment_id,
            notes=json.loads(notes) if notes else (),
        )

    def _instances(self, conn: sqlite3.Connection, experiment_id: str) -> dict[int, InstanceResult]:
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
        return {
            row[0]: InstanceResult(
                index=row[0],
                ok=row[1] == "ok",
                error=row[2],
                timeline=frame_from_dict(_join_chunks(chunks.get(row[0], []))),
                summary=json.loads(row[5]),
                started=row[3],
                finished=row[4],
                gpu_uuids=tuple(json.loads(row[6])),
                sandbox_id=row[7],
                attempts=row[8],
            )
            for row in rows
        }

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

        _result(self._write(work))

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
        _result(self._write(lambda conn: None))

    def stats(self) -> StoreStats:
        """A snapshot of the writer: buffered, written and dropped samples."""
        writer = self._writer
        return StoreStats(
            path=self._path,
            pending_samples=len(writer.samples),
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
        if self._writer.error is not None:
            raise StoreError(
                f"{self._writer.samples_dropped} samples could not be written to "
                f"{self._path}: {self._writer.error}"
            ) from self._writer.error

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


Row = tuple[str, int, float, dict[str, Any]]


@dataclass(slots=True)
class _Command:
    work: Callable[[sqlite3.Connection], Any]
    future: concurrent.futures.Future[Any]
    finishing: tuple[str, int] | None


class _Writer:
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
                    _checkpoint(conn, "PASSIVE")
                    last_checkpoint = time.monotonic()
                if stopping and not self.commands and not self.samples:
                    break
        finally:
            _checkpoint(conn, "TRUNCATE")
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
                (key[0], key[1], len(group), _dumps(_columns(group)))
                for key, group in groups.items()
            ]
            with _immediate(conn):
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
            with _immediate(conn):
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


def _shutdown(writer: _Writer, reader: sqlite3.Connection) -> None:
    writer.stop()
    reader.close()


@contextmanager
def _immediate(conn: sqlite3.Connection, path: Path | None = None) -> Iterator[None]:
    """A write transaction that takes the write lock up front (``BEGIN IMMEDIATE``)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        where = f" {path}" if path else ""
        raise StoreError(f"cannot write to the store{where}: {exc}") from exc
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _checkpoint(conn: sqlite3.Connection, mode: Literal["PASSIVE", "TRUNCATE"]) -> None:
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


def _result(future: concurrent.futures.Future[T]) -> T:
    return future.result()


def _columns(rows: Sequence[Row]) -> dict[str, list[Any]]:
    """Samples as columns: ``{"t": [...], metric: [...]}``, ``None`` where missing."""
    metrics = [row[3] for row in rows]
    names = dict.fromkeys(itertools.chain.from_iterable(metrics))
    names.pop("t", None)
    columns: dict[str, list[Any]] = {"t": [row[2] for row in rows]}
    for name in names:
        columns[name] = [values.get(name) for values in metrics]
    return columns


def _join_chunks(texts: Sequence[str]) -> dict[str, list[Any]]:
    """Concatenate column chunks; a metric missing from a chunk is ``None`` there."""
    if not texts:
        return {"t": []}
    if len(texts) == 1:
        return dict(json.loads(texts[0]))
    joined: dict[str, list[Any]] = {"t": []}
    for text in texts:
        chunk = json.loads(text)
        size = len(chunk.get("t", ()))
        before = len(joined["t"])
        for name, values in chunk.items():
            joined.setdefault(name, [None] * before).extend(values)
        for values in joined.values():
            values.extend([None] * (before + size - len(values)))
    return joined


def _dumps(value: Any) -> str:
    """Strict JSON (no NaN tokens): non-finite floats are written as ``null``."""
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"), default=_default)
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False, separators=(",", ":"), default=_default)


def _default(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return item()
    tolist = getattr(value, "tolist", None)  # numpy arrays
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _plain(value: Any, option: str, *, strict: bool = True) -> Any:
    """``value`` as JSON builtins; numpy scalars unwrapped, tuples as lists.

    With ``strict``, anything else raises :class:`ConfigError` (an identity must
    not depend on an object's ``repr``); otherwise it is kept as its ``str``.
    """
    if isinstance(value, str | bool | int | float | None):
        # Non-finite floats stay: the fingerprint tells them apart from None,
        # and _dumps writes them as null where strict JSON is stored.
        return value
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return _plain(item(), option, strict=strict)
    if isinstance(value, Mapping):
        return {str(key): _plain(item, option, strict=strict) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item, option, strict=strict) for item in value]
    if strict:
        raise ConfigError(
            option, value, "JSON values (str, int, float, bool, None, lists and dicts of them)"
        )
    return str(value)
