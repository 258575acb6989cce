"""Sample events as columns: a run of events turned into numpy arrays at C speed.

A hand-fed model (events alone, no attempt's log) may receive tens of thousands
of ``sample`` events between two frames; reading them one by one in Python
would cost more than drawing. :func:`columns_of` transposes them once and reads
each metric from the events' dicts in one pass, :func:`merged` joins runs of
columns, and :func:`by_instance` groups rows by their instance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np

from labkit.events import InstanceEvent
from labkit.live.snapshots import FloatArray, IntArray

__all__ = ("SampleColumns", "by_instance", "columns_of", "merged")


@dataclass(frozen=True, slots=True, eq=False)
class SampleColumns:
    """A run of samples as arrays: who, when, and each metric (NaN: not in a sample).

    Attributes:
        owners: Each row's instance.
        offsets: Each row's offset, in seconds since its instance started.
        values: Each metric's values, one per row.
        names: The metrics in order of first appearance.
    """

    owners: IntArray
    offsets: FloatArray
    values: dict[str, FloatArray]
    names: tuple[str, ...]

    @classmethod
    def of_instance(
        cls, instance: int, offsets: FloatArray, values: dict[str, FloatArray]
    ) -> SampleColumns:
        """One instance's rows (as a :class:`~labkit.samplelog.SampleLog` reads them)."""
        return cls(
            owners=np.full(offsets.shape[0], instance, dtype=np.int64),
            offsets=offsets,
            values=values,
            names=tuple(values),
        )


def columns_of(
    events: Sequence[InstanceEvent], fields: Sequence[tuple[Any, ...]] | None = None
) -> SampleColumns | None:
    """Sample events as columns, read at C speed (no Python loop per event).

    One transposition (``zip``, or ``fields`` when the caller has it) gives every
    field as a tuple; the metrics are read from their dicts once per metric.

    Returns:
        The columns, or ``None`` when no event holds a value.
    """
    _, instances, _, offsets, rows, _ = fields or tuple(zip(*events, strict=True))
    if not all(rows):  # a sample without values carries nothing to draw
        kept = [event for event in events if event.metrics]
        if not kept:
            return None
        _, instances, _, offsets, rows, _ = zip(*kept, strict=True)
    count = len(rows)
    values = _uniform(rows) or _ragged(rows)
    return SampleColumns(
        owners=np.fromiter(instances, np.int64, count),
        offsets=np.fromiter(offsets, np.float64, count),
        values=values,
        names=tuple(values),
    )


def _uniform(rows: Sequence[dict[str, float]]) -> dict[str, FloatArray]:
    """The metrics' columns when every sample holds exactly the first sample's
    metrics (usually so); empty otherwise."""
    count, first = len(rows), rows[0]
    # Each holds all of the first sample's (else a KeyError) and no more (the sizes add up).
    if sum(map(len, rows)) != len(first) * count:
        return {}
    try:
        return {
            metric: np.fromiter(map(itemgetter(metric), rows), np.float64, count)
            for metric in first
        }
    except KeyError:
        return {}


def _ragged(rows: Sequence[dict[str, float]]) -> dict[str, FloatArray]:
    """The metrics' columns in order of first appearance, NaN where a sample lacks one."""
    names: set[str] = set().union(*rows)
    ordered: dict[str, None] = {}
    for metrics in rows:
        ordered.update(dict.fromkeys(metrics))
        if len(ordered) == len(names):
            break
    return {
        metric: np.array([d.get(metric, math.nan) for d in rows], np.float64) for metric in ordered
    }


def by_instance(owners: IntArray) -> dict[int, IntArray]:
    """Each instance's row positions, ascending."""
    if owners.shape[0] and bool((owners == owners[0]).all()):
        return {int(owners[0]): np.arange(owners.shape[0])}
    order = np.argsort(owners, kind="stable")
    cuts = np.flatnonzero(np.diff(owners[order])) + 1
    return {int(owners[part[0]]): part for part in np.split(order, cuts) if part.shape[0]}


def merged(chunks: Sequence[SampleColumns]) -> SampleColumns:
    """Consecutive chunks as one (a metric missing from a chunk is NaN there)."""
    if len(chunks) == 1:
        return chunks[0]
    names = tuple(dict.fromkeys(name for chunk in chunks for name in chunk.names))
    values = {
        name: np.concatenate(
            [
                chunk.values[name] if name in chunk.values else np.full(chunk.owners.size, np.nan)
                for chunk in chunks
            ]
        )
        for name in names
    }
    return SampleColumns(
        owners=np.concatenate([chunk.owners for chunk in chunks]),
        offsets=np.concatenate([chunk.offsets for chunk in chunks]),
        values=values,
        names=names,
    )
