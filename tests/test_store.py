"""The experiment store against a real SQLite file: schema, writer, queries, processes."""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import labkit.store.filesystems as filesystems
from labkit.errors import ConfigError, MissingDependency, StoreError
from labkit.results import ExperimentRecorder, ExperimentResult, InstanceResult
from labkit.store import MIGRATIONS, Store, fingerprint, network_filesystem


def wait_until(condition: Callable[[], bool], limit: float = 5.0) -> bool:
    """Poll ``condition`` until it holds or ``limit`` seconds pass."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection that sees only what the store has committed."""
    return sqlite3.connect(path, isolation_level=None)


def query(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = raw(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def instance(index: int, *, ok: bool = True, n: int = 20, scale: float = 1.0) -> InstanceResult:
    t = np.arange(n, dtype=float) * 0.5
    timeline = pd.DataFrame({"t": t, "cpu": scale * (10.0 + t + index), "errors": t % 2})
    if not ok:
        return InstanceResult(index=index, ok=False, error="RuntimeError: boom", timeline=timeline)
    return InstanceResult(
        index=index,
        ok=True,
        error=None,
        timeline=timeline,
        summary={"cpu_peak": float(timeline["cpu"].max()), "error_count": 3},
        started=100.0 + index,
        finished=110.0 + index,
        gpu_uuids=(f"GPU-{index}",),
        sandbox_id=f"sb-{index}",
        attempts=2,
    )


def begin(store: Store, name: str = "exp", *, resume: bool = False, **params: Any) -> str:
    experiment_id, _ = store.begin(
        name=name, params=params or {"lr": 0.1}, instances=3, config={"duration": 5}, resume=resume
    )
    return experiment_id


# -- opening ---------------------------------------------------------------------


def test_opens_one_file_in_wal_with_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "labkit.db"
    with Store(path) as store:
        assert isinstance(store, ExperimentRecorder)
        assert store.path == path
        assert query(path, "PRAGMA journal_mode") == [("wal",)]
        assert query(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
        tables = {row[0] for row in query(path, "SELECT name FROM sqlite_master")}
        assert {"experiments", "instances", "samples"} <= tables
    # A second open migrates nothing and keeps the data.
    with Store(path) as store:
        assert store.experiments().empty


def test_default_path_is_labkit_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Store() as store:
        assert store.path == tmp_path / "labkit.db"
    assert (tmp_path / "labkit.db").exists()


def test_synchronous_full_is_an_option(tmp_path: Path) -> None:
    with Store(tmp_path / "a.db", synchronous="full") as store:
        assert store._reader.execute("PRAGMA synchronous").fetchone() == (2,)
    with Store(tmp_path / "b.db") as store:
        assert store._reader.execute("PRAGMA synchronous").fetchone() == (1,)
    with pytest.raises(ConfigError, match="synchronous"):
        Store(tmp_path / "c.db", synchronous="off")  # type: ignore[arg-type]


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labkit.db"
    conn = raw(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)


def test_network_filesystems_are_detected_from_mounts(tmp_path: Path) -> None:
    share = tmp_path / "my share"
    (share / "runs").mkdir(parents=True)
    (tmp_path / "smb").mkdir()
    mounts = tmp_path / "mounts"
    escaped = str(share).replace(" ", "\\040")
    mounts.write_text(
        "/dev/vda / ext4 rw 0 0\n"
        f"server:/export {escaped} nfs4 rw,relatime 0 0\n"
        f"//host/x {tmp_path}/smb cifs rw 0 0\n"
    )
    assert network_filesystem(share / "runs" / "labkit.db", mounts) == "nfs4"
    assert network_filesystem(tmp_path / "smb" / "missing" / "labkit.db", mounts) == "cifs"
    assert network_filesystem(tmp_path / "local.db", mounts) is None
    assert network_filesystem(tmp_path, tmp_path / "no-such-mounts") is None


def test_a_store_on_a_network_filesystem_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(f"server:/export {tmp_path} nfs rw 0 0\n")
    monkeypatch.setattr(filesystems, "_MOUNTS", mounts)
    with pytest.raises(StoreError, match=r"network filesystem \(nfs\)"):
        Store(tmp_path / "labkit.db")
    assert not (tmp_path / "labkit.db").exists()


def test_writes_wait_for_another_writer_then_succeed(tmp_path: Path) -> None:
    path = tmp_path / "labkit.db"
    with Store(path, timeout=10.0) as store:
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        released = threading.Event()

        def release() -> None:
            time.sleep(0.3)
            released.set()
            holder.execute("COMMIT")

        thread = threading.Thread(target=release)
        thread.start()
        experiment_id = begin(store)  # blocks on the lock, then gets it
        assert released.is_set()
        thread.join()
        holder.close()
        assert store.experiments()["id"].tolist() == [experiment_id]


def test_a_lock_held_past_the_timeout_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "labkit.db"
    with Store(path, timeout=0.05) as store:
        holder = raw(path)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError, match="locked"):
                begin(store)
        finally:
            holder.execute("COMMIT")
            holder.close()
        begin(store)  # the store still works once the lock is free
        assert len(store.experiments()) == 1


def test_deferred_transactions_would_fail_where_immediate_ones_wait(tmp_path: Path) -> None:
    # Why every write starts with BEGIN IMMEDIATE: a deferred transaction that read
    # before another connection committed cannot write, whatever the timeout.
    path = tmp_path / "labkit.db"
    with Store(path, timeout=5.0) as store:
        first = begin(store)
        reader = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM experiments").fetchone()
        begin(store, name="other")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            reader.execute("UPDATE experiments SET status = 'x' WHERE id = ?", (first,))
        reader.execute("ROLLBACK")
        reader.close()


@pytest.mark.asyncio
async def test_every_write_transaction_begins_immediate(tmp_path: Path) -> None:
    statements: list[str] = []
    with Store(tmp_path / "labkit.db") as store:
        store._writer._conn.set_trace_callback(statements.append)
        experiment_id = begin(store, resume=True)
        store.sample(experiment_id, 0, 0.0, {"cpu": 1.0})
        store.flush()
        await store.finish_instance(experiment_id, instance(0))
        store.mark_interrupted(experiment_id)  # the run ended: a resume may take it over
        begin(store, resume=True)
        store.delete(experiment_id)
    heads = [s.split()[0].upper() for s in statements]
    assert heads.count("INSERT") >= 3 and "UPDATE" in heads and "DELETE" in heads
    inside = False
    for statement, head in zip(statements, heads, strict=True):
        if head == "BEGIN":
            assert statement.upper() == "BEGIN IMMEDIATE"
            inside = True
        elif head in ("COMMIT", "ROLLBACK"):
            inside = False
        elif head in ("INSERT", "UPDATE", "DELETE", "SELECT"):
            assert inside, f"{statement!r} ran outside a BEGIN IMMEDIATE transaction"


# -- samples -------------------------------------------------------------------------


def test_samples_are_committed_in_batches_of_batch_rows(tmp_path: Path) -> None:
    path = tmp_path / "labkit.db"
    with Store(path, batch_rows=100, flush_interval=30.0) as store:
        experiment_id = begin(store)
        for i in range(99):
            store.sample(experiment_id, 0, i * 0.01, {"cpu": float(i)})
        time.sleep(0.2)
        assert store.stats().samples_written == 0
        assert query(path, "SELECT COUNT(*) FROM samples") == [(0,)]
        store.sample(experiment_id, 0, 0.99, {"cpu": 99.0})
        assert wait_until(lambda: store.stats().samples_written == 100)
        assert query(path, "SELECT SUM(n) FROM samples") == [(100,)]


def test_a_partial_batch_is_committed_after_flush_interval(tmp_path: Path) -> None:
    path = tmp_path / "labkit.db"
    with Store(path, batch_rows=1000, flush_interval=0.05) as store:
        experiment_id = begin(store)
        for i in range(5):
            store.sample(experiment_id, 1, float(i), {"cpu": 1.0})
        assert wait_until(lambda: query(path, "SELECT SUM(n) FROM samples") == [(5,)])
        assert store.stats().batches >= 1


def test_samples_are_stored_as_column_chunks(tmp_path: Path) -> None:
    path = tmp_path / "labkit.db"
    with Store(path, batch_rows=10_000, flush_interval=30.0) as store:
        experiment_id = begin(store)
        store.sample(experiment_id, 0, 0.0, {"cpu": 1.5})
        store.sample(experiment_id, 0, 0.5, {"cpu": 2.5, "errors": 1.0})
        store.sample(experiment_id, 1, 0.0, {"memory": np.float32(3.0)})
        store.flush()
        rows = query(path, "SELECT instance, n, data FROM samples ORDER BY instance")
    assert [(row[0], row[1]) for row in rows] == [(0, 2), (1, 1)]
    first = json.loads(rows[0][2])
    errors = first.pop("errors")
    # A metric a sample lacks is NaN, as it loads.
    assert math.isnan(errors[0]) and errors[1] == 1.0
    assert first == {"t": [0.0, 0.5], "cpu": [1.5, 2.5]}
    assert json.loads(rows[1][2]) == {"t": [0.0], "memory": [3.0]}


def test_non_finite_sample_values_are_streamed_as_recorded(tmp_path: Path) -> None:
    path = tmp_path / "labkit.db"
    with Store(path) as store:
        experiment_id = begin(store)
        store.sample(experiment_id, 0, 0.0, {"cpu": float("nan"), "memory": float("inf")})
        store.flush()
        (data,) = query(path, "SELECT data FROM samples")[0]
    stored = json.loads(data)
    assert math.isnan(stored["cpu"][0]) and stored["memory"] == [math.inf]


# -- finishing and resuming ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_finished_instance_is_committed_before_finish_instance_returns(
    tmp_path: Path,
) -> None:
    path = tmp_path / "labkit.db"
    with Store(path, batch_rows=10_000, flush_interval=30.0) as store:
        experiment_id = begin(store)
        for i in range(50):
            store.sample(experiment_id, 0, i * 0.5, {"cpu": 1.0})
        store.sample(experiment_id, 1, 0.0, {"cpu": 1.0})
        result = instance(0)
        await store.finish_instance(experiment_id, result)
        # A separate connection sees it at once: no buffer holds it back.
        assert query(path, "SELECT status, attempts FROM instances") == [("ok", 2)]
        # The streamed samples of instance 0 were replaced by its final timeline.
        chunks = query(path, "SELECT n FROM samples WHERE instance = 0")
        assert chunks == [(len(result.timeline),)]
        # Samples arriving after an instance finished are not appended to it.
        store.sample(experiment_id, 0, 99.0, {"cpu": 5.0})
        store.flush()
        assert query(path, "SELECT SUM(n) FROM samples WHERE instance = 0") == [(20,)]
        assert query(path, "SELECT SUM(n) FROM samples WHERE instance = 1") == [(1,)]


@pytest.mark.asyncio
async def test_resume_returns_succeeded_instances_and_forgets_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "labkit.db"
    with Store(path) as store:
        experiment_id = begin(store, resume=True)
        await store.finish_instance(experiment_id, instance(0))
        await store.finish_instance(experiment_id, instance(1, ok=False))
        store.sample(experiment_id, 2, 0.0, {"cpu": 1.0})  # instance 2 never finished
        store.flush()
    with Store(path) as store:
        again, done = store.begin(
            name="exp", params={"lr": 0.1}, instances=3, config={"duration": 9}, resume=True
        )
        assert again == experiment_id
        assert sorted(done) == [0]
        loaded, original = done[0], instance(0)
        pd.testing.assert_frame_equal(loaded.timeline, original.timeline)
        assert loaded.summary == original.summary
        assert (loaded.started, loaded.finished) == (original.started, original.finished)
        assert (loaded.gpu_uuids, loaded.sandbox_id, loaded.attempts) == (("GPU-0",), "sb-0", 2)
        # The failed and unfinished instances will run again: nothing of them is left.
        assert query(path, "SELECT idx FROM instances") == [(0,)]
        assert query(path, "SELECT DISTINCT instance FROM samples") == [(0,)]
        row = store.experiments().iloc[0]
        assert (row["status"], row["succeeded"], row["failed"]) == ("running", 1, 0)
        # Without resume, or with other params or instance count, it is a new experiment.
        assert begin(store, resume=False) != experiment_id
        assert begin(store, resume=True, lr=0.2) != experiment_id
        other, done = store.begin(
            name="exp", params={"lr": 0.1}, instances=4, config={}, resume=True
        )
        assert other != experiment_id and done == {}


def test_fingerprint_is_canonical_and_rejects_non_json_params() -> None:
    a = fingerprint("exp", {"lr": 0.1, "layers": [64, 32], "opt": {"b": 1, "a": 2}}, 3)
    b = fingerprint("exp", {"opt": {"a": 2, "b": 1}, "layers": (64, 32), "lr": np.float64(0.1)}, 3)
    assert a == b and len(a) == 64
    assert fingerprint("exp", {"lr": 0.1}, 4) != fingerprint("exp", {"lr": 0.1}, 3)
    assert fingerprint("exp2", {"lr": 0.1}, 3) != fingerprint("exp", {"lr": 0.1}, 3)
    with pytest.raises(ConfigError, match="params"):
        fingerprint("exp", {"fn": object()}, 1)


def test_fingerprint_is_pinned() -> None:
    # A stored experiment must be found again by every later process and version:
    # the digest of this input may never change.
    expected = "ac86d3316ff14c77fd609534a171f530e2446cae92a5423302b8cbce5f511798"
    assert fingerprint("exp", {"b": [1, 2.5, None], "a": "x"}, 2) == expected


# -- queries ---------------------------------------------------------------------------


async def record(store: Store, instances: list[InstanceResult], **params: Any) -> ExperimentResult:
    experiment_id, _ = store.begin(
        name="exp",
        params=params or {"lr": 0.1},
        instances=len(instances),
        config={"duration": 5.0, "runner.retry": None},
        resume=False,
    )
    for item in instances:
        store.sample(experiment_id, item.index, 0.0, {"cpu": 1.0})
        await store.finish_instance(experiment_id, item)
    result = ExperimentResult.build(
        "exp",
        params or {"lr": 0.1},
        instances,
        {"duration": 5.0, "sandbox": None},
        experiment_id=experiment_id,
    )
    await store.finish(experiment_id, result)
    return result


@pytest.mark.asyncio
async def test_load_gives_back_the_same_result(tmp_path: Path) -> None:
    with Store(tmp_path / "labkit.db") as store:
        result = await record(store, [instance(0), instance(1, scale=2.0), instance(2, ok=False)])
        loaded = store.load(result.experiment_id or "")
    assert loaded.experiment_id == result.experiment_id
    assert (loaded.name, loaded.params, loaded.config) == (
        result.name,
        result.params,
        result.config,
    )
    pd.testing.assert_frame_equal(loaded.averaged, result.averaged)
    assert loaded.summary == result.summary
    assert loaded.outliers == result.outliers
    assert [i.index for i in loaded.instances] == [0, 1, 2]
    assert [i.ok for i in loaded.instances] == [True, True, False]
    assert loaded.instances[2].error == "RuntimeError: boom"
    for mine, theirs in zip(loaded.instances, result.instances, strict=True):
        pd.testing.assert_frame_equal(mine.timeline, theirs.timeline)


@pytest.mark.asyncio
async def test_a_recorded_run_loads_as_the_run_returned_it(tmp_path: Path) -> None:
    from labkit.experiment import Experiment, InstanceContext, run_experiment

    async def noisy(ctx: InstanceContext) -> dict[str, float]:
        for step in range(6):
            ctx.record(cpu=10.0 * ctx.index + step, errors=float(step == 3))
        if ctx.index == 3:
            raise RuntimeError("instance 3 fails")
        return {"score": 1.5 * ctx.index}

    with Store(tmp_path / "labkit.db") as store:
        result = await run_experiment(
            Experiment("noisy", noisy, params={"lr": 0.1}), instances=4, store=store
        )
        loaded = store.load(result.experiment_id or "")
    pd.testing.assert_frame_equal(loaded.averaged, result.averaged)
    assert loaded.summary == result.summary
    assert loaded.config == result.config
    assert [i.ok for i in loaded.instances] == [True, True, True, False]
    assert loaded.instances[3].error == result.instances[3].error


@pytest.mark.asyncio
async def test_experiments_lists_one_row_per_experiment(tmp_path: Path) -> None:
    with Store(tmp_path / "labkit.db") as store:
        first = await record(store, [instance(0), instance(1, ok=False)])
        failed = await record(store, [instance(0, ok=False)], lr=0.5)
        running = begin(store, lr=0.9)
        frame = store.experiments()
    assert frame["id"].tolist() == [first.experiment_id, failed.experiment_id, running]
    assert frame["status"].tolist() == ["finished", "failed", "running"]
    assert frame["succeeded"].tolist() == [1, 0, 0]
    assert frame["failed"].tolist() == [1, 1, 0]
    assert frame["params"].tolist() == [{"lr": 0.1}, {"lr": 0.5}, {"lr": 0.9}]
    assert frame["summary"].iloc[0]["num_instances"] == 2
    assert frame["finished"].isna().tolist() == [False, False, True]
    assert str(frame["created"].dtype).startswith("datetime64")


@pytest.mark.asyncio
async def test_find_returns_only_finished_experiments(tmp_path: Path) -> None:
    with Store(tmp_path / "labkit.db") as store:
        result = await record(store, [instance(0)])
        await record(store, [instance(0, ok=False)], lr=0.5)
        assert store.find("exp", {"lr": 0.1}, 1) == result.experiment_id
        assert store.find("exp", {"lr": 0.5}, 1) is None  # every instance failed
        assert store.find("exp", {"lr": 0.1}, 2) is None


@pytest.mark.asyncio
async def test_delete_removes_everything_of_one_experiment(tmp_path: Path) -> None:
    path = tmp_path / "labkit.db"
    with Store(path) as store:
        gone = await record(store, [instance(0), instance(1)])
        kept = await record(store, [instance(0)], lr=0.3)
        store.delete(gone.experiment_id or "")
        assert store.experiments()["id"].tolist() == [kept.experiment_id]
        assert query(path, "SELECT DISTINCT experiment_id FROM samples") == [(kept.experiment_id,)]
        assert query(path, "SELECT DISTINCT experiment_id FROM instances") == [
            (kept.experiment_id,)
        ]
        with pytest.raises(StoreError, match="no experiment"):
            store.delete(gone.experiment_id or "")
        with pytest.raises(StoreError, match="no experiment"):
            store.load(gone.experiment_id or "")


@pytest.mark.asyncio
async def test_export_writes_csv_and_parquet(tmp_path: Path) -> None:
    with Store(tmp_path / "labkit.db") as store:
        result = await record(store, [instance(0, n=4), instance(1, n=3)])
        key = result.experiment_id or ""
        csv = pd.read_csv(store.export(key, tmp_path / "run.csv"))
        parquet = pd.read_parquet(store.export(key, tmp_path / "run.parquet"))
        with pytest.raises(ConfigError, match=r"\.csv or \.parquet"):
            store.export(key, tmp_path / "run.xlsx")
    for table in (csv, parquet):
        assert table.columns.tolist() == ["instance", "t", "cpu", "errors"]
        assert table["instance"].tolist() == [0, 0, 0, 0, 1, 1, 1]
        assert table["cpu"].tolist() == pytest.approx([10, 10.5, 11, 11.5, 11, 11.5, 12])


@pytest.mark.asyncio
async def test_parquet_without_pyarrow_names_the_missing_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(tmp_path / "labkit.db") as store:
        result = await record(store, [instance(0)])
        monkeypatch.setitem(sys.modules, "pyarrow", None)
        with pytest.raises(MissingDependency, match="pyarrow"):
            store.export(result.experiment_id or "", tmp_path / "run.parquet")
    assert not (tmp_path / "run.parquet").exists()


# -- upkeep --------------------------------------------------------------------------------


def test_close_truncates_the_wal_and_ends_the_store(tmp_path: Path) -> None:
    path = tmp_path / "labkit.db"
    watcher = raw(path)  # keeps the database open, so only the checkpoint can empty the WAL
    try:
        store = Store(path, batch_rows=50)
        experiment_id = begin(store)
        watcher.execute("SELECT COUNT(*) FROM experiments").fetchone()
        for i in range(20_000):
            store.sample(experiment_id, i % 4, i * 0.001, {"cpu": float(i), "memory": 1.0})
        store.flush()
        wal = Path(f"{path}-wal")
        assert wal.stat().st_size > 0
        store.close()
        assert wal.stat().st_size == 0
        assert watcher.execute("SELECT SUM(n) FROM samples").fetchone() == (20_000,)
    finally:
        watcher.close()
    store.close()  # twice is fine
    with pytest.raises(StoreError, match="closed"):
        store.sample(experiment_id, 0, 0.0, {"cpu": 1.0})
    with pytest.raises(StoreError, match="closed"):
        store.experiments()


def test_the_wal_is_capped_after_checkpoints(tmp_path: Path) -> None:
    with Store(tmp_path / "labkit.db") as store:
        limit = store._reader.execute("PRAGMA journal_size_limit").fetchone()[0]
    assert 0 < limit <= 64 * 1024 * 1024


def test_stats_counts_written_samples(tmp_path: Path) -> None:
    with Store(tmp_path / "labkit.db", batch_rows=10) as store:
        experiment_id = begin(store)
        for i in range(35):
            store.sample(experiment_id, 0, float(i), {"cpu": 1.0})
        store.flush()
        stats = store.stats()
    assert (stats.samples_written, stats.pending_samples, stats.samples_dropped) == (35, 0, 0)
    assert stats.batches >= 1 and stats.last_batch_ms >= 0


# -- several processes ---------------------------------------------------------------------


def _writer_process(path: str, worker: int, go: Any) -> None:
    import asyncio

    async def main() -> None:
        with Store(path, batch_rows=20, flush_interval=0.01) as store:
            go.wait()
            for round_ in range(3):
                experiment_id, _ = store.begin(
                    name=f"worker{worker}",
                    params={"round": round_},
                    instances=2,
                    config={},
                    resume=False,
                )
                for i in range(400):
                    store.sample(experiment_id, 0, i * 0.01, {"cpu": float(i)})
                    store.sample(experiment_id, 1, i * 0.01, {"cpu": float(worker)})
                    if i % 50 == 0:
                        await asyncio.sleep(0)
                await store.finish_instance(experiment_id, instance(0, n=30))

    asyncio.run(main())


@pytest.mark.slow
def test_four_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "labkit.db"
    Store(path).close()  # schema in place before the race
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    workers = [
        context.Process(target=_writer_process, args=(str(path), worker, go)) for worker in range(4)
    ]
    for process in workers:
        process.start()
    go.set()
    for process in workers:
        process.join(60)
    assert [process.exitcode for process in workers] == [0, 0, 0, 0]
    with Store(path) as store:
        frame = store.experiments()
    assert len(frame) == 12
    assert sorted(frame["name"].value_counts().tolist()) == [3, 3, 3, 3]
    assert frame["succeeded"].tolist() == [1] * 12
    # Instance 0 holds its final timeline; instance 1 every streamed sample.
    finals = query(path, "SELECT experiment_id, SUM(n) FROM samples WHERE instance = 0 GROUP BY 1")
    streamed = query(
        path, "SELECT experiment_id, SUM(n) FROM samples WHERE instance = 1 GROUP BY 1"
    )
    assert sorted(n for _, n in finals) == [30] * 12
    assert sorted(n for _, n in streamed) == [400] * 12


# -- exact fingerprints, heartbeats, notes -------------------------------------------------


def test_fingerprints_tell_nan_inf_and_none_apart() -> None:
    values = [None, math.nan, math.inf, -math.inf, 0.0, -0.0, 0, False, "NaN", "Infinity"]
    prints = [fingerprint("exp", {"a": value}, 1) for value in values]
    assert len(set(prints)) == len(values)
    assert fingerprint("exp", {"a": [math.nan]}, 1) != fingerprint("exp", {"a": [None]}, 1)
    assert fingerprint("exp", {"a": np.float64("nan")}, 1) == fingerprint("exp", {"a": math.nan}, 1)
    # Finite params keep the strict-JSON fingerprint earlier stores hold.
    canonical = '{"instances":1,"name":"exp","params":{"a":0.5}}'
    assert fingerprint("exp", {"a": 0.5}, 1) == hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.asyncio
async def test_resume_never_mixes_up_nan_and_none_params(tmp_path: Path) -> None:
    with Store(tmp_path / "labkit.db") as store:
        with_none = begin(store, a=None)
        await store.finish_instance(with_none, instance(0))
        with_nan, done = store.begin(
            name="exp", params={"a": math.nan}, instances=3, config={}, resume=True
        )
    assert with_nan != with_none and done == {}


def test_a_run_whose_heartbeat_stopped_reads_as_interrupted(tmp_path: Path) -> None:
    with Store(tmp_path / "labkit.db") as store:
        quiet = begin(store, lr=0.1)
        beating = begin(store, lr=0.2)
        store.heartbeat(beating, every=0.5)
        store.flush()
        frame = store.experiments().set_index("id")
        last = {key: frame.loc[key, "heartbeat"].timestamp() for key in (quiet, beating)}
        later = store.experiments(now=last[beating] + 3 * 0.5 + 0.01).set_index("id")
        assert later.loc[beating, "status"] == "interrupted"
        # begin() beats once with the default interval (5 s): not yet missed.
        assert later.loc[quiet, "status"] == "running"
        assert store.experiments(now=last[quiet] + 15.01).set_index("id").loc[quiet, "status"] == (
            "interrupted"
        )
        with pytest.raises(ConfigError, match="every"):
            store.heartbeat(beating, every=0)


@pytest.mark.asyncio
async def test_a_finished_run_is_never_interrupted_and_keeps_its_notes(tmp_path: Path) -> None:
    with Store(tmp_path / "labkit.db") as store:
        experiment_id = begin(store)
        await store.finish_instance(experiment_id, instance(0))
        result = ExperimentResult.build(
            "exp", {"lr": 0.1}, [instance(0)], {}, experiment_id=experiment_id, notes=["n1"]
        )
        await store.finish(experiment_id, result)
        frame = store.experiments(now=1e12)
        loaded = store.load(experiment_id)
    assert frame["status"].tolist() == ["finished"]
    assert frame["notes"].tolist() == [["n1"]]
    assert loaded.notes == ("n1",)


@pytest.mark.asyncio
async def test_a_finished_timeline_keeps_inf_and_nan_as_recorded(tmp_path: Path) -> None:
    timeline = pd.DataFrame({"t": [0.0, 1.0, 2.0], "loss": [1.0, math.inf, math.nan]})
    diverged = InstanceResult(index=0, ok=True, error=None, timeline=timeline)
    with Store(tmp_path / "labkit.db") as store:
        experiment_id = begin(store)
        await store.finish_instance(experiment_id, diverged)
        loaded = store.load(experiment_id)
    values = loaded.instances[0].timeline["loss"].tolist()
    assert values[:2] == [1.0, math.inf] and math.isnan(values[2])


async def test_numpy_values_are_stored_as_the_json_they_stand_for(tmp_path: Path) -> None:
    # Params, config, summaries and samples all go through labkit._json.to_builtins:
    # numpy scalars and arrays become numbers and lists, non-finite summary figures null.
    path = tmp_path / "labkit.db"
    params = {"widths": np.array([64, 32]), "lr": np.float32(0.5), "seed": np.int64(7)}
    assert fingerprint("exp", params, 2) == fingerprint(
        "exp", {"widths": [64, 32], "lr": 0.5, "seed": 7}, 2
    )
    with Store(path) as store:
        experiment_id, _ = store.begin(
            name="exp", params=params, instances=2, config={"step": np.float64(0.1)}, resume=False
        )
        store.sample(experiment_id, 0, 0.0, {"loss": np.float32(1.5)})
        store.flush()
        result = ExperimentResult.build(
            "exp", {}, [instance(0)], {"step": np.float64(0.1)}, experiment_id=experiment_id
        )
        result.summary["spread"] = np.float32(math.nan)
        await store.finish(experiment_id, result)
    ((stored_params, config, summary),) = query(
        path, "SELECT params, config, summary FROM experiments"
    )
    assert json.loads(stored_params) == {"widths": [64, 32], "lr": 0.5, "seed": 7}
    assert json.loads(config) == {"step": 0.1}
    assert json.loads(summary)["spread"] is None
    ((chunk,),) = query(path, "SELECT data FROM samples")
    assert json.loads(chunk) == {"t": [0.0], "loss": [1.5]}
