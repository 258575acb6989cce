"""Averaging timelines: labkit.average_timelines against a plain numpy baseline.

The input: 16 instances x 250,000 jittered samples (a 10 ms sampler, each time
off by up to +-3 ms) x 3 metrics. The baseline, timed in the same run, is what
one writes by hand: per instance and metric ``np.interp`` onto the grid, stacked
into an instances x grid array, then ``nanmean``/``nanstd``/``nanmin``/``nanmax``.
It covers the same grid points as labkit (from the point nearest an instance's
first sample to the one nearest its last), so the values must agree to 1e-9:
labkit is timed with ``method="linear"`` for every metric, as the baseline
interpolates (by default ``errors`` is summed instead; that run is timed too),
and with its default ``max_gap`` (no gap in this input, but looked for).

labkit must take at most half the baseline's time, and must not build an
instances x grid stack per metric: its peak memory (tracemalloc) is printed
next to the baseline's. The memory-bandwidth floor is the time to read the
input once (about 15 ms on the project's machines).

It then prints labkit's peak memory at 4, 16 and 64 instances (it must stay
flat: running statistics, not a stack), and the time of the decisions made on
1,000 instances' figures: ``lk.compare`` and ``result.summary_table()`` (target
under 10 ms each).

Run: ``python benchmarks/bench_averaging.py [--instances 16] [--samples 250000]``.
Exits 1 if the values differ from the baseline's.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

import labkit.timeline as tl
from labkit import stats
from labkit.results import ExperimentResult, InstanceResult

STEP = 0.01  # seconds: the sampler's nominal interval and the grid's step
JITTER = 0.003  # seconds, uniform +- around each nominal sample time
METRICS = ("cpu", "memory", "errors")
TOLERANCE = 1e-9
REFERENCE_FLOOR_MS = 15.0


def make_timelines(instances: int, samples: int, seed: int = 0) -> list[pd.DataFrame]:
    """Jittered timelines with a gauge (cpu %), a slow gauge (memory MB) and a counter."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(instances):
        t = np.arange(samples) * STEP + rng.uniform(-JITTER, JITTER, samples)
        t[0] = abs(t[0])
        phase = rng.uniform(0, 2 * np.pi)
        cpu = 50 + 20 * np.sin(t / 7 + phase) + rng.normal(0, 5, samples)
        memory = 1000 + np.cumsum(rng.normal(0, 0.5, samples))
        errors = rng.poisson(0.05, samples).astype(np.float64)
        frames.append(pd.DataFrame({"t": t, "cpu": cpu, "memory": memory, "errors": errors}))
    return frames


def baseline(frames: list[pd.DataFrame], step: float) -> dict[str, np.ndarray]:
    """The hand-written way: np.interp per instance, a stack per metric, nan-reductions."""
    spans = [
        (int(np.floor(f["t"].iat[0] / step + 0.5)), int(np.floor(f["t"].iat[-1] / step + 0.5)))
        for f in frames
    ]
    size = max(last for _, last in spans) + 1
    grid = np.arange(size) * step
    out: dict[str, np.ndarray] = {"t": grid}
    for metric in METRICS:
        stack = np.empty((len(frames), size))
        for row, (frame, (first, last)) in enumerate(zip(frames, spans, strict=True)):
            stack[row] = np.interp(grid, frame["t"].to_numpy(), frame[metric].to_numpy())
            stack[row, :first] = np.nan
            stack[row, last + 1 :] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN / ddof columns
            out[metric] = np.nanmean(stack, axis=0)
            out[f"{metric}_std"] = np.nanstd(stack, axis=0, ddof=1)
            out[f"{metric}_min"] = np.nanmin(stack, axis=0)
            out[f"{metric}_max"] = np.nanmax(stack, axis=0)
        if metric == METRICS[0]:
            out["n"] = (~np.isnan(stack)).sum(axis=0)
    return out


def read_once(frames: list[pd.DataFrame]) -> float:
    """Touch every input value once: the memory-bandwidth floor for this input."""
    total = 0.0
    for frame in frames:
        for column in ("t", *METRICS):
            total += float(np.add.reduce(frame[column].to_numpy()))
    return total


def race(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, dict[str, float]]:
    """Best and median wall time, and best CPU time, of each function (milliseconds).

    The functions take turns, round after round, so that a busy spell on the
    machine slows all of them alike. CPU time (this process only; numpy runs
    these operations on one thread) does not count the time the process waited
    for a core, so it is the steadier figure on a shared machine.
    """
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            gc.collect()
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append((time.process_time() - start_cpu) * 1e3)
            wall[name].append((time.perf_counter() - start) * 1e3)
    return {
        name: {
            "best": min(wall[name]),
            "median": statistics.median(wall[name]),
            "cpu": min(cpu[name]),
        }
        for name in fns
    }


def peak_mb(fn: Callable[[], Any]) -> float:
    """Peak memory allocated while ``fn`` runs (tracemalloc sees numpy's buffers)."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20


def compare(result: pd.DataFrame, expected: dict[str, np.ndarray]) -> float:
    """The largest |labkit - baseline| over every statistic (NaN must match NaN)."""
    keep = expected["n"] > 0
    if not np.array_equal(result["t"].to_numpy(), expected["t"][keep]):
        return float("inf")
    if not np.array_equal(result["n"].to_numpy(), expected["n"][keep]):
        return float("inf")
    worst = 0.0
    for metric in METRICS:
        for suffix in ("", "_std", "_min", "_max"):
            got = result[metric + suffix].to_numpy()
            want = expected[metric + suffix][keep]
            if not np.array_equal(np.isnan(got), np.isnan(want)):
                return float("inf")
            both = ~np.isnan(got)
            if both.any():
                worst = max(worst, float(np.max(np.abs(got[both] - want[both]))))
    return worst


def memory_flat(samples: int) -> None:
    """labkit's peak memory by number of instances, against one instances x grid stack."""
    peaks = []
    for instances in (4, 16, 64):
        frames = make_timelines(instances, samples, seed=instances)
        peak = peak_mb(
            lambda frames=frames: tl.average_timelines(frames, step=STEP, method="linear")
        )
        stack = instances * samples * 8 / 2**20
        peaks.append(f"{instances} instances {peak:5.1f} MiB (one stack {stack:5.1f} MiB)")
    print(f"memory by instances ({samples:,} samples each): " + "; ".join(peaks))


def decisions(repeat: int) -> None:
    """compare and summary_table on 1,000 instances' figures (target: < 10 ms each)."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(10.0, 1.0, 1000), rng.normal(9.9, 1.0, 1000)
    instances = [
        InstanceResult(
            index=i,
            ok=True,
            error=None,
            summary={"cpu_peak": float(x), "memory_peak": float(y), "error_count": i % 7},
        )
        for i, (x, y) in enumerate(zip(a, b, strict=True))
    ]
    result = ExperimentResult.build("bench", {}, instances, {})
    for name, fn in (
        ("lk.compare(1,000 vs 1,000 instances)", lambda: stats.compare(a, b)),
        ("  ... and its instances_needed", lambda: stats.compare(a, b).instances_needed),
        ("result.summary_table() of 1,000 instances", result.summary_table),
    ):
        fn()
        times = []
        for _ in range(max(repeat, 5)):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        best = min(times)
        verdict = "OK" if best < 10 else "ABOVE TARGET"
        print(
            f"{name:<44} best {best:5.2f} ms  median {statistics.median(times):5.2f} ms "
            f"(target < 10 ms: {verdict})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=16)
    parser.add_argument("--samples", type=int, default=250_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)

    frames = make_timelines(args.instances, args.samples)
    rows = args.instances * args.samples
    print(
        f"averaging {args.instances} instances x {args.samples:,} samples x {len(METRICS)} "
        f"metrics ({STEP * 1e3:.0f} ms grid, +-{JITTER * 1e3:.0f} ms jitter); "
        f"numpy {np.__version__}, pandas {pd.__version__}"
    )

    def run_labkit() -> pd.DataFrame:
        return tl.average_timelines(frames, step=STEP, method="linear")

    def run_baseline() -> dict[str, np.ndarray]:
        return baseline(frames, STEP)

    run_labkit()  # warm up (imports, t-quantile cache, page faults of the first buffers)
    run_baseline()
    timed = race(
        {
            "baseline": run_baseline,
            "labkit": run_labkit,
            "default step": lambda: tl.average_timelines(frames, method="linear"),
            "default method": lambda: tl.average_timelines(frames, step=STEP),
            "floor": lambda: read_once(frames),
        },
        args.repeat,
    )
    base, lab = timed["baseline"], timed["labkit"]
    default, floor = timed["default step"], timed["floor"]
    base_peak = peak_mb(run_baseline)
    lab_peak = peak_mb(run_labkit)
    grid_points = len(run_baseline()["t"])
    stack_mb = args.instances * grid_points * 8 / 2**20

    def line(name: str, times: dict[str, float], peak: float) -> str:
        rate = rows / (times["cpu"] / 1e3) / 1e6
        return (
            f"  {name:<44} cpu {times['cpu']:6.1f} ms  wall best {times['best']:6.1f} "
            f"median {times['median']:6.1f} ms  {rate:5.1f} Msamples/s  peak {peak:5.1f} MiB"
        )

    print("before/after (a sample is one timeline row with its 3 metrics; rates from cpu time):")
    print(line("baseline: np.interp + stack + nan-reductions", base, base_peak))
    print(line("labkit.average_timelines(step=0.01, linear)", lab, lab_peak))
    ratio = lab["cpu"] / base["cpu"]
    wall_ratio = lab["best"] / base["best"]
    verdict = "OK" if ratio <= 0.5 else "ABOVE TARGET"
    print(
        f"ratio labkit / baseline: {ratio:.2f} cpu, {wall_ratio:.2f} best wall "
        f"(target <= 0.50: {verdict}); speed-up {1 / ratio:.1f}x"
    )
    print(
        f"memory: one instances x grid stack is {stack_mb:.1f} MiB ({grid_points:,} grid "
        f"points); labkit's peak is {lab_peak / stack_mb:.2f} of it, mostly its own output "
        f"(baseline {base_peak / stack_mb:.2f})"
    )
    print(
        f"memory-bandwidth floor: reading the input once takes {floor['cpu']:.1f} ms here "
        f"(about {REFERENCE_FLOOR_MS:.0f} ms on the project's machines); labkit is "
        f"{lab['cpu'] / floor['cpu']:.1f}x the measured floor, "
        f"{lab['cpu'] / REFERENCE_FLOOR_MS:.1f}x the {REFERENCE_FLOOR_MS:.0f} ms one"
    )
    print(f"labkit with the default step (median interval found too): cpu {default['cpu']:.1f} ms")
    print(
        f"labkit with the default methods (errors summed, not interpolated): "
        f"cpu {timed['default method']['cpu']:.1f} ms"
    )

    memory_flat(args.samples // 5)
    decisions(args.repeat)

    worst = compare(run_labkit(), run_baseline())
    ok = worst <= TOLERANCE
    print(
        f"values: max |labkit - baseline| = {worst:.2e} over t, n and mean/std/min/max of "
        f"{len(METRICS)} metrics (limit {TOLERANCE:g}): {'OK' if ok else 'MISMATCH'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
