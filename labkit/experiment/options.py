"""The options of one experiment run, validated once: :class:`ExperimentOptions`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from labkit._checks import check, is_int, is_real
from labkit.experiment.spec import MAX_DURATION, MAX_INSTANCES

__all__ = ("MAX_GPUS_PER_INSTANCE", "ExperimentOptions", "check_resources")

MAX_GPUS_PER_INSTANCE = 1024
"""The most GPUs one instance may ask for (a typo past it, not a plan)."""

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
        check(
            is_int(self.max_instances) and 1 <= self.max_instances <= MAX_INSTANCES,
            "max_instances",
            self.max_instances,
            f"an int from 1 to {MAX_INSTANCES}",
        )
        if self.instances == "auto":
            check(
                is_real(self.target_rel_half_width) and 0 < self.target_rel_half_width <= 10,
                "target_rel_half_width",
                self.target_rel_half_width,
                "a fraction > 0 and <= 10 (0.05 means 5 %)",
            )
        else:
            check(
                is_int(self.instances) and 1 <= int(self.instances) <= MAX_INSTANCES,
                "instances",
                self.instances,
                f"an int from 1 to {MAX_INSTANCES} (the cap), or 'auto'",
            )
        check(
            self.duration is None or (is_real(self.duration) and 0 < self.duration <= MAX_DURATION),
            "duration",
            self.duration,
            f"seconds > 0 and <= {MAX_DURATION:.0f} (the longest sandbox life), or None",
        )
        check(
            is_real(self.sample_every) and 0 < self.sample_every <= MAX_DURATION,
            "sample_every",
            self.sample_every,
            f"a finite number of seconds > 0 and <= {MAX_DURATION:.0f}",
        )
        check(
            is_int(self.gpus_per_instance) and 0 <= self.gpus_per_instance <= MAX_GPUS_PER_INSTANCE,
            "gpus_per_instance",
            self.gpus_per_instance,
            f"an int from 0 to {MAX_GPUS_PER_INSTANCE}",
        )
        check(
            is_real(self.heartbeat_every) and 0 < self.heartbeat_every <= MAX_DURATION,
            "heartbeat_every",
            self.heartbeat_every,
            f"a finite number of seconds > 0 and <= {MAX_DURATION:.0f}",
        )
        check(isinstance(self.resume, bool), "resume", self.resume, "True or False")
        check(
            self.auto_metric is None
            or (isinstance(self.auto_metric, str) and bool(self.auto_metric)),
            "auto_metric",
            self.auto_metric,
            "None or a summary figure's name (a non-empty str)",
        )

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


def check_resources(gpu_pool: object, sandbox_pool: object, store: object) -> None:
    """Refuse, before anything runs, a pool or store of the wrong kind.

    A class passed where an instance belongs (``sandbox_pool=LocalSandbox``) or a
    sandbox where a pool belongs would otherwise fail inside every instance.

    Raises:
        ConfigError: ``gpu_pool`` is not a ``GPUPool``, ``sandbox_pool`` has no
            ``session()``, or ``store`` has no ``begin()`` (the recorder protocol).
    """
    from labkit.gpu import GPUPool

    check(
        gpu_pool is None or isinstance(gpu_pool, GPUPool),
        "gpu_pool",
        gpu_pool,
        "None or a labkit.GPUPool instance",
    )
    check(
        sandbox_pool is None or _instance_with(sandbox_pool, "session"),
        "sandbox_pool",
        sandbox_pool,
        "None or a labkit.SandboxPool instance (lk.SandboxPool(lk.LocalSandbox, max_size=4), "
        "not a sandbox class or a sandbox)",
    )
    check(
        store is None or _instance_with(store, "begin"),
        "store",
        store,
        "None or a labkit.Store instance (or another ExperimentRecorder)",
    )


def _instance_with(value: object, method: str) -> bool:
    return not isinstance(value, type) and callable(getattr(value, method, None))


def _config_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)
