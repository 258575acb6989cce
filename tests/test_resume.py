"""Resume after a real crash: SIGKILL a process mid-experiment, then run it again."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from labkit.store import Store

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

INSTANCES = 8

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from labkit.experiment import Experiment, run_experiment
    from labkit.store import Store

    path, ran_log, committed_log, run = sys.argv[1:5]

    class LoggingStore(Store):
        # Logs an instance only once the store has returned from committing it.
        async def finish_instance(self, experiment_id, result):
            await super().finish_instance(experiment_id, result)
            with open(committed_log, "a") as log:
                log.write(f"{result.index}\\n")

    async def fn(ctx):
        with open(ran_log, "a") as log:
            log.write(f"{run} {ctx.index}\\n")
        for step in range(10):
            ctx.record(cpu=float(ctx.index * 100 + step), errors=float(step % 3 == 0))
            await asyncio.sleep(0.015)
        return {"score": float(ctx.index)}

    async def main():
        with LoggingStore(path) as store:
            await run_experiment(
                Experiment("crashy", fn, params={"k": 1}),
                instances=INSTANCES,
                store=store,
                resume=True,
                max_concurrency=2,
            )

    asyncio.run(main())
    """
).replace("INSTANCES", str(INSTANCES))


def committed_in_db(path: Path) -> set[int]:
    with Store(path) as store:
        frame = store.experiments()
        if frame.empty:
            return set()
        (experiment_id,) = frame["id"]
        return {instance.index for instance in store.load(experiment_id).instances}


def read_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def start(tmp_path: Path, run: str) -> subprocess.Popen[bytes]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    args = [tmp_path / "labkit.db", tmp_path / "ran.log", tmp_path / "committed.log", run]
    return subprocess.Popen([sys.executable, str(script), *map(str, args)])


def kill_after_commits(tmp_path: Path, run: str, commits: int) -> None:
    """Start a run and SIGKILL it once ``commits`` instances in total have committed."""
    child = start(tmp_path, run)
    try:
        deadline = time.monotonic() + 60
        while len(read_lines(tmp_path / "committed.log")) < commits:
            assert child.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(30)
    assert child.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_loses_no_finished_instance_and_resume_reruns_only_the_rest(
    tmp_path: Path,
) -> None:
    ran = tmp_path / "ran.log"
    committed = tmp_path / "committed.log"

    kill_after_commits(tmp_path, "first", commits=2)
    after_first = committed_in_db(tmp_path / "labkit.db")
    # Everything the store said was committed survived the kill.
    assert {int(i) for i in read_lines(committed)} <= after_first
    assert 2 <= len(after_first) < INSTANCES

    kill_after_commits(tmp_path, "second", commits=len(read_lines(committed)) + 2)
    after_second = committed_in_db(tmp_path / "labkit.db")
    assert {int(i) for i in read_lines(committed)} <= after_second
    assert after_first < after_second

    child = start(tmp_path, "third")
    assert child.wait(60) == 0

    runs: dict[str, list[int]] = {}
    lines = read_lines(ran)
    for tag, index in zip(lines[::2], lines[1::2], strict=True):
        runs.setdefault(tag, []).append(int(index))
    # Finished instances were loaded, never rerun: each later run started only the
    # instances missing at its start.
    assert set(runs["second"]).isdisjoint(after_first)
    assert set(runs["third"]) == set(range(INSTANCES)) - after_second
    assert len(runs["third"]) == len(set(runs["third"]))

    with Store(tmp_path / "labkit.db") as store:
        frame = store.experiments()
        assert len(frame) == 1 and frame["status"].tolist() == ["finished"]
        result = store.load(frame["id"].iloc[0])
    assert [instance.index for instance in result.instances] == list(range(INSTANCES))
    assert all(instance.ok for instance in result.instances)
    for instance in result.instances:
        # Exactly one attempt's samples: the killed attempts left nothing behind.
        assert instance.timeline["cpu"].tolist() == [instance.index * 100.0 + s for s in range(10)]
        assert instance.summary["score"] == float(instance.index)
    assert result.summary["num_instances"] == INSTANCES
    assert result.summary["num_failed"] == 0


HEARTBEAT_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from labkit.experiment import Experiment, run_experiment
    from labkit.store import Store

    path, every = sys.argv[1], float(sys.argv[2])

    async def fn(ctx):
        ctx.record(loss=1.0 / (ctx.index + 1))
        if ctx.index == 1:
            await asyncio.sleep(3600)  # killed long before this ends
        return {"score": float(ctx.index)}

    async def main():
        with Store(path) as store:
            await run_experiment(
                Experiment("killed", fn), instances=2, store=store, heartbeat_every=every
            )

    asyncio.run(main())
    """
)


def test_a_killed_run_reads_as_interrupted_and_resume_picks_it_up(tmp_path: Path) -> None:
    import asyncio

    from labkit.experiment import Experiment, run_experiment

    every = 0.5  # a stall of the loaded machine under 1.5 s must not read as death
    db = tmp_path / "labkit.db"
    script = tmp_path / "child.py"
    script.write_text(HEARTBEAT_CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(db), str(every)])
    try:
        deadline = time.monotonic() + 60
        while True:
            assert child.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "instance 0 never committed"
            if db.exists():
                with Store(db) as store:
                    frame = store.experiments()
                if not frame.empty and frame["succeeded"].iloc[0] == 1:
                    break
            time.sleep(0.02)
        with Store(db) as store:
            alive = store.experiments()
        # While the process lives its heartbeat is fresh.
        assert alive["status"].tolist() == ["running"]
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(30)
    assert child.returncode == -signal.SIGKILL

    with Store(db) as store:
        frame = store.experiments()
        beat = frame["heartbeat"].iloc[0].timestamp()
        # Judged against a given time: fresh within a few intervals, dead past them.
        assert store.experiments(now=beat + every)["status"].tolist() == ["running"]
        assert store.experiments(now=beat + 3 * every + 0.01)["status"].tolist() == ["interrupted"]
        deadline = time.monotonic() + 30
        while store.experiments()["status"].tolist() != ["interrupted"]:
            assert time.monotonic() < deadline, "the killed run never read as interrupted"
            time.sleep(0.05)

        ran: list[int] = []

        async def fn(ctx: object) -> dict[str, float]:
            index = ctx.index  # type: ignore[attr-defined]
            ran.append(index)
            ctx.record(loss=1.0 / (index + 1))  # type: ignore[attr-defined]
            return {"score": float(index)}

        result = asyncio.run(
            run_experiment(Experiment("killed", fn), instances=2, store=store, resume=True)
        )
        assert ran == [1]  # instance 0 was loaded, not rerun
        assert result.ok and [i.summary["score"] for i in result.instances] == [0.0, 1.0]
        final = store.experiments()
    assert final["status"].tolist() == ["finished"]
    assert final["id"].iloc[0] == frame["id"].iloc[0]
