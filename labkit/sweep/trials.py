"""Running one trial: its experiment with the trial's parameters, and its row.

A :class:`TrialRunner` runs a whole trial (:meth:`TrialRunner.run`, loading it
from the store when it already finished there) or opens a racing trial's
experiment to grow round by round (:meth:`TrialRunner.open`), and fills in the
trial's row from its result (:meth:`TrialRunner.take`). A refused option stops
the sweep instead of failing every trial alike.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from labkit.errors import ConfigError
from labkit.experiment import Experiment, run_experiment
from labkit.experiment.run import ExperimentRun, open_run
from labkit.results import ExperimentResult, InstanceResult, error_text
from labkit.sweep.board import SweepBoard, Trial
from labkit.sweep.objective import Objective, instance_values, objective_value

if TYPE_CHECKING:
    from labkit.gpu import GPUPool
    from labkit.store import Store

__all__ = ("TrialRunner",)


@dataclass(slots=True, kw_only=True)
class TrialRunner:
    """Runs trials (or a racing trial's next instances) and fills in their rows."""

    experiment: Experiment
    objective: Objective
    store: Store | None
    resume: bool
    gpu_pool: GPUPool | None
    board: SweepBoard
    run_options: dict[str, Any]
    sweep_id: str
    """Names this sweep in each trial's record (``labels``: sweep and trial)."""
    refused: ConfigError | None = None

    def labels(self, trial: Trial) -> dict[str, str | int]:
        """What a trial's run is marked with in the store: its sweep and its number."""
        return {"sweep": self.sweep_id, "trial": trial.number}

    def unless_refused(self, items: Any) -> Iterator[Any]:
        """The items, until a trial's options or the space are refused (the sweep stops)."""
        iterator = iter(items)
        while self.refused is None:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except ConfigError as exc:
                self.refused = exc  # a strategy's ask() refused: raised once the runner ends
                return
            yield item

    def open(self, trial: Trial, planned: int) -> AbstractAsyncContextManager[ExperimentRun]:
        """A racing trial's experiment, open to grow (``planned``: its most instances)."""
        return open_run(
            self.experiment.with_params(**trial.params),
            instances=planned,
            store=self.store,
            resume=self.resume and self.store is not None,
            gpu_pool=self.gpu_pool,
            on_event=self.board.relay(trial.number),
            labels=self.labels(trial),
            **self.run_options,
        )

    def values(self, trial: Trial, instances: Sequence[InstanceResult]) -> list[float]:
        """The objective of each of ``instances``, in order (NaN where it has none)."""
        variant = self.experiment.with_params(**trial.params)
        return instance_values(variant.name, dict(variant.params or {}), instances, self.objective)

    async def run(self, trial: Trial, instances: Any) -> None:
        """Run (or load) the whole trial with ``instances`` and fill in its row."""
        variant = self.experiment.with_params(**trial.params)
        result: ExperimentResult | None = None
        store = self.store
        if store is not None and self.resume and isinstance(instances, int):
            found = store.find(variant.name, dict(variant.params or {}), instances)
            if found is not None:
                result = await asyncio.to_thread(store.load, found)
                trial.resumed = True
        try:
            if result is None:
                result = await run_experiment(
                    variant,
                    instances=instances,
                    store=store,
                    resume=self.resume and store is not None,
                    gpu_pool=self.gpu_pool,
                    on_event=self.board.relay(trial.number),
                    labels=self.labels(trial),
                    **self.run_options,
                )
        except ConfigError as exc:
            # A refused option would fail every trial alike: stop the sweep instead.
            self.refused = self.refused or exc
            trial.error = error_text(exc)
            return
        except Exception as exc:
            trial.error = error_text(exc)
            return
        self.take(trial, result)

    def take(self, trial: Trial, result: ExperimentResult) -> None:
        """Fill in the trial's row from its experiment's result."""
        trial.experiment_id = result.experiment_id
        trial.instances = list(result.instances)
        trial.summary = result.summary
        if isinstance(self.objective, str):
            # A function of the result is called on whole trials only (a race calls it
            # per instance, as it compares them): its estimate is the race's values.
            trial.values = self.values(trial, trial.instances)
        trial.status, trial.error, trial.objective = "failed", None, math.nan
        if result.all_failed:
            first = next(iter(result.failed), None)
            trial.error = first.error if first is not None else "every instance failed"
            return
        try:
            trial.objective = objective_value(result, self.objective)
        except (KeyError, ValueError) as exc:
            trial.error = error_text(exc)
            return
        trial.status = "ok"
