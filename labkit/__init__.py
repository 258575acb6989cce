"""labkit: run an experiment as N parallel instances, watch them, average what they measured.

``import labkit as lk`` gives the core (runner, policies, GPU pool, sandboxes,
experiments, averaging, store). The UI modules ``lk.plots``, ``lk.widgets`` and
``lk.report`` are imported on first use, so the core works without the
``jupyter`` extra installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from labkit import errors
from labkit.clock import Clock, SystemClock
from labkit.events import EventBus, TaskEvent
from labkit.policies import RateLimit, Retry
from labkit.runner import (
    Runner,
    RunnerStats,
    RunReport,
    RunStats,
    TaskHandle,
    TaskResult,
    parallel_map,
    run_parallel,
    run_parallel_sync,
)

__version__ = "0.1.0"

_LAZY_MODULES = frozenset({"plots", "widgets", "report"})

__all__ = (
    "Clock",
    "EventBus",
    "RateLimit",
    "Retry",
    "RunReport",
    "RunStats",
    "Runner",
    "RunnerStats",
    "SystemClock",
    "TaskEvent",
    "TaskHandle",
    "TaskResult",
    "errors",
    "parallel_map",
    "run_parallel",
    "run_parallel_sync",
)


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        module = importlib.import_module(f"labkit.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_MODULES})
