"""``lk.export.tensorboard``, read back with TensorBoard's own event reader."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import labkit as lk
from labkit.errors import ConfigError
from tests._exported import run_result

pytest.importorskip("tensorboard", reason="needs labkit[tensorboard]")
from tensorboard import context
from tensorboard.backend.event_processing import (
    data_provider,
    plugin_event_multiplexer,
)


def read_scalars(logdir: Path) -> dict[str, dict[str, dict[int, float]]]:
    """run -> tag -> step -> value, as TensorBoard's scalar dashboard would serve them."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance={"scalars": 0})
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    found = provider.read_scalars(
        context.RequestContext(), experiment_id="", plugin_name="scalars", downsample=10**6
    )
    return {
        run: {tag: {d.step: d.value for d in data} for tag, data in tags.items()}
        for run, tags in found.items()
    }


def expected(steps: Any, values: Any) -> dict[int, float]:
    return {
        int(s): float(v) for s, v in zip(steps, values, strict=True) if not math.isnan(float(v))
    }


def assert_equal(got: dict[int, float], want: dict[int, float]) -> None:
    assert got.keys() == want.keys()
    for step, value in want.items():
        assert got[step] == pytest.approx(value, rel=0, abs=1e-12)


@pytest.mark.parametrize("band", ["ci95", "std"])
def test_one_run_per_instance_and_an_average_run_with_its_band(tmp_path: Path, band: str) -> None:
    result = run_result()

    report = lk.export.tensorboard(result, tmp_path / "train", band=band)  # type: ignore[arg-type]

    assert report.ok, report.error
    scalars = read_scalars(tmp_path / "train")
    assert set(scalars) == {"instance_0", "instance_1", "instance_2", "instance_3", "average"}
    assert set(report.details["runs"]) == set(scalars)
    for instance in result.instances:
        run = scalars[f"instance_{instance.index}"]
        assert set(run) == {"loss", "acc"}
        rows = np.arange(len(instance.timeline))
        for metric in ("loss", "acc"):
            assert_equal(run[metric], expected(rows, instance.timeline[metric]))
    average = scalars["average"]
    averaged = result.averaged
    rows = np.arange(len(averaged))
    for metric in ("loss", "acc"):
        mean, spread = averaged[metric].to_numpy(), averaged[f"{metric}_{band}"].to_numpy()
        assert_equal(average[metric], expected(rows, mean))
        assert_equal(average[f"{metric}/lower"], expected(rows, mean - spread))
        assert_equal(average[f"{metric}/upper"], expected(rows, mean + spread))
    assert_equal(average["n"], expected(rows, averaged["n"]))


def test_steps_of_a_run_aligned_on_steps_are_its_own(tmp_path: Path) -> None:
    result = run_result(by_step=True, instances=2)

    report = lk.export.tensorboard(result, tmp_path)

    assert report.ok, report.error
    scalars = read_scalars(tmp_path)
    assert sorted(scalars["average"]["loss"]) == list(range(0, 50, 5))
    timeline = result.instances[1].timeline
    assert_equal(scalars["instance_1"]["loss"], expected(timeline["step"], timeline["loss"]))
    assert "step" not in scalars["instance_1"] and "t" not in scalars["instance_1"]


def test_a_directory_that_cannot_be_made_is_reported_and_the_result_kept(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the log directory should go")
    result = run_result(instances=2)
    before = result.to_json()

    report = lk.export.tensorboard(result, blocker / "runs")

    assert not report.ok
    assert "Error" in (report.error or "")
    assert result.to_json() == before


def test_a_band_other_than_ci95_or_std_is_refused() -> None:
    with pytest.raises(ConfigError, match="band"):
        lk.export.tensorboard(run_result(instances=1), "unused", band="iqr")  # type: ignore[arg-type]
