"""Building an ExperimentResult from its instances."""

from __future__ import annotations

import pandas as pd

from labkit.results import ExperimentResult, InstanceResult


def test_a_metric_no_instance_measured_is_left_out_of_the_average() -> None:
    nan = float("nan")
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
