"""The project's shape: public names, dependency lists, layering."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import labkit as lk

ROOT = Path(__file__).resolve().parents[1]

PUBLIC_NAMES = {
    "errors",
    "RateLimit",
    "ResourceLimits",
    "Retry",
    "Runner",
    "parallel_map",
    "run_graph",
    "run_parallel",
    "run_parallel_sync",
    "Experiment",
    "ExperimentResult",
    "InstanceContext",
    "run_experiment",
    "DaskExecutor",
    "E2BSandbox",
    "GPUPool",
    "LocalSandbox",
    "SandboxPool",
    "gpu_cluster",
    "average_summaries",
    "average_timelines",
    "compare",
    "detect_outliers",
    "instances_needed",
    "iqm",
    "median",
    "Race",
    "Store",
    "leaderboard",
    "sweep",
    "EventBus",
    "LiveTimelineModel",
    "Watcher",
}
"""The curated surface: what the README's workflows use."""

UI_MODULES = ("ipywidgets", "IPython", "traitlets", "anywidget", "plotly")


def test_all_is_exactly_the_public_names() -> None:
    assert isinstance(lk.__all__, tuple)
    assert set(lk.__all__) == PUBLIC_NAMES
    assert len(lk.__all__) == len(set(lk.__all__))
    for name in lk.__all__:
        assert hasattr(lk, name), name
    assert set(dir(lk)) >= PUBLIC_NAMES


def test_names_outside_the_surface_are_reached_from_their_submodules() -> None:
    import importlib

    for name, home in lk._ELSEWHERE.items():
        value = getattr(lk, name)  # still reached as lk.<name> ...
        assert value is getattr(importlib.import_module(home), name), name
        assert name not in lk.__all__  # ... but not part of the curated surface
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = lk.Nope


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
        if relative.parts[0] in ("widgets", "plots") or relative.name in ui_files:
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


def test_an_exception_changes_no_process_state() -> None:
    # Importing labkit or making a RunInterrupted leaves sys.excepthook alone: only
    # a Ctrl-C inside labkit.loop.run_sync installs the exit-like-Ctrl-C hook.
    code = (
        "import sys; from types import SimpleNamespace as NS; before = sys.excepthook; "
        "import labkit as lk; stats = NS(completed=0, submitted=1); "
        "lk.errors.RunInterrupted(NS(results=[], stats=stats)); print(sys.excepthook is before)"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.stdout.strip() == "True", child.stderr


# -- the layer map (pyproject.toml's [tool.importlinter], as .ci/run checks it) --------

LINT_IMPORTS = (
    "import sys; sys.argv = ['lint-imports']; "
    "from importlinter.cli import lint_imports_command; lint_imports_command()"
)


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LINT_IMPORTS], cwd=cwd, capture_output=True, text=True
    )


def _contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return [dict(contract) for contract in config["contracts"]]


def _layers_contract() -> dict[str, object]:
    (contract,) = [c for c in _contracts() if c["id"] == "layers"]
    return contract


def test_the_layer_map_holds() -> None:
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(_contracts())} kept, 0 broken" in done.stdout


def test_the_layer_map_places_every_module_and_keeps_the_ui_on_top() -> None:
    contract = _layers_contract()
    assert contract["containers"] == ["labkit"] and contract["exhaustive"] is True
    layers = [
        {name.strip().strip("()") for name in re.split(r"[|:]", layer)}
        for layer in contract["layers"]  # type: ignore[attr-defined]
    ]
    placed = set().union(*layers)
    modules = {
        path.stem if path.is_file() else path.name
        for path in (ROOT / "labkit").iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").exists()
    }
    assert modules - placed == set()
    assert layers[-1] >= {"errors"}
    ui = {"__main__", "cli", "widgets", "report", "plots"}  # __main__: python -m labkit
    assert set().union(*layers[:4]) == ui  # nothing of the core sits among the UI


def test_the_contract_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    # The same kind of contract over a two-module package whose low layer points up
    # only from inside a function and under TYPE_CHECKING: both are caught.
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "high.py").write_text("from pkg import low\n")
    (package / "low.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg.high import thing\n"
        "def later():\n    import pkg.high\n"
    )
    (tmp_path / "pyproject.toml").write_text(
        '[tool.importlinter]\nroot_package = "pkg"\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "layers"\ntype = "layers"\ncontainers = ["pkg"]\nlayers = ["high", "low"]\n'
    )
    done = _lint_imports(tmp_path)
    assert done.returncode == 1
    assert "pkg.low -> pkg.high (l.3, l.5)" in done.stdout  # TYPE_CHECKING, in a function


def test_the_bottom_layer_imports_nothing_of_labkit() -> None:
    for name in ("errors.py", "_json.py"):
        tree = ast.parse((ROOT / "labkit" / name).read_text())
        imported = [
            node.module if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        ]
        assert [m for m in imported if m and m.split(".")[0] == "labkit"] == [], name


# -- one place per primitive -----------------------------------------------------------


def test_is_real_is_the_one_number_check() -> None:
    import fractions
    import math

    import numpy as np

    from labkit._checks import is_int, is_real

    for number in (0, -3, 2.5, 10**400, np.float32(1.5), np.int64(7), fractions.Fraction(1, 3)):
        assert is_real(number) and is_real(number, finite=False), number
    for special in (math.inf, -math.inf, math.nan, np.float64("nan")):
        assert not is_real(special) and is_real(special, finite=False), special
    for not_a_number in (True, False, np.bool_(True), "1", None, 1j, [1.0], object()):
        assert not is_real(not_a_number) and not is_real(not_a_number, finite=False)
    assert is_int(3) and not is_int(True) and not is_int(3.0) and not is_int("3")


def test_error_text_is_type_and_message() -> None:
    from labkit.errors import DependencyFailed, error_text

    assert error_text(ValueError("bad value")) == "ValueError: bad value"
    assert error_text(KeyError()) == "KeyError"
    assert error_text(None) is None
    # The errors that quote another error use the same text.
    assert (
        str(DependencyFailed("load", RuntimeError()))
        == "not run: dependency 'load' failed: RuntimeError"
    )


def test_to_builtins_is_the_one_json_sanitiser() -> None:
    import json
    import math

    import numpy as np
    import pandas as pd

    from labkit._json import to_builtins

    value = {
        1: (np.float64(0.5), np.int64(3), np.bool_(True)),
        "a": np.array([[1.0, math.nan]]),
        "b": pd.Series([1, 2]),
        "c": [math.inf, -math.inf, "s", None],
        "d": object,
    }
    plain = to_builtins(value)
    assert plain == {
        "1": [0.5, 3, True],
        "a": [[1.0, None]],
        "b": [1, 2],
        "c": [None, None, "s", None],
        "d": str(object),
    }
    assert [type(v) for v in plain["1"]] == [float, int, bool]
    json.dumps(plain, allow_nan=False)  # strict JSON
    kept = to_builtins([math.inf, np.float32(math.nan)], finite=False)
    assert kept[0] == math.inf and math.isnan(kept[1])
    assert to_builtins(object, fallback=repr) == repr(object)
    # A run report keeps what JSON cannot hold as its repr, non-finite floats as null.
    report = lk.run_parallel_sync(lambda x: np.float64(math.inf) if x else {x}, [0, 1])
    records = report.to_dict()["results"]
    assert [r["value"] for r in records] == ["{0}", None]
