"""The NVML layer without a GPU: functions of the real pynvml module are replaced by a
scripted fleet, so its real exception classes and constants stay in play."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pynvml
import pytest

from labkit.errors import GPUUnavailable, MissingDependency
from labkit.gpu import GPUPool, NVMLInventory, StaticInventory
from labkit.gpu import nvml as nvml_module

MiB = 1 << 20


def nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)  # pynvml turns the code into its subclass


class FakeFleet:
    """A scripted NVML: each GPU is a dict; handles are tuples."""

    def __init__(self, gpus: list[dict[str, Any]], init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.init_calls = 0

    def _info(self, handle: tuple[Any, ...]) -> dict[str, Any]:
        gpu = self.gpus[handle[1]]
        return gpu if handle[0] == "gpu" else gpu["mig"][handle[2]]

    def _field(self, handle: tuple[Any, ...], key: str) -> Any:
        info = self._info(handle)
        if key not in info:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return info[key]

    def init(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise nvml_error(self.init_error)

    def count(self) -> int:
        return len(self.gpus)

    def handle(self, index: int) -> tuple[Any, ...]:
        if self.gpus[index].get("lost"):
            raise nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return ("gpu", index)

    def mig_mode(self, handle: tuple[Any, ...]) -> list[int]:
        if "mig" not in self._info(handle):
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_ENABLE]

    def max_mig(self, handle: tuple[Any, ...]) -> int:
        return 7

    def mig_handle(self, handle: tuple[Any, ...], slot: int) -> tuple[Any, ...]:
        if slot >= len(self._info(handle)["mig"]):
            raise nvml_error(pynvml.NVML_ERROR_NOT_FOUND)
        return ("mig", handle[1], slot)

    def uuid(self, handle: tuple[Any, ...]) -> str:
        value = self._info(handle)["uuid"]
        if value is None:
            raise nvml_error(pynvml.NVML_ERROR_UNKNOWN)
        return str(value)

    def name(self, handle: tuple[Any, ...]) -> str:
        return str(self._field(handle, "name"))

    def memory(self, handle: tuple[Any, ...]) -> SimpleNamespace:
        total, free = self._field(handle, "memory")
        return SimpleNamespace(total=total, free=free, used=total - free)

    def utilization(self, handle: tuple[Any, ...]) -> SimpleNamespace:
        return SimpleNamespace(gpu=self._field(handle, "util"), memory=0)

    def processes(self, handle: tuple[Any, ...]) -> list[SimpleNamespace]:
        procs = self._info(handle).get("processes", [])
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in procs]

    def patch(self) -> Any:
        return mock.patch.multiple(
            pynvml,
            nvmlInit=self.init,
            nvmlDeviceGetCount=self.count,
            nvmlDeviceGetHandleByIndex=self.handle,
            nvmlDeviceGetMigMode=self.mig_mode,
            nvmlDeviceGetMaxMigDeviceCount=self.max_mig,
            nvmlDeviceGetMigDeviceHandleByIndex=self.mig_handle,
            nvmlDeviceGetUUID=self.uuid,
            nvmlDeviceGetName=self.name,
            nvmlDeviceGetMemoryInfo=self.memory,
            nvmlDeviceGetUtilizationRates=self.utilization,
            nvmlDeviceGetComputeRunningProcesses=self.processes,
        )


H100 = {
    "uuid": "GPU-11111111-2222-3333-4444-555555555555",
    "name": "NVIDIA H100 80GB HBM3",
    "memory": (81559 * MiB, 70000 * MiB + 123),
    "util": 37,
    "processes": [(4242, 11559 * MiB), (4243, None)],
}

MIG_PARENT = {
    "uuid": "GPU-aaaaaaaa-0000-0000-0000-000000000000",
    "name": "NVIDIA A100-SXM4-80GB",
    "memory": (81920 * MiB, 81920 * MiB),
    "util": 0,
    "mig": [
        {
            "uuid": "MIG-bbbbbbbb-0000-0000-0000-000000000001",
            "name": "NVIDIA A100-SXM4-80GB MIG 3g.40gb",
            "memory": (40192 * MiB, 40000 * MiB),
        },
        {
            "uuid": "MIG-bbbbbbbb-0000-0000-0000-000000000002",
            "name": "NVIDIA A100-SXM4-80GB MIG 3g.40gb",
            "memory": (40192 * MiB, 10 * MiB),
        },
    ],
}


@pytest.fixture(autouse=True)
def fresh_nvml_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts as a process that has not initialised NVML yet."""
    monkeypatch.setattr(nvml_module, "_initialized_pid", None)
    yield


def test_whole_gpu_fields_are_converted_to_labkit_units() -> None:
    fleet = FakeFleet([H100])
    with fleet.patch():
        (gpu,) = NVMLInventory().devices()
    assert gpu.index == 0 and gpu.uuid == H100["uuid"]
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert (gpu.memory_total_mb, gpu.memory_free_mb, gpu.memory_used_mb) == (81559, 70000, 11559)
    assert gpu.utilization == pytest.approx(0.37)
    assert [(p.pid, p.used_memory_mb) for p in gpu.processes] == [(4242, 11559), (4243, None)]
    assert not gpu.is_mig


def test_mig_instances_are_listed_with_mig_uuids_and_no_utilization() -> None:
    fleet = FakeFleet([MIG_PARENT, H100])
    with fleet.patch():
        devices = NVMLInventory().devices()
    assert [d.uuid for d in devices] == [
        "MIG-bbbbbbbb-0000-0000-0000-000000000001",
        "MIG-bbbbbbbb-0000-0000-0000-000000000002",
        H100["uuid"],
    ]
    assert [d.index for d in devices] == [0, 1, 2]
    assert [d.parent_index for d in devices] == [0, 0, None]
    mig = devices[0]
    assert mig.is_mig and mig.utilization is None  # NotSupported reads as missing
    assert (mig.memory_total_mb, mig.memory_free_mb) == (40192, 40000)
    assert devices[2].utilization == pytest.approx(0.37)


@pytest.mark.asyncio
async def test_pool_on_mig_instances_hands_out_mig_uuids() -> None:
    fleet = FakeFleet([MIG_PARENT])
    with fleet.patch():
        pool = GPUPool(NVMLInventory())
        async with pool.acquire(gpus=1, min_memory_mb=20_000) as alloc:
            assert alloc.env == {"CUDA_VISIBLE_DEVICES": "MIG-bbbbbbbb-0000-0000-0000-000000000001"}


def test_unsupported_fields_read_as_none_and_unusable_devices_are_left_out() -> None:
    bare = {"uuid": "GPU-bare", "processes": []}  # name, memory, util: NotSupported
    no_uuid = {**H100, "uuid": None}
    lost = {**H100, "uuid": "GPU-lost", "lost": True}
    fleet = FakeFleet([bare, no_uuid, lost])
    with fleet.patch():
        devices = NVMLInventory().devices()
    assert len(devices) == 1
    gpu = devices[0]
    assert gpu.uuid == "GPU-bare" and gpu.name == ""
    assert gpu.memory_total_mb is None and gpu.memory_free_mb is None
    assert gpu.memory_used_mb is None and gpu.utilization is None


def test_library_not_found_gives_a_clear_gpu_unavailable() -> None:
    fleet = FakeFleet([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with fleet.patch(), pytest.raises(GPUUnavailable, match="no NVIDIA driver") as info:
        NVMLInventory()
    assert isinstance(info.value.__cause__, pynvml.NVMLError_LibraryNotFound)


def test_driver_not_loaded_gives_a_clear_gpu_unavailable() -> None:
    fleet = FakeFleet([], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    with fleet.patch(), pytest.raises(GPUUnavailable, match="driver is not loaded"):
        NVMLInventory()


def test_count_failure_after_start_is_gpu_unavailable() -> None:
    fleet = FakeFleet([H100])
    with fleet.patch():
        inventory = NVMLInventory()
        with (
            mock.patch.object(
                pynvml, "nvmlDeviceGetCount", side_effect=nvml_error(pynvml.NVML_ERROR_UNKNOWN)
            ),
            pytest.raises(GPUUnavailable, match="cannot list"),
        ):
            inventory.devices()


def test_missing_package_names_the_gpu_extra() -> None:
    with (
        mock.patch.dict(sys.modules, {"pynvml": None}),
        pytest.raises(MissingDependency, match=r"labkit\[gpu\]") as info,
    ):
        NVMLInventory()
    assert isinstance(info.value, ImportError)
    assert "nvidia-ml-py" in str(info.value)


@pytest.mark.asyncio
async def test_pool_without_inventory_falls_back_to_an_empty_fleet() -> None:
    for context in (
        mock.patch.dict(sys.modules, {"pynvml": None}),
        FakeFleet([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND).patch(),
    ):
        with context:
            pool = GPUPool()
        assert isinstance(pool.inventory, StaticInventory)
        async with pool.acquire(gpus=0) as alloc:
            assert alloc.env == {"CUDA_VISIBLE_DEVICES": ""}
        with pytest.raises(GPUUnavailable, match="gpus=0"):
            await pool.acquire(gpus=1)


@pytest.mark.asyncio
async def test_pool_without_inventory_uses_nvml_when_present() -> None:
    fleet = FakeFleet([H100])
    with fleet.patch():
        pool = GPUPool()
        assert isinstance(pool.inventory, NVMLInventory)
        async with pool.acquire(gpus=1) as alloc:
            assert alloc.uuids == (H100["uuid"],)


def test_nvml_is_initialised_once_per_process() -> None:
    fleet = FakeFleet([H100])
    with fleet.patch():
        first = NVMLInventory()
        second = NVMLInventory()
        for _ in range(3):
            first.devices()
            second.devices()
    assert fleet.init_calls == 1


def test_nvml_is_initialised_again_in_a_forked_child() -> None:
    fleet = FakeFleet([H100])
    with fleet.patch():
        inventory = NVMLInventory()
        inventory.devices()
        assert fleet.init_calls == 1
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: report how often NVML was initialised, then leave at once
            code = 1
            try:
                os.close(read_end)
                inventory.devices()
                inventory.devices()
                os.write(write_end, str(fleet.init_calls).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            child_calls = pipe.read()
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_calls == "2"  # the parent's init, inherited, plus one in the child
    assert fleet.init_calls == 1
