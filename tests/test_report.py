"""The standalone HTML report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

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
