"""Ctrl-C during run_parallel_sync: in-flight work is cancelled and cleaned up, the
finished part of the report survives on the raised RunInterrupted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import labkit as lk

    cleaned = []

    async def work(i):
        if i < 4:
            return i
        print("started", i, flush=True)
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.append(i)

    try:
        lk.run_parallel_sync(work, range(10), max_concurrency=3)
    except lk.errors.RunInterrupted as exc:
        stats = exc.report.stats
        print(json.dumps({
            "kind": type(exc).__name__,
            "is_keyboard_interrupt": isinstance(exc, KeyboardInterrupt),
            "completed": stats.completed,
            "submitted": stats.submitted,
            "values": exc.report.values,
            "cleaned": sorted(cleaned),
        }), flush=True)
        sys.exit(130)
    """
)


def test_ctrl_c_cancels_in_flight_tasks_and_keeps_the_report() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    started = 0
    deadline = time.monotonic() + 30
    while started < 3 and time.monotonic() < deadline:
        line = child.stdout.readline()
        started += line.startswith("started")
    assert started == 3
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 130, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["kind"] == "RunInterrupted" and result["is_keyboard_interrupt"]
    assert result["completed"] == 4 and result["submitted"] == 10
    assert result["values"] == [0, 1, 2, 3]
    assert result["cleaned"] == [4, 5, 6]
