"""Widget logic without a browser: slider, live chart, pool monitor, experiment panel."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest

from labkit.errors import ConfigError
from labkit.events import EventBus, InstanceEvent, TaskEvent
from labkit.experiment import Experiment, InstanceContext, run_experiment
from labkit.gpu import GPU, GPUPool, StaticInventory, static_fleet
from labkit.live import LiveTimelineModel
from labkit.results import ExperimentResult
from labkit.testing import FakeClock
from labkit.widgets import ExperimentPanel, InstanceSlider, LiveTimeline, PoolMonitor

# -- InstanceSlider --------------------------------------------------------------------


def test_slider_shows_multiplier_and_note_above_one() -> None:
    slider = InstanceSlider(max=5)

    assert slider.slider.description == "Parallel instances"
    assert (slider.slider.min, slider.slider.max, slider.value) == (1, 5, 1)
    assert slider.badge.value == "" and slider.note.value == ""

    slider.value = 4
    assert "4x" in slider.badge.value
    assert "averaged" in slider.note.value

    slider.slider.value = 1  # as the browser would set it
    assert slider.badge.value == "" and slider.note.value == ""


def test_slider_rejects_bad_bounds() -> None:
    with pytest.raises(ConfigError, match="max"):
        InstanceSlider(max=0)
    with pytest.raises(ConfigError, match="value"):
        InstanceSlider(max=3, value=4)


# -- LiveTimeline ----------------------------------------------------------------------


def _sample(instance: int, offset: float, **metrics: float) -> InstanceEvent:
    return InstanceEvent("sample", instance, offset, offset, metrics=metrics)


def _by_name(chart: LiveTimeline, name: str) -> list[object]:
    return [trace for trace in chart.figure.data if trace.name == name]


async def _turns(count: int = 5) -> None:
    """Let the loop run ``count`` rounds of ready callbacks (no time passes)."""
    for _ in range(count):
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_live_chart_batches_and_throttles_updates() -> None:
    clock = FakeClock()
    chart = LiveTimeline(updates_per_s=2.0, clock=clock)
    for step in range(300):
        for instance in range(3):
            chart.handle(_sample(instance, step * 0.01, cpu=float(instance + step)))
            chart.handle(TaskEvent("started", instance, 0.0))  # dropped cheaply
    await _turns()
    assert chart.flushes == 0  # nothing drawn while the instances were recording

    clock.advance(0.4)
    await _turns()
    assert chart.flushes == 0  # the first frame waits out the 0.5 s interval too
    clock.advance(0.1)
    await _turns()
    assert chart.flushes == 1  # 900 samples, one frame
    assert chart.metrics == ("cpu",)
    assert [len(trace.x) for trace in _by_name(chart, "instance 1")] == [300]

    chart.handle(_sample(0, 3.0, cpu=1.0))
    chart.handle(_sample(0, 3.01, cpu=1.0))
    clock.advance(0.4)
    await _turns()
    assert chart.flushes == 1  # the rate cap: 0.5 s from the last frame
    clock.advance(0.1)
    await _turns()
    assert chart.flushes == 2
    assert len(_by_name(chart, "instance 0")[0].x) == 302
    chart.close()


@pytest.mark.asyncio
async def test_live_chart_sends_only_the_traces_that_changed() -> None:
    chart = LiveTimeline(band=None)
    for instance in range(2):
        chart.handle(_sample(instance, 0.0, cpu=1.0))
        chart.handle(_sample(instance, 1.0, cpu=2.0))
    chart.flush()
    traces = chart.figure.data
    other = _by_name(chart, "instance 1")[0]
    sent: list[str] = []
    for trace in traces:
        trace.on_change(lambda trace, *_: sent.append(trace.name), "y")

    chart.handle(_sample(0, 2.0, cpu=3.0))
    chart.flush()
    assert chart.figure.data == traces  # updated in place, not re-added
    assert sent == ["instance 0", "average"]
    assert list(other.y) == [1.0, 2.0]
    chart.flush()  # nothing new: nothing redrawn
    assert chart.flushes == 2
    chart.close()


def test_live_chart_shows_a_placeholder_before_the_first_sample() -> None:
    chart = LiveTimeline()
    layout = chart.figure.layout
    assert chart.figure.data == ()
    assert "press Start" in layout.annotations[0].text
    assert layout.xaxis.visible is False and layout.yaxis.visible is False

    chart.handle(_sample(0, 0.0, cpu=40.0, memory=300.0))
    chart.handle(_sample(0, 1.0, cpu=50.0, memory=310.0))
    chart.flush()
    layout = chart.figure.layout
    assert not layout.annotations
    assert layout.yaxis.title.text == "cpu (%)" and layout.yaxis2.title.text == "memory (MB)"
    assert layout.xaxis2.title.text == "time (s)" and layout.xaxis2.visible

    traces = chart.figure.data
    chart.reset()
    layout = chart.figure.layout
    assert "press Start" in layout.annotations[0].text
    assert not layout.xaxis2.visible and not layout.yaxis.visible and layout.showlegend is False
    # The traces stay for the next run, with nothing to draw.
    assert chart.figure.data == traces
    assert all(len(trace.x) == len(trace.y) == 0 for trace in chart.figure.data)

    # The next run's first frame brings the same chart back, restyled in place.
    chart.handle(_sample(0, 0.0, cpu=41.0, memory=301.0))
    chart.handle(_sample(0, 1.0, cpu=51.0, memory=311.0))
    chart.flush()
    layout = chart.figure.layout
    assert not layout.annotations and layout.showlegend is None
    assert layout.xaxis2.visible and layout.yaxis.visible and layout.yaxis2.visible
    assert chart.figure.data == traces
    assert list(chart.figure.data[0].y) == [41.0, 51.0]

    # A run of other metrics gets its own chart.
    chart.reset()
    chart.handle(_sample(0, 0.0, loss=1.0))
    chart.handle(_sample(0, 1.0, loss=0.5))
    chart.flush()
    layout = chart.figure.layout
    assert layout.yaxis.title.text == "loss" and layout.yaxis.visible
    assert not layout.yaxis2.visible  # the earlier run's second subplot stays hidden
    assert [list(trace.y) for trace in chart.figure.data if trace.name == "average"] == [[1.0, 0.5]]
    chart.close()


def test_live_chart_with_many_instances_stays_readable() -> None:
    chart = LiveTimeline(band="std")
    for step in range(20):
        for instance in range(16):
            chart.handle(_sample(instance, step * 0.5, cpu=float(instance + step)))
    chart.flush()

    names = [trace.name for trace in chart.figure.data]
    assert names == ["instances (16)", "band (std)", "average"]
    instances, _, average = chart.figure.data
    # One faint trace for all: the legend lists four entries, not sixteen.
    assert 0.2 <= instances.opacity <= 0.6 and instances.line.width == 1
    assert sorted(set(np.asarray(instances.customdata).tolist())) == list(range(16))
    assert "instance %{customdata}" in instances.hovertemplate
    assert "n=%{customdata}" in average.hovertemplate
    assert set(np.asarray(average.customdata).tolist()) == {16}
    assert average.line.width > instances.line.width
    chart.close()


@pytest.mark.asyncio
async def test_live_chart_average_band_and_failed_instance() -> None:
    chart = LiveTimeline(metrics=["cpu", "memory"], band="minmax")
    for step in range(5):
        chart.handle(_sample(0, float(step), cpu=10.0, memory=1.0))
        chart.handle(_sample(1, float(step), cpu=20.0, memory=3.0))
    chart.handle(_sample(1, 0.5, gpu=1.0))  # not one of the chosen metrics: ignored
    chart.flush()

    assert chart.metrics == ("cpu", "memory")
    averages = _by_name(chart, "average")
    np.testing.assert_allclose(averages[0].y, 15.0)
    np.testing.assert_allclose(averages[1].y, 2.0)
    band = _by_name(chart, "band (minmax)")[0]
    np.testing.assert_allclose(band.y, [20.0] * 5 + [10.0] * 5)  # up the top, back the bottom
    # In each subplot, band and average are drawn after (on top of) the instances.
    for axis in ("y", "y2"):
        names = [trace.name for trace in chart.figure.data if trace.yaxis == axis]
        assert names == [
            "instance 0",
            "instance 1",
            "band (minmax)",
            "average",
        ]

    chart.handle(InstanceEvent("failed", 1, 5.0, 5.0, message="RuntimeError: boom"))
    chart.flush()
    failed = _by_name(chart, "instance 1 (failed)")
    assert len(failed) == 2 and failed[0].line.dash == "dot"
    chart.close()


def test_live_chart_decimates_long_instances() -> None:
    chart = LiveTimeline(max_points=100)
    rng = np.random.default_rng(3)
    values = rng.random(5000)
    values[4321] = 7.0
    for i, value in enumerate(values):
        chart.handle(_sample(0, i * 0.001, cpu=float(value)))
    chart.flush()  # no loop: what came after the last timed redraw waits for flush()

    trace = _by_name(chart, "instance 0")[0]
    assert len(trace.x) <= 100
    assert max(trace.y) == 7.0
    chart.close()


def test_a_min_max_band_draws_the_lines_on_the_grid_the_band_is_computed_on() -> None:
    chart = LiveTimeline(band="minmax")
    assert chart.model.lines == "grid"
    rng = np.random.default_rng(5)
    for instance in range(3):
        t = np.cumsum(rng.uniform(0.05, 0.15, 60))
        for time, value in zip(t, rng.normal(instance, 1.0, t.size), strict=True):
            chart.handle(_sample(instance, float(time), cpu=float(value)))
    chart.flush()
    step = chart.model.step
    assert step is not None
    for instance in range(3):
        x = np.asarray(_by_name(chart, f"instance {instance}")[0].x, dtype=float)
        np.testing.assert_allclose(x / step, np.round(x / step))  # grid times only
    chart.band = "ci95"  # the lines go back to their samples, every peak shown
    assert chart.model.lines == "samples"
    chart.flush()
    x = np.asarray(_by_name(chart, "instance 0")[0].x, dtype=float)
    assert not np.allclose(x / step, np.round(x / step))
    other = LiveTimelineModel()
    chart.band = "minmax"
    chart.watch(other)  # a sweep's chart following another trial
    assert other.lines == "grid"
    with pytest.raises(ConfigError, match="band"):
        chart.band = "iqr"  # type: ignore[assignment]
    chart.close()


def test_live_chart_hands_each_frame_to_on_frame() -> None:
    frames: list[object] = []
    chart = LiveTimeline(on_frame=frames.append)
    chart.handle(_sample(0, 0.5, cpu=1.0))
    chart.handle(_sample(2, 1.5, cpu=1.0))
    chart.flush()
    # What the experiment panel moves its progress bars by: seconds per instance.
    assert len(frames) == 1 and frames[0].latest == {0: 0.5, 2: 1.5}  # type: ignore[attr-defined]
    chart.close()


def test_live_chart_options_checked() -> None:
    with pytest.raises(ConfigError, match="updates_per_s"):
        LiveTimeline(updates_per_s=0)
    with pytest.raises(ConfigError, match="band"):
        LiveTimeline(band="iqr")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_load"):
        LiveTimeline(max_load=0)
    with pytest.raises(ConfigError, match="x_axis"):
        LiveTimeline(x_axis="epoch")  # type: ignore[arg-type]


# -- PoolMonitor -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SandboxStats:
    pool_size: int = 2
    active: int = 1
    idle: int = 1
    total_created: int = 2
    total_reused: int = 5
    hits: int = 5
    misses: int = 2
    avg_startup_ms: float = 41.0
    reuse_rate: float = 5 / 7


@dataclass(frozen=True, slots=True)
class _RunnerStats:
    queued: int = 3
    running: int = 2
    done: int = 10
    failed: int = 1
    retries: int = 4
    throughput: float = 12.5
    peak_concurrency: int = 2
    elapsed: float = 1.0


class _Source:
    """Anything with ``stats()``; counts reads and can fail."""

    def __init__(self, snapshot: object) -> None:
        self.snapshot = snapshot
        self.reads = 0
        self.error: Exception | None = None

    def stats(self) -> object:
        self.reads += 1
        if self.error is not None:
            raise self.error
        return self.snapshot


def test_monitor_renders_gpus_sandboxes_and_runner() -> None:
    inventory = StaticInventory(
        [
            GPU(0, "GPU-a", "H100", memory_total_mb=80000, memory_free_mb=60000, utilization=0.5),
            GPU(1, "MIG-b", "H100 MIG 1g.10gb", memory_total_mb=None, utilization=None),
        ]
    )
    monitor = PoolMonitor(
        gpu_pool=GPUPool(inventory),
        sandbox_pool=_Source(_SandboxStats()),
        runner=_Source(_RunnerStats()),
    )

    assert not monitor.running  # no loop: refreshed once, by hand from now on
    gpus = monitor.gpus.value
    assert "H100" in gpus and "20,000 / 80,000 MB" in gpus and "50%" in gpus
    assert gpus.count("N/A") == 2  # the MIG row knows neither memory nor utilisation
    assert "free" in gpus
    sandboxes = monitor.sandboxes.value
    assert all(s in sandboxes for s in (">2<", ">5<", "71%", "41 ms"))
    assert "12.5/s" in monitor.runner_stats.value and ">10<" in monitor.runner_stats.value
    monitor.close()


def test_monitor_shows_na_without_nvml_and_only_what_it_was_given() -> None:
    monitor = PoolMonitor(gpu_pool=GPUPool(StaticInventory([])))
    assert "N/A" in monitor.gpus.value and "no GPU found" in monitor.gpus.value
    # No sandbox pool, no runner: no table of N/A for them, their sections hidden.
    assert monitor.sandboxes.value == "" and monitor.runner_stats.value == ""
    shown = [child for child in monitor.children if child.layout.display != "none"]
    assert shown == [monitor.gpus, monitor.status]
    monitor.close()
    nothing = PoolMonitor()
    assert "Nothing to monitor" in nothing.status.value
    assert all(child.layout.display == "none" for child in nothing.children[:-1])
    nothing.close()


def test_monitor_degrades_when_stats_fail_and_skips_unchanged() -> None:
    runner = _Source(_RunnerStats())
    monitor = PoolMonitor(runner=runner)
    monitor.runner_stats.value = "sentinel"
    monitor.refresh()
    assert monitor.runner_stats.value == "sentinel"  # same snapshot: no redraw

    runner.error = RuntimeError("gone")
    monitor.refresh()  # must not raise
    assert "N/A" in monitor.runner_stats.value
    runner.error = None
    monitor.refresh()
    assert "12.5/s" in monitor.runner_stats.value
    monitor.close()


@pytest.mark.asyncio
async def test_monitor_refreshes_on_the_loop_and_stops() -> None:
    clock = FakeClock()
    pool = GPUPool(static_fleet(2))
    monitor = PoolMonitor(gpu_pool=pool, interval=0.5, clock=clock)
    assert monitor.running
    await asyncio.sleep(0)

    allocation = await pool.acquire(gpus=1, owner="trainer-7")
    clock.advance(0.5)
    await asyncio.sleep(0)
    assert "trainer-7" in monitor.gpus.value  # the refresh task saw the new owner
    refreshes = monitor.refreshes

    monitor.stop()
    await asyncio.sleep(0)
    assert not monitor.running
    pool.release(allocation)
    clock.advance(5.0)
    await asyncio.sleep(0)
    assert monitor.refreshes == refreshes
    assert "trainer-7" in monitor.gpus.value

    monitor.start()
    assert monitor.running
    monitor.close()  # closing stops it too
    await asyncio.sleep(0)
    assert not monitor.running
    assert clock.pending == 0


# -- ExperimentPanel -------------------------------------------------------------------


async def _steady(ctx: InstanceContext) -> dict[str, float]:
    for step in range(10):
        ctx.record(loss=1.0 / (step + 1) + ctx.index, step=float(step))
        await ctx.sleep(0.1)
    return {"final": float(ctx.index)}


async def _forever(ctx: InstanceContext) -> None:
    ctx.record(loss=1.0)
    await asyncio.Event().wait()


async def _until_started(panel: ExperimentPanel, count: int) -> None:
    """Run the loop (no time passes) until ``count`` instances show as running."""
    for _ in range(1000):
        if panel.model.snapshot().counts.get("running", 0) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError("instances never started")


def _in_a_worker(ctx: InstanceContext) -> dict[str, float]:
    import os

    for step in range(3):
        ctx.record(loss=1.0 / (step + 1))
    return {"pid": float(os.getpid()), "seed": float(ctx.seed)}


@pytest.mark.asyncio
async def test_panel_runs_instances_in_worker_processes_when_asked() -> None:
    import os

    panel = ExperimentPanel(Experiment("worker", _in_a_worker), executor="process", seed=4)
    panel.instances.value = 2
    result = await panel.start()
    assert isinstance(result, ExperimentResult), panel.message.value
    assert result.config["executor"] == "process" and result.config["seed"] == 4
    assert all(i.ok and i.summary["pid"] != os.getpid() for i in result.instances)
    assert [row.bar.bar_style for row in panel.progress.rows.values()] == ["success", "success"]
    panel.close()


@pytest.mark.asyncio
async def test_panel_start_runs_on_the_loop_and_shows_results() -> None:
    clock = FakeClock(autojump=True)
    panel = ExperimentPanel(
        {"steady": Experiment("steady", _steady), "forever": Experiment("forever", _forever)},
        duration=1.0,
        clock=clock,
    )
    assert panel.experiment.options == ("steady", "forever")
    assert panel.gpus.layout.display == "none"  # no GPU pool: no GPU control
    panel.instances.value = 3

    task = panel.start()
    assert panel.running and panel.start_button.disabled and not panel.stop_button.disabled
    assert len(panel.progress.children) == 3
    result = await task

    assert isinstance(result, ExperimentResult) and panel.result is result
    assert len(result.instances) == 3
    assert all(
        row.bar.value == 1.0 and row.bar.bar_style == "success"
        for row in panel.progress.rows.values()
    )
    assert "3 of 3" in panel.message.value
    assert "num_instances" in panel.summary.value and "loss_last" in panel.summary.value
    assert not panel.start_button.disabled and panel.stop_button.disabled
    names = [trace.name for trace in panel.chart.figure.data]
    assert {"instance 0", "instance 1", "instance 2", "average"} <= set(names)
    average = next(t for t in panel.chart.figure.data if t.name == "average")
    np.testing.assert_allclose(
        average.y[: len(result.averaged)], result.averaged["loss"].to_numpy()[: len(average.y)]
    )
    panel.close()


@pytest.mark.asyncio
async def test_panel_stop_cancels_and_gives_gpus_back() -> None:
    pool = GPUPool(static_fleet(2))
    panel = ExperimentPanel(Experiment("forever", _forever), gpu_pool=pool, duration=2.0)
    assert not panel.gpus.disabled and panel.gpus.max == 2
    panel.instances.value = 2
    panel.gpus.value = 1

    task = panel.start()
    await _until_started(panel, 2)
    assert pool.stats().gpus_allocated == 2
    other = asyncio.ensure_future(asyncio.sleep(0, result="kernel still responsive"))
    assert await other == "kernel still responsive"

    panel.stop_button.click()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.stats().gpus_allocated == 0
    assert "Stopped" in panel.message.value
    assert {row.status.value.split(" · ")[0] for row in panel.progress.rows.values()} == {"stopped"}
    assert not panel.running and not panel.start_button.disabled
    panel.close()


@pytest.mark.asyncio
async def test_panel_shows_errors_and_failed_instances() -> None:
    async def broken(experiment: Experiment, **options: object) -> ExperimentResult:
        raise ConfigError("instances", 0, "an integer >= 1")

    panel = ExperimentPanel(Experiment("steady", _steady), run=broken)
    assert await panel.start() is None
    assert "ConfigError" in panel.message.value and "instances=0" in panel.message.value

    async def flaky(ctx: InstanceContext) -> None:
        ctx.record(loss=1.0)
        if ctx.index == 1:
            raise RuntimeError("instance one broke")

    panel = ExperimentPanel(Experiment("flaky", flaky), clock=FakeClock(autojump=True))
    panel.instances.value = 2
    result = await panel.start()
    assert result is not None and not result.ok
    assert panel.progress.rows[1].bar.bar_style == "danger"
    assert "instance one broke" in panel.progress.rows[1].status.value
    assert "1 of 2" in panel.message.value and "instance one broke" in panel.summary.value
    panel.close()


def test_panel_intensity_control_follows_the_experiment() -> None:
    from labkit.scenarios import SCENARIOS

    panel = ExperimentPanel(SCENARIOS)
    assert "cpu_stress" in panel.experiment.options
    assert panel.intensity.layout.display == ""
    panel.intensity.value = "high"
    assert panel._chosen().params["intensity"] == "high"
    panel.close()

    plain = ExperimentPanel(Experiment("steady", _steady))
    assert plain.intensity.layout.display == "none"
    assert plain.experiment.layout.display == "none"  # one experiment: no chooser
    plain.close()
    with pytest.raises(ConfigError, match="experiments"):
        ExperimentPanel({})


def test_monitor_interval_checked() -> None:
    with pytest.raises(ConfigError, match="interval"):
        PoolMonitor(interval=0)


def test_runner_table_shows_the_limit_and_why_starts_are_held() -> None:
    from labkit.runner import RunnerStats
    from labkit.widgets.monitor import runner_html

    stats = RunnerStats(
        queued=5, running=2, done=3, failed=0, retries=0, throughput=1.5,
        peak_concurrency=2, elapsed=2.0, max_concurrency=12,
        held_back=4, held_seconds=3.0, held_reason="memory",
    )  # fmt: skip
    page = runner_html(stats)
    assert "held back by memory" in page and ">12<" in page
    calm = runner_html(RunnerStats(0, 0, 3, 0, 0, 1.0, 1, 3.0, 8))
    assert "held back" not in calm and ">ok<" in calm


def _drawn_points(chart: LiveTimeline) -> int:
    """Points on the chart's instance lines (finite x), as the figure holds them."""
    return sum(
        int(np.isfinite(np.asarray(trace.x, dtype=float)).sum())
        for trace in chart.figure.data
        if trace.x is not None and str(trace.name or "").startswith("instance")
    )


@pytest.mark.asyncio
async def test_a_run_is_drawn_from_its_logs_with_no_sample_event_to_the_chart() -> None:
    clock = FakeClock()
    chart = LiveTimeline(clock=clock)
    bus = EventBus()
    bus.subscribe(chart)
    drawn_during_run: list[int] = []

    async def drawn(points: int) -> int:
        """Let the chart's clock run until a frame drew ``points`` (or 50 s passed)."""
        for _ in range(50):
            clock.advance(1.0)
            await asyncio.sleep(0)
            if _drawn_points(chart) >= points:
                break
        return _drawn_points(chart)

    async def fn(ctx: InstanceContext) -> None:
        for step in range(10):
            ctx.record(loss=1.0 / (step + 1))
        drawn_during_run.append(await drawn(10))  # the frame the started event scheduled
        for step in range(10, 25):
            ctx.record(loss=1.0 / (step + 1))
        # No event reached the chart since: it kept reading the log on its own.
        drawn_during_run.append(await drawn(25))

    result = await run_experiment(Experiment("logs", fn), instances=1, on_event=bus)

    assert result.ok
    assert not bus.route(InstanceEvent, "sample")  # no sample event was ever built
    assert drawn_during_run == [10, 25]
    assert chart.model.snapshot().samples == 25
    chart.close()
