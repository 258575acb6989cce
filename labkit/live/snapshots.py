"""What a chart draws, as immutable records: lines, averages, the live state.

The static chart (:mod:`labkit.plots`), the HTML report and the live chart all
build their traces from these records, so the three cannot drift apart:
:class:`LineSnapshot` is one instance's (decimated) line of one metric,
:class:`AverageSnapshot` the average of one metric with its spread (from the
running average or from a finished result's averaged timeline), and
:class:`LiveSnapshot` everything the live chart shows at one moment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd

from labkit.errors import ConfigError
from labkit.timeline.inputs import Axis

__all__ = (
    "AverageSnapshot",
    "Axis",
    "Band",
    "FloatArray",
    "IntArray",
    "LineSnapshot",
    "LiveSnapshot",
    "frozen",
)

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]

Band = Literal["std", "minmax", "ci95"]
"""The band drawn around an average: one standard deviation, min-max, or the 95 % interval."""


def frozen(values: npt.ArrayLike) -> FloatArray:
    """``values`` as a new read-only float64 array (what the records hold)."""
    array = np.array(values, dtype=float)
    array.flags.writeable = False
    return array


@dataclass(frozen=True, slots=True)
class LineSnapshot:
    """One instance's line of one metric, decimated for display.

    Attributes:
        instance: The instance's index.
        metric: The metric's name.
        t: Seconds since the instance started, ascending (read-only array).
        y: The values at ``t`` (read-only array, same length).
        samples: How many samples the line has received (before decimation).
        failed: Whether the instance failed (its line is not in the average).
    """

    instance: int
    metric: str
    t: FloatArray
    y: FloatArray
    samples: int
    failed: bool


@dataclass(frozen=True, slots=True)
class AverageSnapshot:
    """The average of one metric over the instances, with its spread.

    Arrays are read-only and of one length: one value per grid point that at
    least one instance covers.

    Attributes:
        metric: The metric's name.
        t: Grid times, in seconds.
        n: Instances that measured the metric at each grid time (0 in a gap that
            every instance has: the statistics are NaN there, drawn as a break).
        mean: The mean over those instances.
        std: Sample standard deviation (ddof=1; NaN where ``n < 2``).
        min: The smallest instance value.
        max: The largest instance value.
        ci95: Half-width of the 95 % Student-t confidence interval (NaN where ``n < 2``).
        final: Whether these are the finished run's exact figures.
    """

    metric: str
    t: FloatArray
    n: IntArray
    mean: FloatArray
    std: FloatArray
    min: FloatArray
    max: FloatArray
    ci95: FloatArray
    final: bool = False

    def band(self, band: Band) -> tuple[FloatArray, FloatArray]:
        """The lower and upper edges of ``band`` around the mean.

        Args:
            band: ``"std"`` (mean ± one standard deviation), ``"minmax"`` or
                ``"ci95"`` (mean ± the confidence half-width).

        Raises:
            ConfigError: If ``band`` is unknown.
        """
        if band == "minmax":
            return self.min, self.max
        if band == "std":
            return self.mean - self.std, self.mean + self.std
        if band == "ci95":
            return self.mean - self.ci95, self.mean + self.ci95
        raise ConfigError("band", band, "'std', 'minmax' or 'ci95'")

    @classmethod
    def from_frame(
        cls, averaged: pd.DataFrame, metric: str, *, final: bool = True
    ) -> AverageSnapshot:
        """``metric``'s columns of an averaged timeline (``t`` or ``step``, ``m``,
        ``m_n``, ``m_std``...); ``t`` holds the steps of a timeline indexed by step.

        ``n`` is the metric's own count ``m_n`` (``n`` in a frame without it).
        Missing statistic columns read as NaN.

        Raises:
            ConfigError: If ``averaged`` has neither ``t`` nor ``step``, or no ``metric``.
        """
        axis = "t" if "t" in averaged.columns else "step"
        for needed in (axis, metric):
            if needed not in averaged.columns:
                raise ConfigError("averaged", list(averaged.columns), f"a column {needed!r}")
        rows = len(averaged)

        def column(name: str) -> FloatArray:
            if name in averaged.columns:
                return frozen(averaged[name].to_numpy(dtype=float))
            return frozen(np.full(rows, np.nan))

        count = f"{metric}_n" if f"{metric}_n" in averaged.columns else "n"
        counts = averaged[count].to_numpy() if count in averaged.columns else np.zeros(rows)
        n = np.array(counts, dtype=np.int64)
        n.flags.writeable = False
        return cls(
            metric=metric,
            t=column(axis),
            n=n,
            mean=column(metric),
            std=column(f"{metric}_std"),
            min=column(f"{metric}_min"),
            max=column(f"{metric}_max"),
            ci95=column(f"{metric}_ci95"),
            final=final,
        )


@dataclass(frozen=True, slots=True)
class LiveSnapshot:
    """What the live chart shows at one moment; never changes once handed out.

    Attributes:
        version: Grows by one whenever the model's content changes; equal versions
            mean equal content.
        time: The model clock's reading when the snapshot was taken (seconds).
        metrics: The metrics, in order of first appearance (or as configured).
        instances: Every instance seen, ascending.
        failed: The instances that failed.
        finished: The instances that finished.
        lines: Every instance's line per metric, ordered by metric then instance.
        averages: The average of each metric that has one.
        step: The average's grid step in seconds (``None`` until it is known;
            1 on a step axis).
        samples: Samples received so far, over every instance.
        latest: Each instance's latest sample offset, in seconds since it started
            (on a step axis too).
        axis: ``"t"`` (lines and averages over seconds) or ``"step"`` (over the
            samples' ``step`` values, as the result averages timelines that have one).
    """

    version: int
    time: float
    metrics: tuple[str, ...]
    instances: tuple[int, ...]
    failed: frozenset[int]
    finished: frozenset[int]
    lines: tuple[LineSnapshot, ...]
    averages: Mapping[str, AverageSnapshot]
    step: float | None
    samples: int
    latest: Mapping[int, float] = field(default_factory=dict)
    axis: Axis = "t"

    @property
    def empty(self) -> bool:
        """Whether nothing has been received yet (a chart shows a placeholder)."""
        return self.samples == 0

    def lines_of(self, metric: str) -> tuple[LineSnapshot, ...]:
        """The instances' lines of ``metric``, by instance."""
        return tuple(line for line in self.lines if line.metric == metric)
