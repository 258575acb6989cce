"""labkit: run an experiment as N parallel instances, watch them, average what they measured.

``import labkit as lk`` gives the core (runner, policies, GPU pool, sandboxes,
experiments, averaging, store). The UI modules ``lk.plots``, ``lk.widgets`` and
``lk.report`` are imported on first use, so the core works without the
``jupyter`` extra installed; ``lk.scenarios`` (built-in workloads) and
``lk.testing`` (fakes for tests) likewise.

``lk.__all__`` is the surface the README's workflows use, grouped by what they do;
every other public name lives in (and is documented with) its submodule:
``labkit.events.TaskEvent``, ``labkit.gpu.StaticInventory``,
``labkit.samplelog.SampleLog``... (``lk.<name>`` still reaches them).
"""

from __future__ import annotations

import importlib
from typing import Any

from labkit import errors
from labkit.cluster import DaskExecutor, gpu_cluster
from labkit.events import EventBus, Watcher
from labkit.experiment import Experiment, InstanceContext, run_experiment
from labkit.gpu import GPUPool
from labkit.graph import run_graph
from labkit.guard import ResourceLimits
from labkit.live import LiveTimelineModel
from labkit.policies import RateLimit, Retry
from labkit.results import ExperimentResult
from labkit.runner import Runner, parallel_map, run_parallel, run_parallel_sync
from labkit.sandbox import E2BSandbox, LocalSandbox, SandboxPool
from labkit.stats import compare, iqm, median
from labkit.store import Store
from labkit.sweep import Race, leaderboard, sweep
from labkit.timeline import (
    average_summaries,
    average_timelines,
    detect_outliers,
    instances_needed,
)

__version__ = "0.1.0"

_LAZY_MODULES = frozenset({"plots", "widgets", "report", "scenarios", "testing", "export"})

__all__ = (
    "errors",
    # Run many calls: concurrency, retries, rate limits, timeouts.
    "RateLimit",
    "ResourceLimits",
    "Retry",
    "Runner",
    "parallel_map",
    "run_graph",
    "run_parallel",
    "run_parallel_sync",
    # Run one experiment as N instances, and what it returns.
    "Experiment",
    "ExperimentResult",
    "InstanceContext",
    "run_experiment",
    # Where instances run.
    "DaskExecutor",
    "E2BSandbox",
    "GPUPool",
    "LocalSandbox",
    "SandboxPool",
    "gpu_cluster",
    # Average, compare, decide.
    "average_summaries",
    "average_timelines",
    "compare",
    "detect_outliers",
    "instances_needed",
    "iqm",
    "median",
    # Record, resume, sweep.
    "Race",
    "Store",
    "leaderboard",
    "sweep",
    # Watch.
    "EventBus",
    "LiveTimelineModel",
    "Watcher",
)

_ELSEWHERE = {
    "AutoConcurrency": "labkit.adaptive",
    "Clock": "labkit.clock",
    "SystemClock": "labkit.clock",
    "CommandResult": "labkit.sandbox",
    "ResourceSample": "labkit.sandbox",
    "Sandbox": "labkit.sandbox",
    "SandboxPoolStats": "labkit.sandbox",
    "Comparison": "labkit.stats",
    "Interval": "labkit.stats",
    "ExperimentOptions": "labkit.experiment",
    "InstanceEvent": "labkit.experiment",
    "estimate_cost": "labkit.experiment",
    "ExperimentRecorder": "labkit.results",
    "InstanceResult": "labkit.results",
    "GPU": "labkit.gpu",
    "GPUAllocation": "labkit.gpu",
    "GPUPoolStats": "labkit.gpu",
    "GPUStats": "labkit.gpu",
    "NVMLInventory": "labkit.gpu",
    "StaticInventory": "labkit.gpu",
    "RunReport": "labkit.runner",
    "RunStats": "labkit.runner",
    "RunnerStats": "labkit.runner",
    "TaskHandle": "labkit.runner",
    "TaskResult": "labkit.runner",
    "SampleLog": "labkit.samplelog",
    "StoreStats": "labkit.store",
    "Strategy": "labkit.sweep",
    "StudyStrategy": "labkit.sweep",
    "SweepEvent": "labkit.sweep",
    "SweepStats": "labkit.sweep",
    "TaskEvent": "labkit.events",
    "TimelineEvent": "labkit.events",
    "TrialEvent": "labkit.events",
}
"""Names outside the curated surface that ``lk.<name>`` still reaches (each lives in
and is documented with its submodule): imported on first use."""


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        module = importlib.import_module(f"labkit.{name}")
        globals()[name] = module
        return module
    home = _ELSEWHERE.get(name)
    if home is not None:
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*__all__, *_LAZY_MODULES, "__version__"})
