"""Instances in worker processes (``executor="process"``), with real processes.

The instance functions are module-level so the workers import them by name; one
test builds a function in ``__main__`` to check that such a function travels by value.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest
from _processes import none_remain, token

import labkit as lk
from labkit.errors import ConfigError, OversubscribedWarning, TaskTimeout, WorkerDied
from labkit.events import InstanceEvent
from labkit.executors.workers import WorkerPool, available_cores, shared_pool
from labkit.experiment import InstanceContext
from labkit.seeds import instance_seed
from labkit.testing import static_fleet

pytestmark = pytest.mark.timeout(120)


def _spin(seconds: float) -> int:
    """Pure-Python CPU work for about ``seconds``."""
    end = time.thread_time() + seconds
    count = 0
    while time.thread_time() < end:
        count += 1
    return count


def cpu_bound(ctx: InstanceContext) -> dict[str, Any]:
    began = time.time()
    _spin(float(ctx.params.get("cpu_s", 0.3)))
    ctx.record(step=1.0)
    return {
        "pid": os.getpid(),
        "began": began,
        "ended": time.time(),
        "seed_seen": ctx.seed,
        "attempt_seen": ctx.attempt,
        "duration_seen": ctx.duration,
        "param_seen": ctx.params["cpu_s"],
    }


async def async_instance(ctx: InstanceContext) -> dict[str, Any]:
    for step in range(3):
        ctx.record(loss=1.0 / (step + 1))
        await ctx.sleep(0.01)
    ctx.log("done with", ctx.index)
    return {"pid": os.getpid(), "loop": type(asyncio.get_running_loop()).__name__}


def records_then_waits(ctx: InstanceContext) -> str:
    """Records 5 samples, says so in a file, then waits for the file to go (or forever)."""
    flag = Path(ctx.params["flag"])
    for step in range(5):
        ctx.record(value=float(step))
    flag.write_text(str(os.getpid()))
    while flag.exists():
        time.sleep(0.01)
    return "released"


def starts_children_and_hangs(ctx: InstanceContext) -> None:
    mark = ctx.params["mark"]
    subprocess.Popen(["sleep", mark])
    # A child in a session of its own: a process-group kill would miss it.
    subprocess.Popen(["setsid", "sleep", mark])
    ctx.record(started=1.0)
    time.sleep(600)


def sees_its_gpus(ctx: InstanceContext) -> dict[str, Any]:
    time.sleep(0.05)
    return {"os": os.environ.get("CUDA_VISIBLE_DEVICES"), "ctx": ctx.env["CUDA_VISIBLE_DEVICES"]}


def checks_predecessors(ctx: InstanceContext) -> None:
    """Notes its pid, and records how many earlier instances' processes still live."""
    folder = Path(ctx.params["folder"])
    alive = []
    for path in folder.glob("*.pid"):
        pid = int(path.read_text())
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
    (folder / f"{ctx.index}.pid").write_text(str(os.getpid()))
    ctx.record(alive_before=float(len(alive)))
    time.sleep(float(ctx.params["hold_s"]))


async def test_cpu_bound_instances_run_in_parallel_worker_processes() -> None:
    experiment = lk.Experiment("spin", cpu_bound, params={"cpu_s": 0.4})
    result = await lk.run_experiment(
        experiment, instances=2, executor="process", duration=9.0, seed=7
    )
    assert result.config["executor"] == "process"
    values = [instance.summary for instance in result.instances]
    pids = {value["pid"] for value in values}
    assert len(pids) == 2 and os.getpid() not in pids
    # Both ran at once: each began before the other ended.
    first, second = values
    assert first["began"] < second["ended"] and second["began"] < first["ended"]
    for instance in result.instances:
        assert instance.summary["seed_seen"] == instance.seed == instance_seed(7, instance.index)
        assert instance.summary["attempt_seen"] == 1
        assert instance.summary["duration_seen"] == 9.0
        assert instance.summary["param_seen"] == 0.4
        assert list(instance.timeline["step"]) == [1.0]


async def test_an_async_instance_function_runs_in_a_worker_loop() -> None:
    events: list[InstanceEvent] = []
    result = await lk.run_experiment(
        lk.Experiment("async", async_instance),
        instances=2,
        executor="process",
        on_event=events.append,
    )
    assert all(instance.ok for instance in result.instances), result.instances
    for instance in result.instances:
        assert instance.summary["pid"] != os.getpid()
        assert list(instance.timeline["loss"]) == [1.0, 0.5, pytest.approx(1 / 3)]
        times = list(instance.timeline["t"])
        assert times == sorted(times) and times[-1] >= 0.02
    logs = sorted(e.message for e in events if isinstance(e, InstanceEvent) and e.kind == "log")
    assert logs == ["done with 0", "done with 1"]


async def test_samples_stream_back_while_the_instance_runs(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    seen: list[float] = []
    finished = asyncio.Event()

    def on_event(event: object) -> None:
        if isinstance(event, InstanceEvent):
            if event.kind == "sample":
                assert not finished.is_set()
                seen.append(event.metrics["value"])  # type: ignore[index]
            elif event.kind == "finished":
                finished.set()

    experiment = lk.Experiment("stream", records_then_waits, params={"flag": str(flag)})
    run = asyncio.ensure_future(
        lk.run_experiment(experiment, executor="process", on_event=on_event)
    )
    for _ in range(1000):  # the instance waits for us: its samples must come first
        if len(seen) == 5:
            break
        await asyncio.sleep(0.01)
    assert seen == [0.0, 1.0, 2.0, 3.0, 4.0] and not finished.is_set()
    os.unlink(flag)
    (instance,) = (await run).instances
    assert instance.ok and instance.summary["value"] == "released"
    assert list(instance.timeline["value"]) == seen


async def test_a_killed_worker_loses_nothing_recorded_before(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    experiment = lk.Experiment("killed", records_then_waits, params={"flag": str(flag)})
    run = asyncio.ensure_future(lk.run_experiment(experiment, executor="process"))
    for _ in range(1000):
        if (pid := _written(flag)) is not None:
            break
        await asyncio.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    result = await run
    (instance,) = result.instances
    assert not instance.ok
    assert instance.error is not None and instance.error.startswith("WorkerDied")
    assert "SIGKILL" in instance.error
    assert list(instance.timeline["value"]) == [0.0, 1.0, 2.0, 3.0, 4.0]


async def test_a_timeout_kills_the_worker_and_every_process_it_started() -> None:
    mark = token(5100)
    before = set(shared_pool().pids())
    experiment = lk.Experiment("hangs", starts_children_and_hangs, params={"mark": mark})
    started = time.monotonic()
    result = await lk.run_experiment(experiment, executor="process", timeout=1.5)
    assert time.monotonic() - started < 60
    (instance,) = result.instances
    assert instance.error is not None and instance.error.startswith("TaskTimeout")
    assert list(instance.timeline["started"]) == [1.0]  # streamed before the timeout
    assert await none_remain(mark) == []
    # The worker that ran it is gone too; the others were not touched.
    gone = [pid for pid in before | set(shared_pool().pids()) if not psutil.pid_exists(pid)]
    assert set(shared_pool().pids()) >= before - set(gone)
    assert shared_pool().stats().killed >= 1


async def test_cancelling_a_run_kills_its_workers() -> None:
    mark = token(5200)
    experiment = lk.Experiment("hangs", starts_children_and_hangs, params={"mark": mark})
    events: list[Any] = []
    run = asyncio.ensure_future(
        lk.run_experiment(experiment, instances=2, executor="process", on_event=events.append)
    )
    for _ in range(1000):
        samples = [e for e in events if isinstance(e, InstanceEvent) and e.kind == "sample"]
        if len(samples) == 2:
            break
        await asyncio.sleep(0.01)
    busy = shared_pool().stats().busy
    assert busy == 2
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert await none_remain(mark) == []
    assert shared_pool().stats().busy == 0


CTRL_C_SCRIPT = """
import asyncio, subprocess, sys, time
import labkit as lk

def hang(ctx):
    subprocess.Popen(["sleep", ctx.params["mark"]])
    ctx.record(up=1.0)
    print("running", flush=True)
    time.sleep(600)

asyncio.run(lk.run_experiment(
    lk.Experiment("hang", hang, params={"mark": sys.argv[1]}), instances=2, executor="process"
))
"""


async def test_ctrl_c_leaves_no_process_behind(tmp_path: Path) -> None:
    mark = token(5300)
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), mark, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    for _ in range(2):
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        assert line.strip() == b"running"
    workers = [child.pid for child in psutil.Process(process.pid).children()]
    assert len(workers) >= 2
    process.send_signal(signal.SIGINT)
    await asyncio.wait_for(process.wait(), 60)
    assert await none_remain(mark) == []
    assert [pid for pid in workers if psutil.pid_exists(pid)] == []


async def test_each_worker_gets_its_instances_gpus_in_its_environment() -> None:
    pool = lk.GPUPool(lk.StaticInventory(static_fleet(2).devices()))
    experiment = lk.Experiment("gpus", sees_its_gpus)
    result = await lk.run_experiment(
        experiment, instances=4, gpus_per_instance=1, gpu_pool=pool, executor="process"
    )
    uuids = {gpu.uuid for gpu in pool.inventory.devices()}
    for instance in result.instances:
        assert instance.ok, instance.error
        (held,) = instance.gpu_uuids
        assert held in uuids
        assert instance.summary["os"] == instance.summary["ctx"] == held
    bare = await lk.run_experiment(lk.Experiment("bare", sees_its_gpus), executor="process")
    assert bare.instances[0].summary["os"] == ""  # hidden: no GPU was given


def _reads(channel: Any, name: str) -> str | None:
    return os.environ.get(name)


def _loads_fake_cuda(channel: Any, folder: str) -> int:
    """Maps a shared library under the name libcuda.so.1, as a CUDA program would
    (after importing its bindings: the worker reads its memory map only then)."""
    import ctypes
    import shutil
    import types

    sys.modules.setdefault("cuda", types.ModuleType("cuda"))  # as cuda-python's would be

    maps = Path("/proc/self/maps").read_text()
    for name in ("libform.so.6", "libpanel.so.6", "libgdbm.so.6", "liblzma.so.5", "libbz2.so.1.0"):
        source = Path("/usr/lib/x86_64-linux-gnu") / name
        if source.exists() and name not in maps:
            target = Path(folder) / "libcuda.so.1"
            shutil.copy(source, target)
            ctypes.CDLL(str(target))
            return os.getpid()
    raise RuntimeError("no spare library to load")


def _pid(channel: Any) -> int:
    return os.getpid()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps")
async def test_the_pool_sets_and_restores_env_and_pins_a_worker_that_loaded_cuda(
    tmp_path: Path,
) -> None:
    pool = WorkerPool(keep_idle=4)
    try:

        def call(fn: Any, *args: Any, env: dict[str, str]) -> Any:
            payload = cloudpickle.dumps((fn, args))
            return pool.call(payload, env=env, on_message=lambda _: None)

        assert await call(_reads, "LABKIT_TEST_VAR", env={"LABKIT_TEST_VAR": "1"}) == "1"
        assert await call(_reads, "LABKIT_TEST_VAR", env={}) is None  # restored
        pinned = await call(_loads_fake_cuda, str(tmp_path), env={"CUDA_VISIBLE_DEVICES": "GPU-a"})
        assert pool.stats().pinned == 1
        # Another GPU set never runs in the worker that loaded CUDA with GPU-a ...
        assert await call(_pid, env={"CUDA_VISIBLE_DEVICES": "GPU-b"}) != pinned
        # ... and the same set goes back to it (CUDA is ready there).
        assert await call(_pid, env={"CUDA_VISIBLE_DEVICES": "GPU-a"}) == pinned
    finally:
        pool.shutdown()


@pytest.mark.filterwarnings("ignore::labkit.errors.OversubscribedWarning")
async def test_a_gpu_goes_to_the_next_instance_only_once_the_last_worker_is_gone(
    tmp_path: Path,
) -> None:
    pool = lk.GPUPool(lk.StaticInventory(static_fleet(1).devices()))
    experiment = lk.Experiment(
        "one-gpu", checks_predecessors, params={"folder": str(tmp_path), "hold_s": 1.5}
    )
    result = await lk.run_experiment(
        experiment,
        instances=3,
        gpus_per_instance=1,
        gpu_pool=pool,
        executor="process",
        max_concurrency=3,
        timeout=0.5,
    )
    assert all(str(i.error).startswith("TaskTimeout") for i in result.instances)
    # Each started (holding the one GPU) only once the last holder's process was gone.
    assert [list(i.timeline["alive_before"]) for i in result.instances] == [[0.0]] * 3
    assert [pid for pid in _pids(tmp_path) if psutil.pid_exists(pid)] == []
    assert pool.stats().active == 0


def _pids(folder: Path) -> list[int]:
    return [int(path.read_text()) for path in sorted(folder.glob("*.pid"))]


def _written(flag: Path) -> int | None:
    """The pid a waiting instance wrote into ``flag``, once it did."""
    text = flag.read_text() if flag.exists() else ""
    return int(text) if text else None


def test_an_unpicklable_function_is_refused_before_anything_runs() -> None:
    lock = threading.Lock()
    events: list[Any] = []

    def holds_a_lock(ctx: InstanceContext) -> None:
        with lock:
            pass

    experiment = lk.Experiment("locked", holds_a_lock)
    with pytest.raises(ConfigError) as caught:
        asyncio.run(lk.run_experiment(experiment, executor="process", on_event=events.append))
    message = str(caught.value)
    assert caught.value.option == "experiment.fn"
    assert "'lock'" in message and "_thread.lock" in message and "executor='thread'" in message
    assert events == []


async def test_a_function_defined_in_main_travels_by_value() -> None:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(  # a notebook cell's function: its module cannot be imported by a worker
        textwrap.dedent(
            """
            import os
            OFFSET = 41
            def cell_function(ctx):
                ctx.record(x=OFFSET + ctx.index)
                return os.getpid()
            """
        ),
        namespace,
    )
    fn = namespace["cell_function"]
    assert fn.__module__ == "__main__"
    result = await lk.run_experiment(lk.Experiment("cell", fn), instances=2, executor="process")
    assert [list(i.timeline["x"]) for i in result.instances] == [[41.0], [42.0]]
    assert all(i.summary["value"] != os.getpid() for i in result.instances)


async def test_more_instances_in_processes_than_cores_is_said_once() -> None:
    cores = available_cores()
    at_once = cores + 1
    experiment = lk.Experiment("spin", cpu_bound, params={"cpu_s": 0.01})
    with pytest.warns(OversubscribedWarning) as warned:
        result = await lk.run_experiment(
            experiment, instances=at_once, executor="process", max_concurrency=at_once
        )
    messages = [str(w.message) for w in warned if issubclass(w.category, OversubscribedWarning)]
    assert len(messages) == 1
    assert (
        f"{at_once} instances run at once in worker processes on {cores} CPU cores" in (messages[0])
    )
    assert messages[0] in result.notes
    # By default the process executor runs one instance per core: nothing to say.
    with warnings_as_errors():
        await lk.run_experiment(experiment, instances=at_once, executor="process")


@contextlib.contextmanager
def warnings_as_errors() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("error", OversubscribedWarning)
        yield


async def test_process_executor_refuses_what_cannot_travel() -> None:
    with pytest.raises(ConfigError) as caught:
        await lk.run_experiment(
            lk.Experiment("sb", cpu_bound),
            executor="process",
            sandbox_pool=lk.SandboxPool(lk.testing.FakeSandbox, max_size=1),
        )
    assert caught.value.option == "sandbox_pool"
    with pytest.raises(ConfigError) as caught:
        await lk.run_experiment(
            lk.Experiment("clock", cpu_bound), executor="process", clock=lk.testing.FakeClock()
        )
    assert caught.value.option == "clock"
    with pytest.raises(ConfigError) as caught:
        await lk.run_experiment(
            lk.Experiment("params", cpu_bound, params={"lock": threading.Lock()}),
            executor="process",
        )
    assert caught.value.option == "params"


def test_worker_errors_name_the_worker_and_how_it_ended() -> None:
    assert str(WorkerDied(12, -9, "while running a call")) == (
        "worker process 12 was killed by SIGKILL while running a call"
    )
    assert "exited with status 3" in str(WorkerDied(12, 3, "while starting"))
    assert issubclass(TaskTimeout, TimeoutError)


async def burn_in_sandbox(ctx: InstanceContext) -> None:
    assert ctx.sandbox is not None
    seconds = ctx.params["seconds"]
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"
    command = f"sleep {seconds}" if ctx.params["idle"] else f"python3 -c {shlex.quote(code)}"
    done = await ctx.sandbox.run(command, timeout=30)
    assert done.exit_code == 0, done.stderr


@pytest.mark.parametrize("idle", [False, True], ids=["cpu-bound", "idle"])
async def test_local_sandboxes_that_shared_the_cores_say_so_at_the_end(idle: bool) -> None:
    cores = available_cores()
    at_once = cores + 1
    experiment = lk.Experiment(
        "burn", burn_in_sandbox, params={"seconds": 1.5, "idle": idle}, needs_sandbox=True
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OversubscribedWarning)
        result = await lk.run_experiment(experiment, instances=at_once, sample_every=0.2)
    said = [str(w.message) for w in caught if issubclass(w.category, OversubscribedWarning)]
    assert all(i.ok for i in result.instances), [i.error for i in result.instances]
    together = float((result.averaged["cpu"] * result.averaged["n"]).max())
    if idle:  # they shared the cores, but used next to no CPU: nothing to say
        assert together < 50.0 * cores
        assert said == [] and result.notes == ()
    else:
        if together < 50.0 * cores:
            pytest.skip(f"other load left the burners {together:.0f} % CPU in all")
        assert len(said) == 1 and said[0] in result.notes
        assert (
            f"{at_once} instances run at once in local sandboxes on {cores} CPU cores" in (said[0])
        )
