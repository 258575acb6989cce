"""The experiment panel draws its run's InstanceProgress: Stop, duration, many instances,
slider bounds, a cell run again, and the static copy it leaves in the output."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from labkit.experiment import Experiment, InstanceContext
from labkit.gpu import GPUPool, static_fleet
from labkit.progress import reads_duration
from labkit.testing import FakeClock
from labkit.widgets import ExperimentPanel, InstanceSlider
from labkit.widgets.bars import MAX_ROWS
from labkit.widgets.panel import FALLBACK_CLASS
from labkit.widgets.slider import MAX_DEFAULT_INSTANCES, default_max_instances


async def _fixed_steps(ctx: InstanceContext) -> None:
    for step in range(10):
        ctx.record(loss=1.0 / (step + 1), step=float(step))
        await ctx.sleep(1.0)


async def _timed(ctx: InstanceContext) -> None:
    while ctx.remaining:
        ctx.record(loss=ctx.elapsed)
        await ctx.sleep(1.0)


def _how_long(ctx: InstanceContext) -> float:
    return float(ctx.duration or 1.0)


async def _through_a_helper(ctx: InstanceContext) -> None:
    await ctx.sleep(_how_long(ctx))


async def _forever(ctx: InstanceContext) -> None:
    ctx.record(loss=1.0)
    await ctx.sleep(0.5)
    ctx.record(loss=2.0)
    await asyncio.Event().wait()


async def _until(panel: ExperimentPanel, state: str, count: int) -> None:
    for _ in range(2000):
        if panel.model.snapshot().counts.get(state, 0) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never {count} {state}: {panel.model.snapshot().summary()}")


def _labels(panel: ExperimentPanel) -> set[str]:
    return {row.status.value.split(" · ")[0] for row in panel.progress.rows.values()}


@pytest.mark.asyncio
async def test_after_stop_rows_message_and_legend_say_stopped_and_stay_so() -> None:
    clock = FakeClock()
    panel = ExperimentPanel(Experiment("forever", _forever), clock=clock)
    panel.instances.value = 3
    task = panel.start()
    await _until(panel, "running", 3)
    clock.advance(1.0)
    await asyncio.sleep(0)

    panel.stop_button.click()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _labels(panel) == {"stopped"}
    assert "Stopped" in panel.message.value
    # Later frames of the chart move the bars: they must not bring "running" back.
    panel.chart.flush()
    panel._show_progress(panel.chart.model.snapshot())
    assert _labels(panel) == {"stopped"}
    assert {row.bar.bar_style for row in panel.progress.rows.values()} == {"warning"}
    names = {str(trace.name) for trace in panel.chart.figure.data}
    assert {"instance 0 (stopped)", "instance 2 (stopped)"} <= names
    assert not any("failed" in name for name in names)
    panel.close()


@pytest.mark.asyncio
async def test_a_function_that_ignores_duration_gets_no_duration_control() -> None:
    clock = FakeClock(autojump=True)
    panel = ExperimentPanel(Experiment("steps", _fixed_steps), duration=5.0, clock=clock)
    assert not panel.duration_shown and panel.duration.layout.display == "none"
    panel.instances.value = 2
    result = await panel.start()
    assert result is not None and result.ok
    assert result.config["duration"] is None  # not "5" for a run of 10 s
    assert all(row.bar.value == 1.0 for row in panel.progress.rows.values())
    assert "step 9" in panel.progress.rows[0].status.value
    panel.close()

    timed = ExperimentPanel(Experiment("timed", _timed), duration=3.0, clock=clock)
    assert timed.duration_shown and timed.duration.layout.display == ""
    assert "ctx.duration" in timed.duration.description  # labelled as the function's input
    result = await timed.start()
    assert result is not None and result.config["duration"] == 3.0
    timed.close()
    forced = ExperimentPanel(Experiment("steps", _fixed_steps), duration_control=True)
    assert forced.duration.layout.display == ""
    forced.close()


def test_reads_duration_follows_nested_code_and_helpers() -> None:
    assert reads_duration(_timed)  # ctx.remaining
    assert reads_duration(_through_a_helper)  # ctx.duration in a helper of its module
    assert not reads_duration(_fixed_steps)
    assert not reads_duration(_forever)

    def outer(ctx: InstanceContext) -> object:
        return lambda: ctx.duration

    assert reads_duration(outer)
    assert reads_duration(object())  # no code to read: assume it does
    from labkit.scenarios import SCENARIOS

    assert all(reads_duration(make().fn) for make in SCENARIOS.values())  # they honour it


@pytest.mark.asyncio
async def test_many_instances_get_a_grid_and_a_summary_line_instead_of_rows() -> None:
    clock = FakeClock(autojump=True)
    panel = ExperimentPanel(Experiment("steps", _fixed_steps), max_instances=64, clock=clock)
    panel.instances.value = 64
    result = await panel.start()
    assert result is not None and len(result.instances) == 64
    assert panel.progress.rows == {} and panel.progress.rows_box.children == ()
    assert panel.progress.grid.value.count('class="labkit-cell labkit-done"') == 64
    assert "64 instances: 64 done" in panel.progress.summary.value
    panel.close()

    few = ExperimentPanel(Experiment("steps", _fixed_steps), max_instances=64, clock=clock)
    few.instances.value = MAX_ROWS
    few.start()
    assert len(few.progress.rows) == MAX_ROWS and few.progress.grid.value == ""
    few.stop()
    few.close()


def test_slider_bounds_come_from_the_machine_and_the_note_says_the_number_once() -> None:
    assert default_max_instances(cpus=1) == 8
    assert default_max_instances(cpus=4) == 16
    assert default_max_instances(cpus=128) == MAX_DEFAULT_INSTANCES

    class Pool:
        def stats(self) -> object:
            return type("Stats", (), {"max_size": 6})()

    assert default_max_instances(Pool(), cpus=128) == 6
    slider = InstanceSlider()
    assert slider.slider.max == default_max_instances() >= 8
    slider.value = 3
    text = slider.badge.value + slider.note.value
    assert text.count("3") == 1 and "averaged" in text
    slider.close()

    panel = ExperimentPanel(Experiment("steps", _fixed_steps))
    assert panel.instances.slider.max == default_max_instances()
    assert panel.gpus.layout.display == "none"  # no GPU pool: no GPU slider at all
    panel.close()
    with_gpus = ExperimentPanel(
        Experiment("steps", _fixed_steps), gpu_pool=GPUPool(static_fleet(2))
    )
    assert with_gpus.gpus.layout.display == "" and with_gpus.gpus.max == 2
    with_gpus.close()


@pytest.fixture
def notebook_cell() -> Iterator[dict[str, object]]:
    """A real IPython shell whose current request names a notebook cell, as JupyterLab's do."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    header: dict[str, object] = {"metadata": {"cellId": "cell-7"}}
    shell.parent_header = header  # what ipykernel's shell holds for the running request
    yield header
    del shell.parent_header
    InteractiveShell.clear_instance()


@pytest.mark.asyncio
async def test_running_a_cell_again_stops_its_previous_run_and_both_panels_say_so(
    notebook_cell: dict[str, object],
) -> None:
    clock = FakeClock()
    first = ExperimentPanel(Experiment("forever", _forever), clock=clock)
    first.instances.value = 2
    task = first.start()
    await _until(first, "running", 2)

    second = ExperimentPanel(Experiment("forever", _forever), clock=clock)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "this cell was run again" in first.message.value
    assert first.chart.figure.comm is None  # its chart closed: a gone view gets no update
    assert _labels(first) == {"stopped"}
    assert "previous run of this cell (forever) was stopped" in second.message.value

    notebook_cell["metadata"] = {"cellId": "another-cell"}
    third = ExperimentPanel(Experiment("forever", _forever), clock=clock)
    assert third.message.value == ""  # another cell: nothing of its own was stopped
    for panel in (first, second, third):
        panel.close()


@pytest.mark.asyncio
async def test_the_static_copy_holds_the_chart_and_the_summary() -> None:
    clock = FakeClock(autojump=True)
    panel = ExperimentPanel(Experiment("steps", _fixed_steps), clock=clock)
    assert "plotly-graph-div" not in panel.static_html()  # nothing run: no empty chart
    panel.instances.value = 2
    await panel.start()
    static = panel.static_html()
    assert f'class="{FALLBACK_CLASS}"' in static
    assert "plotly-graph-div" in static and "instance 1" in static
    assert "Averaged summary" in static and "loss_last" in static
    assert "2 of 2" in static and "2 instances: 2 done" in static
    # The live panel hides the copy (it is for readers without live widgets).
    assert f".{FALLBACK_CLASS}{{display:none}}" in panel.children[-1].value
    panel.close()


@pytest.mark.asyncio
async def test_the_pool_monitor_draws_the_panels_progress_as_the_panel_does() -> None:
    from labkit.widgets import PoolMonitor

    clock = FakeClock(autojump=True)
    panel = ExperimentPanel(Experiment("steps", _fixed_steps), clock=clock)
    monitor = PoolMonitor(progress=panel, autostart=False)
    assert [c for c in monitor.children if c.layout.display != "none"] == [
        monitor.instances,
        monitor.status,
    ]
    panel.instances.value = 3
    await panel.start()
    monitor.refresh()
    text = monitor.instances.value
    assert "3 instances: 3 done" in text and text.count("labkit-cell labkit-done") == 3
    assert "3 instances: 3 done" in panel.progress.summary.value  # the same model, drawn alike
    monitor.close()
    panel.close()
