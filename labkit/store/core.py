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

import pandas as pd

from labkit.errors import MissingDependency, StoreError, check, is_int, is_real
from labkit.results import ExperimentResult, InstanceResult, frame_from_dict
from labkit.store.codec import dumps, fingerprint, join_chunks, plain
from labkit.store.filesystems import network_filesystem
from labkit.store.schema import check_version, migrate
from labkit.store.writer import Writer

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
        timeout: How long a write waits for another process's lock before failing
            (s); SQLite's ``busy_timeout``.
        batch_rows: Commit buffered samples once this many are waiting.
        flush_interval: Commit buffered samples at least this often (s).
        checkpoint_interval: Checkpoint the WAL this often while writing (s).
        read_only: Only read: open the file read-only (never created, migrated or
            written; no writer thread), so a store on a read-only filesystem or
            in a directory one cannot write to can still be listed and loaded.
            Every write raises :class:`~labkit.errors.StoreError`.

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
    ) -> None:
        _check_options(
            path,
            synchronous=synchronous,
            timeout=timeout,
            batch_rows=batch_rows,
            flush_interval=flush_interval,
            checkpoint_interval=checkpoint_interval,
            read_only=read_only,
        )
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
        self._writer: Writer | None = None
        self._reader = self._connect_read_only() if read_only else self._connect()
        try:
            if read_only:
                check_version(self._reader, self._path)
            else:
                migrate(self._reader, self._path)
                self._writer = Writer(
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
        return self._writable().submit(work)

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
        params_json = dumps(plain(params, "params"))
        config_json = dumps(plain(config, "config"))

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
        self._writable().reopen(experiment_id)
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
        self._writable().add((experiment_id, instance, t, dict(metrics)))

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
            dumps(data["summary"]),
            dumps(data["gpu_uuids"]),
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

        await asyncio.wrap_future(
            self._writable().submit(work, finishing=(experiment_id, result.index))
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
        summary = dumps(plain(result.summary, "summary", strict=False))
        # The run may have completed its config after begin() (the sandbox kind...).
        config = dumps(plain(result.config, "config", strict=False))
        notes = dumps(list(result.notes)) if result.notes else None

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
                timeline=frame_from_dict(join_chunks(chunks.get(row[0], []))),
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


def _check_options(
    path: str | os.PathLike[str],
    *,
    synchronous: str,
    timeout: float,
    batch_rows: int,
    flush_interval: float,
    checkpoint_interval: float,
    read_only: bool,
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
        isinstance(path, str | os.PathLike) and str(path) not in (":memory:", ""),
        "path",
        path,
        "a file path",
    )
