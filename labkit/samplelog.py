"""One attempt's timeline while it grows: :class:`SampleLog`.

``ctx.record`` appends every sample to its attempt's log, as columns of float64
(one for the offsets, one per metric), before the sample's event goes out. The
instance's result is built from the log (:meth:`SampleLog.frame`), and a watcher
that holds the log (it comes in a :class:`labkit.TimelineEvent`) reads the new
rows in bulk when it pleases, instead of handling one event per sample.

Appending is one list-like append per column; reading copies rows at memcpy speed.
A sync instance function records from its worker thread while the event loop
reads: a row counts only once every column holds it, so a reader never sees half
a sample.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = ("SampleLog", "SampleRows")

FloatArray = npt.NDArray[np.float64]

SampleRows = tuple[FloatArray, dict[str, FloatArray]]
"""Rows of a log: the offsets (s) and each metric's values (NaN: not in that sample)."""


class SampleLog:
    """The samples of one attempt, in recording order, as growing float64 columns.

    A metric first seen at some row reads as NaN in the rows before it, and a
    sample that lacks a metric reads as NaN there; :meth:`samples` still gives
    every sample back exactly as it was recorded.
    """

    __slots__ = (
        "_born",
        "_columns",
        "_count",
        "_kinds",
        "_offsets",
        "_shape_names",
        "_shapes",
        "_sparse_rows",
    )

    def __init__(self) -> None:
        self._offsets = array("d")
        self._columns: dict[str, array[float]] = {}
        self._born: dict[str, int] = {}  # metric -> the row it first appeared in
        # The rows that lack some metric, ascending, and which metrics each has (as
        # an index into _shape_names): 12 bytes such a row, however many there are.
        self._sparse_rows = array("q")
        self._kinds = array("I")
        self._shapes: dict[tuple[str, ...], int] = {}
        self._shape_names: list[tuple[str, ...]] = []
        self._count = 0  # rows every column holds (set last: a reader's bound)

    @classmethod
    def from_samples(cls, samples: Iterable[tuple[float, Mapping[str, float]]]) -> SampleLog:
        """A log holding ``samples`` (pairs of offset and values), in their order."""
        log = cls()
        for offset, values in samples:
            log.append(float(offset), values)
        return log

    def __len__(self) -> int:
        return self._count

    @property
    def names(self) -> tuple[str, ...]:
        """The metrics seen so far, in order of first appearance."""
        return tuple(self._columns)

    def append(self, offset: float, values: Mapping[str, float]) -> None:
        """Add one sample: ``offset`` seconds since the attempt started, and its values.

        For the recorder (``ctx.record``) only: a reader never appends.
        """
        count = self._count
        columns = self._columns
        try:
            if len(values) == len(columns):  # the same metrics as every row so far, usually
                try:
                    for name, value in values.items():
                        columns[name].append(value)
                except KeyError:
                    self._truncate(count)
                else:
                    self._offsets.append(offset)
                    self._count = count + 1
                    return
            self._append_other(count, offset, values)
        except BaseException:
            self._truncate(count)  # a value that is not a number: the row is not half kept
            raise

    def _truncate(self, count: int) -> None:
        """Drop whatever a failed append left past row ``count``, new columns included."""
        for name in [name for name, row in self._born.items() if row >= count]:
            del self._columns[name], self._born[name]
        for column in (self._offsets, *self._columns.values()):
            del column[count:]
        while self._sparse_rows and self._sparse_rows[-1] >= count:
            self._sparse_rows.pop()
            self._kinds.pop()

    def _append_other(self, count: int, offset: float, values: Mapping[str, float]) -> None:
        """A sample with other metrics than the columns: new columns, NaN for those it lacks."""
        columns = self._columns
        for name in values:
            if name not in columns:
                columns[name] = array("d", [math.nan]) * count
                self._born[name] = count
        for name, column in columns.items():
            column.append(values.get(name, math.nan))
        if len(values) != len(columns):
            names = tuple(values)
            shape = self._shapes.get(names)
            if shape is None:
                shape = self._shapes[names] = len(self._shape_names)
                self._shape_names.append(names)
            self._sparse_rows.append(count)
            self._kinds.append(shape)
        self._offsets.append(offset)
        self._count = count + 1

    def read(self, start: int = 0, stop: int | None = None) -> SampleRows:
        """Rows ``start`` to ``stop`` (default: every row so far), as new arrays.

        Safe while another thread appends: the rows read are whole samples.
        """
        end = self._count if stop is None else min(stop, self._count)
        columns = list(self._columns.items())  # one step: a new metric may come meanwhile
        start = min(max(start, 0), end)
        return _floats(self._offsets, start, end), {
            name: _floats(column, start, end) for name, column in columns
        }

    def frame(self) -> pd.DataFrame:
        """The timeline so far: ``t`` and one float column per metric, in time order."""
        offsets, values = self.read()
        frame = pd.DataFrame({"t": offsets, **values})
        if offsets.size > 1 and not bool((offsets[1:] >= offsets[:-1]).all()):
            # The sampler's samples and the function's interleave; keep time order.
            frame = frame.sort_values("t", kind="stable", ignore_index=True)
        return frame

    def samples(self) -> list[tuple[float, dict[str, float]]]:
        """Every sample as recorded: its offset and a dict of the metrics it had."""
        offsets, values = self.read()
        names = list(values)
        born = self._born
        shape_names = self._shape_names
        # Not strict: a writer thread may be between the two appends of a new row.
        sparse = {
            row: shape_names[kind]
            for row, kind in zip(self._sparse_rows, self._kinds, strict=False)
        }
        rows = zip(*(values[name].tolist() for name in names), strict=True) if names else ()
        place = {name: column for column, name in enumerate(names)}
        out: list[tuple[float, dict[str, float]]] = []
        for row, (offset, row_values) in enumerate(zip(offsets.tolist(), rows, strict=True)):
            held = sparse.get(row)
            if held is None:
                pairs = {n: v for n, v in zip(names, row_values, strict=True) if born[n] <= row}
            else:
                pairs = {name: row_values[place[name]] for name in held}
            out.append((offset, pairs))
        return out

    def __repr__(self) -> str:
        return f"SampleLog(rows={self._count}, metrics={list(self._columns)})"


def _floats(column: array[float], start: int, end: int) -> FloatArray:
    """Rows ``start:end`` of ``column`` as a new float64 array (the slice is the copy)."""
    if end <= start:
        return np.empty(0, dtype=np.float64)
    return np.frombuffer(column[start:end], dtype=np.float64)
