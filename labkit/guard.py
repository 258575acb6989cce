"""The resource guard: no new task starts while the host is over its limits.

A runner given ``limits=ResourceLimits(...)`` asks its guard before each task's
first attempt. While the host's CPU or memory is over a limit, starts wait (tasks
already running carry on) and the guard re-reads the host every ``check_every``
seconds. A task may declare what it needs (``cost={"memory_mb": 2048}``); it is
admitted only when that much memory is free, and the amount stays reserved until
the task ends, since a task that just started has not allocated yet and the next
reading of the host would not show it.

The host is read through a :class:`HostProbe` (psutil by default), so tests inject
a fake host and stay deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from labkit._checks import check, is_real
from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import ConfigError, ResourceUnavailable
from labkit.events import EventBus, GuardEvent

__all__ = (
    "Cost",
    "HostProbe",
    "HostSample",
    "PsutilProbe",
    "ResourceGuard",
    "ResourceLimits",
)

COST_KEYS = frozenset({"memory_mb"})
Cost = Mapping[str, float] | Callable[[Any], Mapping[str, float]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceLimits:
    """Host limits above which a runner starts no new task.

    Args:
        max_cpu_percent: Host CPU use (0 to 100, all cores) above which starts wait.
        max_memory_percent: Host memory in use (0 to 100) above which starts wait;
            a task's declared ``memory_mb`` counts as in use once admitted.
        max_memory_mb: Host memory in use, in MB, above which starts wait.
        check_every: Seconds between readings of the host while starts wait.

    Raises:
        ConfigError: If a limit is out of range.
    """

    max_cpu_percent: float | None = None
    max_memory_percent: float | None = None
    max_memory_mb: float | None = None
    check_every: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_cpu_percent", "max_memory_percent"):
            value = getattr(self, name)
            check(
                value is None or (is_real(value) and 0 < value <= 100),
                name,
                value,
                "None or a percentage in (0, 100]",
            )
        check(
            self.max_memory_mb is None or (is_real(self.max_memory_mb) and self.max_memory_mb > 0),
            "max_memory_mb",
            self.max_memory_mb,
            "None or a finite number of megabytes > 0",
        )
        check(
            is_real(self.check_every) and 0 < self.check_every <= 86_400,
            "check_every",
            self.check_every,
            "a finite number of seconds > 0 and <= 86,400",
        )


@dataclass(frozen=True, slots=True)
class HostSample:
    """One reading of the host.

    Attributes:
        cpu_percent: CPU in use over all cores, 0 to 100.
        memory_total_mb: Physical memory, in MB.
        memory_available_mb: Memory available to new work without swapping, in MB.
    """

    cpu_percent: float
    memory_total_mb: float
    memory_available_mb: float

    @property
    def memory_used_mb(self) -> float:
        return self.memory_total_mb - self.memory_available_mb


@runtime_checkable
class HostProbe(Protocol):
    """Reads the host's CPU and memory."""

    def sample(self) -> HostSample: ...


class PsutilProbe:
    """The real host, read with psutil (CPU use since the previous reading)."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        psutil.cpu_percent(interval=None)  # the first reading only starts the interval

    def sample(self) -> HostSample:
        memory = self._psutil.virtual_memory()
        return HostSample(
            cpu_percent=self._psutil.cpu_percent(interval=None),
            memory_total_mb=memory.total / 2**20,
            memory_available_mb=memory.available / 2**20,
        )


def cost_of(cost: Cost | None, item: Any) -> float:
    """The memory (MB) a task declares, from a mapping or a per-item callable."""
    if cost is None:
        return 0.0
    needs = cost(item) if callable(cost) else cost
    unknown = set(needs) - COST_KEYS
    if unknown:
        raise ConfigError("cost", dict(needs), f"a mapping with keys from {sorted(COST_KEYS)}")
    memory = float(needs.get("memory_mb", 0.0))
    check(memory >= 0, "cost", dict(needs), "memory_mb >= 0")
    return memory


class ResourceGuard:
    """Admits task starts while the host is under its limits.

    Args:
        limits: The limits to keep.
        probe: Where readings come from (default: the real host through psutil).
        clock: The clock used to wait between readings.
        bus: Where ``held``/``resumed`` :class:`GuardEvent` records go.
    """

    def __init__(
        self,
        limits: ResourceLimits,
        *,
        probe: HostProbe | None = None,
        clock: Clock = SYSTEM_CLOCK,
        bus: EventBus | None = None,
    ) -> None:
        self.limits = limits
        self._probe = probe if probe is not None else PsutilProbe()
        self._clock = clock
        self._bus = bus if bus is not None else EventBus()
        self._sample: HostSample | None = None
        self._sampled_at = float("-inf")
        self.reserved_mb = 0.0
        """Memory declared by admitted tasks that have not ended yet, in MB."""
        self.held_starts = 0
        """Starts that had to wait at least once."""
        self.held_seconds = 0.0
        """Total seconds starts spent waiting (summed over waiting starts)."""
        self.waiting = 0
        """Starts waiting right now."""
        self.reason: str | None = None
        """Why starts wait right now (``"cpu"``, ``"memory"``), or None."""

    def _read(self, fresh: bool) -> HostSample:
        now = self._clock.now()
        if fresh or self._sample is None or now - self._sampled_at >= self.limits.check_every:
            self._sample = self._probe.sample()
            self._sampled_at = now
        return self._sample

    def over(self, sample: HostSample, memory_mb: float) -> str | None:
        """Why a start needing ``memory_mb`` may not happen now, or None if it may."""
        limits = self.limits
        if limits.max_cpu_percent is not None and sample.cpu_percent > limits.max_cpu_percent:
            return "cpu"
        in_use = sample.memory_used_mb + self.reserved_mb
        if memory_mb and sample.memory_available_mb - self.reserved_mb < memory_mb:
            return "memory"
        if limits.max_memory_percent is not None and in_use + memory_mb > (
            sample.memory_total_mb * limits.max_memory_percent / 100
        ):
            return "memory"
        if limits.max_memory_mb is not None and in_use + memory_mb > limits.max_memory_mb:
            return "memory"
        return None

    async def admit(self, memory_mb: float = 0.0, task: int = -1) -> bool:
        """Wait until a task needing ``memory_mb`` may start, then reserve that memory.

        Returns:
            True if the start had to wait.

        Raises:
            ResourceUnavailable: If the task needs more memory than the host has.
        """
        sample = self._read(fresh=False)
        ceiling = sample.memory_total_mb
        if self.limits.max_memory_mb is not None:
            ceiling = min(ceiling, self.limits.max_memory_mb)
        if memory_mb > ceiling:
            raise ResourceUnavailable(
                f"task {task} declares memory_mb={memory_mb:g}, more than this host "
                f"allows ({ceiling:.0f} MB): it could never start"
            )
        reason = self.over(sample, memory_mb)
        if reason is not None:
            await self._wait(memory_mb, task, reason)
        self.reserved_mb += memory_mb
        return reason is not None

    async def _wait(self, memory_mb: float, task: int, reason: str) -> None:
        clock = self._clock
        started = clock.now()
        self.held_starts += 1
        self.waiting += 1
        self.reason = reason
        if self._bus:
            self._bus.emit(GuardEvent("held", started, reason, task))
        try:
            current: str | None = reason
            while current is not None:
                self.reason = current
                await clock.sleep(self.limits.check_every)
                current = self.over(self._read(fresh=True), memory_mb)
        finally:
            waited = clock.now() - started
            self.held_seconds += waited
            self.waiting -= 1
            if not self.waiting:
                self.reason = None
        if self._bus:
            self._bus.emit(GuardEvent("resumed", clock.now(), reason, task, waited))

    def release(self, memory_mb: float) -> None:
        """Give back the memory a finished task had reserved."""
        self.reserved_mb = max(self.reserved_mb - memory_mb, 0.0)
