"""The tutorial notebooks run top to bottom in a real kernel (nbmake), and ship without outputs.

``python -m pytest`` runs them through this test: nbmake runs in a child pytest so that
each notebook gets a fresh kernel and the notebooks need no entry in ``testpaths``.
To run them alone: ``python -m pytest --nbmake notebooks/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))


def test_tutorials_exist_in_order() -> None:
    numbers = [path.name[:2] for path in NOTEBOOKS]
    assert numbers[:5] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_committed_without_outputs(path: Path) -> None:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    prose = [cell for cell in notebook["cells"] if cell["cell_type"] == "markdown"]
    assert code and len(prose) >= len(code) // 2, "each step needs prose around it"
    assert all(not cell["outputs"] and cell["execution_count"] is None for cell in code)
    assert "widgets" not in notebook["metadata"], "saved widget state belongs nowhere in git"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_notebooks_run_top_to_bottom() -> None:
    env = dict(os.environ)
    # The kernels import labkit from this checkout even when it is not installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # One child pytest, notebooks in turn: running them at once was slower on two
    # cores (each child pays pytest's start-up, and the kernels fight for the CPU).
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--nbmake",
        "--nbmake-timeout=150",
        "-p",
        "no:cacheprovider",
        "-q",
        *(str(path) for path in NOTEBOOKS),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert f"{len(NOTEBOOKS)} passed" in done.stdout, report
