"""The options of one experiment run, validated once: :class:`ExperimentOptions`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from labkit.errors import check
from labkit.experiment.spec import MAX_DURATION, MAX_INSTANCES

__all__ = ("ExperimentOptions",)

PILOT_INSTANCES = 3
"""How many instances ``instances="auto"`` runs before it estimates how many it needs."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExperimentOptions:
    """How :func:`~labkit.experiment.run_experiment` runs its instances.

    ``run_experiment`` builds one from its keyword arguments; every field means
    what the argument of the same name means there.

    Attributes:
        instances: How many instances (1 to ``MAX_INSTANCES``), or ``"auto"``.
        duration: How long each instance is meant to run (s), or ``None``.
        gpus_per_instance: GPUs each instance holds.
        sample_every: Seconds between resource samples of a sandbox.
        resume: Load what a previous run of the same experiment finished.
        target_rel_half_width: For ``"auto"``: the wanted 95 % half-width of the
            mean, relative to the mean.
        max_instances: For ``"auto"``: the cap on instances run.
        auto_metric: For ``"auto"``: the summary figure to estimate.
        heartbeat_every: Seconds between the heartbeats a recorded run writes to
            its store; a run whose heartbeat is older than a few of these reads
            as ``interrupted``.

    Raises:
        ConfigError: A field is out of range (named, with its value and what is
            allowed).
    """

    instances: int | Literal["auto"] = 1
    duration: float | None = None
    gpus_per_instance: int = 0
    sample_every: float = 1.0
    resume: bool = False
    target_rel_half_width: float = 0.05
    max_instances: int = 32
    auto_metric: str | None = None
    heartbeat_every: float = 5.0

    def __post_init__(self) -> None:
        if self.instances == "auto":
            check(
                _int(self.max_instances) and 1 <= self.max_instances <= MAX_INSTANCES,
                "max_instances",
                self.max_instances,
                f"an int from 1 to {MAX_INSTANCES}",
            )
            check(
                _finite(self.target_rel_half_width) and self.target_rel_half_width > 0,
                "target_rel_half_width",
                self.target_rel_half_width,
                "a fraction > 0 (0.05 means 5 %)",
            )
        else:
            check(
                _int(self.instances) and 1 <= int(self.instances) <= MAX_INSTANCES,
                "instances",
                self.instances,
                f"an int from 1 to {MAX_INSTANCES} (the cap), or 'auto'",
            )
        check(
            self.duration is None or (_finite(self.duration) and 0 < self.duration <= MAX_DURATION),
            "duration",
            self.duration,
            f"seconds > 0 and <= {MAX_DURATION:.0f} (the longest sandbox life), or None",
        )
        check(
            _finite(self.sample_every) and self.sample_every > 0,
            "sample_every",
            self.sample_every,
            "seconds > 0",
        )
        check(
            _int(self.gpus_per_instance) and self.gpus_per_instance >= 0,
            "gpus_per_instance",
            self.gpus_per_instance,
            "an int >= 0",
        )
        check(
            _finite(self.heartbeat_every) and self.heartbeat_every > 0,
            "heartbeat_every",
            self.heartbeat_every,
            "seconds > 0",
        )
        check(isinstance(self.resume, bool), "resume", self.resume, "True or False")

    @property
    def adaptive(self) -> bool:
        """Whether the number of instances is chosen as the run goes (``"auto"``)."""
        return self.instances == "auto"

    @property
    def planned(self) -> int:
        """The most instances this run may start."""
        return self.max_instances if self.instances == "auto" else int(self.instances)

    @property
    def pilot(self) -> int:
        """The instances started first: all of them, or the pilot of ``"auto"``."""
        return min(PILOT_INSTANCES, self.planned) if self.adaptive else self.planned

    def config(self, runner_options: Mapping[str, Any]) -> dict[str, Any]:
        """The run's configuration as the store and the result keep it (JSON values)."""
        config: dict[str, Any] = {
            "instances": "auto" if self.adaptive else self.planned,
            "duration": self.duration,
            "gpus_per_instance": self.gpus_per_instance,
            "sample_every": self.sample_every,
            "sandbox": None,
            **{f"runner.{key}": _config_value(value) for key, value in runner_options.items()},
        }
        if self.adaptive:
            config.update(
                target_rel_half_width=self.target_rel_half_width,
                max_instances=self.max_instances,
            )
        return config


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _config_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)
