"""What a GPU looks like to labkit, and where the pool learns about them.

An *inventory* reports the fleet as it is right now: :class:`NVMLInventory`
(:mod:`labkit.gpu.nvml`) reads the real devices, :class:`StaticInventory` declares a
fleet for tests, notebooks on CI and planning. The pool asks its inventory at every
decision, so an inventory must be cheap to read and always current.

Memory is counted in MB meaning MiB (2**20 bytes), as ``nvidia-smi`` reports it.
"""

from __future__ import annotations

import dataclasses
import uuid as uuidlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from labkit._checks import check
from labkit.errors import ConfigError

__all__ = ("GPU", "GPUProcess", "Inventory", "StaticInventory", "static_fleet")


@dataclass(frozen=True, slots=True)
class GPUProcess:
    """A compute process running on a GPU, as the driver reports it.

    Attributes:
        pid: The process id (in the driver's PID namespace: inside a container it
            may not match ``os.getpid()``).
        used_memory_mb: GPU memory the process holds, in MB; ``None`` when the
            driver does not say (Windows WDDM, some MIG setups).
    """

    pid: int
    used_memory_mb: int | None = None


@dataclass(frozen=True, slots=True)
class GPU:
    """One device the pool can hand out: a whole GPU or a MIG instance.

    A value the device does not support reads as ``None`` rather than failing.

    Attributes:
        index: labkit's index for the device, unique within its inventory. Without
            MIG it is the NVML (``nvidia-smi``) index; with MIG, MIG instances are
            numbered in listing order. Allocations hand devices out by ``uuid``,
            never by index.
        uuid: The device's UUID, ``GPU-...`` or ``MIG-...``; what
            ``CUDA_VISIBLE_DEVICES`` receives.
        name: The model name (``"NVIDIA H100 80GB HBM3"``); ``""`` when unknown.
        memory_total_mb: Total memory in MB, or ``None`` when unknown.
        memory_free_mb: Free memory in MB right now, or ``None`` when unknown.
        utilization: Compute utilization over the driver's last sample period, a
            fraction from 0.0 to 1.0 (NVML's percent / 100); ``None`` when
            unsupported (MIG instances).
        processes: Compute processes on the device, when the inventory reads them.
        parent_index: For a MIG instance, the NVML index of the physical GPU it is
            carved from; ``None`` for a whole GPU.

    Raises:
        ConfigError: A value is out of range (negative memory, free above total,
            utilization outside 0..1).
    """

    index: int
    uuid: str
    name: str = ""
    memory_total_mb: int | None = None
    memory_free_mb: int | None = None
    utilization: float | None = None
    processes: tuple[GPUProcess, ...] = ()
    parent_index: int | None = None

    def __post_init__(self) -> None:
        check(self.index >= 0, "index", self.index, "an integer >= 0")
        check(bool(self.uuid), "uuid", self.uuid, "a non-empty device UUID")
        total, free, util = self.memory_total_mb, self.memory_free_mb, self.utilization
        check(total is None or total >= 0, "memory_total_mb", total, "None or a value >= 0")
        check(free is None or free >= 0, "memory_free_mb", free, "None or a value >= 0")
        if total is not None and free is not None:
            check(free <= total, "memory_free_mb", free, f"at most memory_total_mb={total}")
        check(util is None or 0.0 <= util <= 1.0, "utilization", util, "None or 0.0 to 1.0")

    @property
    def memory_used_mb(self) -> int | None:
        """Memory in use, in MB (total - free), or ``None`` when either is unknown."""
        if self.memory_total_mb is None or self.memory_free_mb is None:
            return None
        return self.memory_total_mb - self.memory_free_mb

    @property
    def is_mig(self) -> bool:
        """Whether this device is a MIG instance rather than a whole GPU."""
        return self.parent_index is not None


@runtime_checkable
class Inventory(Protocol):
    """Where a :class:`~labkit.gpu.GPUPool` reads the fleet.

    ``devices()`` is called at every allocation decision, from the event loop, so it
    must be quick (microseconds to a millisecond) and report the current state.
    The set of devices (their UUIDs) must not change over an inventory's life;
    their free memory and utilization may.
    """

    def devices(self) -> Sequence[GPU]:
        """The fleet as it is now, ordered by index.

        Raises:
            GPUUnavailable: The devices cannot be read any more (driver gone).
        """
        ...


class StaticInventory:
    """A declared fleet whose values change only when told to.

    Use it in tests and on machines without GPUs; :meth:`set` simulates load. A
    pool notices a change at its next decision, its next poll while requests
    wait, or at once after ``pool.refresh()``.

    Args:
        gpus: The devices; indices and UUIDs must be unique.

    Raises:
        ConfigError: Two devices share an index or a UUID.
    """

    __slots__ = ("_devices", "_position")

    def __init__(self, gpus: Iterable[GPU] = ()) -> None:
        devices = sorted(gpus, key=lambda gpu: gpu.index)
        indices = [gpu.index for gpu in devices]
        uuids = [gpu.uuid for gpu in devices]
        check(len(set(indices)) == len(indices), "gpus", indices, "unique indices")
        check(len(set(uuids)) == len(uuids), "gpus", uuids, "unique UUIDs")
        self._devices: tuple[GPU, ...] = tuple(devices)
        self._position = {gpu.index: i for i, gpu in enumerate(devices)}

    def devices(self) -> tuple[GPU, ...]:
        """The declared fleet with its current values, ordered by index."""
        return self._devices

    def __getitem__(self, index: int) -> GPU:
        """The device with this ``index`` (not position)."""
        return self._devices[self._position[index]]

    def __len__(self) -> int:
        return len(self._devices)

    def set(self, index: int, **changes: Any) -> GPU:
        """Change the values of one device, e.g. to simulate another user's job.

        Args:
            index: The device's index.
            **changes: New field values: ``memory_free_mb``, ``utilization``,
                ``processes``, ``name``, ``memory_total_mb``. ``index`` and ``uuid``
                are fixed.

        Returns:
            The updated device.

        Raises:
            ConfigError: No device has this index, a field is unknown or fixed, or
                a value is out of range.
        """
        check(index in self._position, "index", index, f"one of {sorted(self._position)}")
        for name in changes:
            if name in {"index", "uuid"} or name not in GPU.__dataclass_fields__:
                raise ConfigError(name, changes[name], "a changeable GPU field")
        position = self._position[index]
        updated = dataclasses.replace(self._devices[position], **changes)
        devices = list(self._devices)
        devices[position] = updated
        self._devices = tuple(devices)
        return updated

    def __repr__(self) -> str:
        return f"StaticInventory({list(self._devices)!r})"


def static_fleet(
    n: int = 8,
    *,
    memory_mb: int = 81559,
    name: str = "NVIDIA H100 80GB HBM3",
    utilization: float = 0.0,
) -> StaticInventory:
    """A fleet of ``n`` identical idle GPUs with stable, distinct UUIDs.

    Args:
        n: How many GPUs (indices ``0 .. n-1``).
        memory_mb: Total memory of each, in MB; all of it free. The default is
            what NVML reports for an H100 80GB.
        name: The model name.
        utilization: The starting utilization of each, 0.0 to 1.0.

    Returns:
        A :class:`StaticInventory`; the same ``n`` always gives the same UUIDs.

    Raises:
        ConfigError: ``n`` is negative or a value is out of range.
    """
    check(n >= 0, "n", n, "an integer >= 0")
    return StaticInventory(
        GPU(
            index=i,
            uuid=f"GPU-{uuidlib.uuid5(uuidlib.NAMESPACE_URL, f'labkit:static-gpu:{i}')}",
            name=name,
            memory_total_mb=memory_mb,
            memory_free_mb=memory_mb,
            utilization=utilization,
        )
        for i in range(n)
    )
