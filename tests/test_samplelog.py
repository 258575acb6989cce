"""An attempt's sample log: columns that match the samples exactly, whole rows for a
reader while another thread records, and a pickle that crosses to a Dask client."""

from __future__ import annotations

import math
import pickle
import threading

import numpy as np
import pandas as pd
import pytest

from labkit import SampleLog


def _reference_frame(samples: list[tuple[float, dict[str, float]]]) -> pd.DataFrame:
    """The timeline as pandas builds it from the samples' dicts."""
    frame = pd.DataFrame.from_records([{"t": t, **values} for t, values in samples])
    return frame.sort_values("t", kind="stable", ignore_index=True).astype(float)


IRREGULAR = [
    (0.0, {"cpu": 1.0}),
    (1.0, {"cpu": 2.0, "memory": 10.0}),  # a metric comes in
    (2.0, {"memory": 11.0}),  # a sample without an earlier metric
    (1.5, {"memory": 12.0, "cpu": 3.0}),  # late (the sampler's), keys in another order
    (3.0, {"cpu": math.nan, "memory": 13.0}),  # a recorded NaN is not a missing value
    (4.0, {"errors": 1.0}),
]


def test_frame_and_samples_match_the_recorded_samples_exactly() -> None:
    log = SampleLog.from_samples(IRREGULAR)

    assert len(log) == 6
    assert log.names == ("cpu", "memory", "errors")
    pd.testing.assert_frame_equal(log.frame(), _reference_frame(IRREGULAR))
    # Every sample back as recorded: only the metrics it had, NaN kept as NaN.
    back = log.samples()
    assert [t for t, _ in back] == [t for t, _ in IRREGULAR]
    assert all(
        _same(values, original) for (_, values), (_, original) in zip(back, IRREGULAR, strict=True)
    )


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        a[name] == b[name] or (math.isnan(a[name]) and math.isnan(b[name])) for name in a
    )


def test_reading_rows_gives_nan_where_a_sample_lacked_a_metric() -> None:
    log = SampleLog.from_samples(IRREGULAR)
    offsets, values = log.read(1, 4)

    assert offsets.tolist() == [1.0, 2.0, 1.5]
    assert values["cpu"].tolist()[0::2] == [2.0, 3.0] and math.isnan(values["cpu"][1])
    assert values["memory"].tolist() == [10.0, 11.0, 12.0]
    assert np.isnan(values["errors"]).all()  # not seen before row 5
    empty_offsets, empty = log.read(6)
    assert empty_offsets.size == 0 and all(column.size == 0 for column in empty.values())
    # The arrays are copies: changing them leaves the log as it was.
    offsets[0] = 99.0
    assert log.read(1, 2)[0].tolist() == [1.0]


def test_an_empty_log_is_an_empty_timeline() -> None:
    log = SampleLog()
    assert len(log) == 0 and log.samples() == []
    assert list(log.frame().columns) == ["t"] and len(log.frame()) == 0


def test_a_reader_sees_whole_samples_while_another_thread_records() -> None:
    log = SampleLog()
    count = 200_000
    done = threading.Event()

    def record() -> None:
        for row in range(count):
            values = {"a": float(row), "b": 2.0 * row}
            if row == count // 2:
                values["late"] = 1.0  # a new column while the reader reads
            log.append(float(row), values)
        done.set()

    writer = threading.Thread(target=record)
    writer.start()
    reads = 0
    position = 0
    while not done.is_set() or position < len(log):
        offsets, values = log.read(position)
        rows = offsets.size
        # Every row read is whole: each column has it, and its values belong together.
        assert all(column.size == rows for column in values.values())
        assert np.array_equal(values["a"], offsets)
        assert np.array_equal(values["b"], 2.0 * offsets)
        assert np.array_equal(offsets, np.arange(position, position + rows, dtype=float))
        position += rows
        reads += 1
    writer.join()
    assert position == count
    assert reads > 2  # the reads really overlapped the writes


def test_a_log_pickles_whole() -> None:
    log = SampleLog.from_samples(IRREGULAR)
    copy = pickle.loads(pickle.dumps(log))

    pd.testing.assert_frame_equal(copy.frame(), log.frame())
    assert all(_same(a, b) for (_, a), (_, b) in zip(copy.samples(), IRREGULAR, strict=True))
    copy.append(5.0, {"cpu": 4.0})
    assert len(copy) == 7 and len(log) == 6


@pytest.mark.parametrize("rows", [1, 2, 5000])
def test_a_log_in_time_order_is_not_sorted_again(rows: int) -> None:
    samples = [(0.1 * i, {"x": float(i)}) for i in range(rows)]
    frame = SampleLog.from_samples(samples).frame()
    pd.testing.assert_frame_equal(frame, _reference_frame(samples))


def test_a_value_that_is_not_a_number_leaves_no_half_row() -> None:
    log = SampleLog.from_samples([(0.0, {"a": 1.0, "b": 2.0})])
    with pytest.raises(TypeError):
        log.append(1.0, {"a": 3.0, "b": "high"})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        log.append(1.0, {"a": 3.0, "c": None})  # type: ignore[dict-item]
    log.append(2.0, {"a": 5.0, "b": 6.0})
    offsets, values = log.read()
    assert offsets.tolist() == [0.0, 2.0]
    assert values["a"].tolist() == [1.0, 5.0] and values["b"].tolist() == [2.0, 6.0]
    assert list(values) == ["a", "b"]  # no column for the metric that never went in
