"""The store under faults, with real parts: a real ``rm -rf`` of its folder, another
real process holding SQLite's write lock, real processes resuming at once, a real
full disk (a small tmpfs), real damaged files, and the process's real RSS."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pytest

import labkit as lk
from labkit.errors import StoreError, StoreLockWarning
from labkit.results import InstanceResult

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX processes")


class Ticker:
    """A 10 ms heartbeat task on the loop: its largest gap is the loop's worst stall."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last)
            last = now

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.sleep(0)  # ticking before the block starts
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


LOCKER = textwrap.dedent(
    """
    import sqlite3, sys, time
    path, seconds = sys.argv[1], float(sys.argv[2])
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    time.sleep(seconds)
    conn.execute("COMMIT")
    """
)


@contextlib.contextmanager
def locked(path: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Another real process holds ``path``'s write lock for ``seconds``."""
    child = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "locked"
        yield child
    finally:
        child.kill()
        child.wait(30)


async def steady(ctx: lk.InstanceContext) -> None:
    for step in range(10):
        ctx.record(loss=float(step))
        await asyncio.sleep(0.03)


# -- the file is deleted or replaced ---------------------------------------------------


@pytest.mark.asyncio
async def test_a_store_whose_folder_is_removed_mid_run_says_so_and_keeps_the_instances(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    store = lk.Store(folder / "labkit.db", flush_interval=0.05)

    async def slow(ctx: lk.InstanceContext) -> dict[str, float]:
        for step in range(20):
            ctx.record(loss=float(step))
            await asyncio.sleep(0.025)
        return {"score": 1.0}

    async def remove() -> None:
        await asyncio.sleep(0.2)
        await asyncio.to_thread(subprocess.run, ["rm", "-rf", str(folder)], check=True)

    remover = asyncio.create_task(remove())
    result = await lk.run_experiment(lk.Experiment("gone", slow), instances=3, store=store)
    await remover
    assert not folder.exists()
    # Nothing the run measured is lost from the result, and it says the store is.
    assert [(i.index, i.ok, len(i.timeline)) for i in result.instances] == [
        (0, True, 20),
        (1, True, 20),
        (2, True, 20),
    ]
    assert result.notes and all("was deleted" in note for note in result.notes)
    assert any("instance 0" in note for note in result.notes)
    # Every later call says so too, instead of reading or writing a file no one will see.
    with pytest.raises(StoreError, match=r"labkit\.db was deleted"):
        store.experiments()
    with pytest.raises(StoreError, match="was deleted"):
        await lk.run_experiment(lk.Experiment("next", steady), store=store)
    with pytest.raises(StoreError, match="was deleted"):
        store.close()


@pytest.mark.asyncio
async def test_a_store_file_replaced_by_another_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labkit.db"
    store = lk.Store(path)
    await lk.run_experiment(lk.Experiment("first", steady), store=store)
    with lk.Store(tmp_path / "other.db") as other:
        await lk.run_experiment(lk.Experiment("other", steady), store=other)
    os.replace(tmp_path / "other.db", path)
    with pytest.raises(StoreError, match="was replaced by another file"):
        store.experiments()
    with pytest.raises(StoreError, match="was replaced by another file"):
        await lk.run_experiment(lk.Experiment("first", steady), store=store, resume=True)
    store.close()
    with lk.Store(path) as replacement:
        assert replacement.experiments()["name"].tolist() == ["other"]


# -- another process holds the write lock ------------------------------------------------


@pytest.mark.asyncio
async def test_a_locked_store_never_blocks_the_loop_and_the_wait_is_announced(
    tmp_path: Path,
) -> None:
    path = tmp_path / "labkit.db"
    hold = 5.0
    with lk.Store(path, timeout=30.0) as store:
        with locked(path, hold), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", StoreLockWarning)
            started = time.perf_counter()
            async with Ticker() as ticker:
                result = await lk.run_experiment(lk.Experiment("wait", steady), store=store)
            elapsed = time.perf_counter() - started
        # The run waited for the lock (begin could not write before it was free)...
        assert elapsed > hold * 0.5
        # ...while the loop kept ticking: its worst stall is far below the lock's length.
        assert ticker.worst < hold / 10, f"the loop stalled {ticker.worst:.2f} s"
        assert [str(w.message) for w in caught if issubclass(w.category, StoreLockWarning)]
        assert not result.notes
        assert store.experiments()["status"].tolist() == ["finished"]


@pytest.mark.asyncio
async def test_a_lock_held_past_the_timeout_fails_the_writes_within_it_and_keeps_the_run(
    tmp_path: Path,
) -> None:
    path = tmp_path / "labkit.db"
    hold = 20.0  # the locker is killed once the run returned
    store = lk.Store(path, timeout=0.5)
    try:
        lock = contextlib.ExitStack()

        async def take_lock(ctx: lk.InstanceContext) -> None:
            if ctx.index == 0:
                await asyncio.to_thread(lock.enter_context, locked(path, hold))
            await steady(ctx)

        started = time.perf_counter()
        with lock:
            result = await lk.run_experiment(
                lk.Experiment("held", take_lock), instances=2, store=store
            )
            elapsed = time.perf_counter() - started
    finally:
        # Samples streamed while the lock was held may have been dropped, which
        # close() reports; the run's result is what this test is about.
        with contextlib.suppress(StoreError):
            store.close()
    assert [i.ok for i in result.instances] == [True, True]
    assert result.notes and all("stayed locked by another process" in n for n in result.notes)
    # Each store call gave up after its timeout, not after the lock was let go.
    assert elapsed < hold / 2


# -- a live run is owned ------------------------------------------------------------------


RUNNER = textwrap.dedent(
    """
    import asyncio, os, sys, time
    import labkit as lk

    path, ran, tag, seconds, wait, go, release = sys.argv[1:8]

    async def fn(ctx):
        with open(ran, "a") as log:
            log.write(f"{tag} {ctx.index}\\n")
        if os.path.exists(ran + f".fail{ctx.index}"):
            os.remove(ran + f".fail{ctx.index}")
            raise RuntimeError("the first try fails")
        for step in range(5):
            ctx.record(loss=float(step))
            await asyncio.sleep(float(seconds) / 5)
        while release != "-" and not os.path.exists(release):
            await asyncio.sleep(0.02)

    async def main():
        while go != "-" and not os.path.exists(go):
            time.sleep(0.001)
        with lk.Store(path, resume_wait=float(wait)) as store:
            print("begin", flush=True)
            try:
                result = await lk.run_experiment(
                    lk.Experiment("owned", fn), instances=4, store=store, resume=True,
                    heartbeat_every=1.0,
                )
            except lk.errors.StoreError as exc:
                print("refused:", exc, flush=True)
                sys.exit(3)
        print("ran:", sorted(i.index for i in result.instances if i.ok), flush=True)

    asyncio.run(main())
    """
)


def runner(
    tmp_path: Path,
    tag: str,
    *,
    seconds: float,
    wait: float = 0.0,
    go: str = "-",
    release: str = "-",
) -> subprocess.Popen[str]:
    """A real process running (or resuming) the experiment ``owned``.

    It starts once the file ``go`` exists, resumes with ``resume_wait=wait``, and
    each instance records for ``seconds``, then holds on until ``release`` exists.
    """
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    args = [tmp_path / "labkit.db", tmp_path / "ran.log", tag, seconds, wait, go, release]
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)], stdout=subprocess.PIPE, text=True
    )


@pytest.fixture
def runners(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Starts :func:`runner` processes; any still running at the end is killed."""
    started: list[subprocess.Popen[str]] = []

    def start(tag: str, **options: Any) -> subprocess.Popen[str]:
        started.append(runner(tmp_path, tag, **options))
        return started[-1]

    yield start
    for process in started:
        process.kill()
        process.wait(30)


def ran(tmp_path: Path) -> list[tuple[str, int]]:
    lines = (tmp_path / "ran.log").read_text().split("\n")
    return [(line.split()[0], int(line.split()[1])) for line in lines if line]


def test_resume_refuses_a_run_that_is_still_alive_or_waits_for_it(
    tmp_path: Path, runners: Callable[..., subprocess.Popen[str]]
) -> None:
    release = tmp_path / "release"
    first = runners("first", seconds=0.1, release=str(release))
    deadline = time.monotonic() + 30
    while not (tmp_path / "ran.log").exists() or len(ran(tmp_path)) < 4:
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.01)
    refused = runners("second", seconds=0.1)
    out, _ = refused.communicate(timeout=60)
    assert refused.returncode == 3, out
    assert "is still running in process" in out and str(first.pid) in out
    # Asked to wait, a resume waits for the live run to end, then runs nothing again.
    waiting = runners("third", seconds=0.1, wait=60)
    assert waiting.stdout is not None
    assert waiting.stdout.readline().strip() == "begin"
    time.sleep(1.0)  # it is waiting now: the first run is held until released
    assert waiting.poll() is None
    release.touch()
    out, _ = waiting.communicate(timeout=90)
    assert waiting.returncode == 0, out
    assert "ran: [0, 1, 2, 3]" in out
    assert first.wait(30) == 0
    assert sorted(ran(tmp_path)) == [("first", i) for i in range(4)]


def test_two_resumes_started_together_never_run_an_instance_twice(
    tmp_path: Path, runners: Callable[..., subprocess.Popen[str]]
) -> None:
    for index in (1, 2, 3):
        (tmp_path / f"ran.log.fail{index}").touch()
    setup = runners("setup", seconds=0.05)
    assert setup.wait(60) == 0
    assert sorted(ran(tmp_path)) == [("setup", i) for i in range(4)]
    go = tmp_path / "go"
    resumers = [runners(f"r{n}", seconds=1.0, go=str(go)) for n in range(2)]
    time.sleep(1.0)  # both started and waiting at the line
    go.touch()
    outs = [process.communicate(timeout=60)[0] for process in resumers]
    codes = sorted(process.returncode for process in resumers)
    # One resumed the experiment; the other found it held (or, started late, done).
    assert codes in ([0, 3], [0, 0]), outs
    again = [entry for entry in ran(tmp_path) if entry[0] != "setup"]
    assert sorted(index for _, index in again) == [1, 2, 3], again
    with lk.Store(tmp_path / "labkit.db") as store:
        (experiment_id,) = store.experiments()["id"]
        assert [i.ok for i in store.load(experiment_id).instances] == [True] * 4


@pytest.mark.asyncio
async def test_a_run_that_lost_its_experiment_to_a_resume_writes_no_more_to_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "labkit.db"
    with lk.Store(path) as stale, lk.Store(path) as fresh:
        experiment_id, _ = stale.begin(name="e", params={}, instances=2, config={}, resume=False)
        with pytest.raises(StoreError, match="still running in process"):
            fresh.begin(name="e", params={}, instances=2, config={}, resume=True)
        # Its heartbeat stops for longer than three intervals: it reads as dead.
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("UPDATE experiments SET heartbeat = heartbeat - 60")
        conn.close()
        taken, _ = fresh.begin(name="e", params={}, instances=2, config={}, resume=True)
        assert taken == experiment_id
        timeline = pd.DataFrame({"t": [0.0], "loss": [1.0]})
        late = InstanceResult(index=0, ok=True, error=None, timeline=timeline)
        with pytest.raises(StoreError, match="taken over by process"):
            await stale.finish_instance(experiment_id, late)
        stale.heartbeat(experiment_id, every=1.0)
        stale.sample(experiment_id, 1, 0.0, {"loss": 2.0})
        stale.flush()
        assert len(fresh.load(experiment_id).instances) == 0
        assert conn_rows(path, "SELECT COUNT(*) FROM samples") == [(0,)]


def conn_rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# -- memory and loop stalls per recorded sample -------------------------------------------


@pytest.mark.asyncio
async def test_recording_samples_holds_little_memory_and_never_stalls_the_loop(
    tmp_path: Path,
) -> None:
    samples = 600_000
    process = psutil.Process()
    with lk.Store(tmp_path / "labkit.db") as store:
        experiment_id, _ = store.begin(name="big", params={}, instances=1, config={}, resume=False)
        offsets = np.arange(samples, dtype=float) * 0.001
        timeline = pd.DataFrame({"t": offsets, "loss": offsets * 2.0})
        final = InstanceResult(index=0, ok=True, error=None, timeline=timeline)
        values = offsets.tolist()
        gc.collect()
        before = process.memory_info().rss
        peak = before
        done = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, process.memory_info().rss)
                time.sleep(0.002)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            async with Ticker() as ticker:
                for step, t in enumerate(values):
                    store.sample(experiment_id, 0, t, {"loss": t})
                    if step % 2000 == 0:
                        await asyncio.sleep(0)
                started = time.perf_counter()
                await store.finish_instance(experiment_id, final)
                finishing = time.perf_counter() - started
        finally:
            done.set()
            watcher.join()
        per_sample = (max(peak, process.memory_info().rss) - before) / samples
        print(
            f"store RSS per recorded sample: {per_sample:.1f} B (peak); worst loop stall "
            f"{ticker.worst * 1000:.0f} ms; finish_instance {finishing * 1000:.0f} ms"
        )
        assert per_sample <= 64
        # Finishing encodes and writes the whole timeline, off the loop, in chunks.
        assert ticker.worst < max(finishing / 4, 0.1)
        loaded = store.load(experiment_id).instances[0].timeline
    pd.testing.assert_frame_equal(loaded, timeline)


def test_samples_waiting_behind_another_process_lock_hold_a_few_bytes_each(tmp_path: Path) -> None:
    path = tmp_path / "labkit.db"
    samples = 300_000
    process = psutil.Process()
    with lk.Store(path, timeout=60.0) as store, warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreLockWarning)
        experiment_id, _ = store.begin(name="held", params={}, instances=1, config={}, resume=False)
        values = np.arange(samples, dtype=float).tolist()
        # A sampler's cpu beside the function's loss: every sample lacks one metric.
        metrics = [{"cpu": 1.0}, {"loss": 2.0}]
        gc.collect()
        with locked(path, 60.0):
            before = process.memory_info().rss
            for step, t in enumerate(values):
                store.sample(experiment_id, 0, t, metrics[step % 2])
            held = (process.memory_info().rss - before) / samples
            assert store.stats().samples_written == 0  # nothing could be committed
        store.flush()  # the lock is gone: everything buffered is committed
        assert store.stats().samples_written == samples
    print(f"RSS per sample waiting for the writer: {held:.1f} B")
    assert held <= 64


# -- every failure is a StoreError naming the file, experiment and instance ---------------


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real filesystem with a few kilobytes left: a 256 KiB tmpfs, nearly filled."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (disk / "filler").write_bytes(bytes(200_000))
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_opening_a_store_on_a_full_disk_is_a_store_error(full_disk: Path) -> None:
    path = full_disk / "labkit.db"
    with pytest.raises(StoreError, match=f"{re.escape(str(path))}.*disk is full"):
        lk.Store(path)


@pytest.mark.asyncio
async def test_a_disk_filling_up_mid_run_names_file_experiment_and_instance(
    full_disk: Path,
) -> None:
    (full_disk / "filler").unlink()  # room to open the store and begin
    path = full_disk / "labkit.db"
    store = lk.Store(path)

    async def fill_then_record(ctx: lk.InstanceContext) -> None:
        with contextlib.suppress(OSError), (full_disk / "filler").open("wb") as filler:
            while True:
                filler.write(bytes(4096))
                filler.flush()
        for step in range(20_000):  # a timeline larger than any room left in the WAL
            ctx.record(loss=float(step))

    result = await lk.run_experiment(lk.Experiment("full", fill_then_record), store=store)
    with contextlib.suppress(StoreError):
        store.close()  # streamed samples were dropped too: close() says so
    assert [i.ok for i in result.instances] == [True]
    recorded = f"recording instance 0 of experiment {result.experiment_id}"
    (note,) = [note for note in result.notes if "instance 0" in note]
    assert recorded in note and str(path) in note and "disk is full" in note


@pytest.mark.asyncio
async def test_damaged_pages_are_a_store_error_naming_the_experiment(tmp_path: Path) -> None:
    path = tmp_path / "labkit.db"
    with lk.Store(path) as store:
        result = await lk.run_experiment(lk.Experiment("hurt", steady), instances=2, store=store)
    experiment_id = result.experiment_id
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 3 * page
    data[page:] = bytes([0xA5]) * (len(data) - page)  # every page after the header
    path.write_bytes(bytes(data))
    named = f"{re.escape(str(path))}.*experiment {experiment_id}"
    with lk.Store(path, read_only=True) as store, pytest.raises(StoreError, match=named):
        store.load(str(experiment_id))


@pytest.mark.asyncio
async def test_damaged_sample_json_is_a_store_error_naming_the_instance(tmp_path: Path) -> None:
    path = tmp_path / "labkit.db"
    with lk.Store(path) as store:
        result = await lk.run_experiment(lk.Experiment("json", steady), instances=2, store=store)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE samples SET data = '{\"t\": [0.0,' WHERE instance = 1")
    conn.close()
    with lk.Store(path) as store, pytest.raises(StoreError) as raised:
        store.load(str(result.experiment_id))
    message = str(raised.value)
    assert str(path) in message and f"instance 1 of experiment {result.experiment_id}" in message
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE experiments SET summary = '{'")
    conn.close()
    with lk.Store(path) as store, pytest.raises(StoreError) as raised:
        store.experiments()
    assert f"experiment {result.experiment_id} is damaged" in str(raised.value)


class _HeldBegin(lk.Store):
    """A store whose ``begin`` waits until let go, as one waiting for another's lock;
    ``marked`` is set once a run was marked interrupted."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered = threading.Event()
        self.go = threading.Event()
        self.marked = threading.Event()

    def begin(self, **kwargs: Any) -> tuple[str, dict[int, Any]]:
        self.entered.set()
        assert self.go.wait(10)
        return super().begin(**kwargs)

    def mark_interrupted(self, experiment_id: str) -> None:
        super().mark_interrupted(experiment_id)
        self.marked.set()


@pytest.mark.asyncio
@pytest.mark.parametrize("cancelled", ["while begin waits", "once its instance runs"])
async def test_a_run_cancelled_while_its_record_begins_is_left_interrupted(
    tmp_path: Path, cancelled: str
) -> None:
    started = asyncio.Event()

    class Started(lk.Watcher):
        def on_instance_started(self, event: object) -> None:
            started.set()

    async def steady(ctx: lk.InstanceContext) -> None:
        await ctx.sleep(10)

    with _HeldBegin(tmp_path / "lab.db") as store:
        experiment = lk.Experiment("held", steady)
        run = asyncio.ensure_future(lk.run_experiment(experiment, store=store, on_event=Started()))
        assert await asyncio.to_thread(store.entered.wait, 10)
        if cancelled == "while begin waits":
            run.cancel()
            store.go.set()
        else:
            store.go.set()  # begin returns: the run goes on into its heartbeat and runner
            await started.wait()
            run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        # The thread or the cancelled run marks it (queued to the store's writer).
        assert await asyncio.to_thread(store.marked.wait, 10)
        store.flush()
        assert list(store.experiments()["status"]) == ["interrupted"]
