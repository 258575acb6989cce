"""The experiment store: every run recorded in one SQLite file, safe to resume.

Its parts, as optuna keeps its storage: the schema and its migrations
(:mod:`labkit.store.schema`), the batching writer thread (:mod:`labkit.store.writer`),
the JSON codec (:mod:`labkit.store.codec`), the network-filesystem check
(:mod:`labkit.store.filesystems`) and the :class:`Store` itself
(:mod:`labkit.store.core`).

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
  are buffered without blocking, as float64 columns per instance, and committed in
  batches (every ``batch_rows`` samples or ``flush_interval`` seconds) of chunks of
  at most :data:`~labkit.store.writer.CHUNK_ROWS` samples; everything else the
  writer does is queued behind them, so a finished instance is committed, samples
  and all, before :meth:`Store.finish_instance` returns. A thread (not an asyncio
  task) serves scripts, notebooks and several event loops alike, and keeps SQLite's
  blocking calls and every wait for another process's lock off the loop. Each call
  waits for the lock at most ``timeout`` seconds from when it was made; past
  :data:`~labkit.store.writer.LOCK_WARNING_AFTER` seconds a
  :class:`~labkit.errors.StoreLockWarning` says so.
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

Ownership (:mod:`labkit.store.ownership`): the run that begins an experiment writes
itself as its owner, in the same ``BEGIN IMMEDIATE`` transaction that checks the
current one. A resume never takes over a live run (``running``, heartbeat fresh,
process not known dead): it is refused, or waits ``resume_wait`` seconds; and a
run that lost its experiment writes nothing more to it.

The file is watched: the store remembers the device and inode it opened, and a
file deleted or replaced since is refused with a :class:`~labkit.errors.StoreError`
on every call, rather than written to where no one will ever read it.
"""

from labkit.store.codec import fingerprint
from labkit.store.core import HEARTBEAT_EVERY, MISSED_HEARTBEATS, Store, StoreStats
from labkit.store.filesystems import NETWORK_FILESYSTEMS, network_filesystem
from labkit.store.schema import MIGRATIONS

__all__ = (
    "HEARTBEAT_EVERY",
    "MIGRATIONS",
    "MISSED_HEARTBEATS",
    "NETWORK_FILESYSTEMS",
    "Store",
    "StoreStats",
    "fingerprint",
    "network_filesystem",
)
