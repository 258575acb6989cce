"""The project's shape: public names, dependency lists, layering."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import labkit as lk

ROOT = Path(__file__).resolve().parents[1]

PUBLIC_NAMES = {
    "AutoConcurrency",
    "average_summaries",
    "average_timelines",
    "Clock",
    "CommandResult",
    "Comparison",
    "compare",
    "DaskExecutor",
    "detect_outliers",
    "E2BSandbox",
    "errors",
    "estimate_cost",
    "EventBus",
    "Experiment",
    "ExperimentOptions",
    "ExperimentRecorder",
    "ExperimentResult",
    "GPU",
    "gpu_cluster",
    "GPUAllocation",
    "GPUPool",
    "GPUPoolStats",
    "GPUStats",
    "InstanceContext",
    "InstanceEvent",
    "InstanceResult",
    "instances_needed",
    "Interval",
    "iqm",
    "median",
    "LiveTimelineModel",
    "LocalSandbox",
    "NVMLInventory",
    "parallel_map",
    "RateLimit",
    "ResourceLimits",
    "ResourceSample",
    "Retry",
    "run_experiment",
    "run_graph",
    "run_parallel",
    "run_parallel_sync",
    "Runner",
    "RunnerStats",
    "RunReport",
    "RunStats",
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
    "leaderboard",
    "TrialEvent",
    "sweep",
    "SystemClock",
    "TaskEvent",
    "TaskHandle",
    "TaskResult",
}

UI_MODULES = ("ipywidgets", "IPython", "traitlets", "anywidget", "plotly")


def test_all_is_exactly_the_public_names() -> None:
    assert isinstance(lk.__all__, tuple)
    assert set(lk.__all__) == PUBLIC_NAMES
    assert len(lk.__all__) == len(set(lk.__all__))
    for name in lk.__all__:
        assert hasattr(lk, name), name


def test_import_labkit_stays_light() -> None:
    code = (
        "import sys, labkit; "
        f"bad = [m for m in {UI_MODULES!r} if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower()


def test_environment_yml_names_every_dependency() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    wanted = {_requirement_name(r) for r in project["dependencies"]}
    for extra, requirements in project["optional-dependencies"].items():
        if extra in {"all", "dev"}:
            continue
        wanted |= {_requirement_name(r) for r in requirements}
    env_text = (ROOT / "environment.yml").read_text()
    listed = {
        _requirement_name(line.strip().lstrip("- ").strip())
        for line in env_text.splitlines()
        if line.strip().startswith("- ") and not line.strip().startswith("- pip:")
    }
    assert wanted - listed == set(), f"environment.yml lacks {sorted(wanted - listed)}"


def test_core_never_imports_the_ui() -> None:
    ui_files = {"plots.py", "report.py"}
    offenders = []
    for path in (ROOT / "labkit").rglob("*.py"):
        relative = path.relative_to(ROOT / "labkit")
        if relative.parts[0] == "widgets" or relative.name in ui_files:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{relative}: {n}" for n in names if n.split(".")[0] in UI_MODULES]
    assert offenders == []


def test_readme_first_block_has_exactly_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    block = text.split("```", 2)[1]
    lines = [line for line in block.splitlines()[1:] if line.strip()]
    assert len(lines) == 2
    assert lines[0].endswith("labkit demo")
    assert "pytest" in lines[1]


def test_errors_name_option_value_and_allowed() -> None:
    err = lk.errors.ConfigError("max_concurrency", 0, "an integer >= 1")
    assert isinstance(err, ValueError)
    assert "max_concurrency" in str(err) and "0" in str(err) and ">= 1" in str(err)
    assert issubclass(lk.errors.GPUTimeout, TimeoutError)
    assert not issubclass(lk.errors.RunInterrupted, Exception)
