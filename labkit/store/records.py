"""What a run writes: the SQL of beginning an experiment (new or resumed), recording
a finished instance, and refusing the writes of a run that lost its experiment.

Each function here runs inside one of the writer's ``BEGIN IMMEDIATE``
transactions (see :mod:`labkit.store.writer`), on its connection.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labkit._json import to_builtins
from labkit.errors import StoreError
from labkit.results import InstanceResult
from labkit.samplelog import SampleRows
from labkit.store.codec import dumps
from labkit.store.ownership import HEARTBEAT_EVERY, MISSED_HEARTBEATS, Owner
from labkit.store.writer import CHUNK_ROWS, chunk_json

__all__ = (
    "Begun",
    "Experiment",
    "InstanceRow",
    "LiveRun",
    "begin",
    "check_owner",
    "instance_row",
    "record_instance",
)


@dataclass(frozen=True, slots=True)
class Experiment:
    """An experiment to begin, its JSON already encoded.

    Attributes:
        name: Its name.
        key: Its fingerprint (name, params, instances).
        params_json: Its parameters.
        config_json: How it runs.
        instances: How many instances it runs.
        owner: The run that begins it.
    """

    name: str
    key: str
    params_json: str
    config_json: str
    instances: int
    owner: Owner


Begun = tuple[str, list[int]]
"""An experiment's id and the indices of the instances it had already finished."""


@dataclass(frozen=True, slots=True)
class LiveRun:
    """A resumed experiment whose run is alive: who holds it, when it last beat."""

    experiment_id: str
    owner: Owner | None
    age: float
    every: float

    def refusal(self, path: Path, name: str, waited: float) -> str:
        """Why ``resume=True`` refuses to take the experiment over, in words."""
        who = "another run" if self.owner is None else self.owner.describe()
        waiting = f", waited {waited:g} s for it to end" if waited else ""
        return (
            f"experiment {self.experiment_id} ({name!r}) in {path} is still running in "
            f"{who} (last heartbeat {self.age:.1f} s ago{waiting}): resume=True never "
            "takes over a live run. Let it finish or stop it, or wait for it with "
            f"Store(..., resume_wait=seconds); a run that died unnoticed reads as "
            f"interrupted {MISSED_HEARTBEATS * self.every:g} s after its last heartbeat."
        )


def begin(conn: sqlite3.Connection, experiment: Experiment, resume: bool) -> Begun | LiveRun:
    """Create ``experiment``, or with ``resume`` take over the latest one like it.

    A resumed experiment keeps its instances that succeeded (and their samples),
    forgets the others, and is marked running by this run's owner; one whose run
    is alive is left alone and returned as a :class:`LiveRun`.
    """
    now = time.time()
    found = None
    if resume:
        found = conn.execute(
            "SELECT id, status, heartbeat, heartbeat_every, owner FROM experiments "
            "WHERE fingerprint = ? ORDER BY created DESC LIMIT 1",
            (experiment.key,),
        ).fetchone()
    if found is None:
        return _create(conn, experiment, now), []
    experiment_id, status, heartbeat, every, holder = found
    live = _live(experiment_id, status, heartbeat, every, Owner.parse(holder), now)
    if live is not None:
        return live
    return experiment_id, _take_over(conn, experiment_id, experiment, now)


def _create(conn: sqlite3.Connection, experiment: Experiment, now: float) -> str:
    """Insert a new running experiment; its id."""
    experiment_id = uuid.uuid4().hex[:16]
    conn.execute(
        "INSERT INTO experiments (id, name, params, config, instances, "
        "fingerprint, status, created, heartbeat, heartbeat_every, owner) "
        "VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
        (
            experiment_id,
            experiment.name,
            experiment.params_json,
            experiment.config_json,
            experiment.instances,
            experiment.key,
            now,
            now,
            HEARTBEAT_EVERY,
            str(experiment.owner),
        ),
    )
    return experiment_id


def _take_over(
    conn: sqlite3.Connection, experiment_id: str, experiment: Experiment, now: float
) -> list[int]:
    """Reopen a stored experiment for this run; the instances it keeps (succeeded)."""
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
        (experiment.config_json, now, HEARTBEAT_EVERY, str(experiment.owner), experiment_id),
    )
    done = conn.execute(
        "SELECT idx FROM instances WHERE experiment_id = ? AND idx < ?",
        (experiment_id, experiment.instances),
    ).fetchall()
    return [row[0] for row in done]


def _live(
    experiment_id: str,
    status: str,
    heartbeat: float | None,
    every: float | None,
    owner: Owner | None,
    now: float,
) -> LiveRun | None:
    """The live run that holds an experiment, or ``None`` when it may be taken over."""
    every = every or HEARTBEAT_EVERY
    age = now - (heartbeat or 0.0)
    if status != "running" or age > MISSED_HEARTBEATS * every:
        return None
    if owner is not None and owner.dead():
        return None
    return LiveRun(experiment_id, owner, age, every)


def check_owner(conn: sqlite3.Connection, experiment_id: str, owner: str | None) -> None:
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


InstanceRow = tuple[Any, ...]
"""An ``instances`` row, encoded by :func:`instance_row`."""


def instance_row(experiment_id: str, result: InstanceResult) -> InstanceRow:
    """``result``'s row of the ``instances`` table (its JSON encoded here, by the caller).

    Raises:
        ConfigError: Its summary is not JSON.
    """
    return (
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


def record_instance(
    conn: sqlite3.Connection, row: InstanceRow, owner: str | None, timeline: pd.DataFrame
) -> None:
    """Replace an instance's streamed samples by its final ``timeline`` and store its
    ``row`` (of :func:`instance_row`).

    Raises:
        StoreError: The experiment is gone or another run took it over.
    """
    experiment_id, index = row[0], row[1]
    check_owner(conn, experiment_id, owner)
    conn.execute(
        "DELETE FROM samples WHERE experiment_id = ? AND instance = ?",
        (experiment_id, index),
    )
    # The final timeline keeps inf and NaN as recorded (a diverged loss stays
    # inf when loaded); only the summaries are strict JSON. One chunk at a
    # time is encoded: executemany pulls them from the generator.
    conn.executemany(
        "INSERT INTO samples (experiment_id, instance, n, data) VALUES (?, ?, ?, ?)",
        (
            (experiment_id, index, len(rows[0]), chunk_json(rows))
            for rows in _timeline_chunks(timeline)
        ),
    )
    conn.execute(
        "INSERT OR REPLACE INTO instances (experiment_id, idx, status, error, started, "
        "finished, summary, gpu_uuids, sandbox_id, attempts) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        row,
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
