"""The Dask backend, on a real LocalCluster of two worker processes.

One cluster serves the whole module (starting one takes about half a second to a
few seconds); async tests connect their own asynchronous client to it. Functions
shipped to workers live at module level, so that they pickle.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

pytest.importorskip("distributed")

from distributed import Client, LocalCluster, get_worker

import labkit as lk
from labkit.cluster import DaskExecutor, gpu_cluster, publish, subscribe
from labkit.errors import ConfigError, GPUUnavailable, LabkitError, MissingDependency, TaskTimeout
from labkit.gpu import GPU, StaticInventory, static_fleet
from labkit.sandbox.fake import FakeSandbox
from labkit.testing import FakeClock

# -- functions that run on the workers -----------------------------------------------


def square(x: int) -> int:
    return x * x


async def async_square(x: int) -> int:
    await asyncio.sleep(0.001)
    return x * x


def identity(x: Any) -> Any:
    return x


def pid_of(_: Any) -> int:
    return os.getpid()


def difference(a: int, b: int) -> int:
    return a - b


def fail_on_multiples_of_three(i: int) -> int:
    if i % 3 == 0:
        raise ValueError(f"bad {i}")
    return i


def append_line(path: str) -> int:
    with open(path, "a") as file:
        file.write("x\n")
    return 1


def succeed_on_third_attempt(path: str) -> str:
    """Fails twice, then succeeds; the attempts are counted in a file all workers see."""
    with open(path, "a") as file:
        file.write("x")
    attempts = len(Path(path).read_text())
    if attempts < 3:
        raise ConnectionError(f"attempt {attempts} failed")
    return f"ok after {attempts}"


async def sleep_async(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


def sleep_blocking(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def chatty(job: tuple[str, str, int]) -> bool:
    """Publishes one message, waits until the caller has seen it, then publishes more.

    Returns whether the caller's acknowledgement came while the task still ran:
    only possible if messages stream back before the task ends.
    """
    topic, ack_dir, task = job
    publish(topic, {"task": task, "step": 0})
    ack = Path(ack_dir) / str(task)
    deadline = time.monotonic() + 20
    while not ack.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    for step in range(1, 200):
        publish(topic, {"task": task, "step": step})
    return ack.exists()


async def count_aloud(job: tuple[str, int]) -> int:
    topic, task = job
    for step in range(3):
        publish(topic, {"task": task, "step": step})
        await asyncio.sleep(0)
    return task


def publish_an_object(_: Any) -> None:
    publish("labkit-test-bad", object())


def gpu_env(_: Any) -> tuple[str, str]:
    time.sleep(0.05)  # long enough for both workers to get tasks
    return str(get_worker().name), os.environ["CUDA_VISIBLE_DEVICES"]


def visible_devices() -> str:
    return os.environ["CUDA_VISIBLE_DEVICES"]


def executing_tasks(dask_worker: Any) -> int:
    return len(dask_worker.state.executing)


def processing_tasks(dask_scheduler: Any) -> int:
    return sum(len(ws.processing) for ws in dask_scheduler.workers.values())


def ramp_on_a_worker(ctx: lk.InstanceContext) -> dict[str, int]:
    """Records x = step + index at t = step, for 5 steps; returns the worker's pid."""
    for step in range(5):
        ctx.record_at(float(step), x=step + ctx.index, errors=1)
    ctx.log("ramp done")
    return {"pid": os.getpid()}


async def async_ramp_on_a_worker(ctx: lk.InstanceContext) -> dict[str, int]:
    for step in range(5):
        ctx.record_at(float(step), x=step + ctx.index, errors=1)
        await ctx.sleep(0.001)
    ctx.log("ramp done")
    return {"pid": os.getpid()}


def wait_for_the_caller(ctx: lk.InstanceContext) -> dict[str, bool]:
    """Records a sample, then waits until the caller has seen it (it touches a file).

    Returns whether the acknowledgement came while the instance still ran: only
    possible if samples stream back before the instance ends.
    """
    ack = Path(ctx.params["ack_dir"]) / str(ctx.index)
    ctx.record(step=0.0)
    deadline = time.monotonic() + 20
    while not ack.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    ctx.record(step=1.0)
    return {"acknowledged": ack.exists()}


def second_instance_breaks(ctx: lk.InstanceContext) -> None:
    ctx.record_at(0.0, x=10.0 * (ctx.index + 1))
    ctx.record_at(1.0, x=10.0 * (ctx.index + 1))
    if ctx.index == 1:
        raise ValueError("instance 1 broke")


def first_attempt_breaks(ctx: lk.InstanceContext) -> None:
    for step in range(3):
        ctx.record_at(float(step), attempt=ctx.attempt)
    if ctx.attempt == 1:
        raise ConnectionError("first attempt lost its link")


async def first_instance_hangs(ctx: lk.InstanceContext) -> None:
    ctx.record(x=1.0)
    await ctx.sleep(60.0 if ctx.index == 0 else 0.01)
    ctx.record(x=2.0)


def what_the_instance_sees(ctx: lk.InstanceContext) -> None:
    time.sleep(0.05)  # long enough for both workers to get one
    ctx.record_at(0.0, visible=len(ctx.env["CUDA_VISIBLE_DEVICES"].split(",")))


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as local:
        yield local


@pytest.fixture(scope="module")
def sync_client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as client:
        yield client


@pytest.fixture
async def client(cluster: LocalCluster) -> AsyncIterator[Client]:
    async with Client(cluster.scheduler_address, asynchronous=True) as client:
        yield client


async def settle(client: Client, *, deadline: float = 15.0) -> tuple[int, int]:
    """Poll until the scheduler and the workers run nothing; return what was seen last."""
    end = time.monotonic() + deadline
    while True:
        processing = await client.run_on_scheduler(processing_tasks)
        executing = sum((await client.run(executing_tasks)).values())
        if (processing, executing) == (0, 0) or time.monotonic() > end:
            return processing, executing
        await asyncio.sleep(0.05)


# -- results and errors ----------------------------------------------------------------


@pytest.mark.parametrize("fn", [square, async_square])
async def test_values_match_the_local_executor(client: Client, fn: Any) -> None:
    local = await lk.run_parallel(fn, range(12), max_concurrency=4)
    remote = await lk.run_parallel(fn, range(12), max_concurrency=4, executor=client)
    assert remote.values == local.values == [i * i for i in range(12)]
    assert [r.index for r in remote.results] == list(range(12))
    assert all(r.ok and r.attempts == 1 for r in remote.results)
    assert (remote.stats.completed, remote.stats.failed) == (12, 0)


async def test_tasks_run_in_the_worker_processes(client: Client) -> None:
    pids = await lk.run_parallel(pid_of, range(8), max_concurrency=2, executor=client)
    worker_pids = set((await client.run(os.getpid)).values())
    assert set(pids.values) <= worker_pids
    assert os.getpid() not in pids.values


async def test_items_reach_the_function_untouched(client: Client) -> None:
    # A tuple starting with a callable is a task in Dask's old graph format.
    items: list[Any] = [(len, "abc"), [1, (2, 3)], {"a": 1}, None]
    report = await lk.run_parallel(identity, items, executor=client)
    assert report.values == items


async def test_identical_items_each_run(client: Client, tmp_path: Path) -> None:
    path = str(tmp_path / "runs")
    report = await lk.run_parallel(append_line, [path] * 6, executor=client)
    assert report.values == [1] * 6
    lines = await asyncio.to_thread(Path(path).read_text)
    assert lines.count("x") == 6  # not collapsed into one key


async def test_errors_match_the_local_executor(client: Client) -> None:
    fn = fail_on_multiples_of_three
    local = await lk.run_parallel(fn, range(7), executor="thread")
    remote = await lk.run_parallel(fn, range(7), executor=client)
    assert remote.values == local.values == [1, 2, 4, 5]
    assert [(type(e), str(e)) for e in remote.errors] == [(type(e), str(e)) for e in local.errors]
    assert [r.index for r in remote.failures] == [0, 3, 6]
    assert (remote.stats.completed, remote.stats.failed) == (4, 3)
    with pytest.raises(ExceptionGroup) as caught:
        remote.raise_for_errors()
    assert isinstance(caught.value.exceptions[0].__cause__, ValueError)


async def test_map_kwargs_and_submit(client: Client) -> None:
    async with lk.Runner(executor=client) as runner:
        report = await runner.map_kwargs(difference, [{"a": 5, "b": 1}, {"a": 1, "b": 5}])
        handle = runner.submit(difference, 10, b=3)
        result = await handle
    assert report.values == [4, -4]
    assert result.ok and result.value == 7 and result.item == (10,)


async def test_cap_and_priorities_hold_on_the_cluster(client: Client) -> None:
    started: list[int] = []

    def on_event(event: lk.TaskEvent) -> None:
        if event.kind == "started":
            started.append(event.index)

    one_at_a_time = await lk.run_parallel(
        square,
        range(6),
        max_concurrency=1,
        priority=lambda x: x,  # the largest first
        on_event=on_event,
        executor=client,
    )
    assert started == [5, 4, 3, 2, 1, 0]
    assert one_at_a_time.values == [i * i for i in range(6)]
    capped = await lk.run_parallel(sleep_async, [0.05] * 6, max_concurrency=2, executor=client)
    assert capped.stats.peak_concurrency == 2


# -- retries, timeouts, cancellation ---------------------------------------------------


async def test_retries_behave_as_locally(client: Client, tmp_path: Path) -> None:
    retry = lk.Retry(attempts=3, initial=0.01, jitter=0.0, retry_on=(ConnectionError,))
    local = await lk.run_parallel(
        succeed_on_third_attempt, [str(tmp_path / "local")], retry=retry, executor="thread"
    )
    remote = await lk.run_parallel(
        succeed_on_third_attempt, [str(tmp_path / "remote")], retry=retry, executor=client
    )
    assert remote.values == local.values == ["ok after 3"]
    assert remote.results[0].attempts == local.results[0].attempts == 3
    assert remote.stats.retries == 2


async def test_a_timed_out_async_task_is_cancelled_on_the_worker(client: Client) -> None:
    report = await lk.run_parallel(sleep_async, [60.0, 0.01], timeout=1.0, executor=client)
    assert isinstance(report.results[0].error, TaskTimeout)
    assert report.results[1].ok and report.values == [0.01]
    # Nothing keeps running: not on the scheduler, not in a worker's thread.
    assert await settle(client) == (0, 0)


async def test_cancelling_the_caller_leaves_no_running_task(client: Client) -> None:
    runner = lk.Runner(executor=client, max_concurrency=4)
    run = asyncio.create_task(runner.map(sleep_async, [60.0] * 4))
    end = time.monotonic() + 15
    while True:
        busy = await client.run_on_scheduler(processing_tasks)
        if busy >= 2 or time.monotonic() > end:
            break
        await asyncio.sleep(0.05)
    assert busy >= 2  # both workers run a task
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await runner.aclose()
    assert runner.last_report is not None
    assert all(r.cancelled for r in runner.last_report.results)
    assert await settle(client) == (0, 0)


# -- synchronous clients ---------------------------------------------------------------


def test_run_parallel_sync_with_a_sync_client(sync_client: Client) -> None:
    report = lk.run_parallel_sync(fail_on_multiples_of_three, range(4), executor=sync_client)
    assert report.values == [1, 2]
    assert [str(e) for e in report.errors] == ["bad 0", "bad 3"]
    assert lk.run_parallel_sync(async_square, [3], executor=sync_client).values == [9]


async def test_a_sync_client_never_blocks_the_callers_loop(sync_client: Client) -> None:
    ticks = 0
    running = True

    async def tick() -> None:
        nonlocal ticks
        while running:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    report = await lk.run_parallel(sleep_blocking, [0.3] * 4, executor=sync_client)
    running = False
    await ticker
    assert report.values == [0.3] * 4
    assert ticks >= 10  # the loop kept turning while the tasks ran (>= 0.6 s)


async def test_a_sync_client_timeout_cancels_the_future(sync_client: Client) -> None:
    report = await lk.run_parallel(sleep_async, [60.0], timeout=0.5, executor=sync_client)
    assert isinstance(report.results[0].error, TaskTimeout)
    async with Client(sync_client.scheduler.address, asynchronous=True) as observer:
        assert await settle(observer) == (0, 0)


async def test_an_async_client_works_from_another_thread(client: Client) -> None:
    # run_parallel_sync in a thread runs a loop of its own; the client's loop runs here.
    report = await asyncio.to_thread(lk.run_parallel_sync, square, [1, 2], executor=client)
    assert report.values == [1, 4]


async def test_a_closed_client_is_refused_before_anything_runs(cluster: LocalCluster) -> None:
    async with Client(cluster.scheduler_address, asynchronous=True) as closed:
        pass
    with pytest.raises(ConfigError, match="running Client"):
        await lk.run_parallel(square, [1], executor=closed)


# -- events from workers ---------------------------------------------------------------


async def test_events_stream_back_while_tasks_run(client: Client, tmp_path: Path) -> None:
    topic = "labkit-test-stream"
    received: list[dict[str, int]] = []
    threads: set[int] = set()

    def on_message(message: dict[str, int]) -> None:
        received.append(message)
        threads.add(threading.get_ident())
        if message["step"] == 0:
            (tmp_path / str(message["task"])).touch()

    unsubscribe = subscribe(client, topic, on_message)
    try:
        jobs = [(topic, str(tmp_path), task) for task in range(2)]
        report = await lk.run_parallel(chatty, jobs, executor=client)
    finally:
        unsubscribe()
    assert report.values == [True, True]  # each task saw its acknowledgement mid-run
    for task in range(2):
        steps = [m["step"] for m in received if m["task"] == task]
        assert steps == list(range(200))  # all of them, in order, before the result
    batches = await client.get_events(topic)
    assert 2 <= len(batches) <= 20  # 400 messages, a handful of scheduler events
    assert threads == {threading.get_ident()}


async def test_a_sync_clients_events_arrive_on_the_callers_loop(
    sync_client: Client, tmp_path: Path
) -> None:
    received: list[dict[str, int]] = []
    threads: set[int] = set()
    bus = lk.EventBus()
    bus.subscribe(received.append)
    bus.subscribe(lambda _: threads.add(threading.get_ident()))
    bus.subscribe(lambda message: (tmp_path / str(message["task"])).touch())
    unsubscribe = subscribe(sync_client, "labkit-test-sync", bus.emit)
    try:
        jobs = [("labkit-test-sync", str(tmp_path), 0)]
        report = await lk.run_parallel(chatty, jobs, executor=sync_client)
    finally:
        unsubscribe()
    assert report.values == [True]
    assert [m["step"] for m in received] == list(range(200))
    assert threads == {threading.get_ident()}


async def test_async_functions_publish_too(client: Client) -> None:
    received: list[dict[str, int]] = []
    unsubscribe = subscribe(client, "labkit-test-async", received.append)
    try:
        jobs = [("labkit-test-async", task) for task in range(3)]
        report = await lk.run_parallel(count_aloud, jobs, executor=client)
    finally:
        unsubscribe()
    assert report.values == [0, 1, 2]
    assert sorted((m["task"], m["step"]) for m in received) == [
        (task, step) for task in range(3) for step in range(3)
    ]


async def test_publish_rejects_what_msgpack_cannot_carry(client: Client) -> None:
    report = await lk.run_parallel(publish_an_object, [0], executor=client)
    assert isinstance(report.errors[0], TypeError)
    assert "plain data" in str(report.errors[0])


def test_publish_outside_a_worker_raises() -> None:
    with pytest.raises(LabkitError, match="Dask worker"):
        publish("topic", {"x": 1})


# -- options ---------------------------------------------------------------------------


def test_bad_executors_name_the_client_option() -> None:
    with pytest.raises(ConfigError, match=r"distributed\.Client") as caught:
        lk.Runner(executor=object())
    assert caught.value.option == "executor"


def test_dask_is_recognised_by_type_never_by_class_name(sync_client: Client) -> None:
    from labkit.executors import Backend, is_dask_client

    # Look-alikes: the names and modules the old string comparison went by.
    fake_client = type("Client", (), {"__module__": "distributed"})()
    fake_executor = type("DaskExecutor", (), {"__module__": "labkit.cluster"})()
    for impostor in (fake_client, fake_executor):
        assert not is_dask_client(impostor)
        with pytest.raises(ConfigError) as caught:
            Backend(impostor, 4)
        assert caught.value.option == "executor"
    assert is_dask_client(sync_client)
    assert Backend(sync_client, 4).kind == "dask"
    assert Backend(DaskExecutor(sync_client, gpus=1), 4).kind == "dask"


def test_dask_executor_validates_its_options(sync_client: Client) -> None:
    with pytest.raises(ConfigError) as caught:
        DaskExecutor(sync_client, gpus=-1)
    assert caught.value.option == "gpus"
    with pytest.raises(ConfigError) as caught:
        DaskExecutor("tcp://127.0.0.1:8786")
    assert caught.value.option == "client"
    with pytest.raises(ConfigError) as caught:
        DaskExecutor(sync_client, resources={"memory": 0})
    assert caught.value.option == "resources"
    executor = DaskExecutor(sync_client, gpus=2, resources={"memory": 1e9})
    assert executor.task_resources == {"memory": 1e9, "GPU": 2}
    assert DaskExecutor(sync_client).task_resources is None


def test_without_distributed_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, sync_client: Client
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(MissingDependency, match=r"labkit\[dask\]"):
        subscribe(sync_client, "topic", print)


async def test_gpus_no_worker_offers_fail_fast(client: Client) -> None:
    report = await lk.run_parallel(square, [1, 2], executor=DaskExecutor(client, gpus=1))
    assert [type(e) for e in report.errors] == [GPUUnavailable, GPUUnavailable]
    assert "GPU" in str(report.errors[0])


# -- GPU workers -----------------------------------------------------------------------

FLEET = StaticInventory(
    [
        GPU(index=0, uuid="GPU-00000000-1111-2222-3333-444444444444", name="Fake A"),
        GPU(index=1, uuid="GPU-55555555-6666-7777-8888-999999999999", name="Fake B"),
    ]
)


async def test_gpu_cluster_pins_one_gpu_per_worker() -> None:
    expected = {"gpu-0": FLEET[0].uuid, "gpu-1": FLEET[1].uuid}
    async with (
        gpu_cluster(FLEET, asynchronous=True, dashboard_address=None) as cluster,
        Client(cluster, asynchronous=True) as client,
    ):
        seen = await lk.run_parallel(
            gpu_env, range(6), max_concurrency=2, executor=DaskExecutor(client, gpus=1)
        )
        assert seen.ok
        assert all(expected[name] == devices for name, devices in seen.values)
        assert set((await client.run(visible_devices)).values()) == set(expected.values())
        identity = await client.scheduler.identity(n_workers=-1)
        workers = identity["workers"].values()
        assert sorted(w["name"] for w in workers) == ["gpu-0", "gpu-1"]
        assert all(w["resources"] == {"GPU": 1} for w in workers)
        too_many = await lk.run_parallel(square, [1], executor=DaskExecutor(client, gpus=2))
        assert isinstance(too_many.errors[0], GPUUnavailable)


def test_gpu_cluster_refuses_a_fleet_it_cannot_split() -> None:
    with pytest.raises(ConfigError) as caught:
        gpu_cluster(FLEET, gpus_per_worker=3)
    assert caught.value.option == "gpus_per_worker"
    with pytest.raises(GPUUnavailable):
        gpu_cluster(StaticInventory())


# -- experiments on the cluster ------------------------------------------------------


def instance_events(events: list[Any], index: int, kind: str | None = None) -> list[Any]:
    return [
        event
        for event in events
        if isinstance(event, lk.InstanceEvent)
        and event.instance == index
        and (kind is None or event.kind == kind)
    ]


@pytest.mark.parametrize("fn", [ramp_on_a_worker, async_ramp_on_a_worker])
async def test_an_experiment_is_averaged_from_worker_side_samples(
    client: Client, fn: Any, tmp_path: Path
) -> None:
    events: list[Any] = []
    with lk.Store(tmp_path / "runs.db") as store:
        result = await lk.run_experiment(
            lk.Experiment("ramp", fn),
            instances=3,
            executor=client,
            store=store,
            on_event=events.append,
        )
        stored = store.load(str(result.experiment_id))

    assert result.ok and result.summary["num_instances"] == 3
    averaged = result.averaged
    assert averaged["n"].max() == 3
    assert list(averaged["t"]) == [0.0, 1.0, 2.0, 3.0, 4.0]
    # x = step + index: the mean over indices 0, 1, 2 is step + 1, the spread 1.
    assert list(averaged["x"]) == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])
    assert list(averaged["x_std"]) == pytest.approx([1.0] * 5)
    assert result.summary["error_count"] == 5

    worker_pids = set((await client.run(os.getpid)).values())
    for instance in result.instances:
        index = instance.index
        assert list(instance.timeline["x"]) == [step + index for step in range(5)]
        assert instance.summary["pid"] in worker_pids and instance.summary["pid"] != os.getpid()
        # Every sample was streamed live, and the final timeline is exactly those.
        streamed = [(e.offset, e.metrics["x"]) for e in instance_events(events, index, "sample")]
        assert streamed == list(zip(instance.timeline["t"], instance.timeline["x"], strict=True))
        kinds = [event.kind for event in instance_events(events, index)]
        assert kinds == ["started"] + ["sample"] * 5 + ["log", "finished"]
        assert instance_events(events, index, "log")[0].message == "ramp done"
        # The store holds what was averaged.
        pd.testing.assert_frame_equal(stored.instances[index].timeline, instance.timeline)


async def test_samples_stream_back_while_instances_run(client: Client, tmp_path: Path) -> None:
    events: list[Any] = []

    def on_event(event: Any) -> None:
        events.append(event)
        if isinstance(event, lk.InstanceEvent) and event.kind == "sample":
            (tmp_path / str(event.instance)).touch()

    experiment = lk.Experiment("live", wait_for_the_caller, params={"ack_dir": str(tmp_path)})
    result = await lk.run_experiment(experiment, instances=3, executor=client, on_event=on_event)

    assert result.ok
    # Each instance saw the caller's acknowledgement of its first sample mid-run.
    assert [i.summary["acknowledged"] for i in result.instances] == [True, True, True]
    for index in range(3):
        kinds = [event.kind for event in instance_events(events, index)]
        assert kinds.index("sample") < kinds.index("finished")
        assert list(result.instances[index].timeline["step"]) == [0.0, 1.0]


async def test_a_failing_instance_is_recorded_and_the_others_averaged(client: Client) -> None:
    events: list[Any] = []
    result = await lk.run_experiment(
        lk.Experiment("breaks", second_instance_breaks),
        instances=3,
        executor=client,
        on_event=events.append,
    )

    assert [i.ok for i in result.instances] == [True, False, True]
    failed = result.instances[1]
    assert failed.error == "ValueError: instance 1 broke"
    # Its timeline is what it streamed before failing.
    assert list(failed.timeline["x"]) == [20.0, 20.0]
    assert result.summary["num_instances"] == 3 and result.summary["num_failed"] == 1
    assert result.averaged["n"].max() == 2
    assert list(result.averaged["x"]) == pytest.approx([20.0, 20.0])  # (10 + 30) / 2
    assert list(result.averaged["x_std"]) == pytest.approx([10.0 * math.sqrt(2)] * 2)
    assert [e.message for e in instance_events(events, 1, "failed")] == [failed.error]


async def test_a_retried_instance_keeps_only_its_last_attempt(client: Client) -> None:
    retry = lk.Retry(attempts=2, initial=0.01, jitter=0.0, retry_on=(ConnectionError,))
    result = await lk.run_experiment(
        lk.Experiment("retried", first_attempt_breaks), instances=2, executor=client, retry=retry
    )
    assert result.ok
    for instance in result.instances:
        assert instance.attempts == 2
        assert list(instance.timeline["attempt"]) == [2.0, 2.0, 2.0]


async def test_a_timed_out_instance_leaves_no_running_task(client: Client) -> None:
    result = await lk.run_experiment(
        lk.Experiment("hangs", first_instance_hangs), instances=2, executor=client, timeout=1.0
    )
    assert [i.ok for i in result.instances] == [False, True]
    assert str(result.instances[0].error).startswith("TaskTimeout")
    assert list(result.instances[0].timeline["x"]) == [1.0]
    assert list(result.instances[1].timeline["x"]) == [1.0, 2.0]
    assert await settle(client) == (0, 0)


async def test_a_sync_clients_samples_arrive_on_the_callers_loop(sync_client: Client) -> None:
    threads: set[int] = set()

    def on_event(event: Any) -> None:
        if isinstance(event, lk.InstanceEvent):
            threads.add(threading.get_ident())

    result = await lk.run_experiment(
        lk.Experiment("ramp", ramp_on_a_worker),
        instances=2,
        executor=sync_client,
        on_event=on_event,
    )
    assert result.ok and result.averaged["n"].max() == 2
    assert list(result.averaged["x"]) == pytest.approx([0.5, 1.5, 2.5, 3.5, 4.5])
    assert threads == {threading.get_ident()}


async def test_an_experiment_on_a_cluster_refuses_local_resources(client: Client) -> None:
    events: list[Any] = []
    experiment = lk.Experiment("ramp", ramp_on_a_worker)
    refused = {
        "gpu_pool": {"gpu_pool": lk.GPUPool(static_fleet(2))},
        "sandbox_pool": {"sandbox_pool": lk.SandboxPool(FakeSandbox, max_size=1)},
        "clock": {"clock": FakeClock()},
        "gpus_per_instance": {
            "executor": DaskExecutor(client, gpus=1),
            "gpus_per_instance": 2,
        },
    }
    for option, options in refused.items():
        options.setdefault("executor", client)
        with pytest.raises(ConfigError, match=option) as caught:
            await lk.run_experiment(experiment, on_event=events.append, **options)
        assert caught.value.option == option
    needs_sandbox = lk.Experiment("ramp", ramp_on_a_worker, needs_sandbox=True)
    with pytest.raises(ConfigError) as caught:
        await lk.run_experiment(needs_sandbox, executor=client, on_event=events.append)
    assert caught.value.option == "needs_sandbox"
    with pytest.raises(ConfigError) as caught:
        await lk.run_experiment(experiment, executor="threads", on_event=events.append)
    assert caught.value.option == "executor" and "distributed.Client" in str(caught.value)
    assert events == []  # nothing started


async def test_an_experiments_gpus_become_dask_resources(client: Client) -> None:
    # No worker of this cluster offers GPUs: no local fleet check, each instance
    # fails fast instead of waiting forever.
    result = await lk.run_experiment(
        lk.Experiment("ramp", ramp_on_a_worker), instances=2, gpus_per_instance=1, executor=client
    )
    assert result.all_failed
    assert all(str(i.error).startswith("GPUUnavailable") for i in result.instances)

    uuids = {gpu.uuid for gpu in FLEET.devices()}
    async with (
        gpu_cluster(FLEET, asynchronous=True, dashboard_address=None) as cluster,
        Client(cluster, asynchronous=True) as gpu_client,
    ):
        result = await lk.run_experiment(
            lk.Experiment("pinned", what_the_instance_sees),
            instances=4,
            gpus_per_instance=1,
            executor=gpu_client,
        )
    assert result.ok
    assert {i.gpu_uuids for i in result.instances} == {(uuid,) for uuid in uuids}
    assert all(list(i.timeline["visible"]) == [1.0] for i in result.instances)
    assert result.to_dict()["config"]["gpus_per_instance"] == 1


# -- functions only the caller can import ------------------------------------------------

DRIVER_ONLY = """
def train(ctx):
    ctx.record_at(0.0, x=float(ctx.index))
    return {"from": __name__}
"""


def driver_only_module(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A module written after the cluster started, importable only in this process.

    (Workers spawned later would inherit this process's ``sys.path``; these are
    already running, as a remote cluster's workers are.)
    """
    name = f"driver_only_{os.getpid()}_{time.monotonic_ns()}"
    (folder / f"{name}.py").write_text(DRIVER_ONLY)
    monkeypatch.syspath_prepend(str(folder))
    module = __import__(name)
    monkeypatch.setitem(sys.modules, name, module)
    return module


async def test_a_function_the_workers_cannot_import_fails_fast_naming_the_ways_out(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = driver_only_module(tmp_path, monkeypatch)
    begun = time.monotonic()
    # Before, the workers failed to unpickle the task, dropped their connection and
    # got it again, forever: this wait would time out.
    result = await asyncio.wait_for(
        lk.run_experiment(lk.Experiment("lonely", module.train), instances=2, executor=client),
        timeout=30,
    )
    assert time.monotonic() - begun < 10
    assert [instance.ok for instance in result.instances] == [False, False]
    message = str(result.instances[0].error)
    assert message.startswith("WorkerImportError: ")
    assert f"cannot import module {module.__name__!r}" in message
    assert "cloudpickle.register_pickle_by_value" in message
    assert f"client.upload_file({module.__file__!r})" in message
    assert f"{str(tmp_path)!r} on the workers' PYTHONPATH" in message
    # The runner's own path gives the same error, as an exception of the task.
    report = await lk.run_parallel(module.train, [None], executor=client)
    assert isinstance(report.results[0].error, lk.errors.WorkerImportError)
    assert report.results[0].error.name == module.__name__


async def test_a_function_shipped_by_value_runs_on_the_workers(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cloudpickle

    module = driver_only_module(tmp_path, monkeypatch)
    cloudpickle.register_pickle_by_value(module)
    try:
        result = await lk.run_experiment(
            lk.Experiment("by-value", module.train), instances=2, executor=client
        )
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    assert result.ok, [instance.error for instance in result.instances]
    assert [list(i.timeline["x"]) for i in result.instances] == [[0.0], [1.0]]


async def test_a_module_uploaded_to_the_workers_runs_there(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = driver_only_module(tmp_path, monkeypatch)
    await client.upload_file(module.__file__)
    result = await lk.run_experiment(
        lk.Experiment("uploaded", module.train), instances=2, executor=client
    )
    assert result.ok, [instance.error for instance in result.instances]
    assert {instance.summary["from"] for instance in result.instances} == {module.__name__}


# -- instances whose worker is lost ----------------------------------------------------


async def count_slowly(ctx: lk.InstanceContext) -> dict[str, int]:
    """Samples every 0.1 s for ``seconds``; returns the worker's pid."""
    for step in range(int(ctx.params["seconds"] * 10)):
        ctx.record_at(step / 10, x=float(step), pid=float(os.getpid()))
        await asyncio.sleep(0.1)
    return {"pid": os.getpid()}


@pytest.fixture
async def lone_worker() -> AsyncIterator[Client]:
    """A cluster of one worker process, whose nanny starts a new one when it dies.

    Its scheduler allows a task many deaths of its worker: the tests kill workers
    to stand in for jobs that end cleanly (which Dask does not count), so Dask's
    own limit (KilledWorker) must not decide first.
    """
    async with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            # Health checks on a free port: the module's cluster may hold 8787.
            dashboard_address="127.0.0.1:0",
            asynchronous=True,
            scheduler_kwargs={"allowed_failures": 10},
        ) as local,
        Client(local, asynchronous=True) as client,
    ):
        yield client


async def kill_once_it_records(events: list[Any], times: int) -> list[int]:
    """Kill the worker process (SIGKILL; its nanny starts a new one) each time a run of
    the instance has recorded 3 samples there; the pids of the runs cut off so."""
    cut: list[int] = []
    while len(cut) < times:
        pids = [int(e.metrics["pid"]) for e in events if getattr(e, "kind", "") == "sample"]
        fresh = [pid for pid in pids if pid not in cut]
        if len(fresh) >= 3:
            cut.append(fresh[0])
            os.kill(fresh[0], signal.SIGKILL)
        await asyncio.sleep(0.05)
    return cut


async def test_an_instance_whose_worker_is_lost_runs_again_and_only_that_run_is_kept(
    lone_worker: Client, tmp_path: Path
) -> None:
    events: list[Any] = []
    with lk.Store(tmp_path / "runs.db") as store:
        running = asyncio.ensure_future(
            lk.run_experiment(
                lk.Experiment("cut", count_slowly, params={"seconds": 1.5}),
                instances=1,
                executor=lone_worker,
                store=store,
                on_event=events.append,
            )
        )
        cut = await kill_once_it_records(events, times=1)
        result = await running
        stored = store.load(str(result.experiment_id))
    instance = result.instances[0]
    assert result.ok, instance.error
    assert instance.summary["pid"] not in cut  # the run kept is the one after the loss
    # The kept run's samples only: all from one process, each step once.
    assert set(instance.timeline["pid"]) == {float(instance.summary["pid"])}
    assert list(instance.timeline["x"]) == [float(step) for step in range(15)]
    pd.testing.assert_frame_equal(stored.instances[0].timeline, instance.timeline)
    assert [note for note in result.notes if "ran again" in note] == [
        "instance 0 ran again from its start on another worker: the worker running it was "
        "lost (a Slurm job's walltime, preemption or cancellation, or a worker that died); "
        "only the new run is kept"
    ]
    # The live view was told: a second 'started' begins the instance's line again.
    assert [e.kind for e in instance_events(events, 0) if e.kind != "sample"] == [
        "started",
        "started",
        "finished",
    ]


@pytest.mark.timeout(240)
async def test_an_instance_that_keeps_losing_its_worker_fails_with_worker_lost(
    lone_worker: Client,
) -> None:
    events: list[Any] = []
    running = asyncio.ensure_future(
        lk.run_experiment(
            lk.Experiment("never-ends", count_slowly, params={"seconds": 60}),
            instances=1,
            executor=lone_worker,
            on_event=events.append,
        )
    )
    await kill_once_it_records(events, times=3)
    # The fourth run fails as it starts, once the nanny's new worker is up (seconds,
    # but a loaded machine has taken half a minute).
    result = await asyncio.wait_for(running, timeout=90)
    instance = result.instances[0]
    assert not instance.ok
    assert instance.error is not None and instance.error.startswith("WorkerLost: instance 0 ")
    assert "3 times" in instance.error and "walltime" in instance.error
    assert await settle(lone_worker) == (0, 0)  # its last run was cancelled on the worker
