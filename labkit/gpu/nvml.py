"""The real fleet, read through NVML (the ``nvidia-ml-py`` package, ``import pynvml``).

``pynvml`` is imported on first use so that ``import labkit`` works without the
``gpu`` extra. NVML is initialised once per process; a forked child (a
``multiprocessing`` worker, a Dask nanny) initialises it again, because NVML's
state does not survive a fork.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, TypeVar

from labkit.errors import GPUUnavailable, MissingDependency
from labkit.gpu.inventory import GPU, GPUProcess

__all__ = ("NVMLInventory",)

_T = TypeVar("_T")

_MB = 1 << 20

# pid of the process that last ran nvmlInit(); a fork changes os.getpid() and so
# forces a fresh init in the child.
_initialized_pid: int | None = None
_init_lock = threading.Lock()


def _reset_after_fork() -> None:
    global _init_lock
    # A lock held by another thread at fork time would stay held forever in the child.
    _init_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _import_pynvml() -> ModuleType:
    try:
        return importlib.import_module("pynvml")
    except ImportError as exc:
        raise MissingDependency(
            "pynvml", "gpu", "Reading GPUs through NVML (nvidia-ml-py provides pynvml)"
        ) from exc


def _init(pynvml: ModuleType) -> None:
    """Run ``nvmlInit()`` unless this process already did.

    Raises:
        GPUUnavailable: No NVIDIA driver, or NVML refused to start.
    """
    global _initialized_pid
    pid = os.getpid()
    if _initialized_pid == pid:
        return
    with _init_lock:
        if _initialized_pid == pid:
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound as exc:
            raise GPUUnavailable(
                "NVML library (libnvidia-ml.so.1) not found: no NVIDIA driver is "
                "installed here, so no GPU can be used"
            ) from exc
        except pynvml.NVMLError_DriverNotLoaded as exc:
            raise GPUUnavailable(
                "the NVIDIA kernel driver is not loaded (NVML library found, but "
                "nvmlInit() failed): check `nvidia-smi`"
            ) from exc
        except pynvml.NVMLError as exc:
            raise GPUUnavailable(f"NVML failed to start: {exc}") from exc
        _initialized_pid = pid


class NVMLInventory:
    """The GPUs of this machine as NVML reports them, read fresh on every call.

    A GPU in MIG mode is listed as its MIG instances (``MIG-...`` UUIDs), not as
    itself: CUDA cannot use a MIG-enabled GPU whole. Fields a device does not
    support (utilization on MIG instances, memory on some boards) read as ``None``.

    Args:
        processes: Also read each device's compute processes (one more NVML call
            per device).

    Raises:
        MissingDependency: ``nvidia-ml-py`` is not installed (the ``gpu`` extra).
        GPUUnavailable: No NVIDIA driver, or NVML cannot start.
    """

    __slots__ = ("_nvml", "_processes")

    def __init__(self, *, processes: bool = True) -> None:
        self._nvml = _import_pynvml()
        self._processes = processes
        _init(self._nvml)

    def devices(self) -> tuple[GPU, ...]:
        """Every usable device now: whole GPUs, and MIG instances of GPUs in MIG mode.

        Makes a handful of NVML calls per device, on the calling thread.

        Raises:
            GPUUnavailable: NVML cannot count the devices (driver gone, GPU lost).
        """
        nvml = self._nvml
        _init(nvml)
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            raise GPUUnavailable(f"NVML cannot list the GPUs: {exc}") from exc
        found: list[GPU] = []
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            except nvml.NVMLError:
                continue  # a lost or inaccessible GPU is left out, not fatal
            for device, parent in self._usable(handle, index):
                gpu = self._read(device, len(found), parent)
                if gpu is not None:
                    found.append(gpu)
        return tuple(found)

    def _usable(self, handle: Any, index: int) -> Iterator[tuple[Any, int | None]]:
        """The handles CUDA can use on one physical GPU, each with its MIG parent index."""
        nvml = self._nvml
        mode = self._optional(nvml.nvmlDeviceGetMigMode, handle)
        if mode is None or mode[0] != nvml.NVML_DEVICE_MIG_ENABLE:
            yield handle, None
            return
        slots = self._optional(nvml.nvmlDeviceGetMaxMigDeviceCount, handle) or 0
        for slot in range(slots):
            # Slots without a configured instance answer NotFound: skip them.
            mig = self._optional(nvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, slot)
            if mig is not None:
                yield mig, index

    def _read(self, handle: Any, index: int, parent: int | None) -> GPU | None:
        nvml = self._nvml
        uuid = self._optional(nvml.nvmlDeviceGetUUID, handle)
        if not uuid:
            return None  # without a UUID the device cannot be handed out
        memory = self._optional(nvml.nvmlDeviceGetMemoryInfo, handle)
        total = free = None
        if memory is not None:
            total = int(memory.total) // _MB
            free = min(int(memory.free) // _MB, total)
        rates = self._optional(nvml.nvmlDeviceGetUtilizationRates, handle)
        utilization = None if rates is None else min(max(rates.gpu / 100.0, 0.0), 1.0)
        processes: tuple[GPUProcess, ...] = ()
        if self._processes:
            running = self._optional(nvml.nvmlDeviceGetComputeRunningProcesses, handle) or ()
            processes = tuple(
                GPUProcess(
                    pid=int(p.pid),
                    used_memory_mb=None if p.usedGpuMemory is None else p.usedGpuMemory // _MB,
                )
                for p in running
            )
        return GPU(
            index=index,
            uuid=str(uuid),
            name=str(self._optional(nvml.nvmlDeviceGetName, handle) or ""),
            memory_total_mb=total,
            memory_free_mb=free,
            utilization=utilization,
            processes=processes,
            parent_index=parent,
        )

    def _optional(self, call: Callable[..., _T], *args: Any) -> _T | None:
        """``call(*args)``, or ``None`` when NVML says the value is unavailable."""
        try:
            return call(*args)
        except self._nvml.NVMLError:
            return None

    def __repr__(self) -> str:
        return f"NVMLInventory(processes={self._processes})"
