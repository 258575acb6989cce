"""Live tests on this machine's GPUs through the real NVML; skipped where none is found."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys

import pytest

from labkit.errors import GPUUnavailable, MissingDependency
from labkit.gpu import GPU, GPUPool, NVMLInventory

pytestmark = pytest.mark.gpu


def live_devices() -> tuple[GPU, ...]:
    try:
        devices = NVMLInventory().devices()
    except (MissingDependency, GPUUnavailable) as exc:
        pytest.skip(f"no NVML here: {exc}")
    if not devices:
        pytest.skip("NVML found no GPU")
    return devices


# The child lists what CUDA lets it see, through the CUDA driver API (libcuda, part of
# the driver): NVML and nvidia-smi ignore CUDA_VISIBLE_DEVICES, CUDA honours it.
CHILD = r"""
import ctypes, json, os
visible = os.environ.get("CUDA_VISIBLE_DEVICES")
seen = []
try:
    cuda = ctypes.CDLL("libcuda.so.1")
    rc = cuda.cuInit(0)
    if rc == 100:  # CUDA_ERROR_NO_DEVICE: nothing visible
        raise LookupError
    assert rc == 0, rc
    count = ctypes.c_int()
    assert cuda.cuDeviceGetCount(ctypes.byref(count)) == 0
    for i in range(count.value):
        dev = ctypes.c_int()
        cuda.cuDeviceGet(ctypes.byref(dev), i)
        raw = (ctypes.c_ubyte * 16)()
        cuda.cuDeviceGetUuid(raw, dev)
        h = bytes(raw).hex()
        seen.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
except LookupError:
    seen = []
except OSError:
    seen = None
print(json.dumps({"visible": visible, "cuda_uuids": seen}))
"""


async def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return await proc.wait(), out.decode()


async def child_view(env: dict[str, str]) -> dict[str, object]:
    code, out = await run(sys.executable, "-c", CHILD, env=env)
    assert code == 0, out
    view: dict[str, object] = json.loads(out)
    return view


def test_nvml_lists_real_devices_with_sane_values() -> None:
    devices = live_devices()
    for gpu in devices:
        assert gpu.uuid.startswith(("GPU-", "MIG-"))
        assert gpu.memory_total_mb is None or gpu.memory_total_mb > 0
        if gpu.memory_total_mb is not None and gpu.memory_free_mb is not None:
            assert 0 <= gpu.memory_free_mb <= gpu.memory_total_mb
        assert gpu.utilization is None or 0.0 <= gpu.utilization <= 1.0
    assert len({gpu.uuid for gpu in devices}) == len(devices)


@pytest.mark.asyncio
async def test_child_process_sees_exactly_the_gpu_it_was_given() -> None:
    devices = live_devices()
    pool = GPUPool(NVMLInventory())
    async with pool.acquire(gpus=1, owner="live") as alloc:
        assert alloc.uuids[0] in {gpu.uuid for gpu in devices}
        report = await child_view({**os.environ, **alloc.env})
        assert report["visible"] == alloc.uuids[0]
        if report["cuda_uuids"] is not None and not alloc.uuids[0].startswith("MIG-"):
            assert report["cuda_uuids"] == [alloc.uuids[0].removeprefix("GPU-")]
        if shutil.which("nvidia-smi"):  # a device the driver lists by that UUID
            code, listing = await run("nvidia-smi", "-L")
            assert code == 0 and alloc.uuids[0] in listing
    # Asking for none hides every GPU from CUDA.
    async with pool.acquire(gpus=0) as none:
        report = await child_view({**os.environ, **none.env})
        assert report["visible"] == ""
        if report["cuda_uuids"] is not None:
            assert report["cuda_uuids"] == []


def _cuda_view_in_worker(ctx: object) -> dict[str, object]:
    """Inside a worker process: what CUDA itself lets this process see."""
    namespace: dict[str, object] = {}
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(CHILD, namespace)
    view: dict[str, object] = json.loads(out.getvalue())
    view["pid"] = os.getpid()
    return view


@pytest.mark.asyncio
async def test_each_worker_process_sees_only_its_instances_gpu_through_cuda() -> None:
    import labkit as lk

    devices = live_devices()
    pool = GPUPool(NVMLInventory())
    result = await lk.run_experiment(
        lk.Experiment("cuda-view", _cuda_view_in_worker),
        instances=min(len(devices), 4),
        gpus_per_instance=1,
        gpu_pool=pool,
        executor="process",
    )
    for instance in result.instances:
        assert instance.ok, instance.error
        (held,) = instance.gpu_uuids
        view = instance.summary
        assert view["visible"] == held and view["pid"] != os.getpid()
        if view["cuda_uuids"] is not None and not held.startswith("MIG-"):
            assert view["cuda_uuids"] == [held.removeprefix("GPU-")]
