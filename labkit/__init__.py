"""labkit: run an experiment as N parallel instances, watch them, average what they measured.

``import labkit as lk`` gives the core (runner, policies, GPU pool, sandboxes,
experiments, averaging, store). The UI modules ``lk.plots``, ``lk.widgets`` and
``lk.report`` are imported on first use, so the core works without the
``jupyter`` extra installed; ``lk.scenarios`` (built-in workloads) and
``lk.testing`` (fakes for tests) likewise.
"""

from __future__ import annotations

import importlib
from typing import Any

from labkit import errors
from labkit.adaptive import AutoConcurrency
from labkit.clock import Clock, SystemClock
from labkit.cluster import DaskExecutor, gpu_cluster
from labkit.events import EventBus, TaskEvent, TimelineEvent, TrialEvent
from labkit.experiment import (
    Experiment,
    ExperimentOptions,
    InstanceContext,
    InstanceEvent,
    estimate_cost,
    run_experiment,
)
from labkit.gpu import (
    GPU,
    GPUAllocation,
    GPUPool,
    GPUPoolStats,
    GPUStats,
    NVMLInventory,
    StaticInventory,
)
from labkit.graph import run_graph
from labkit.guard import ResourceLimits
from labkit.live import LiveTimelineModel
from labkit.policies import RateLimit, Retry
from labkit.results import ExperimentRecorder, ExperimentResult, InstanceResult
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
from labkit.samplelog import SampleLog
from labkit.sandbox import (
    CommandResult,
    E2BSandbox,
    LocalSandbox,
    ResourceSample,
    Sandbox,
    SandboxPool,
    SandboxPoolStats,
)
from labkit.stats import Comparison, Interval, compare, iqm, median
from labkit.store import Store, StoreStats
from labkit.sweep import (
    Race,
    Strategy,
    StudyStrategy,
    SweepEvent,
    SweepStats,
    leaderboard,
    sweep,
)
from labkit.timeline import (
    average_summaries,
    average_timelines,
    detect_outliers,
    instances_needed,
)

__version__ = "0.1.0"

_LAZY_MODULES = frozenset({"plots", "widgets", "report", "scenarios", "testing", "export"})

__all__ = (
    "GPU",
    "AutoConcurrency",
    "Clock",
    "CommandResult",
    "Comparison",
    "DaskExecutor",
    "E2BSandbox",
    "EventBus",
    "Experiment",
    "ExperimentOptions",
    "ExperimentRecorder",
    "ExperimentResult",
    "GPUAllocation",
    "GPUPool",
    "GPUPoolStats",
    "GPUStats",
    "InstanceContext",
    "InstanceEvent",
    "InstanceResult",
    "Interval",
    "LiveTimelineModel",
    "LocalSandbox",
    "NVMLInventory",
    "Race",
    "RateLimit",
    "ResourceLimits",
    "ResourceSample",
    "Retry",
    "RunReport",
    "RunStats",
    "Runner",
    "RunnerStats",
    "SampleLog",
    "Sandbox",
    "SandboxPool",
    "SandboxPoolStats",
    "StaticInventory",
    "Store",
    "StoreStats",
    "Strategy",
    "StudyStrategy",
    "SweepEvent",
    "SweepStats",
    "SystemClock",
    "TaskEvent",
    "TaskHandle",
    "TaskResult",
    "TimelineEvent",
    "TrialEvent",
    "average_summaries",
    "average_timelines",
    "compare",
    "detect_outliers",
    "errors",
    "estimate_cost",
    "gpu_cluster",
    "instances_needed",
    "iqm",
    "leaderboard",
    "median",
    "parallel_map",
    "run_experiment",
    "run_graph",
    "run_parallel",
    "run_parallel_sync",
    "sweep",
)


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        module = importlib.import_module(f"labkit.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_MODULES})
