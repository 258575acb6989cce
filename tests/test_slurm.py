"""Instances as Slurm jobs, on a real single-node Slurm cluster (tests/_slurm.py).

The cluster (munged, slurmctld, slurmd) starts once for the module and stops at its
end with every job; the tests skip where it cannot start. Jobs run this
interpreter on this machine, so the functions they run live here, at module level.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

pytest.importorskip("distributed")
# Not imported here: the jobs import this module, in a worker's task thread, where
# dask-jobqueue's import (it sets a SIGINT handler) would fail.
if importlib.util.find_spec("dask_jobqueue") is None:
    pytest.skip("dask-jobqueue is not installed (the slurm extra)", allow_module_level=True)

import _slurm

import labkit as lk
from labkit.cluster.slurm import SlurmOptions, slurm_time
from labkit.errors import ConfigError

STEPS = 4


async def steps(ctx: lk.InstanceContext) -> dict[str, Any]:
    """Four samples ``pause`` seconds apart (0.5 by default), each saying which job
    recorded it."""
    for step in range(STEPS):
        job = float(os.environ["SLURM_JOB_ID"])
        ctx.record_at(float(step), x=float(step + ctx.index + ctx.params.get("shift", 0)), job=job)
        await asyncio.sleep(ctx.params.get("pause", 0.5))
    return {"job": int(os.environ["SLURM_JOB_ID"])}


def which_job(item: int) -> tuple[int, int]:
    time.sleep(0.3)
    return item * item, int(os.environ["SLURM_JOB_ID"])


def what_slurm_gave(ctx: lk.InstanceContext) -> dict[str, Any]:
    return {
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "ctx_env": ctx.env.get("CUDA_VISIBLE_DEVICES"),
        "ctx_gpus": ",".join(ctx.gpus),
        "cpus": os.environ.get("SLURM_CPUS_PER_TASK"),
    }


# -- options, without a cluster --------------------------------------------------------


def test_options_become_the_jobs_directives() -> None:
    options = SlurmOptions(
        partition="gpu",
        walltime=7200,
        cpus_per_instance=4,
        memory_mb_per_instance=16000,
        gpus_per_instance=2,
        retire_before=120,
        job_setup=["module load cuda"],
    )
    job = options.job_options("labkit-x")
    assert job["queue"] == "gpu" and job["job_cpu"] == 4 and job["walltime"] == "0-02:00:00"
    assert job["cores"] == 1 and job["processes"] == 1  # one instance per job at a time
    assert job["memory"] == "16000MiB"
    assert "--gres=gpu:2" in job["job_extra_directives"]
    assert job["worker_extra_args"] == ["--lifetime", "7080s", "--resources", "GPU=2"]
    assert job["job_script_prologue"] == ["module load cuda"]
    assert slurm_time(61) == "0-00:02:00" and slurm_time(90000) == "1-01:00:00"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("walltime", 30),
        ("retire_before", 3600),
        ("cpus_per_instance", 0),
        ("memory_mb_per_instance", 1.5),
        ("gpus_per_instance", -1),
        ("max_jobs", 0),
        ("job_setup", "module load cuda"),
        ("partition", ""),
        ("poll_every", 0.01),
    ],
)
def test_bad_options_name_themselves(option: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=option):
        lk.cluster.slurm(**{option: value})


async def test_without_dask_jobqueue_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "dask_jobqueue.slurm", None)  # as if not installed
    with pytest.raises(lk.errors.MissingDependency, match=r"pip install 'labkit\[slurm\]'"):
        async with lk.cluster.slurm():
            pass


def test_dask_jobqueue_leaves_the_ctrl_c_handler_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from labkit.cluster.slurm import _slurm_cluster_class

    # Its first import is what sets a handler: make this one a first import.
    for name in [name for name in sys.modules if name.startswith("dask_jobqueue")]:
        monkeypatch.delitem(sys.modules, name)
    before = signal.getsignal(signal.SIGINT)
    _slurm_cluster_class()
    assert "dask_jobqueue.runner" in sys.modules
    assert signal.getsignal(signal.SIGINT) is before


# -- on the cluster ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[_slurm.SlurmCluster]:
    reason = _slurm.unavailable()
    if reason is not None:
        pytest.skip(reason)
    started = _slurm.start()
    previous = os.environ.get("SLURM_CONF")
    # dask-jobqueue's sbatch, squeue and scancel read it from the environment.
    os.environ["SLURM_CONF"] = started.env["SLURM_CONF"]
    try:
        yield started
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        started.stop()


def jobs_on(cluster: _slurm.SlurmCluster, **options: Any) -> lk.cluster.SlurmCluster:
    defaults = {
        "partition": _slurm.PARTITION,
        "walltime": 600,
        "memory_mb_per_instance": 400,
        "interface": "lo",
        "log_directory": str(cluster.base / "jobs"),
        "poll_every": 1.0,
        # The jobs import this module's functions by name, as a user's jobs import
        # their project's code (Slurm passes the rest of this environment on).
        "job_setup": [f"export PYTHONPATH={Path(__file__).parent}${{PYTHONPATH:+:$PYTHONPATH}}"],
    }
    return lk.cluster.slurm(**{**defaults, **options})


class JobWatch:
    """Counts this run's jobs in Slurm's queue while it runs (the cap's check)."""

    def __init__(self, cluster: _slurm.SlurmCluster, name: str) -> None:
        self.cluster, self.name, self.most = cluster, name, 0

    async def run(self) -> None:
        while True:
            jobs = [
                job
                for job in await asyncio.to_thread(self.cluster.jobs)
                if job["name"] == self.name
            ]
            self.most = max(self.most, len(jobs))
            await asyncio.sleep(0.2)


def cancel_a_running_instance(cluster: _slurm.SlurmCluster, victims: list[int]) -> Any:
    """An ``on_event`` that cancels (scancel) the job of the first instance that records."""

    def on_event(event: Any) -> None:
        if getattr(event, "kind", None) == "sample" and not victims and event.offset >= 1.0:
            victims.append(int(event.metrics["job"]))
            subprocess.run(["scancel", str(victims[0])], env=cluster.env, check=True)

    return on_event


@pytest.mark.slurm
async def test_an_experiment_and_a_sweep_keep_every_instance_once_when_a_job_is_cancelled(
    cluster: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    victims: list[int] = []
    jobs = jobs_on(cluster, max_jobs=3)
    with lk.Store(tmp_path / "runs.db") as store:
        async with jobs as executor:
            watch = JobWatch(cluster, jobs.job_name)
            watching = asyncio.ensure_future(watch.run())
            try:
                result = await lk.run_experiment(
                    lk.Experiment("steps", steps),
                    instances=8,
                    executor=executor,
                    store=store,
                    on_event=cancel_a_running_instance(cluster, victims),
                )
                trials = await lk.sweep(
                    lk.Experiment("steps", steps),
                    {"shift": [10, 20]},
                    instances=2,
                    max_parallel=2,
                    objective="x_last",
                    executor=executor,
                    store=store,
                )
            finally:
                watching.cancel()
            stats = jobs.stats()
        stored = store.load(str(result.experiment_id))
        experiments = store.experiments()

    # One job was cancelled while an instance ran on it: that instance ran again
    # on another job, and the result and the store hold each instance once.
    assert len(victims) == 1, [instance.error for instance in result.instances]
    assert [instance.index for instance in result.instances] == list(range(8))
    assert result.ok, [instance.error for instance in result.instances]
    rerun = [note for note in result.notes if "ran again" in note]
    assert len(rerun) == 1, result.notes
    for instance in result.instances:
        assert list(instance.timeline["t"]) == [float(step) for step in range(STEPS)]
        assert list(instance.timeline["x"]) == [float(s + instance.index) for s in range(STEPS)]
        # Every sample of the kept run came from the job that finished it.
        assert set(instance.timeline["job"]) == {float(instance.summary["job"])}
        assert instance.summary["job"] != victims[0]
    assert [instance.index for instance in stored.instances] == list(range(8))
    for kept, loaded in zip(result.instances, stored.instances, strict=True):
        pd.testing.assert_frame_equal(kept.timeline, loaded.timeline)
    # The sweep ran on the same jobs (the cancelled one replaced): each trial's
    # instances are in the store once.
    assert sorted(trials["shift"]) == [10, 20]
    assert list(trials["instances"]) == [2, 2]
    swept = experiments[experiments["name"] == "steps"]
    assert len(swept) == 3 and set(swept["status"]) == {"finished"}
    # The cap held: never more than 3 jobs in Slurm's queue, pending ones included.
    assert watch.most <= 3, watch.most
    assert stats.lost >= 1 and stats.submitted >= 4 and stats.max_jobs == 3


@pytest.mark.slurm
async def test_a_run_stopped_mid_way_resumes_with_only_the_missing_instances(
    cluster: _slurm.SlurmCluster, tmp_path: Path
) -> None:
    experiment = lk.Experiment("resumed", steps, params={"pause": 0.3})
    done_before: set[int] = set()
    some_done = asyncio.Event()

    def on_first(event: Any) -> None:
        if isinstance(event, lk.InstanceEvent) and event.kind == "finished":
            done_before.add(event.instance)
            if len(done_before) >= 3:
                some_done.set()

    started_again: set[int] = set()

    def on_second(event: Any) -> None:
        if isinstance(event, lk.InstanceEvent) and event.kind == "started":
            started_again.add(event.instance)

    with lk.Store(tmp_path / "runs.db") as store:
        async with jobs_on(cluster, max_jobs=2) as executor:
            running = asyncio.ensure_future(
                lk.run_experiment(
                    experiment, instances=6, executor=executor, store=store, on_event=on_first
                )
            )
            await some_done.wait()
            running.cancel()  # as a driver stopped mid-way
            with pytest.raises(asyncio.CancelledError):
                await running
            # What the store committed is what resume skips (an instance whose
            # 'finished' went out just before the cancel may not be in it).
            (first_id,) = store.experiments()["id"]
            finished_first = {i.index for i in store.load(first_id).instances if i.ok}
            result = await lk.run_experiment(
                experiment,
                instances=6,
                executor=executor,
                store=store,
                resume=True,
                on_event=on_second,
            )
        stored = store.load(str(result.experiment_id))
    assert 1 <= len(finished_first) < 6
    assert started_again == set(range(6)) - finished_first
    assert result.ok and [instance.index for instance in result.instances] == list(range(6))
    assert [instance.index for instance in stored.instances] == list(range(6))
    for instance in stored.instances:
        assert list(instance.timeline["x"]) == [float(s + instance.index) for s in range(STEPS)]


@pytest.mark.slurm
def test_a_script_maps_over_jobs_with_a_synchronous_client(cluster: _slurm.SlurmCluster) -> None:
    jobs = jobs_on(cluster, max_jobs=2)
    with jobs as executor:
        report = lk.run_parallel_sync(which_job, range(8), max_concurrency=4, executor=executor)
        stats = jobs.stats()
    assert [value for value, _ in report.values] == [item * item for item in range(8)]
    # The keeper, on the cluster's own thread, submitted the two jobs and no more.
    assert len({job for _, job in report.values}) == 2
    assert stats.submitted == 2 and stats.lost == 0
    # Leaving the block cancelled them (Slurm may still list them as completing).
    left = [job for job in cluster.jobs() if job["name"] == jobs.job_name]
    assert {job["state"] for job in left} <= {"COMPLETING", "CANCELLED"}, left


@pytest.mark.slurm
async def test_gpus_asked_per_job_reach_the_instance_through_slurm(
    cluster: _slurm.SlurmCluster,
) -> None:
    async with jobs_on(cluster, max_jobs=2, gpus_per_instance=1, cpus_per_instance=2) as executor:
        result = await lk.run_experiment(
            lk.Experiment("gpus", what_slurm_gave), instances=2, executor=executor
        )
    assert result.ok, [instance.error for instance in result.instances]
    for instance in result.instances:
        # Slurm chose the GPU and set CUDA_VISIBLE_DEVICES; labkit read it.
        assert instance.summary["cuda"] in {"0", "1"}
        assert instance.summary["ctx_env"] == instance.summary["cuda"]
        assert instance.summary["ctx_gpus"] == instance.summary["cuda"]
        assert instance.summary["cpus"] == "2"


@pytest.mark.slurm
async def test_workers_retire_before_the_walltime_and_their_instances_run_again(
    cluster: _slurm.SlurmCluster,
) -> None:
    # A 60 s walltime with workers retiring 45 s before it: each job's worker
    # lives 15 s, long enough for one 8 s instance (and the worker's first
    # imports, slow on a busy machine) but not two: one job at a time cannot run
    # both before it retires, so the second is cut off, runs again, and the job
    # is replaced.
    jobs = jobs_on(cluster, max_jobs=1, walltime=60, retire_before=45)
    async with jobs as executor:
        result = await lk.run_experiment(
            lk.Experiment("short-lived", steps, params={"pause": 2.0}),
            instances=2,
            executor=executor,
        )
        stats = jobs.stats()
    assert result.ok, [instance.error for instance in result.instances]
    assert [instance.index for instance in result.instances] == list(range(2))
    for instance in result.instances:
        assert list(instance.timeline["x"]) == [float(s + instance.index) for s in range(STEPS)]
        assert set(instance.timeline["job"]) == {float(instance.summary["job"])}
    assert len({instance.summary["job"] for instance in result.instances}) == 2
    assert [note for note in result.notes if "ran again" in note], result.notes
    # Each replacement is a job that ran (not one cancelled at once for the name
    # it shared with the lost job, over and over).
    assert stats.lost >= 1 and 2 <= stats.submitted <= 4, stats


@pytest.mark.slurm
async def test_a_function_the_jobs_cannot_import_fails_within_seconds(
    cluster: _slurm.SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "only_on_the_driver.py").write_text(
        "def train(ctx):\n    ctx.record_at(0.0, x=1.0)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "only_on_the_driver", raising=False)
    import only_on_the_driver

    async with jobs_on(cluster, max_jobs=1) as executor:
        began = time.monotonic()
        # Before, this waited forever: the workers could not unpickle the task.
        result = await asyncio.wait_for(
            lk.run_experiment(
                lk.Experiment("lonely", only_on_the_driver.train), instances=2, executor=executor
            ),
            timeout=60,
        )
        took = time.monotonic() - began
    assert not any(instance.ok for instance in result.instances)
    message = str(result.instances[0].error)
    assert "cannot import module 'only_on_the_driver'" in message
    assert "register_pickle_by_value" in message and "upload_file" in message
    assert "PYTHONPATH" in message
    assert took < 30  # the job's start included; the failure itself is immediate
