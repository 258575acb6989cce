"""Does watching slow the work? Throughput with the live chart and the monitor attached.

Three workloads, in one process, each run three ways in turn (the best of
``REPEAT`` runs each):

- bare: nobody watches;
- subscribed: a callback that does nothing is subscribed to the events, which is
  what any watcher costs the core (it then creates and delivers events);
- watched: the ``LiveTimeline`` is subscribed as a notebook user subscribes it
  (a watcher: it reads instance state changes, and each attempt's samples from
  the log its ``on_samples`` gets, so a run builds no task and no sample event
  for it) and a
  ``PoolMonitor`` refreshes from the runner's and a GPU pool's ``stats()`` every
  0.1 s (ten times its default).
  One chart serves every watched run, reset before each, as the experiment panel's
  does at each Start.

1. Runner: 100,000 tasks that ``await asyncio.sleep(0)`` at max_concurrency=64.
2. Experiment: 8 instances, each holding a GPU of a static fleet and recording
   2,000 samples of two metrics, one per step of about 0.1 ms of CPU work (a fast
   training loop; a real instance often records a few samples a second).
3. Flood: the same with no work between samples, 10,000 per instance: the
   chart's worst case, where any work per sample costs a visible share of
   recording it.

Goal: watched / bare throughput >= 0.9. Rates are per second of this process's CPU
time (``time.process_time``): on a machine shared with other work, wall-clock rates
swing by 2x from run to run with the other load, while what watching costs the
instances is CPU; the wall-clock ratio is printed beside. The column watched /
subscribed is the UI's own share, apart from the core's cost of emitting events.

4. Scale: 64 instances recording 4 metrics each (a step of about 0.1 ms of work
   between samples) with the live chart attached, while another "cell" (a task
   that sleeps 10 ms over and over) measures how late the loop wakes it: the
   kernel's latency; then the same without the chart. Printed: frames drawn per
   second, the cost of drawing a frame (mean and worst) and of reading the events
   before it, the cost of redrawing all 256 lines at once after the run, and the
   probe's lateness (median, 99th percentile, worst), watched and bare.
   Goal: >= 2 frames/s.

Run: ``python benchmarks/bench_live_ui.py``.
"""

from __future__ import annotations

import asyncio
import gc
import math
import statistics
import time
from typing import Any

import labkit as lk
from labkit.gpu import static_fleet
from labkit.widgets import LiveTimeline, PoolMonitor

TASKS = 100_000
INSTANCES = 8
SAMPLES = 2_000
STEP_WORK = 1_000  # iterations of arithmetic per step: about 0.1 ms here
REPEAT = 7
SCALE_INSTANCES = 64
SCALE_METRICS = ("cpu", "memory", "loss", "throughput")
SCALE_SAMPLES = 1500


async def tiny(i: int) -> int:
    await asyncio.sleep(0)
    return i


def _noop(event: object) -> None:
    """A subscriber that does nothing: the core's cost of being watched at all."""


_CHARTS: list[LiveTimeline] = []


def _chart() -> LiveTimeline:
    """The watched runs' chart, reset for each run as the experiment panel resets its
    own at each Start (a new ``FigureWidget`` per run would also measure plotly's
    keeping every closed one alive)."""
    if not _CHARTS:
        _CHARTS.append(LiveTimeline())
    chart = _CHARTS[0]
    chart.reset()
    return chart


class _Stopwatch:
    """Wall-clock and process CPU seconds since it was made."""

    def __init__(self) -> None:
        # Every run starts from the same collector state: one full collection of a
        # process this size costs about 0.13 s here, a fifth of a flood run, and
        # whether the previous run left one due would decide the ratio.
        gc.collect()
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


async def runner_throughput(mode: str) -> tuple[float, float]:
    """Tasks per wall-clock and per CPU second through a Runner: ``bare``,
    ``subscribed`` or ``watched``."""
    runner = lk.Runner(max_concurrency=64)
    chart = monitor = None
    if mode == "subscribed":
        runner.subscribe(_noop)
    elif mode == "watched":
        chart = _chart()
        runner.subscribe(chart)
        monitor = PoolMonitor(gpu_pool=lk.GPUPool(static_fleet(4)), runner=runner, interval=0.1)
    clock = _Stopwatch()
    async with runner:
        report = await runner.map(tiny, range(TASKS))
    wall, cpu = clock.read()
    assert report.stats.completed == TASKS
    if monitor is not None:
        monitor.close()
    return TASKS / wall, TASKS / cpu


async def train(ctx: Any) -> None:
    for step in range(ctx.params["samples"]):
        work = sum(i * i for i in range(ctx.params["work"]))
        ctx.record(loss=1.0 / (step + 1), throughput=float(work % 17))
        if step % 10 == 0:
            await asyncio.sleep(0)


async def experiment_throughput(
    mode: str, work: int = STEP_WORK, samples: int = SAMPLES
) -> tuple[float, float]:
    """Samples per second recorded by an experiment's instances, as in :func:`runner_throughput`."""
    pool = lk.GPUPool(static_fleet(INSTANCES))
    chart = monitor = None
    on_event: Any = None
    if mode == "subscribed":
        on_event = _noop
    elif mode == "watched":
        chart = _chart()
        on_event = chart
        monitor = PoolMonitor(gpu_pool=pool, interval=0.1)
    clock = _Stopwatch()
    result = await lk.run_experiment(
        lk.Experiment("train", train, params={"work": work, "samples": samples}),
        instances=INSTANCES,
        gpus_per_instance=1,
        gpu_pool=pool,
        on_event=on_event,
    )
    wall, cpu = clock.read()
    assert result.ok
    if monitor is not None and chart is not None:
        chart.show_result(result)
        monitor.close()
    return INSTANCES * samples / wall, INSTANCES * samples / cpu


async def train4(ctx: Any) -> None:
    for step in range(ctx.params["samples"]):
        work = sum(i * i for i in range(STEP_WORK))
        ctx.record(
            cpu=40.0 + ctx.index % 7 + step % 5,
            memory=300.0 + ctx.index,
            loss=1.0 / (step + 1) + ctx.index * 0.01,
            throughput=float(work % 17),
        )
        await asyncio.sleep(0)


async def probe(latencies: list[float], stop: asyncio.Event) -> None:
    """Another cell: sleeps 10 ms over and over and notes how late it wakes (seconds)."""
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.01)
        latencies.append(time.perf_counter() - started - 0.01)


async def scale(watched: bool) -> dict[str, float]:
    """64 instances x 4 metrics, with a latency probe running beside them; the live
    chart attached when ``watched``."""
    chart = LiveTimeline() if watched else None
    reads: list[float] = []
    if chart is not None:
        update = chart.model.update

        def timed_update() -> bool:
            began = time.perf_counter()
            try:
                return update()
            finally:
                reads.append(time.perf_counter() - began)

        chart.model.update = timed_update  # type: ignore[method-assign]
    latencies: list[float] = []
    stop = asyncio.Event()
    prober = asyncio.create_task(probe(latencies, stop))
    start = time.perf_counter()
    result = await lk.run_experiment(
        lk.Experiment("scale", train4, params={"samples": SCALE_SAMPLES}),
        instances=SCALE_INSTANCES,
        max_concurrency=SCALE_INSTANCES,
        on_event=chart,
    )
    elapsed = time.perf_counter() - start
    stop.set()
    await prober
    assert result.ok
    latencies.sort()
    figures = {
        "elapsed": elapsed,
        "samples": SCALE_INSTANCES * SCALE_SAMPLES,
        "latency_p50_ms": 1e3 * latencies[len(latencies) // 2],
        "latency_p99_ms": 1e3 * latencies[int(len(latencies) * 0.99)],
        "latency_max_ms": 1e3 * latencies[-1],
    }
    if chart is None:
        return figures
    budget = chart.budget
    figures |= {
        "frames": budget.frames,
        "frame_rate": budget.frames / elapsed,
        "frame_mean_ms": 1e3 * budget.total_cost / max(budget.frames, 1),
        "frame_max_ms": 1e3 * budget.max_cost,
        "read_mean_ms": 1e3 * statistics.mean(reads) if reads else 0.0,
        "read_per_sample_us": 1e6 * sum(reads) / figures["samples"],
    }
    figures["traces"] = len(chart.figure.data)
    chart.close()
    figures["full_redraw_ms"] = full_redraw(result)
    return figures


def full_redraw(result: lk.ExperimentResult) -> float:
    """Milliseconds of a frame where every line changes at once (the median of five),
    on a chart that holds ``result``'s whole timelines: the worst frame of a long run."""
    chart = LiveTimeline()
    logs = []
    for instance in result.instances:
        timeline = instance.timeline
        log = lk.SampleLog()
        for row in timeline.itertuples(index=False):
            values = row._asdict()
            log.append(values.pop("t"), values)
        chart.handle(lk.InstanceEvent("started", instance.index, 0.0))
        chart.handle(lk.TimelineEvent(instance.index, 0.0, log))
        logs.append(log)
    chart.flush()
    costs = []
    for step in range(5):
        for log in logs:
            log.append(1e3 + step, dict.fromkeys(SCALE_METRICS, 1.0))
        began = time.perf_counter()
        chart.flush()
        costs.append(time.perf_counter() - began)
    chart.close()
    return 1e3 * statistics.median(costs)


async def chart_cost(*, logs: bool, frames: int = 4) -> dict[str, float]:
    """The chart's own work for the flood's 80,000 samples, apart from any experiment:
    receiving their events (on a running loop, as in a notebook) and ``frames``
    frames that read and draw them. With ``logs``, as a local run feeds it: each
    attempt's log comes in a ``TimelineEvent`` and gains the rows before their
    events (the recording is not timed), so frames read the logs and the events
    pass; else from the events alone (an append each, columns every 1,024), as a
    Dask run or a hand-fed chart gives them. Best of ``REPEAT``; microseconds per
    sample, milliseconds per frame."""
    events = [
        lk.InstanceEvent(
            "sample", i % INSTANCES, 0.0, (i // INSTANCES) * 1e-4,
            metrics={"loss": 1.0 / (i + 1), "throughput": float(i % 17)},
        )
        for i in range(INSTANCES * 5 * SAMPLES)
    ]  # fmt: skip
    best = {"receive_us": math.inf, "read_us": math.inf, "draw_ms": math.inf}
    for _ in range(REPEAT):
        chart = LiveTimeline()
        attempts = [lk.SampleLog() for _ in range(INSTANCES)]
        for instance, log in enumerate(attempts):
            chart.handle(lk.InstanceEvent("started", instance, 0.0))
            if logs:
                chart.handle(lk.TimelineEvent(instance, 0.0, log))
        receive = read = draw = 0.0
        for part in range(frames):
            chunk = events[part * len(events) // frames : (part + 1) * len(events) // frames]
            if logs:
                for event in chunk:
                    attempts[event.instance].append(event.offset, event.metrics or {})
            began = time.perf_counter()
            for event in chunk:
                chart.handle(event)
            receive += time.perf_counter() - began
            began = time.perf_counter()
            chart.model.update()
            read += time.perf_counter() - began
            began = time.perf_counter()
            chart.flush()
            draw += time.perf_counter() - began
        chart.close()
        best["receive_us"] = min(best["receive_us"], 1e6 * receive / len(events))
        best["read_us"] = min(best["read_us"], 1e6 * read / len(events))
        best["draw_ms"] = min(best["draw_ms"], 1e3 * draw / frames)
    return best


async def best_of(measure: Any) -> tuple[float, ...]:
    """The best wall-clock and CPU rate of each mode, the modes interleaved."""
    runs: dict[str, list[tuple[float, float]]] = {"bare": [], "subscribed": [], "watched": []}
    for _ in range(REPEAT):
        for mode, rates in runs.items():
            rates.append(await measure(mode))
    return tuple(max(rate[k] for rate in runs[mode]) for k in (1, 0) for mode in runs)


async def main() -> None:
    # The first FigureWidget in a process costs seconds; pay it before timing.
    LiveTimeline().close()
    rows = [
        ("runner, tasks/s", *await best_of(runner_throughput)),
        ("experiment, samples/s", *await best_of(experiment_throughput)),
        (
            "flood, samples/s",
            *await best_of(lambda mode: experiment_throughput(mode, work=0, samples=5 * SAMPLES)),
        ),
    ]
    print("rates per CPU second of this process; wall-clock ratio beside")
    print(
        f"{'workload':<24}{'bare':>10}{'subscribed':>12}{'watched':>10}"
        f"{'watched/bare':>14}{'watched/subscribed':>20}{'wall w/b':>10}"
    )
    for name, bare, subscribed, watched, bare_wall, _, watched_wall in rows:
        verdict = "ok" if watched / bare >= 0.9 else "below the 0.9 goal"
        print(
            f"{name:<24}{bare:>10,.0f}{subscribed:>12,.0f}{watched:>10,.0f}"
            f"{watched / bare:>14.2f}{watched / subscribed:>20.2f}"
            f"{watched_wall / bare_wall:>10.2f}  {verdict}"
        )
    flood_bare = rows[2][1]
    fed, alone = await chart_cost(logs=True), await chart_cost(logs=False)
    print(
        f"\nthe chart's own work in the flood, a sample: reading {fed['read_us']:.2f} us from "
        f"the attempts' logs, and {fed['receive_us']:.2f} us to let its event pass if one "
        f"comes (a run sends none); from the events alone (a hand-fed chart): receiving "
        f"{alone['receive_us']:.2f} us and reading {alone['read_us']:.2f} us; drawing "
        f"{fed['draw_ms']:.1f} ms a frame; recording a sample bare costs "
        f"{1e6 / flood_bare:.2f} us of CPU"
    )
    bare = await scale(watched=False)
    figures = await scale(watched=True)
    verdict = "ok" if figures["frame_rate"] >= 2.0 else "below the 2 Hz goal"
    print(
        f"\nscale: {SCALE_INSTANCES} instances x {len(SCALE_METRICS)} metrics, "
        f"{figures['samples']:,} samples in {figures['elapsed']:.2f} s watched "
        f"({bare['elapsed']:.2f} s bare), {figures['traces']} traces on the chart"
    )
    print(
        f"  frames: {figures['frames']} at {figures['frame_rate']:.2f}/s ({verdict}); "
        f"drawing a frame {figures['frame_mean_ms']:.1f} ms mean, "
        f"{figures['frame_max_ms']:.1f} ms worst; reading the events before it "
        f"{figures['read_mean_ms']:.1f} ms mean ({figures['read_per_sample_us']:.2f} us a sample); "
        f"redrawing all {SCALE_INSTANCES * len(SCALE_METRICS)} lines at once "
        f"{figures['full_redraw_ms']:.1f} ms"
    )
    for name, run in (("bare", bare), ("watched", figures)):
        print(
            f"  kernel latency, {name:<8} (how late a 10 ms sleep in another cell wakes): "
            f"{run['latency_p50_ms']:.1f} ms median, {run['latency_p99_ms']:.1f} ms p99, "
            f"{run['latency_max_ms']:.1f} ms worst"
        )


if __name__ == "__main__":
    asyncio.run(main())
