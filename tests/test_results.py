"""Building an ExperimentResult from its instances."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest

from labkit.results import ExperimentResult, InstanceResult
from labkit.stats import format_spread

nan = math.nan


def test_a_metric_no_instance_measured_is_left_out_of_the_average() -> None:
    frames = [
        pd.DataFrame({"t": [0.0, 1.0], "cpu": [1.0, 2.0], "gpu": [nan, nan]}),
        pd.DataFrame({"t": [0.0, 1.0], "cpu": [3.0, 4.0], "gpu": [nan, nan]}),
    ]
    instances = [
        InstanceResult(index=i, ok=True, error=None, timeline=frame, summary={})
        for i, frame in enumerate(frames)
    ]
    result = ExperimentResult.build("nan", {}, instances, {})
    assert "gpu" not in result.averaged
    assert list(result.averaged["cpu"]) == [2.0, 3.0]
    assert list(result.averaged["n"]) == [2, 2]


def seed_result() -> ExperimentResult:
    figures = [(45.2, 7), (52.8, 5), (48.1, 6)]
    instances = [
        InstanceResult(
            index=i, ok=True, error=None, summary={"cpu_peak": cpu, "error_count": errors}
        )
        for i, (cpu, errors) in enumerate(figures)
    ]
    failed = InstanceResult(index=3, ok=False, error="boom", summary={"cpu_peak": 999.0})
    return ExperimentResult.build("seed", {}, [*instances, failed], {})


def test_summary_table_has_one_row_per_figure_with_its_spread() -> None:
    table = seed_result().summary_table()

    assert list(table.index) == ["cpu_peak", "error_count"]
    assert list(table.columns) == ["mean", "std", "ci95", "min", "max", "n", "median"]
    cpu = table.loc["cpu_peak"]
    assert cpu["mean"] == pytest.approx(48.7)  # the failed instance's 999 is not in it
    assert cpu["std"] == pytest.approx(statistics.stdev([45.2, 52.8, 48.1]))
    assert cpu["ci95"] == pytest.approx(4.302652729749462 * cpu["std"] / math.sqrt(3))
    assert (cpu["min"], cpu["max"], cpu["median"]) == (45.2, 52.8, 48.1)
    assert table["n"].tolist() == [3, 3]
    assert table["n"].dtype == np.int64


def test_summary_table_leaves_non_finite_figures_out_and_handles_one_instance() -> None:
    instances = [
        InstanceResult(index=0, ok=True, error=None, summary={"loss_last": 2.0, "gpu_peak": nan}),
        InstanceResult(index=1, ok=True, error=None, summary={"loss_last": math.inf}),
    ]
    table = ExperimentResult.build("x", {}, instances, {}).summary_table()

    assert table.loc["loss_last", "n"] == 1
    assert table.loc["loss_last", "mean"] == 2.0
    assert math.isnan(table.loc["loss_last", "ci95"])
    assert table.loc["gpu_peak", "n"] == 0


def test_a_result_with_no_success_has_an_empty_summary_table() -> None:
    failed = InstanceResult(index=0, ok=False, error="boom", summary={})
    table = ExperimentResult.build("x", {}, [failed], {}).summary_table()
    assert table.empty
    assert list(table.columns) == ["mean", "std", "ci95", "min", "max", "n", "median"]


def test_summary_texts_read_like_hyperfine() -> None:
    texts = seed_result().summary_texts()
    assert texts == {
        "cpu_peak": "48.7 ± 9.5 (45.2 … 52.8)",
        "error_count": "6.0 ± 2.5 (5.0 … 7.0)",
    }


@pytest.mark.parametrize(
    ("figures", "text"),
    [
        ((48.7333, 2.134, 45.2, 52.8), "48.7 ± 2.1 (45.2 … 52.8)"),
        ((0.012345, 0.000213, 0.0119, 0.0127), "0.01235 ± 0.00021 (0.01190 … 0.01270)"),
        ((1234.5, 213.0, 1000.0, 1500.0), "1234 ± 213 (1000 … 1500)"),
        ((3.0, 0.0, 3.0, 3.0), "3 ± 0 (3 … 3)"),
        ((3.14159, nan, 3.14159, 3.14159), "3.142"),
        ((nan, nan, nan, nan), "-"),
    ],
)
def test_format_spread(figures: tuple[float, float, float, float], text: str) -> None:
    assert format_spread(*figures) == text


def test_cli_and_report_show_each_figure_with_its_spread() -> None:
    from labkit.cli import format_summary
    from labkit.report import render_html

    result = seed_result()
    assert "48.7 ± 9.5 (45.2 … 52.8)" in format_summary(result)
    assert "48.7 ± 9.5 (45.2 … 52.8)" in render_html(result)
