"""The widgets in a real browser: JupyterLab on loopback, driven in Debian's Chromium.

Runs a notebook that shows the experiment panel, a chart and the pool monitor,
checks that they render without error output, presses Start and watches the
progress and the live chart move; then runs 16 instances in a second panel
(one faint trace for the instances, the average on top, a short legend); stops a
run (every label then reads "stopped", and stays so); runs 64 instances (a grid
and a summary line, the chart in the first 1280 x 800 viewport); and runs a
panel's cell again while it runs (the old run is stopped and says so) and clears
a running panel's output (the browser logs no error either way); a racing sweep's
board shows each trial's instances as the sweep's frame does, with a finite mean ±
ci95 of ``loss_last``. Screenshots are kept for people to look at:
``artifacts/browser-panel.png``, and one per state in ``/tmp/shots/``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
SHOTS = Path("/tmp/shots")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        shutil.which("chromium") is None, reason="Debian's chromium is not installed"
    ),
]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

CELLS = [
    """\
import numpy as np
import pandas as pd

import labkit as lk
from labkit.gpu import static_fleet


async def wave(ctx):
    for step in range(30):
        ctx.record(signal=np.sin(step / 4) + ctx.index * 0.2)
        await ctx.sleep(0.1)


pool = lk.GPUPool(static_fleet(2))""",
    """\
panel = lk.widgets.ExperimentPanel(lk.Experiment("wave", wave), gpu_pool=pool, duration=3.0)
panel.instances.value = 3
panel.gpus.value = 1
panel""",
    """\
t = np.arange(50) * 0.1
timelines = [pd.DataFrame({"t": t, "cpu": 50 + 10 * np.sin(t + i)}) for i in range(3)]
lk.plots.timeline_figure(timelines, averaged=lk.average_timelines(timelines))""",
    """\
monitor = lk.widgets.PoolMonitor(gpu_pool=pool, interval=0.2)
monitor""",
    """\
async def load(ctx):
    for step in range(40):
        cpu = 50 + 10 * np.sin(step / 5 + ctx.index / 3)
        ctx.record(cpu=cpu, memory=200 + 4 * ctx.index + step)
        await ctx.sleep(0.1)


many = lk.widgets.ExperimentPanel(lk.Experiment("load", load), max_instances=16, duration=4.0)
many.instances.value = 16
many""",
    """\
async def slow(ctx):
    for step in range(600):
        ctx.record(signal=np.sin(step / 10) + ctx.index, step=step)
        await ctx.sleep(0.1)


stoppable = lk.widgets.ExperimentPanel(lk.Experiment("slow", slow))
stoppable.instances.value = 4
stoppable""",
    """\
async def quick(ctx):
    for step in range(40 + 3 * (ctx.index % 7)):
        ctx.record(cpu=50 + 10 * np.sin(step / 5 + ctx.index / 3), step=step)
        await ctx.sleep(0.1)


crowd = lk.widgets.ExperimentPanel(lk.Experiment("crowd", quick), max_instances=64)
crowd.instances.value = 64
crowd""",
    """\
import random


async def noisy(ctx):
    # Instance i of every trial shares ctx.seed: each trial draws its own noise from it.
    rng = random.Random(ctx.seed * 31 + int(100 * ctx.params["x"]))
    for step in range(3):
        ctx.record(loss=ctx.params["x"] + rng.gauss(0.0, 0.4), step=step)
        await ctx.sleep(0.02)


board = lk.widgets.SweepPanel(objective="loss_last")
board""",
    """\
race = await lk.sweep(
    lk.Experiment("noisy", noisy), {"x": [0.0, 0.2, 3.0]},
    instances=lk.Race(max_instances=8), objective="loss_last", on_event=board,
)
print("race instances:", " ".join(str(n) for n in race.sort_values("trial")["instances"]))""",
    """\
again = lk.widgets.ExperimentPanel(lk.Experiment("slow", slow))
again.instances.value = 3
again""",
]

RESTART_NOTE = "Could not restore the debugger state"
"""What JupyterLab itself logs as an error when "Restart Kernel and Run All" restarts."""

PANELS = {"first": 0, "sixteen": 1, "stoppable": 2, "crowd": 3, "again": 4}
"""Each panel's position among the notebook's panels."""


def _notebook(path: Path) -> None:
    cells = [
        {
            "cell_type": "code",
            "id": f"cell-{i}",
            "metadata": {},
            "execution_count": None,
            "outputs": [],
            "source": source,
        }
        for i, source in enumerate(CELLS)
    ]
    notebook = {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook), encoding="utf-8")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def jupyterlab(tmp_path: Path) -> Iterator[str]:
    """A JupyterLab server on loopback serving ``tmp_path``; yields its base URL."""
    home = tmp_path / "jupyter"
    env = dict(os.environ)
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        env[name] = str(home / name.lower())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # No "notified about Jupyter news?" prompt over the screenshot.
    labconfig = home / "jupyter_config_dir" / "labconfig"
    labconfig.mkdir(parents=True)
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    port = _free_port()
    _notebook(tmp_path / "widgets.ipynb")
    log = (tmp_path / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--allow-root",
            "--no-browser",
            "--ServerApp.token=",
            "--ServerApp.password=",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={tmp_path}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail((tmp_path / "jupyterlab.log").read_text()[-3000:])
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.mark.timeout(300)
def test_panel_chart_and_monitor_render_and_run(jupyterlab: str) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1400, "height": 2600})
        console: list[str] = []
        page.on(
            "console",
            lambda msg: (
                console.append(f"{msg.text} at {msg.location}") if msg.type == "error" else None
            ),
        )
        try:
            page.goto(f"{jupyterlab}/lab/tree/widgets.ipynb?reset")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            # The menu acts on the notebook's session: wait until its kernel is up.
            page.wait_for_selector("text=Python 3 (ipykernel) | Idle", timeout=60_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Kernel").click()
            page.locator(".lm-Menu-itemLabel", has_text="Restart Kernel and Run All Cells").click()
            page.locator(".jp-Dialog .jp-mod-accept").click()

            # Every cell ran and the widgets rendered.
            page.wait_for_selector(".labkit-pool-monitor .labkit-gpus", timeout=90_000)
            page.wait_for_selector(".labkit-instance-slider .widget-slider", timeout=30_000)
            page.wait_for_selector(".js-plotly-plot .scatterlayer .trace", timeout=30_000)
            static_traces = page.locator(".js-plotly-plot .scatterlayer .trace").count()
            assert static_traces >= 4  # three instances and the average
            # every panel renders, in time
            page.locator(".labkit-experiment-panel").nth(len(PANELS) - 1).wait_for(timeout=60_000)
            assert page.locator(".labkit-experiment-panel").count() == len(PANELS)
            assert (
                page.locator(".labkit-experiment-panel").first.locator(".widget-slider").count()
                == 3
            )
            assert "3x" in page.locator(".labkit-instance-slider").first.inner_text()
            assert "NVIDIA H100" in page.locator(".labkit-gpus").inner_text()
            errors = page.locator(
                '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
            )
            assert errors.count() == 0, errors.all_inner_texts()

            # Start: the bars and the live chart move while it runs.
            panel = page.locator(".labkit-experiment-panel").first
            panel.locator("button", has_text="Start").click()
            bars = panel.locator(".progress-bar")
            page.wait_for_function(
                """() => [...document.querySelectorAll(
                    '.labkit-experiment-panel')[0].querySelectorAll('.labkit-instance-status')]
                    .some(status => status.textContent.includes('samples'))""",
                timeout=30_000,
            )
            assert bars.count() == 3
            live = panel.locator(".js-plotly-plot .scatterlayer .trace path.js-line")
            page.wait_for_function(
                """() => document.querySelectorAll('.labkit-experiment-panel')[0]
                    .querySelectorAll('.js-plotly-plot .scatterlayer .trace').length >= 3""",
                timeout=30_000,
            )
            first = live.first.get_attribute("d") or ""
            # The monitor follows the pool: instances hold the GPUs by name.
            page.wait_for_function(
                """() => document.querySelector('.labkit-gpus').textContent.includes('wave[')""",
                timeout=30_000,
            )
            page.wait_for_function(
                """() => (document.querySelector('.labkit-panel-message') || {}).textContent
                    ?.includes('Done')""",
                timeout=60_000,
            )
            last = live.first.get_attribute("d") or ""
            assert len(last) > len(first)  # the instance's line grew
            assert panel.locator(".progress-bar-success").count() == 3
            assert "3 of 3" in panel.locator(".labkit-panel-message").inner_text()
            assert "num_instances" in panel.locator(".labkit-summary").inner_text()
            assert errors.count() == 0, errors.all_inner_texts()
            page.screenshot(path=str(ARTIFACTS / "browser-panel.png"), full_page=True)
            panels = page.locator(".labkit-experiment-panel")
            _run_sixteen(page, panels.nth(PANELS["sixteen"]))
            _stop(page, panels.nth(PANELS["stoppable"]))
            _run_again(page, console)
            _run_many(page, panels.nth(PANELS["crowd"]))
            _check_race_board(page)
            assert errors.count() == 0, errors.all_inner_texts()
            # JupyterLab's own note on a kernel restart is not the page's error.
            assert [e for e in console if not e.startswith(RESTART_NOTE)] == [], console
        except Exception:
            # What the browser showed when it went wrong, for whoever reads the failure.
            page.screenshot(path=str(ARTIFACTS / "browser-failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def _run_sixteen(page: Page, panel: Locator) -> None:
    """Start 16 instances: bars and chart move, one instance trace, the average on top."""
    SHOTS.mkdir(exist_ok=True)
    panel.scroll_into_view_if_needed()
    # Before Start: a one-line placeholder, not empty axes.
    assert "press Start" in panel.locator(".js-plotly-plot").inner_text()
    assert "16x" in panel.locator(".labkit-instance-slider").inner_text()
    panel.screenshot(path=str(SHOTS / "sixteen-before.png"))
    panel.locator("button", has_text="Start").click()
    page.wait_for_function(
        """() => {
            const panel = document.querySelectorAll('.labkit-experiment-panel')[1];
            const rows = [...panel.querySelectorAll('.labkit-instance-status')];
            return rows.length === 16 && rows.every(row => row.textContent.includes('samples'))
                && panel.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length >= 4;
        }""",
        timeout=30_000,
    )
    legend = panel.locator(".js-plotly-plot .legend")
    assert "instances (16)" in (legend.text_content() or "")
    assert "instance 3" not in (legend.text_content() or "")  # one entry for all sixteen
    message = panel.locator(".labkit-panel-message")
    assert "Running" in message.inner_text()
    chart = panel.locator(".js-plotly-plot")
    assert "press Start" not in chart.inner_text()  # the placeholder gave way to the chart
    assert chart.bounding_box()["height"] > 400  # type: ignore[index]  # two subplots
    panel.screenshot(path=str(SHOTS / "sixteen-during.png"))
    page.wait_for_function(
        """() => (document.querySelectorAll('.labkit-panel-message')[1] || {}).textContent
            ?.includes('Done')""",
        timeout=60_000,
    )
    assert "16 of 16" in message.inner_text()
    assert panel.locator(".progress-bar-success").count() == 16
    assert "num_instances" in panel.locator(".labkit-summary").inner_text()
    titles = panel.locator(".js-plotly-plot .g-ytitle, .js-plotly-plot .g-y2title")
    assert {"cpu (%)", "memory (MB)"} <= set(titles.all_text_contents())
    # Per subplot: the instances' trace, the band's outline, the average last (on top).
    traces = panel.locator(".js-plotly-plot .scatterlayer .trace")
    assert traces.count() == 6
    panel.screenshot(path=str(SHOTS / "sixteen-after.png"))

    # Start again: the chart keeps its traces across the reset and comes back whole.
    panel.locator("button", has_text="Start").click()
    page.wait_for_function(
        """() => document.querySelectorAll('.labkit-panel-message')[1]
            .textContent.includes('Running')""",
        timeout=30_000,
    )
    page.wait_for_function(
        """() => {
            const panel = document.querySelectorAll('.labkit-experiment-panel')[1];
            const message = panel.querySelector('.labkit-panel-message').textContent;
            return message.includes('Done') && message.includes('16 of 16');
        }""",
        timeout=60_000,
    )
    assert "press Start" not in chart.inner_text()
    assert traces.count() == 6
    assert "instances (16)" in (legend.text_content() or "")
    assert {"cpu (%)", "memory (MB)"} <= set(titles.all_text_contents())
    panel.screenshot(path=str(SHOTS / "sixteen-again.png"))


def _statuses(panel: Locator) -> set[str]:
    """The first word of every instance row's status."""
    return {
        text.split(" · ")[0] for text in panel.locator(".labkit-instance-status").all_inner_texts()
    }


def _stop(page: Page, panel: Locator) -> None:
    """Start, then Stop: every label, the message and the legend say "stopped", and stay so."""
    panel.scroll_into_view_if_needed()
    panel.locator("button", has_text="Start").click()
    page.wait_for_function(
        """() => [...document.querySelectorAll('.labkit-experiment-panel')[2]
            .querySelectorAll('.labkit-instance-status')]
            .filter(row => row.textContent.includes('step')).length === 4""",
        timeout=30_000,
    )
    panel.screenshot(path=str(SHOTS / "stop-running.png"))
    panel.locator("button", has_text="Stop").click()
    page.wait_for_function(
        """() => document.querySelectorAll('.labkit-panel-message')[2]
            .textContent.includes('Stopped')""",
        timeout=30_000,
    )
    page.wait_for_timeout(1500)  # frames and late events come: nothing turns back to running
    assert _statuses(panel) == {"stopped"}
    legend = panel.locator(".js-plotly-plot .legend").text_content() or ""
    assert "(stopped)" in legend and "(failed)" not in legend
    assert "4 stopped" in panel.locator(".labkit-progress-summary").inner_text()
    panel.screenshot(path=str(SHOTS / "stop-stopped.png"))


def _run_again(page: Page, console: list[str]) -> None:
    """Run the cell of a running panel again: the old run stops and says so; clear the
    output of a running panel: its chart draws on for nobody. The browser logs no error."""
    panels = page.locator(".labkit-experiment-panel")
    old = panels.nth(PANELS["again"])
    old.scroll_into_view_if_needed()
    old.locator("button", has_text="Start").click()
    page.wait_for_function(
        """() => document.querySelectorAll('.labkit-experiment-panel')[4]
            .querySelectorAll('.js-plotly-plot .scatterlayer .trace').length >= 3""",
        timeout=30_000,
    )
    old.screenshot(path=str(SHOTS / "again-before.png"))
    count = len(console)
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(len(CELLS) - 1)
    cell.locator(".jp-InputArea-editor").click()
    # Run the cell again while the old chart draws: the frames the old run sends after
    # JupyterLab cleared the output reach no removed view (labkit.widgets.figure).
    page.keyboard.press("Control+Enter")
    page.wait_for_function(
        """() => [...document.querySelectorAll('.labkit-panel-message')]
            .some(m => m.textContent.includes('previous run of this cell (slow) was stopped'))""",
        timeout=30_000,
    )
    fresh = panels.nth(PANELS["again"])
    fresh.locator("button", has_text="Start").click()
    page.wait_for_function(
        """() => document.querySelectorAll('.labkit-experiment-panel')[4]
            .querySelectorAll('.js-plotly-plot .scatterlayer .trace').length >= 3""",
        timeout=30_000,
    )
    page.wait_for_timeout(1500)
    assert console[count:] == [], console[count:]
    fresh.screenshot(path=str(SHOTS / "again-after.png"))
    # Clear the output of the running panel: its chart goes on drawing for nobody.
    cell.locator(".jp-InputArea-editor").click(button="right")
    page.locator(".lm-Menu-itemLabel", has_text="Clear Cell Output").click()
    page.wait_for_function(
        "() => document.querySelectorAll('.labkit-experiment-panel').length === 4",
        timeout=30_000,
    )
    page.wait_for_timeout(1500)  # about six frames
    assert console[count:] == [], console[count:]
    # Running the cell again stops that run (the cleared panel's note is gone with it).
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+Enter")
    page.wait_for_function(
        """() => [...document.querySelectorAll('.labkit-panel-message')]
            .some(m => m.textContent.includes('previous run of this cell (slow) was stopped'))""",
        timeout=30_000,
    )
    assert console[count:] == [], console[count:]


def _run_many(page: Page, panel: Locator) -> None:
    """64 instances: a grid and a summary line, and the chart in a 1280 x 800 window."""
    page.set_viewport_size({"width": 1280, "height": 800})
    panel.evaluate("node => node.scrollIntoView({block: 'start'})")
    panel.locator("button", has_text="Start").click()
    page.wait_for_function(
        """() => document.querySelectorAll('.labkit-experiment-panel')[3]
            .querySelectorAll('.js-plotly-plot .scatterlayer .trace').length >= 2""",
        timeout=60_000,
    )
    panel.evaluate("node => node.scrollIntoView({block: 'start'})")
    assert panel.locator(".labkit-instance-status").count() == 0  # no column of 64 bars
    assert panel.locator(".labkit-cell").count() == 64
    assert "64 instances:" in panel.locator(".labkit-progress-summary").inner_text()
    chart = panel.locator(".js-plotly-plot").bounding_box()
    assert chart is not None and chart["y"] + chart["height"] <= 800, chart
    page.screenshot(path=str(SHOTS / "sixty-four-during.png"))
    page.wait_for_function(
        """() => document.querySelectorAll('.labkit-panel-message')[3]
            .textContent.includes('64 of 64')""",
        timeout=90_000,
    )
    panel.evaluate("node => node.scrollIntoView({block: 'start'})")
    assert "64 done" in panel.locator(".labkit-progress-summary").inner_text()
    page.screenshot(path=str(SHOTS / "sixty-four-after.png"))


def _check_race_board(page: Page) -> None:
    """The racing sweep's board: each trial's instances as the sweep's frame says, and
    a finite mean ± ci95 with its n for the summary figure ``loss_last``."""
    printed = page.locator(".jp-OutputArea-output", has_text="race instances:")
    printed.wait_for(timeout=60_000)
    counts = printed.inner_text().split("race instances:")[1].split()
    board = page.locator(".labkit-sweep-panel")
    board.scroll_into_view_if_needed()
    rows = board.locator("tr.labkit-trial")
    assert rows.count() == 3
    shown: dict[str, str] = {}
    for row in rows.all():
        cells = row.locator("td").all_inner_texts()
        trial, figure, instances = cells[1].rstrip(" ★"), cells[3], cells[4]
        shown[trial] = instances.split(",")[0]
        assert "±" in figure and "nan" not in figure, figure
        assert f"(n={instances.split(',')[0]})" in figure, (figure, instances)
    assert [shown[str(trial)] for trial in range(3)] == counts
    assert len(set(counts)) > 1  # racing gave the trials different numbers of instances
    board.screenshot(path=str(SHOTS / "race-board.png"))
