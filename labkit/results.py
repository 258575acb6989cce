"""What an experiment produced: plain data shared by experiments, the store and the UI.

:class:`InstanceResult` is one instance's outcome (its timeline and summary, or its
error); :class:`ExperimentResult` gathers the instances with their average. Both
are plain data: ``to_dict()`` gives JSON-safe builtins (no pickle), ``from_dict()``
rebuilds them, so the store and the report never need the code that ran them.

:class:`ExperimentRecorder` is the protocol ``run_experiment`` records through;
``labkit.store.Store`` implements it, and tests can pass a small in-memory one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from labkit import stats, timeline
from labkit._checks import check, is_real
from labkit._json import to_builtins
from labkit.errors import MissingDependency, error_text
from labkit.samplelog import SampleLog
from labkit.seeds import instance_seed

__all__ = (
    "ExperimentRecorder",
    "ExperimentResult",
    "InstanceResult",
    "error_text",
    "frame_from_dict",
    "frame_to_dict",
)

ROUND_TO_INT = ("errors",)
"""Metrics that count events; their averages are rounded to whole numbers."""


def frame_to_dict(frame: pd.DataFrame) -> dict[str, list[Any]]:
    """A DataFrame as ``{column: [values]}`` with NaN as ``None`` (JSON-safe)."""
    return {str(column): to_builtins(frame[column].tolist()) for column in frame.columns}


def frame_from_dict(data: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    """The inverse of :func:`frame_to_dict`; ``None`` becomes NaN, empty columns are float."""
    columns: dict[str, np.ndarray] = {}
    for name, values in data.items():
        if any(value is None for value in values) or not values:
            columns[name] = np.array(
                [np.nan if value is None else value for value in values], dtype=float
            )
        else:
            columns[name] = np.asarray(values)
    return pd.DataFrame(columns)


def _empty_timeline() -> pd.DataFrame:
    return pd.DataFrame({"t": np.array([], dtype=float)})


@dataclass(frozen=True, slots=True, eq=False)
class InstanceResult:
    """One instance of an experiment, finished or failed.

    Attributes:
        index: The instance's number, from 0.
        ok: Whether the instance's function returned normally.
        error: ``"TypeName: message"`` when it failed, else ``None``.
        timeline: Samples as a DataFrame: ``t`` (seconds since the instance
            started) and one column per metric (NaN where a sample lacks it).
        summary: Per-instance figures: each recorded metric's default figure
            (``loss_last``; ``cpu_peak``, ``memory_peak``; ``error_count`` when
            errors were recorded) or those ``Experiment.summarize`` asks for,
            and whatever the function returned (``recovery_time``...).
        started: When the instance began, seconds on the run's clock.
        finished: When it ended, seconds on the run's clock.
        gpu_uuids: The GPUs it held.
        sandbox_id: The sandbox it ran in, if any.
        attempts: How many attempts the runner made (retries included).
        seed: The instance's ``ctx.seed`` (:func:`labkit.seeds.instance_seed`),
            or ``None`` where it is not known (a result built by hand).
    """

    index: int
    ok: bool
    error: str | None
    timeline: pd.DataFrame = field(default_factory=_empty_timeline)
    summary: dict[str, Any] = field(default_factory=dict)
    started: float | None = None
    finished: float | None = None
    gpu_uuids: tuple[str, ...] = ()
    sandbox_id: str | None = None
    attempts: int = 1
    seed: int | None = None

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish, when both are known."""
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe builtins; :meth:`from_dict` rebuilds the result."""
        return {
            "index": self.index,
            "ok": self.ok,
            "error": self.error,
            "timeline": frame_to_dict(self.timeline),
            "summary": to_builtins(self.summary),
            "started": to_builtins(self.started),
            "finished": to_builtins(self.finished),
            "gpu_uuids": list(self.gpu_uuids),
            "sandbox_id": self.sandbox_id,
            "attempts": self.attempts,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InstanceResult:
        """Rebuild an instance from :meth:`to_dict`'s output."""
        return cls(
            index=int(data["index"]),
            ok=bool(data["ok"]),
            error=data.get("error"),
            timeline=frame_from_dict(data.get("timeline") or {"t": []}),
            summary=dict(data.get("summary") or {}),
            started=data.get("started"),
            finished=data.get("finished"),
            gpu_uuids=tuple(data.get("gpu_uuids") or ()),
            sandbox_id=data.get("sandbox_id"),
            attempts=int(data.get("attempts", 1)),
            seed=None if data.get("seed") is None else int(data["seed"]),
        )

    def to_arrow(self) -> Any:
        """The timeline as a ``pyarrow.Table`` (NaN, "not sampled", as null), without a copy.

        ``polars.from_arrow(instance.to_arrow())`` shares the same memory.

        Raises:
            MissingDependency: pyarrow is not installed (``pip install 'labkit[arrow]'``).
        """
        return _arrow_table(
            {str(name): self.timeline[name].to_numpy() for name in self.timeline.columns},
            {"instance": self.index, "ok": self.ok, "error": self.error},
        )


def _measured_timelines(succeeded: Sequence[InstanceResult]) -> list[pd.DataFrame] | None:
    """The succeeded instances' timelines, each with ``t`` and the metrics some succeeded
    instance measured; ``None`` when none was measured.

    A metric no succeeded instance measured (all NaN) is left out, not an error.
    """
    metrics = {
        column
        for instance in succeeded
        for column in instance.timeline
        if column != "t" and instance.timeline[column].notna().any()
    }
    if not metrics:
        return None
    return [
        instance.timeline[["t", *(c for c in instance.timeline if c in metrics)]]
        for instance in succeeded
    ]


def _average(frames: list[pd.DataFrame], config: Mapping[str, Any]) -> pd.DataFrame:
    """The averaged timeline of ``frames``, as the run's ``config`` asks."""
    metrics = {column for frame in frames for column in frame if column != "t"}
    return timeline.average_timelines(
        frames,
        round_to_int=tuple(m for m in ROUND_TO_INT if m in metrics),
        **_averaging(config, metrics),
    )


def _counts(
    ordered: Sequence[InstanceResult], succeeded: Sequence[InstanceResult]
) -> dict[str, Any]:
    """The summary's counts of instances."""
    return {
        "num_instances": len(ordered),
        "num_succeeded": len(succeeded),
        "num_failed": len(ordered) - len(succeeded),
        "all_failed": not succeeded,
    }


def _seeded(instances: Sequence[InstanceResult], config: Mapping[str, Any]) -> list[InstanceResult]:
    """The instances, each with its seed: one it lacks is derived from the run's base seed
    (``config["seed"]``), as the run derived it (a store keeps the base seed, not each seed)."""
    base = config.get("seed")
    if not isinstance(base, int) or isinstance(base, bool):
        return list(instances)
    return [
        instance
        if instance.seed is not None
        else replace(instance, seed=instance_seed(base, instance.index))
        for instance in instances
    ]


@dataclass(frozen=True, slots=True, eq=False)
class ExperimentResult:
    """Every instance of an experiment, and their average over those that succeeded.

    Build one with :meth:`build`, which computes ``averaged``, ``summary`` and
    ``outliers`` from the instances the same way wherever it is called (in
    ``run_experiment`` and when the store loads a stored run).

    Attributes:
        name: The experiment's name.
        params: The parameters every instance received.
        instances: Every instance, failed ones included, by index.
        averaged: The averaged timeline: ``t``, ``n`` and for each metric ``m``:
            ``m``, ``m_std``, ``m_min``, ``m_max``, ``m_ci95``, ``m_n``,
            ``m_nonfinite`` (see ``labkit.timeline.average_timelines``), with the
            ``max_gap`` and ``method`` the run's config names. Empty when no
            instance succeeded.
        summary: Averaged figures in the form ``{"cpu_peak": .., "memory_peak": ..,
            "loss_last": .., "error_count": .., "num_instances": N, "num_failed": k,
            "recovery_times": [..], "errors": {index: text}}``; ``error_count``
            and ``recovery_times`` only when some instance recorded them.
        outliers: For each metric where some instances stand apart from the
            others, the indices of those instances (``{"cpu": [2]}``).
        config: How it ran (instances, duration, GPUs per instance, ...).
        experiment_id: The store's key for this run, when it was recorded.
        notes: What went wrong after the instances ran (averaging, outliers, the
            store), one line each; the instances are kept whatever the notes say.
    """

    name: str
    params: dict[str, Any]
    instances: tuple[InstanceResult, ...]
    averaged: pd.DataFrame
    summary: dict[str, Any]
    outliers: dict[str, list[int]]
    config: dict[str, Any]
    experiment_id: str | None = None
    notes: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        name: str,
        params: Mapping[str, Any],
        instances: Sequence[InstanceResult],
        config: Mapping[str, Any],
        *,
        experiment_id: str | None = None,
        notes: Sequence[str] = (),
    ) -> ExperimentResult:
        """Average the instances that succeeded and keep the failures.

        Never raises once it has the instances: if averaging the timelines, the
        summaries or the outlier search fails, that part is left empty and the
        failure is stated in ``notes``, so no computed instance is ever lost.

        Args:
            name: The experiment's name.
            params: The parameters the instances ran with.
            instances: Every instance, in any order (sorted by index here).
            config: How the run was configured (JSON-safe values).
            experiment_id: The store's key, if recorded.
            notes: Notes already known (a store that could not record an instance).

        Returns:
            The result, with ``summary["all_failed"]`` true when nothing succeeded.
        """
        kept = list(notes)
        ordered = tuple(sorted(_seeded(instances, config), key=lambda instance: instance.index))
        succeeded = [instance for instance in ordered if instance.ok]
        frames = _measured_timelines(succeeded)
        averaged = pd.DataFrame({"t": np.array([], dtype=float), "n": np.array([], dtype=int)})
        summary: dict[str, Any] = {}
        outliers: dict[str, list[int]] = {}
        try:
            if frames is not None:
                averaged = _average(frames, config)
        except Exception as exc:
            kept.append(f"averaging the timelines failed: {error_text(exc)}")
        try:
            summary = _averaged_summary(ordered)
        except Exception as exc:
            kept.append(f"averaging the summaries failed: {error_text(exc)}")
        summary.update(_counts(ordered, succeeded))
        try:
            outliers = _outliers(succeeded, frames)
        except Exception as exc:
            kept.append(f"finding outliers failed: {error_text(exc)}")
        return cls(
            name=name,
            params=dict(params),
            instances=ordered,
            averaged=averaged,
            summary=summary,
            outliers=outliers,
            config=dict(config),
            experiment_id=experiment_id,
            notes=tuple(dict.fromkeys(kept)),  # a reloaded run states a failure once
        )

    @property
    def ok(self) -> bool:
        """Whether every instance succeeded."""
        return all(instance.ok for instance in self.instances)

    @property
    def all_failed(self) -> bool:
        """Whether no instance succeeded (``averaged`` is then empty)."""
        return not any(instance.ok for instance in self.instances)

    @property
    def failed(self) -> tuple[InstanceResult, ...]:
        """The instances that failed."""
        return tuple(instance for instance in self.instances if not instance.ok)

    def summary_table(self) -> pd.DataFrame:
        """Each summary figure over the instances that succeeded, with its spread.

        One row per figure (``cpu_peak``, ``error_count``, ``loss_last``, ...), in
        the summary's order, indexed by the figure's name. NaN and inf figures
        are left out of their row (``n`` counts the finite ones).

        Returns:
            A DataFrame with columns ``mean``, ``std`` (ddof=1), ``ci95``
            (half-width of the 95 % Student-t interval of the mean), ``min``,
            ``max``, ``n`` and ``median``; ``std`` and ``ci95`` are NaN below 2
            values. Empty (these columns, no rows) when no instance succeeded.
        """
        figures = timeline.figure_arrays(
            instance.summary if instance.ok else None for instance in self.instances
        )
        columns = ("mean", "std", "ci95", "min", "max", "n", "median")
        rows = []
        for values in figures.values():
            n = int(values.size)
            if n == 0:
                rows.append((math.nan,) * 5 + (0, math.nan))
                continue
            std = float(np.std(values, ddof=1)) if n > 1 else math.nan
            ci95 = stats.t_half_width(std, n)
            rows.append(
                (
                    float(np.mean(values)),
                    std,
                    ci95,
                    float(values.min()),
                    float(values.max()),
                    n,
                    float(np.median(values)),
                )
            )
        table = pd.DataFrame(rows, columns=list(columns), index=pd.Index(list(figures)))
        return table.astype({"n": np.int64})

    def summary_texts(self) -> dict[str, str]:
        """Each summary figure as ``mean ± ci95 (min … max)`` (see ``stats.format_spread``)."""
        table = self.summary_table()
        return {
            str(name): stats.format_spread(mean, ci95, low, high)
            for name, mean, ci95, low, high in zip(
                table.index,
                table["mean"].tolist(),
                table["ci95"].tolist(),
                table["min"].tolist(),
                table["max"].tolist(),
                strict=True,
            )
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe builtins; :meth:`from_dict` rebuilds the result without recomputing."""
        return {
            "name": self.name,
            "params": to_builtins(self.params),
            "instances": [instance.to_dict() for instance in self.instances],
            "averaged": frame_to_dict(self.averaged),
            "summary": to_builtins(self.summary),
            "outliers": to_builtins(self.outliers),
            "config": to_builtins(self.config),
            "experiment_id": self.experiment_id,
            "notes": list(self.notes),
        }

    def to_json(self, **dumps_options: Any) -> str:
        """:meth:`to_dict` as a JSON string (NaN written as ``null``)."""
        return json.dumps(self.to_dict(), allow_nan=False, **dumps_options)

    def to_arrow(self, part: ArrowPart = "timelines") -> Any:
        """The result as a ``pyarrow.Table``, for Arrow and Polars users.

        NaN ("not sampled") is null; inf stays inf. Numeric columns of ``averaged``
        and of one instance's timeline are the DataFrame's own memory (no copy), and
        ``polars.from_arrow`` keeps it so. The table's schema metadata holds the
        experiment (name, params, summary, config, id, notes) as JSON under ``labkit``.

        Args:
            part: ``"timelines"``: every instance's samples stacked, an ``instance``
                column first, then ``t`` and each metric (null where an instance
                lacks it); ``"averaged"``: the averaged timeline, as ``averaged``;
                ``"instances"``: one row per instance (``index``, ``ok``, ``error``,
                ``started``, ``finished``, ``attempts``, ``seed`` when instances
                have one, then each numeric summary figure).

        Raises:
            ConfigError: ``part`` is none of those.
            MissingDependency: pyarrow is not installed (``pip install 'labkit[arrow]'``).
        """
        check(part in _ARROW_PARTS, "part", part, " or ".join(map(repr, _ARROW_PARTS)))
        about = {
            "name": self.name,
            "params": self.params,
            "summary": self.summary,
            "config": self.config,
            "experiment_id": self.experiment_id,
            "notes": list(self.notes),
        }
        if part == "averaged":
            data = {str(name): self.averaged[name].to_numpy() for name in self.averaged.columns}
        elif part == "timelines":
            data = _stacked(self.instances)
        else:
            data = _instance_rows(self.instances)
        return _arrow_table(data, about)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentResult:
        """Rebuild a result from :meth:`to_dict`'s output."""
        summary = dict(data.get("summary") or {})
        if isinstance(summary.get("errors"), Mapping):
            # JSON object keys are strings; instance indices are ints.
            summary["errors"] = {int(key): text for key, text in summary["errors"].items()}
        return cls(
            name=str(data["name"]),
            params=dict(data.get("params") or {}),
            instances=tuple(InstanceResult.from_dict(item) for item in data["instances"]),
            averaged=frame_from_dict(data.get("averaged") or {"t": [], "n": []}),
            summary=summary,
            outliers={
                str(metric): [int(index) for index in indices]
                for metric, indices in (data.get("outliers") or {}).items()
            },
            config=dict(data.get("config") or {}),
            experiment_id=data.get("experiment_id"),
            notes=tuple(str(note) for note in data.get("notes") or ()),
        )

    @classmethod
    def from_json(cls, text: str) -> ExperimentResult:
        """Rebuild a result from :meth:`to_json`'s output."""
        return cls.from_dict(json.loads(text))


def _averaging(config: Mapping[str, Any], metrics: Collection[Any]) -> dict[str, Any]:
    """The ``max_gap`` and ``method`` a run's config asks for (see
    ``labkit.experiment.spec.averaging_config``), limited to the metrics measured:
    a metric named there that no instance recorded is no error."""
    options: dict[str, Any] = {}
    for option in ("max_gap", "method"):
        value = config.get(option)
        if isinstance(value, Mapping):
            value = {name: _number(item) for name, item in value.items() if name in metrics}
        if value is not None:
            options[option] = _number(value)
    return options


def _number(value: Any) -> Any:
    """``"inf"`` (how a config writes an infinite gap) as ``math.inf``."""
    return math.inf if value == "inf" else value


ArrowPart = Literal["timelines", "averaged", "instances"]
_ARROW_PARTS: tuple[ArrowPart, ...] = ("timelines", "averaged", "instances")


def _arrow_table(data: Mapping[str, np.ndarray], about: Mapping[str, Any]) -> Any:
    """Columns as an Arrow table: float NaN as null (a validity bitmap beside the same
    memory), other numbers as they are, objects (error texts) as Arrow infers them."""
    try:
        import pyarrow as pa
    except ImportError as exc:
        raise MissingDependency("pyarrow", "arrow", "Arrow tables of results") from exc
    arrays = {}
    for name, values in data.items():
        if values.dtype.kind == "f":
            nan = np.isnan(values)
            arrays[name] = pa.array(values, mask=nan) if nan.any() else pa.array(values)
        elif values.dtype.kind in "iub":
            arrays[name] = pa.array(values)
        else:
            array = pa.array(values.tolist())
            # Texts that are all missing (no instance failed) are still texts.
            arrays[name] = array.cast(pa.string()) if pa.types.is_null(array.type) else array
    metadata = {"labkit": json.dumps(to_builtins(about), allow_nan=False)}
    return pa.table(arrays, metadata=metadata)


def _stacked(instances: Sequence[InstanceResult]) -> dict[str, np.ndarray]:
    """Every instance's timeline one after the other, with the instance's index first."""
    names = list(dict.fromkeys(str(c) for i in instances for c in i.timeline.columns))
    sizes = [len(instance.timeline) for instance in instances]
    data = {
        "instance": np.repeat(
            np.array([i.index for i in instances], dtype=np.int64), np.array(sizes, dtype=int)
        )
    }
    for name in names:
        data[name] = np.concatenate(
            [
                instance.timeline[name].to_numpy(dtype=float)
                if name in instance.timeline
                else np.full(size, np.nan)
                for instance, size in zip(instances, sizes, strict=True)
            ]
            or [np.empty(0)]
        )
    return data


def _instance_rows(instances: Sequence[InstanceResult]) -> dict[str, np.ndarray]:
    """One row per instance: what it was and each numeric summary figure (NaN if absent)."""
    data: dict[str, np.ndarray] = {
        "index": np.array([i.index for i in instances], dtype=np.int64),
        "ok": np.array([i.ok for i in instances], dtype=bool),
        "error": np.array([i.error for i in instances], dtype=object),
        "started": np.array([np.nan if i.started is None else i.started for i in instances]),
        "finished": np.array([np.nan if i.finished is None else i.finished for i in instances]),
        "attempts": np.array([i.attempts for i in instances], dtype=np.int64),
    }
    seeds = [getattr(instance, "seed", None) for instance in instances]
    if any(seed is not None for seed in seeds):
        data["seed"] = np.array(seeds, dtype=object)
    figures = dict.fromkeys(
        key
        for instance in instances
        for key, value in instance.summary.items()
        if is_real(value, finite=False)
    )
    for key in figures:
        data[key] = np.array(
            [
                float(i.summary[key]) if is_real(i.summary.get(key), finite=False) else np.nan
                for i in instances
            ],
            dtype=float,
        )
    return data


def _averaged_summary(ordered: Sequence[InstanceResult]) -> dict[str, Any]:
    """The instances' summaries averaged over those that succeeded (empty without any)."""
    if not ordered:
        return {}
    summary = timeline.average_summaries(
        [
            instance.summary if instance.ok else {"ok": False, "error": instance.error}
            for instance in ordered
        ]
    )
    # average_summaries speaks in positions; results speak in instance indices.
    summary["errors"] = {
        ordered[position].index: text for position, text in summary["errors"].items()
    }
    return summary


def _outliers(
    succeeded: Sequence[InstanceResult], frames: Sequence[pd.DataFrame] | None
) -> dict[str, list[int]]:
    """Instances that stand apart, by summary figure and (given frames) by timeline shape."""
    found: dict[str, list[int]] = {}
    kinds: list[Sequence[Any]] = [[instance.summary for instance in succeeded]]
    if frames is not None:
        kinds.append(frames)
    for data in kinds:
        for outlier in timeline.detect_outliers(data):
            # detect_outliers speaks in positions among the instances it was given.
            indices = found.setdefault(outlier.metric, [])
            index = succeeded[outlier.instance].index
            if index not in indices:
                indices.append(index)
    return {metric: sorted(indices) for metric, indices in found.items()}


@runtime_checkable
class ExperimentRecorder(Protocol):
    """How ``run_experiment`` records a run; ``labkit.store.Store`` implements it.

    A recorder may also have ``heartbeat(experiment_id, *, every)``: the run then
    calls it every ``every`` seconds while it runs, so that a dead run can be told
    from a live one (``Store`` marks it ``interrupted``).
    """

    def begin(
        self,
        *,
        name: str,
        params: Mapping[str, Any],
        instances: int,
        config: Mapping[str, Any],
        resume: bool,
    ) -> tuple[str, dict[int, InstanceResult]]:
        """Create (or, with ``resume=True``, find by fingerprint of name+params+instances)
        the experiment; returns its id and the instances already finished (to load,
        not rerun). It may block: ``run_experiment`` calls it in a thread."""
        ...

    def follow(self, experiment_id: str, instance: int, log: SampleLog | None) -> None:
        """Commit an attempt's samples from its ``log`` as it grows (non-blocking,
        in batches); ``None``: stop (the attempt ended)."""
        ...

    async def finish_instance(self, experiment_id: str, result: InstanceResult) -> None:
        """Commit the finished instance (and its buffered samples) durably before returning."""
        ...

    async def finish(self, experiment_id: str, result: ExperimentResult) -> None:
        """Mark the experiment finished with its summary."""
        ...
