"""GPU workers for Dask: one worker per GPU (or group of GPUs), pinned by UUID."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from labkit._checks import check
from labkit.errors import GPUUnavailable
from labkit.executors.dask import distributed as _distributed

if TYPE_CHECKING:
    from labkit.gpu.inventory import Inventory

__all__ = ("gpu_cluster",)


def gpu_cluster(
    inventory: Inventory | None = None,
    *,
    gpus_per_worker: int = 1,
    threads_per_worker: int = 1,
    asynchronous: bool = False,
    host: str = "127.0.0.1",
    dashboard_address: str | None = ":8787",
    **worker_options: Any,
) -> Any:
    """A local Dask cluster with one worker per GPU (or per group of GPUs).

    Each worker runs in its own process, started by a nanny whose environment sets
    ``CUDA_VISIBLE_DEVICES`` to its GPUs' UUIDs (stable, unlike indices), and
    advertises ``resources={"GPU": gpus_per_worker}``. Submit with
    ``DaskExecutor(client, gpus=gpus_per_worker)``: a worker's tasks all see the
    worker's GPUs, so one task per worker (``threads_per_worker=1``) keeps each
    task on GPUs of its own.

    Args:
        inventory: Where the GPUs come from; ``None`` reads this machine through
            NVML (the ``gpu`` extra). A :class:`labkit.StaticInventory` declares
            a fleet (tests, planning).
        gpus_per_worker: GPUs pinned to each worker; must divide the fleet.
        threads_per_worker: Task threads per worker.
        asynchronous: Build the cluster for ``await`` (then ``await cluster``
            before use and ``await cluster.close()`` after).
        host: The address the scheduler and workers listen on.
        dashboard_address: The scheduler's dashboard (``None`` for none).
        **worker_options: More options for each ``distributed.Nanny``
            (``memory_limit``, ``local_directory``, ...).

    Returns:
        A ``distributed.SpecCluster``; close it (``with`` / ``async with`` work).

    Raises:
        MissingDependency: ``distributed`` (the ``dask`` extra) or NVML is missing.
        GPUUnavailable: The inventory has no GPU.
        ConfigError: ``gpus_per_worker`` does not divide the fleet, or
            ``threads_per_worker`` < 1.
    """
    distributed = _distributed()
    devices = _devices(inventory, gpus_per_worker, threads_per_worker)
    workers = _worker_specs(
        distributed.Nanny, devices, gpus_per_worker, threads_per_worker, host, worker_options
    )
    scheduler = _scheduler_spec(distributed.Scheduler, host, dashboard_address)
    return distributed.SpecCluster(
        workers=workers,
        scheduler=scheduler,
        asynchronous=asynchronous,
        name="labkit-gpu",
    )


def _devices(
    inventory: Inventory | None, gpus_per_worker: int, threads_per_worker: int
) -> list[Any]:
    """The fleet's GPUs by index, the worker options checked against it.

    Raises:
        MissingDependency: NVML is missing (``inventory`` is ``None``).
        GPUUnavailable: The inventory has no GPU.
        ConfigError: ``gpus_per_worker`` does not divide the fleet, or
            ``threads_per_worker`` < 1.
    """
    if inventory is None:
        from labkit.gpu.nvml import NVMLInventory

        inventory = NVMLInventory(processes=False)
    devices = sorted(inventory.devices(), key=lambda gpu: gpu.index)
    if not devices:
        raise GPUUnavailable("gpu_cluster() needs at least one GPU; the inventory has none")
    check(
        isinstance(gpus_per_worker, int)
        and gpus_per_worker >= 1
        and len(devices) % gpus_per_worker == 0,
        "gpus_per_worker",
        gpus_per_worker,
        f"an integer >= 1 that divides the fleet's {len(devices)} GPUs",
    )
    check(threads_per_worker >= 1, "threads_per_worker", threads_per_worker, "an integer >= 1")
    return devices


def _worker_specs(
    nanny: Any,
    devices: Sequence[Any],
    gpus_per_worker: int,
    threads_per_worker: int,
    host: str,
    worker_options: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """The ``SpecCluster`` specs of one worker per group of ``gpus_per_worker`` GPUs,
    each seeing only its GPUs (``CUDA_VISIBLE_DEVICES`` by UUID), by worker name."""
    workers = {}
    for start in range(0, len(devices), gpus_per_worker):
        group = devices[start : start + gpus_per_worker]
        name = "gpu-" + "-".join(str(gpu.index) for gpu in group)
        workers[name] = {
            "cls": nanny,
            "options": {
                "name": name,
                "nthreads": threads_per_worker,
                "host": host,
                "resources": {"GPU": gpus_per_worker},
                "env": {"CUDA_VISIBLE_DEVICES": ",".join(gpu.uuid for gpu in group)},
                "memory_limit": _memory_share(len(devices) // gpus_per_worker),
                **worker_options,
            },
        }
    return workers


def _scheduler_spec(scheduler: Any, host: str, dashboard_address: str | None) -> dict[str, Any]:
    """The ``SpecCluster`` spec of the scheduler, its dashboard where asked."""
    return {
        "cls": scheduler,
        "options": {
            "host": host,
            "dashboard": dashboard_address is not None,
            # Without a dashboard the scheduler still serves health checks over
            # HTTP: on a free port, not on the dashboard's usual 8787.
            "dashboard_address": dashboard_address or f"{host}:0",
        },
    }


def _memory_share(workers: int) -> int:
    """Bytes of this machine's memory per worker, as ``LocalCluster`` splits it."""
    from distributed.system import MEMORY_LIMIT

    return int(MEMORY_LIMIT) // workers
