"""Ctrl-C during run_parallel_sync: in-flight work is cancelled and cleaned up, the
finished part of the report survives on the raised RunInterrupted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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


SLOW_CLEANUP = textwrap.dedent(
    """
    import asyncio, sys
    import labkit as lk

    async def work(i):
        if i < 2:
            return i
        print("started", i, flush=True)
        try:
            await asyncio.sleep(3600)
        finally:
            print("cleaning", i, flush=True)
            await asyncio.sleep(3600)  # a cleanup that never ends by itself

    try:
        lk.run_parallel_sync(work, range(6), max_concurrency=3)
    except lk.errors.RunInterrupted as exc:
        print("report", exc.report.stats.completed, exc.report.stats.submitted, flush=True)
        if sys.argv[1] == "reraise":
            raise
    """
)


def _interrupt_twice(mode: str) -> tuple[subprocess.Popen[str], list[str]]:
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLEANUP, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while sum(line.startswith("started") for line in lines) < 1 and time.monotonic() < deadline:
        lines.append(child.stdout.readline())
    child.send_signal(signal.SIGINT)
    while sum(line.startswith("cleaning") for line in lines) < 1 and time.monotonic() < deadline:
        lines.append(child.stdout.readline())
    child.send_signal(signal.SIGINT)  # the second Ctrl-C, during the cleanup
    return child, lines


def test_a_second_ctrl_c_still_raises_run_interrupted_with_the_report() -> None:
    child, lines = _interrupt_twice("catch")
    out, err = child.communicate(timeout=30)
    reports = [line for line in [*lines, *out.splitlines()] if line.startswith("report")]
    assert reports == ["report 2 6"], err
    assert child.returncode == 0, err


def test_an_uncaught_run_interrupted_exits_like_ctrl_c() -> None:
    child, _ = _interrupt_twice("reraise")
    _, err = child.communicate(timeout=30)
    assert "RunInterrupted" in err
    # killed by SIGINT after a normal shutdown, as Python does for KeyboardInterrupt (130)
    assert child.returncode in (-signal.SIGINT, 130), err


def _interrupted_cli(tmp_path: object, signals: int) -> tuple[int, str]:
    child = subprocess.Popen(
        [sys.executable, "-m", "labkit.cli", "demo", "--duration", "30"],
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = Path(str(tmp_path)) / "labkit.db"
    _wait_for_status(db, child, "running")
    child.send_signal(signal.SIGINT)
    if signals == 2:
        # The second Ctrl-C once the first one's shutdown is under way: the run
        # was cancelled and marked interrupted, the command has not ended yet.
        _wait_for_status(db, child, "interrupted")
        child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    return child.returncode, err


def _wait_for_status(db: Path, child: subprocess.Popen[str], status: str) -> None:
    """Until the demo's experiment is recorded with ``status`` (polling the store, whose
    writer is another process: there is no clock to inject)."""
    from labkit.errors import StoreError
    from labkit.store import Store

    deadline = time.monotonic() + 60
    while True:
        assert child.poll() is None, f"the demo ended before it was {status}"
        assert time.monotonic() < deadline, f"the demo never was {status}"
        try:
            with Store(db, read_only=True) as store:
                frame = store.experiments()
        except StoreError:  # not created yet, or its schema not written yet
            frame = None
        if frame is not None and not frame.empty and frame["status"].iloc[0] == status:
            return
        time.sleep(0.05)


def test_the_command_line_exits_130_on_ctrl_c(tmp_path: object) -> None:
    code, err = _interrupted_cli(tmp_path, 1)
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err


def test_a_second_ctrl_c_still_ends_the_command_line_as_an_interrupt(tmp_path: object) -> None:
    code, err = _interrupted_cli(tmp_path, 2)
    # 130 from labkit, or death by SIGINT when the second one lands as it exits:
    # the shell shows 130 either way
    assert code in (130, -signal.SIGINT), err
