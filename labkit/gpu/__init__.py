"""GPUs for parallel instances: inventories that read the fleet, a pool that hands it out.

``GPUPool`` picks GPUs by free memory and load, serves requests first come first
served, and holds what it hands out until released; ``GPUAllocation.env`` pins a
process to exactly its GPUs. ``NVMLInventory`` reads the real devices (the ``gpu``
extra); ``StaticInventory`` and ``static_fleet`` declare one for tests and notebooks.
"""

from __future__ import annotations

from labkit.gpu.inventory import GPU, GPUProcess, Inventory, StaticInventory, static_fleet
from labkit.gpu.nvml import NVMLInventory
from labkit.gpu.pool import GPUAllocation, GPUPool, GPUPoolStats, GPURequest, GPUStats, score

__all__ = (
    "GPU",
    "GPUAllocation",
    "GPUPool",
    "GPUPoolStats",
    "GPUProcess",
    "GPURequest",
    "GPUStats",
    "Inventory",
    "NVMLInventory",
    "StaticInventory",
    "score",
    "static_fleet",
)
