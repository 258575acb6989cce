"""What a store is asked: the list of experiments, a recorded experiment's instances,
and an experiment's timelines as one table.

Each function reads inside one of the store's short read transactions, on its
reading connection; damaged JSON is a :class:`~labkit.errors.StoreError` naming the
file, the experiment and, where it is one, the instance.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd

from labkit.errors import StoreError
from labkit.results import ExperimentResult, InstanceResult, frame_from_dict
from labkit.store.codec import join_chunks
from labkit.store.ownership import HEARTBEAT_EVERY, MISSED_HEARTBEATS

__all__ = ("experiments_frame", "instances", "list_experiments", "timelines_table")

_COLUMNS = (
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


def list_experiments(conn: sqlite3.Connection, path: Path, now: float) -> list[tuple[Any, ...]]:
    """Every experiment's row of :meth:`labkit.store.Store.experiments`, oldest first.

    A ``running`` experiment whose heartbeat is older than :data:`MISSED_HEARTBEATS`
    intervals at ``now`` (UTC seconds) reads as ``interrupted``.

    Raises:
        StoreError: An experiment's JSON is damaged (naming it).
    """
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
        (now, MISSED_HEARTBEATS, HEARTBEAT_EVERY),
    ).fetchall()
    return [_experiment_row(row, path) for row in rows]


def _experiment_row(row: tuple[Any, ...], path: Path) -> tuple[Any, ...]:
    """A row of :func:`list_experiments` with its JSON parsed.

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
        raise StoreError(f"reading {path} failed: experiment {row[0]} is damaged: {exc}") from exc


def experiments_frame(records: list[tuple[Any, ...]]) -> pd.DataFrame:
    """The rows of :func:`list_experiments` as :meth:`labkit.store.Store.experiments`'
    frame: counts as int64, times as UTC timestamps."""
    frame = pd.DataFrame.from_records(records, columns=_COLUMNS)
    for column in ("instances", "succeeded", "failed"):
        frame[column] = frame[column].astype("int64")
    for column in ("created", "finished", "heartbeat"):
        frame[column] = pd.to_datetime(frame[column].astype(float), unit="s", utc=True)
    return frame


def instances(
    conn: sqlite3.Connection, experiment_id: str, path: Path
) -> dict[int, InstanceResult]:
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
                f"reading {path} failed: instance {row[0]} of experiment "
                f"{experiment_id} is damaged: {exc}"
            ) from exc
    return loaded


def timelines_table(result: ExperimentResult) -> pd.DataFrame:
    """Every instance's timeline in one table: ``instance``, ``t`` and one column per
    metric, one row per sample."""
    frames = [instance.timeline.assign(instance=instance.index) for instance in result.instances]
    if not frames:
        return pd.DataFrame({"instance": [], "t": []})
    table = pd.concat(frames, ignore_index=True)
    return table[["instance", *(c for c in table.columns if c != "instance")]]
