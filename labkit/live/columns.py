"""Rows of samples as columns: what the live model reads from a log at a time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labkit.live.snapshots import FloatArray, IntArray

__all__ = ("SampleColumns",)


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
