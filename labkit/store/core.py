"""The :class:`Store` itself: recording, queries and upkeep over one SQLite file.

The parts it is built from: the file and its connections
(:mod:`labkit.store.connection`), the schema and its migrations
(:mod:`labkit.store.schema`), the batching writer thread (:mod:`labkit.store.writer`),
what a run writes (:mod:`labkit.store.records`), what is read back
(:mod:`labkit.store.queries`) and the JSON codec (:mod:`labkit.store.codec`); see
:mod:`labkit.store` for how they keep parallel writers fast and safe.
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
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import pandas as pd

from labkit._checks import check
from labkit.errors import MissingDependency, StoreError
from labkit.results import ExperimentResult, InstanceResult
from labkit.samplelog import SampleLog
from labkit.store import queries, records
from labkit.store.codec import dumps, fingerprint, plain
from labkit.store.connection import FileWatch, connect, connect_read_only, pragmas
from labkit.store.filesystems import network_filesystem
from labkit.store.options import check_options
from labkit.store.ownership import (
    HEARTBEAT_EVERY,
    MISSED_HEARTBEATS,
    Owner,
    ended_here,
    started_here,
)
from labkit.store.schema import check_version, migrate
from labkit.store.writer import Writer

__all__ = ("HEARTBEAT_EVERY", "MISSED_HEARTBEATS", "Store", "StoreStats")

T = TypeVar("T")


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
        check_options(
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
        self._pragmas = pragmas(timeout, synchronous)
        self._closed = False
        self._read_lock = threading.Lock()
        # The runs this store began, by experiment id (see labkit.store.ownership).
        self._owners: dict[str, str] = {}
        if read_only:
            self._reader = connect_read_only(self._path, self._pragmas[0])
        else:
            self._reader = connect(self._path, self._pragmas)
        try:
            self._writer = self._open(
                read_only,
                timeout=timeout,
                batch_rows=batch_rows,
                flush_interval=flush_interval,
                checkpoint_interval=checkpoint_interval,
            )
        except BaseException:
            self._reader.close()
            raise
        # Close the writer and reader even if the store is dropped without close().
        self._finalizer = weakref.finalize(self, _shutdown, self._writer, self._reader)

    def _open(self, read_only: bool, **writing: Any) -> Writer | None:
        """Check (read-only) or migrate the schema, start watching the file, and start
        the writer thread unless ``read_only``; ``writing`` are its options."""
        if read_only:
            check_version(self._reader, self._path)
        else:
            migrate(self._reader, self._path)
        self._file = FileWatch(self._path)
        if read_only:
            return None
        return Writer(
            lambda: connect(self._path, self._pragmas),
            path=self._path,
            guard=self._file.check,
            owners=self._owners,
            **writing,
        )

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
        self._file.check()
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
        experiment = records.Experiment(
            name=name,
            key=fingerprint(name, params, instances),
            params_json=dumps(plain(params, "params")),
            config_json=dumps(plain(config, "config")),
            instances=instances,
            owner=Owner.new(),
        )
        experiment_id, done = self._begin_when_free(experiment, resume)
        self._owners[experiment_id] = str(experiment.owner)
        started_here(str(experiment.owner))
        self._writable().reopen(experiment_id)
        if not done:
            return experiment_id, {}
        with self._reading(f"experiment {experiment_id}") as conn:
            loaded = queries.instances(conn, experiment_id, self._path)
        return experiment_id, {index: loaded[index] for index in done if index in loaded}

    def _begin_when_free(self, experiment: records.Experiment, resume: bool) -> records.Begun:
        """:func:`labkit.store.records.begin`, again while the experiment's run is alive,
        until ``resume_wait`` has passed.

        Raises:
            StoreError: The run was still alive at the end of the wait.
        """
        what = f"beginning experiment {experiment.name!r}"
        deadline = time.monotonic() + self._resume_wait
        while True:
            begun = _result(self._write(lambda conn: records.begin(conn, experiment, resume), what))
            if not isinstance(begun, records.LiveRun):
                return begun
            if time.monotonic() >= deadline:
                raise StoreError(begun.refusal(self._path, experiment.name, self._resume_wait))
            # Look again once the run could have beaten or ended.
            time.sleep(min(begun.every / 2, max(0.0, deadline - time.monotonic())))

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

    def follow(self, experiment_id: str, instance: int, log: SampleLog | None) -> None:
        """Commit an instance's samples from its attempt's ``log`` as it grows.

        The writer reads the rows the log gained every ``flush_interval`` seconds
        and commits them in chunks; nothing is copied per sample. A new attempt's
        log replaces the last one's; ``None`` stops following (the attempt ended).
        Samples not committed when the process is killed are lost; a finished
        instance's timeline never is (see :meth:`finish_instance`).

        Args:
            experiment_id: From :meth:`begin`.
            instance: The instance's index.
            log: The attempt's samples, or ``None``.

        Raises:
            StoreError: If the store is closed.
        """
        self._writable().follow((experiment_id, instance), log)

    def sample(
        self, experiment_id: str, instance: int, t: float, metrics: Mapping[str, float]
    ) -> None:
        """Add one timeline sample; it is committed with the next batch.

        For samples that do not come from a run's log (:meth:`follow`). Never
        blocks on the database: it is appended to a log of the store's own for the
        instance (float64 columns, 8 bytes a value), committed once ``batch_rows``
        samples wait or every ``flush_interval`` seconds, in chunks.
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
        row = records.instance_row(experiment_id, result)
        owner = self._owners.get(experiment_id)
        timeline = result.timeline
        what = f"recording instance {result.index} of experiment {experiment_id}"

        def work(conn: sqlite3.Connection) -> None:
            records.record_instance(conn, row, owner, timeline)

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
            records.check_owner(conn, experiment_id, owner)
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
            rows = queries.list_experiments(conn, self._path, time.time() if now is None else now)
        return queries.experiments_frame(rows)

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
            instances = queries.instances(conn, experiment_id, self._path)
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
        table = queries.timelines_table(self.load(experiment_id))
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
