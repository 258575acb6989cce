"""A panel's last state survives in a notebook read without a live kernel.

A real kernel runs a small notebook with an experiment panel (nbclient); the
executed notebook is converted to HTML (nbconvert), as GitHub's viewer or a
reader without widgets would see it: the chart and the summary are there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
nbconvert = pytest.importorskip("nbconvert")

ROOT = Path(__file__).resolve().parent.parent

CELLS = [
    """\
import labkit as lk


async def steps(ctx):
    for step in range(5):
        ctx.record(loss=1.0 / (step + 1), step=step)
        await ctx.sleep(0.02)


panel = lk.widgets.ExperimentPanel(lk.Experiment("steps", steps))
panel.instances.value = 2
panel""",
    "_ = await panel.start()",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, str]:
    """The notebook, executed in a real kernel, and its HTML export."""
    tmp_path = tmp_path_factory.mktemp("notebook")
    monkeypatch = pytest.MonkeyPatch()
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in CELLS],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}},
    )
    # The kernel imports this checkout's labkit.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", path)
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3")
    try:
        client.execute(cwd=str(tmp_path))
    finally:
        monkeypatch.undo()
    page, _ = nbconvert.HTMLExporter().from_notebook_node(notebook)
    (tmp_path / "panel.html").write_text(page, encoding="utf-8")
    return notebook, page


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_an_executed_panel_leaves_its_chart_and_summary_in_the_html(
    exported: tuple[object, str],
) -> None:
    notebook, page = exported

    outputs = notebook.cells[0].outputs  # type: ignore[attr-defined]
    widget, fallback = outputs[0], outputs[1]
    assert "application/vnd.jupyter.widget-view+json" in widget["data"]
    # Shown without a chart at first, updated in place (display_id) when the run ended.
    html_copy = fallback["data"]["text/html"]
    assert "labkit-static-fallback" in html_copy and "plotly-graph-div" in html_copy

    assert "plotly-graph-div" in page and '"name":"instance 1"' in page.replace(": ", ":")
    assert "Averaged summary: steps" in page and "loss_last" in page
    assert "Done: 2 of 2 instances succeeded." in page
    assert "2 instances: 2 done" in page


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_the_exported_chart_draws_in_a_browser(
    exported: tuple[object, str], tmp_path: Path
) -> None:
    """Opened in Chromium, the export draws the chart (plotly.js served as its CDN would)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    import plotly

    from tests.test_browser import CHROMIUM_ARGS

    bundle = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    (tmp_path / "panel.html").write_text(exported[1], encoding="utf-8")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.route(
                "https://cdn.plot.ly/**",
                lambda route: route.fulfill(path=str(bundle), content_type="text/javascript"),
            )
            page.route("http*://**", lambda route: route.abort())  # nothing else online
            page.goto((tmp_path / "panel.html").as_uri())
            page.wait_for_selector(".labkit-static-fallback .js-plotly-plot .scatterlayer .trace")
            assert page.locator(".labkit-static-fallback .scatterlayer .trace").count() >= 3
            assert "Averaged summary: steps" in page.locator(".labkit-static-fallback").inner_text()
        finally:
            browser.close()
