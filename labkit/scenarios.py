"""Built-in workloads for demos, tutorials and tests: real work inside each instance's sandbox.

Each scenario is an :class:`~labkit.experiment.Experiment` whose instances write a
small Python script into their sandbox and run it with ``python3`` (standard
library only, so it runs in a ``LocalSandbox`` or an E2B sandbox alike). The
script appends one JSON line per interval to ``metrics.jsonl``; the instance reads
the new lines as they come and records them, while the sampler adds the sandbox's
``cpu`` and ``memory``. Every script stops by itself after ``duration`` seconds,
and the command has a timeout on top.

- :func:`cpu_stress`: a busy loop at a duty cycle (records ``ops``, work per interval).
- :func:`memory_pressure`: allocates and touches memory up to a target, holds it,
  frees it (records ``allocated_mb``).
- :func:`network_delay`: a TCP echo server on the sandbox's loopback that delays
  and drops requests, and clients that time them (records ``latency_ms`` and
  ``errors``).
- :func:`error_burst`: a service that fails for a while, then recovers (records
  ``errors`` and ``latency_ms``; the summary gets ``recovery_time``: seconds from
  the end of the fault until latency is back within 10 % of its baseline).

Each takes ``intensity`` ``"low"``, ``"medium"`` or ``"high"``; ``ctx.params``
may override it (``labkit run labkit.scenarios:cpu_stress --param intensity=high``).
"""

from __future__ import annotations

import asyncio
import json
import math
import shlex
import statistics
from collections.abc import Callable, Mapping
from typing import Any, Literal

from labkit._checks import check
from labkit.experiment import Experiment, InstanceContext

__all__ = (
    "DEFAULT_DURATION",
    "INTENSITIES",
    "SCENARIOS",
    "Intensity",
    "cpu_stress",
    "error_burst",
    "memory_pressure",
    "network_delay",
    "recovery_time",
    "scenario",
)

Intensity = Literal["low", "medium", "high"]
INTENSITIES: tuple[Intensity, ...] = ("low", "medium", "high")

DEFAULT_DURATION = 10.0
"""Seconds a scenario instance runs when ``run_experiment`` is given no ``duration``."""

_METRICS_FILE = "metrics.jsonl"
_SCRIPT_FILE = "scenario.py"

# One script for all four scenarios keeps them consistent: the same reporting
# loop, deadline and output format. It only uses the standard library.
_SCRIPT = r"""
import asyncio, json, math, random, sys, time

args = json.loads(sys.argv[1])
duration, interval, kind = args["duration"], args["interval"], args["kind"]
start = time.monotonic()
out = open(args["out"], "a", buffering=1)


def emit(**metrics):
    out.write(json.dumps({"t": round(time.monotonic() - start, 4), **metrics}) + "\n")


def cpu_stress():
    duty, slice_s = args["duty"], 0.05
    ops, next_report = 0, interval
    while (now := time.monotonic() - start) < duration:
        busy_until = time.monotonic() + duty * slice_s
        while time.monotonic() < busy_until:
            sum(i * i for i in range(200))
            ops += 1
        if duty < 1.0:
            time.sleep((1.0 - duty) * slice_s)
        if now >= next_report:
            emit(ops=ops)
            ops, next_report = 0, now + interval


def memory_pressure():
    target_mb, blocks = args["target_mb"], []
    ramp, release = 0.4 * duration, 0.85 * duration
    next_report = 0.0
    while (now := time.monotonic() - start) < duration:
        want = target_mb * min(now / ramp, 1.0) if now < release else 0.0
        while len(blocks) < int(want):
            block = bytearray(1 << 20)
            block[::4096] = b"\x01" * len(range(0, 1 << 20, 4096))  # touch every page
            blocks.append(block)
        if now >= release:
            blocks.clear()
        if now >= next_report:
            emit(allocated_mb=float(len(blocks)))
            next_report = now + interval
        time.sleep(min(0.02, interval / 4))


async def serve(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def clients(port, count, stop_at):
    stats = {"latencies": [], "errors": 0}

    async def client():
        reader = writer = None
        while time.monotonic() < stop_at:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                sent = time.monotonic()
                writer.write(b"ping\n")
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), args["request_timeout"])
                if not line.startswith(b"ping"):
                    raise ConnectionError(line.decode(errors="replace").strip() or "closed")
                stats["latencies"].append((time.monotonic() - sent) * 1000.0)
            except (OSError, asyncio.TimeoutError, ConnectionError):
                stats["errors"] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(client()) for _ in range(count)]
    next_report = start + interval
    while time.monotonic() < stop_at:
        await asyncio.sleep(max(0.0, next_report - time.monotonic()))
        lat, stats["latencies"] = stats["latencies"], []
        errors, stats["errors"] = stats["errors"], 0
        metrics = {"errors": errors, "requests": len(lat) + errors}
        if lat:
            metrics["latency_ms"] = sum(lat) / len(lat)
        emit(**metrics)
        next_report += interval
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def network_delay():
    rng = random.Random(args["seed"])

    async def echo(reader, writer):
        try:
            while line := await reader.readline():
                await asyncio.sleep(args["latency_s"] * rng.uniform(0.5, 1.5))
                if rng.random() < args["drop"]:
                    break  # dropped: the connection closes without a reply
                writer.write(line)
                await writer.drain()
        finally:
            writer.close()

    server, port = await serve(echo)
    async with server:
        await clients(port, args["clients"], start + duration)


async def error_burst():
    rng = random.Random(args["seed"])
    fault_start, fault_end = args["fault_start"], args["fault_end"]
    base, tau = args["base_latency_s"], args["recovery_tau"]

    async def service(reader, writer):
        try:
            while line := await reader.readline():
                now = time.monotonic() - start
                extra = 0.0
                if now >= fault_end:
                    # After the fault the service is slow at first and recovers gradually.
                    extra = args["slowdown"] * base * math.exp(-(now - fault_end) / tau)
                await asyncio.sleep(base + extra)
                if fault_start <= now < fault_end and rng.random() < args["failure_rate"]:
                    writer.write(b"ERR service unavailable\n")
                else:
                    writer.write(line)
                await writer.drain()
        finally:
            writer.close()

    server, port = await serve(service)
    async with server:
        await clients(port, args["clients"], start + duration)
    print(json.dumps({"fault_start": fault_start, "fault_end": fault_end}))


{
    "cpu_stress": cpu_stress,
    "memory_pressure": memory_pressure,
    "network_delay": lambda: asyncio.run(network_delay()),
    "error_burst": lambda: asyncio.run(error_burst()),
}[kind]()
"""

_CPU_DUTY = {"low": 0.25, "medium": 0.5, "high": 1.0}
_MEMORY_MB = {"low": 64, "medium": 160, "high": 320}
_NETWORK = {  # injected latency (s), drop probability per request
    "low": (0.005, 0.01),
    "medium": (0.02, 0.05),
    "high": (0.05, 0.15),
}
_BURST = {  # failure rate during the fault, slowdown after it, recovery time constant (share)
    "low": (0.2, 2.0, 0.04),
    "medium": (0.5, 4.0, 0.06),
    "high": (0.9, 8.0, 0.08),
}


def _intensity(ctx: InstanceContext) -> Intensity:
    value = ctx.params.get("intensity", "medium")
    check(value in INTENSITIES, "intensity", value, "'low', 'medium' or 'high'")
    return value  # type: ignore[no-any-return]


def _interval(duration: float) -> float:
    """Seconds between reported lines: about 20 per run, between 0.1 s and 1 s."""
    return min(1.0, max(0.1, duration / 20))


async def _run_script(
    ctx: InstanceContext, kind: str, **settings: Any
) -> tuple[float, list[dict[str, float]], str]:
    """Run the scenario script in the instance's sandbox and record its lines as they come.

    Returns:
        The run's duration (s), every line it reported, and its stdout.

    Raises:
        ConfigError: The instance has no sandbox.
        RuntimeError: The script failed or timed out.
    """
    sandbox = ctx.sandbox
    check(
        sandbox is not None,
        "sandbox",
        None,
        "a sandbox per instance: run with sandbox_pool=... (the scenarios need one)",
    )
    assert sandbox is not None
    duration = float(ctx.duration or DEFAULT_DURATION)
    interval = _interval(duration)
    args = {
        "kind": kind,
        "duration": duration,
        "interval": interval,
        "out": _METRICS_FILE,
        "seed": ctx.seed,
        **settings,
    }
    await sandbox.write_file(_SCRIPT_FILE, _SCRIPT)
    await sandbox.write_file(_METRICS_FILE, "")
    command = f"python3 {_SCRIPT_FILE} {shlex.quote(json.dumps(args))}"
    # The script stamps its lines from its own start, about now on the instance's scale.
    script_start = ctx.elapsed
    # The script stops itself at `duration`; the timeout only catches a hung one.
    run = asyncio.ensure_future(
        sandbox.run(command, timeout=duration + max(10.0, duration), env=ctx.env)
    )
    lines: list[dict[str, float]] = []
    try:
        while not run.done():
            await asyncio.wait((run,), timeout=interval)
            content = await sandbox.read_file(_METRICS_FILE)
            lines += _record_new(ctx, content, len(lines), script_start)
    finally:
        if not run.done():
            run.cancel()
            await asyncio.wait((run,))
    result = run.result()
    if not result.ok:
        what = "timed out" if result.timed_out else f"exited with {result.exit_code}"
        tail = result.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"{kind} script {what}: {' | '.join(tail) or 'no output'}")
    return duration, lines, result.stdout


def _record_new(
    ctx: InstanceContext, content: bytes, seen: int, script_start: float
) -> list[dict[str, float]]:
    """Record the complete lines after the first ``seen``, at their own times; return them."""
    new = []
    for raw in content.decode().splitlines()[seen:]:
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            break  # a line still being written: read it next time
        metrics = {key: float(value) for key, value in line.items() if key != "t"}
        ctx.record_at(script_start + float(line["t"]), **metrics)
        new.append({"t": float(line["t"]), **metrics})
    return new


async def _cpu_stress(ctx: InstanceContext) -> dict[str, float]:
    _, lines, _ = await _run_script(ctx, "cpu_stress", duty=_CPU_DUTY[_intensity(ctx)])
    return {"ops_total": sum(line.get("ops", 0.0) for line in lines)}


async def _memory_pressure(ctx: InstanceContext) -> dict[str, float]:
    target = _MEMORY_MB[_intensity(ctx)]
    await _run_script(ctx, "memory_pressure", target_mb=target)
    return {"target_mb": float(target)}


async def _network_delay(ctx: InstanceContext) -> dict[str, float]:
    latency, drop = _NETWORK[_intensity(ctx)]
    _, lines, _ = await _run_script(
        ctx,
        "network_delay",
        latency_s=latency,
        drop=drop,
        clients=4,
        request_timeout=max(0.5, 10 * latency),
    )
    requests = sum(line.get("requests", 0.0) for line in lines)
    errors = sum(line.get("errors", 0.0) for line in lines)
    return {"requests": requests, "error_rate": errors / requests if requests else math.nan}


async def _error_burst(ctx: InstanceContext) -> dict[str, float | None]:
    failure_rate, slowdown, tau_share = _BURST[_intensity(ctx)]
    duration = float(ctx.duration or DEFAULT_DURATION)
    _, lines, stdout = await _run_script(
        ctx,
        "error_burst",
        fault_start=0.25 * duration,
        fault_end=0.5 * duration,
        failure_rate=failure_rate,
        slowdown=slowdown,
        recovery_tau=tau_share * duration,
        base_latency_s=0.02,
        clients=2,
        request_timeout=1.0,
    )
    window = json.loads(stdout.strip().splitlines()[-1])
    return {
        "recovery_time": recovery_time(
            lines, fault_start=window["fault_start"], fault_end=window["fault_end"]
        )
    }


def recovery_time(
    lines: list[dict[str, float]],
    *,
    fault_start: float,
    fault_end: float,
    metric: str = "latency_ms",
    tolerance: float = 0.10,
) -> float | None:
    """Seconds from the end of a fault until ``metric`` is back within ``tolerance`` of baseline.

    The baseline is the median of ``metric`` before the fault (robust to the
    first requests' connection set-up). The metric has recovered at the first
    sample at or after ``fault_end`` from which every later sample stays within
    ``tolerance`` (a fraction) of the baseline.

    Args:
        lines: Samples with a ``t`` (seconds) and the metric.
        fault_start: When the fault began (s, same scale as ``t``).
        fault_end: When it ended.
        metric: The metric to watch.
        tolerance: How close counts as recovered, relative to the baseline.

    Returns:
        Seconds, or ``None`` when there was no baseline or it never recovered.
    """
    timed = [
        (line["t"], line[metric]) for line in lines if math.isfinite(line.get(metric, math.nan))
    ]
    baseline_values = [value for t, value in timed if t < fault_start]
    if not baseline_values:
        return None
    baseline = statistics.median(baseline_values)
    recovered_at = None
    for t, value in reversed([(t, value) for t, value in timed if t >= fault_end]):
        if abs(value - baseline) > tolerance * abs(baseline):
            break
        recovered_at = t
    return None if recovered_at is None else recovered_at - fault_end


def _scenario(
    name: str, fn: Callable[[InstanceContext], Any], description: str, peaks: tuple[str, ...]
) -> Callable[..., Experiment]:
    def make(intensity: Intensity = "medium", **params: Any) -> Experiment:
        check(intensity in INTENSITIES, "intensity", intensity, "'low', 'medium' or 'high'")
        return Experiment(
            name,
            fn,
            params={"intensity": intensity, **params},
            needs_sandbox=True,
            description=description,
            # A load's figure is its peak (the most memory held, the worst latency),
            # not where it ended: memory_pressure frees everything before it stops.
            summarize=dict.fromkeys(peaks, "peak"),
        )

    make.__name__ = make.__qualname__ = name
    make.__doc__ = f"""{description}

    Args:
        intensity: ``"low"``, ``"medium"`` or ``"high"``.
        **params: More parameters for ``ctx.params``. The randomness comes from
            ``ctx.seed``: pass ``seed=`` to ``run_experiment`` to vary it.

    Returns:
        The :class:`~labkit.experiment.Experiment`; its instances need a sandbox
        (``run_experiment`` makes local ones when given no ``sandbox_pool``).

    Raises:
        ConfigError: ``intensity`` is not one of the three.
    """
    return make


cpu_stress = _scenario(
    "cpu_stress",
    _cpu_stress,
    "A busy loop at 25/50/100 % duty cycle; records ops per interval.",
    ("ops",),
)
memory_pressure = _scenario(
    "memory_pressure",
    _memory_pressure,
    "Allocates 64/160/320 MB step by step, holds it, frees it; records allocated_mb.",
    ("allocated_mb",),
)
network_delay = _scenario(
    "network_delay",
    _network_delay,
    "A loopback TCP echo server adding 5/20/50 ms and dropping 1/5/15 % of requests; "
    "records latency_ms and errors.",
    ("latency_ms", "requests"),
)
error_burst = _scenario(
    "error_burst",
    _error_burst,
    "A service failing 20/50/90 % of requests for a quarter of the run, then recovering; "
    "records errors and latency_ms, and recovery_time in the summary.",
    ("latency_ms", "requests"),
)

SCENARIOS: Mapping[str, Callable[..., Experiment]] = {
    "cpu_stress": cpu_stress,
    "memory_pressure": memory_pressure,
    "network_delay": network_delay,
    "error_burst": error_burst,
}
"""Every built-in scenario by name."""


def scenario(name: str, intensity: Intensity = "medium", **params: Any) -> Experiment:
    """The built-in scenario called ``name`` (a key of :data:`SCENARIOS`).

    Raises:
        ConfigError: No scenario has that name, or ``intensity`` is unknown.
    """
    check(name in SCENARIOS, "scenario", name, f"one of {', '.join(SCENARIOS)}")
    return SCENARIOS[name](intensity, **params)
