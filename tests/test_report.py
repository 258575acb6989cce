"""The standalone HTML report."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import labkit as lk
from labkit.report import render_html, write_html
from labkit.results import ExperimentResult, InstanceResult


def instance(index: int, scale: float, *, error: str | None = None) -> InstanceResult:
    t = np.arange(5, dtype=float)
    timeline = pd.DataFrame({"t": t, "cpu": scale * (t + 1), "errors": [0.0, 1, 0, 2, 0]})
    return InstanceResult(
        index=index,
        ok=error is None,
        error=error,
        timeline=timeline,
        summary={"cpu_peak": 5.0 * scale, "error_count": 3},
        started=0.0,
        finished=4.5,
        sandbox_id=f"local-{index}",
    )


def test_the_report_holds_chart_summary_instances_and_errors(tmp_path: Path) -> None:
    result = ExperimentResult.build(
        "cpu_stress",
        {"intensity": "high"},
        [instance(0, 1.0), instance(1, 1.1), instance(2, 0.9, error="OSError: <no> & disk")],
        {"instances": 3, "duration": 5.0},
    )
    path = write_html(result, tmp_path / "report.html")

    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    # plotly.js is inlined: the page needs no network (about 5 MB).
    assert len(page) > 1_000_000 and '<script src="https://cdn' not in page
    assert "Plotly.newPlot" in page
    assert "1 of 3 instances failed" in page
    assert "OSError: &lt;no&gt; &amp; disk" in page  # escaped, not injected
    assert page.count('<span class="ok">ok</span>') == 2
    assert page.count('<span class="failed">failed</span>') == 1
    assert "cpu_peak" in page and "local-2" in page
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_a_report_of_a_run_where_everything_failed_says_so() -> None:
    result = ExperimentResult.build(
        "doomed",
        {},
        [instance(0, 1.0, error="RuntimeError: a"), instance(1, 1.0, error="RuntimeError: b")],
        {},
    )
    page = render_html(result)

    assert "Every instance failed" in page
    assert "No timeline to draw" in page
    assert "Plotly.newPlot" not in page
    assert "RuntimeError: a" in page and "RuntimeError: b" in page


def test_outliers_are_listed() -> None:
    result = ExperimentResult.build("x", {}, [instance(i, 1.0) for i in range(3)], {})
    flagged = ExperimentResult(
        result.name,
        result.params,
        result.instances,
        result.averaged,
        result.summary,
        {"cpu_peak": [2]},
        result.config,
    )
    assert "None: no instance stands apart" in render_html(result)
    assert "<code>cpu_peak</code>: instance 2" in render_html(flagged)


def test_the_reports_chart_is_drawn_like_the_live_one() -> None:
    result = ExperimentResult.build("many", {}, [instance(i, 1.0 + i / 10) for i in range(12)], {})
    page = render_html(result)

    assert '"name":"instances (12)"' in page  # one faint trace, one legend entry
    assert '"text":"cpu (%)"' in page and '"text":"time (s)"' in page  # units on the axes
    assert "n=%{customdata}" in page  # the average's hover says how many instances


class _Tables(HTMLParser):
    """Every table of a page: its header cells and rows of (text, class) cells, and
    the class of the element around it."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict[str, Any]] = []
        self._open: list[tuple[str, str]] = []  # (tag, class) of open elements
        self._cell: list[str] | None = None
        self._cell_class = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        css = dict(attrs).get("class") or ""
        if tag == "table":
            around = self._open[-1][1] if self._open else ""
            self.tables.append({"around": around, "header": [], "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell, self._cell_class = [], css
        self._open.append((tag, css))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            cell = ("".join(self._cell).strip(), self._cell_class)
            if tag == "th":
                self.tables[-1]["header"].append(cell)
            else:
                self.tables[-1]["rows"][-1].append(cell)
            self._cell = None
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _tables(page: str) -> dict[str, dict[str, Any]]:
    """The page's tables by their first column's heading."""
    parser = _Tables()
    parser.feed(page)
    return {table["header"][0][0]: table for table in parser.tables}


def _wide_result() -> ExperimentResult:
    # A path has no space to break at: only the error cell's own wrapping keeps it narrow.
    long_error = "FileNotFoundError: " + "/tmp/labkit_" + "sandbox_scratch_" * 20 + "out.json"
    instances = [instance(i, 1.0 + i / 10) for i in range(3)]
    instances.append(instance(3, 1.0, error=long_error))
    for item in instances:
        item.timeline["latency_ms"] = 5.0 + item.index * item.timeline["t"]
        item.summary["latency_ms_last"] = 5.0 + 4 * item.index
    return ExperimentResult.build(
        "wide", {}, instances, {"units": {"latency_ms": "ms"}, "display_names": {"cpu": "CPU"}}
    )


def test_the_summary_says_what_plus_minus_is_and_aligns_its_numbers_right() -> None:
    page = render_html(_wide_result())
    summary = _tables(page)["figure"]

    header = [text for text, _ in summary["header"]]
    assert header == ["figure", "unit", "mean ± ci95 (min … max)"]
    assert "95 % confidence interval" in page  # "±" explained in words under the heading
    rows = {row[0][0]: row for row in summary["rows"] if row}
    assert rows["cpu_peak"][1][0] == "%" and rows["latency_ms_last"][1][0] == "ms"
    assert rows["error_count"][1][0] == ""  # a count has no unit
    assert " ± " in rows["cpu_peak"][2][0]
    # Every value right-aligned: spreads, counts and flags alike.
    assert {row[2][1] for row in rows.values()} == {"num"}


def test_the_instances_table_scrolls_inside_the_column_and_wraps_errors() -> None:
    page = render_html(_wide_result())
    table = _tables(page)["instance"]

    assert table["around"] == "scroll"
    assert re.search(r"\.scroll \{[^}]*overflow: auto", page)
    headers = [text for text, _ in table["header"]]
    assert "cpu_peak (%)" in headers and "latency_ms_last (ms)" in headers
    failed = table["rows"][-1]
    assert failed[-1][1] == "error" and failed[-1][0].startswith("FileNotFoundError")
    assert re.search(r"td\.error \{[^}]*overflow-wrap: anywhere", page)
    numbers = [cell for cell, (name, _) in zip(failed, table["header"], strict=True)
               if name in ("instance", "attempts", "cpu_peak (%)")]  # fmt: skip
    assert {css for _, css in numbers} == {"num"}


def test_the_chart_leaves_the_title_to_the_page_and_carries_units() -> None:
    page = render_html(_wide_result())

    assert page.count(">wide<") == 1  # the page's heading, not again over the chart
    # Only the note of what failed stays over the chart (plotly escapes "<" in JSON).
    assert '"title":{"text":"\\u003csup\\u003eLeft out, failed: instance 3' in page
    assert '"text":"latency_ms (ms)"' in page and '"text":"CPU (%)"' in page
    assert "latency_ms=%{y:.4g} ms" in page and "CPU=%{y:.4g} %" in page
    assert '"responsive": true' in page or '"responsive":true' in page


def test_the_report_lays_out_within_a_1280_px_window_in_a_real_browser(tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    playwright = pytest.importorskip("playwright.sync_api")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    path = write_html(_wide_result(), tmp_path / "report.html")

    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(path.as_uri())
            page.wait_for_selector(".js-plotly-plot .scatterlayer .trace")
            sizes = page.evaluate(
                """() => ({
                    page: document.documentElement.scrollWidth,
                    window: document.documentElement.clientWidth,
                    column: document.querySelector('h1').getBoundingClientRect().width,
                    chart: document.querySelector('.js-plotly-plot').getBoundingClientRect().width,
                    error: document.querySelector('.error').closest('td')
                           .getBoundingClientRect().width,
                    legend: document.querySelector('.legend').getBoundingClientRect().top,
                    plot: [...document.querySelectorAll('.xaxislayer-above')]
                          .pop().getBoundingClientRect().bottom,
                })"""
            )
        finally:
            browser.close()
    assert sizes["page"] <= sizes["window"]  # nothing runs off the page
    assert sizes["chart"] >= 0.95 * sizes["column"]  # the chart takes the column's width
    assert sizes["error"] <= 32 * 16 + 40  # a long error wraps (32rem and padding)
    assert sizes["legend"] > sizes["plot"]  # the legend under the axis, not over the plot


def test_the_pages_labkit_writes_are_ignored_by_git() -> None:
    root = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for name in ("labkit-demo.html", "labkit-report.html", "labkit-report-2.html"):
        ignored = subprocess.run(
            ["git", "-C", str(root), "check-ignore", "-q", name], check=False
        ).returncode
        assert ignored == 0, name


async def _losses(ctx: lk.InstanceContext) -> None:
    for step in range(3):
        ctx.record(loss=1.0 / (step + 1) + ctx.index)


async def test_the_panels_summary_says_what_plus_minus_is_as_the_report_does() -> None:
    from labkit.widgets import ExperimentPanel

    panel = ExperimentPanel(lk.Experiment("losses", _losses))
    panel.instances.value = 3
    result = await panel.start()
    try:
        table = _tables(panel.summary.value)["figure"]
        assert [text for text, _ in table["header"]] == ["figure", "mean ± ci95 (min … max)"]
        assert " ± " in dict((row[0][0], row[1][0]) for row in table["rows"] if row)["loss_last"]
        assert "mean ± ci95 (min … max)" in render_html(result)
        # The chart's band is that same interval, unless asked otherwise.
        assert panel.chart.band == "ci95"
    finally:
        panel.close()
