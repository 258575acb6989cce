"""``result.to_arrow()``: Arrow tables of a result, and Polars reading them without a copy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from labkit.errors import ConfigError
from tests._exported import PARAMS, run_result, with_seeds

pa = pytest.importorskip("pyarrow", reason="needs labkit[arrow]")
pl = pytest.importorskip("polars", reason="Polars is in labkit[test]")


def data_address(column: object) -> int:
    """Where the values of a one-chunk Arrow column lie in memory."""
    chunks = column.chunks  # type: ignore[attr-defined]
    assert len(chunks) == 1
    return int(chunks[0].buffers()[1].address)


def test_the_averaged_timeline_goes_to_arrow_and_polars_without_a_copy() -> None:
    result = run_result()

    table = result.to_arrow("averaged")
    frame = pl.from_arrow(table)

    averaged = result.averaged
    assert table.column_names == [str(c) for c in averaged.columns]
    for name in ("loss", "loss_ci95", "n"):
        address = averaged[name].to_numpy().ctypes.data
        assert data_address(table.column(name)) == address
        assert int(frame[name].to_arrow().buffers()[1].address) == address
    # NaN ("not sampled", a ci95 of one instance) is null; the values are labkit's.
    ci95 = averaged["loss_ci95"].to_numpy()
    assert frame["loss_ci95"].null_count() == int(np.isnan(ci95).sum()) > 0
    np.testing.assert_array_equal(frame["loss"].to_numpy(), averaged["loss"].to_numpy())


def test_the_timelines_stack_every_instance_with_its_index() -> None:
    result = run_result()

    frame = pl.from_arrow(result.to_arrow())

    assert frame.columns[:2] == ["instance", "t"]
    for instance in result.instances:
        rows = frame.filter(pl.col("instance") == instance.index)
        assert rows.height == len(instance.timeline)
        np.testing.assert_array_equal(rows["loss"].to_numpy(), instance.timeline["loss"])
    one = result.instances[1].to_arrow()
    assert (
        data_address(one.column("loss"))
        == result.instances[1].timeline["loss"].to_numpy().ctypes.data
    )


def test_instances_give_one_row_each_with_seed_error_and_summary() -> None:
    result = with_seeds(run_result())

    frame = pl.from_arrow(result.to_arrow("instances"))

    assert frame["index"].to_list() == [0, 1, 2, 3]
    assert frame["seed"].to_list() == [1000, 1001, 1002, 1003]
    assert frame["ok"].to_list() == [True, True, True, False]
    assert "instance 3 diverged" in frame["error"][3]
    assert frame["error"][:3].to_list() == [None, None, None]
    assert frame["final"].to_list()[:3] == pytest.approx([0.0, 0.1, 0.2], abs=1e-15)
    assert frame["final"][3] is None


def test_the_schema_carries_the_experiment_and_no_error_column_is_typeless() -> None:
    result = run_result(instances=2)

    table = result.to_arrow("instances")

    about = json.loads(table.schema.metadata[b"labkit"])
    assert about["name"] == "train" and about["params"] == PARAMS
    assert about["summary"]["num_instances"] == 2
    assert table.schema.field("error").type == pa.string()


def test_an_unknown_part_is_refused_with_the_parts_allowed() -> None:
    with pytest.raises(ConfigError, match="'timelines' or 'averaged' or 'instances'"):
        run_result(instances=1).to_arrow("summary")  # type: ignore[arg-type]
