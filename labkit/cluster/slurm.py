"""Slurm in one call: instances as Slurm jobs, through dask-jobqueue's ``SLURMCluster``.

:func:`slurm` describes the jobs (partition, walltime, CPUs, memory and GPUs per
instance, the cap on jobs); entering it starts a Dask scheduler in this process
and gives the :class:`~labkit.cluster.DaskExecutor` to pass as ``executor=``.
Each job runs one Dask worker with one task thread, so one job holds one instance
at a time, with the job's CPUs, memory and GPUs; instances stream their samples
back over Dask as on any cluster (:mod:`labkit.cluster`).

A keeper on the cluster's event loop sizes the jobs to the work: every
:data:`KEEP_EVERY` seconds it submits jobs while instances wait, never more than
``max_jobs`` in Slurm's queue at once (pending and completing ones included), and
replaces a job whose worker was lost or that left Slurm's queue (it looks there
every ``poll_every`` seconds). Workers retire ``retire_before`` seconds before
their walltime, so a job ends cleanly rather than being killed; an instance
running on a worker that retires, is preempted or is cancelled is run again from
its start on another job (Dask sends it there; :func:`labkit.run_experiment`
keeps only that run and says so in the result's notes, and fails an instance cut
off three times in a row with :class:`labkit.errors.WorkerLost`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import sys
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from labkit._checks import check, is_int, is_real
from labkit.errors import MissingDependency
from labkit.executors.dask import DaskExecutor, distributed

__all__ = ("KEEP_EVERY", "SlurmCluster", "SlurmOptions", "SlurmStats", "slurm")

log = logging.getLogger("labkit.cluster")

KEEP_EVERY = 0.5
"""Seconds between the keeper's looks at the waiting instances and the jobs."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SlurmOptions:
    """What every Slurm job of a :class:`SlurmCluster` asks for; see :func:`slurm`.

    Raises:
        ConfigError: An option is out of range (the message names it).
    """

    partition: str | None = None
    walltime: float = 3600.0
    cpus_per_instance: int = 1
    memory_mb_per_instance: int = 2000
    gpus_per_instance: int = 0
    max_jobs: int = 8
    retire_before: float = 60.0
    account: str | None = None
    job_directives: Sequence[str] = ()
    job_setup: Sequence[str] = ()
    python: str | None = None
    interface: str | None = None
    log_directory: str | None = None
    dashboard_address: str = "127.0.0.1:0"
    poll_every: float = 5.0
    cluster_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("partition", "account", "python", "interface", "log_directory"):
            value = getattr(self, name)
            check(
                value is None or (isinstance(value, str) and bool(value)), name, value, "a string"
            )
        check(
            is_real(self.walltime) and self.walltime >= 60,
            "walltime",
            self.walltime,
            "seconds >= 60 (Slurm counts whole minutes)",
        )
        check(
            is_real(self.retire_before) and 0 <= self.retire_before < self.walltime,
            "retire_before",
            self.retire_before,
            f"seconds >= 0 and below the walltime ({self.walltime} s)",
        )
        check(
            is_real(self.poll_every) and self.poll_every >= KEEP_EVERY,
            "poll_every",
            self.poll_every,
            f"seconds >= {KEEP_EVERY}",
        )
        for name in ("cpus_per_instance", "memory_mb_per_instance", "max_jobs"):
            value = getattr(self, name)
            check(is_int(value) and value >= 1, name, value, "an integer >= 1")
        check(
            is_int(self.gpus_per_instance) and self.gpus_per_instance >= 0,
            "gpus_per_instance",
            self.gpus_per_instance,
            "an integer >= 0",
        )
        for name in ("job_directives", "job_setup"):
            lines = getattr(self, name)
            check(
                not isinstance(lines, str) and all(isinstance(line, str) for line in lines),
                name,
                lines,
                "a list of strings (one line each)",
            )
            object.__setattr__(self, name, tuple(lines))

    def job_options(self, job_name: str) -> dict[str, Any]:
        """The keyword arguments of dask-jobqueue's ``SLURMCluster`` for these jobs."""
        directives = list(self.job_directives)
        worker_args = ["--lifetime", f"{self.walltime - self.retire_before:.0f}s"]
        if self.gpus_per_instance:
            # Slurm then sets CUDA_VISIBLE_DEVICES in the job: its worker and the
            # instances it runs see only the job's GPUs.
            directives.append(f"--gres=gpu:{self.gpus_per_instance}")
            worker_args += ["--resources", f"GPU={self.gpus_per_instance}"]
        options: dict[str, Any] = {
            # One worker with one task thread per job: one instance at a time,
            # with all of the job's CPUs (job_cpu), memory and GPUs.
            "cores": 1,
            "processes": 1,
            "job_cpu": self.cpus_per_instance,
            "memory": f"{self.memory_mb_per_instance}MiB",
            "walltime": slurm_time(self.walltime),
            "queue": self.partition,
            "account": self.account,
            "job_extra_directives": directives,
            "job_script_prologue": list(self.job_setup),
            "worker_extra_args": worker_args,
            "python": self.python or sys.executable,
            "interface": self.interface,
            "log_directory": self.log_directory,
            "scheduler_options": {"dashboard_address": self.dashboard_address},
            "job_name": job_name,
        }
        options.update(self.cluster_options)
        return options


@dataclass(frozen=True, slots=True)
class SlurmStats:
    """A snapshot of a :class:`SlurmCluster`'s jobs.

    Attributes:
        jobs: Jobs held now, pending in Slurm's queue or running (lost ones that
            Slurm still lists as completing included).
        workers: Workers connected now (one per running job).
        submitted: Jobs submitted since the cluster started.
        lost: Jobs whose worker went away while the cluster needed it (walltime,
            preemption, ``scancel``, a failed node); each was replaced.
        max_jobs: The cap on ``jobs``.
    """

    jobs: int
    workers: int
    submitted: int
    lost: int
    max_jobs: int


class SlurmCluster:
    """Slurm jobs as Dask workers for labkit's runs; made by :func:`slurm`.

    ``async with`` it (or ``with``, from a script) to start the scheduler; the block
    gets the :class:`~labkit.cluster.DaskExecutor` to pass as ``executor=``. On
    leaving, every job is cancelled and the scheduler stops. ``client`` and
    ``cluster`` (dask-jobqueue's ``SLURMCluster``) are there while the block runs;
    ``job_name`` is the name its jobs carry in Slurm's queue (``squeue --name``).

    Args:
        options: What each job asks for.
    """

    def __init__(self, options: SlurmOptions) -> None:
        self.options = options
        self.client: Any = None
        self.cluster: Any = None
        self._keeper: Any = None
        self._seen: set[str] = set()
        self._submitted = 0
        self._lost = 0
        # The jobs' name in Slurm's queue: this cluster's, and no other's.
        self.job_name = f"labkit-{uuid.uuid4().hex[:12]}"
        # Slurm's answer: the jobs known when squeue was asked, and those it listed.
        self._queued: tuple[set[str], set[str]] = (set(), set())
        # Jobs whose worker went away and that Slurm still lists (completing):
        # they count under the cap until they leave its queue.
        self._leaving: set[str] = set()
        self._polled = -math.inf

    # -- starting and stopping ---------------------------------------------------------

    async def __aenter__(self) -> DaskExecutor:
        cluster_class = _slurm_cluster_class()
        self.cluster = await cluster_class(
            asynchronous=True, **self.options.job_options(self.job_name)
        )
        try:
            self.client = await distributed().Client(self.cluster, asynchronous=True)
        except BaseException:
            await self.cluster.close()
            raise
        self._keeper = asyncio.ensure_future(self._keep())
        return self.executor

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        try:
            await self.client.close()
        finally:
            await self.cluster.close()

    def __enter__(self) -> DaskExecutor:
        cluster_class = _slurm_cluster_class()
        self.cluster = cluster_class(asynchronous=False, **self.options.job_options(self.job_name))
        try:
            self.client = distributed().Client(self.cluster)
        except BaseException:
            self.cluster.close()
            raise
        # The keeper runs on the cluster's own loop, in its thread.
        self._keeper = asyncio.run_coroutine_threadsafe(
            self._keep(), self.cluster.loop.asyncio_loop
        )
        return self.executor

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
        try:
            self.client.close()
        finally:
            self.cluster.close()

    @property
    def executor(self) -> DaskExecutor:
        """What to pass as ``executor=``: the client, asking each task for the job's GPUs.

        Raises:
            LabkitError: The cluster is not started (enter it first).
        """
        from labkit.errors import LabkitError

        if self.client is None:
            raise LabkitError("the Slurm cluster is not started: use it in `async with`")
        return DaskExecutor(self.client, gpus=self.options.gpus_per_instance)

    def stats(self) -> SlurmStats:
        """A snapshot of the jobs (all zero before the cluster starts)."""
        cluster = self.cluster
        return SlurmStats(
            jobs=0 if cluster is None else len(cluster.worker_spec) + len(self._leaving),
            workers=0 if cluster is None else len(cluster.scheduler.workers),
            submitted=self._submitted,
            lost=self._lost,
            max_jobs=self.options.max_jobs,
        )

    # -- the keeper --------------------------------------------------------------------

    async def _keep(self) -> None:
        """Every :data:`KEEP_EVERY` s: let lost jobs go, submit jobs for waiting work."""
        while True:
            try:
                await self._keep_once()
            except Exception:
                # The next look may well succeed (sbatch failed once, say).
                log.exception("the Slurm keeper failed; trying again in %s s", KEEP_EVERY)
            await asyncio.sleep(KEEP_EVERY)

    async def _keep_once(self) -> None:
        cluster = self.cluster
        scheduler = cluster.scheduler
        connected = {str(worker.name) for worker in scheduler.workers.values()}
        self._seen |= connected
        queued = await self._poll_queue()
        for name in [name for name in cluster.worker_spec if self._gone(name, connected, queued)]:
            # The job ended (walltime, preemption, scancel, a failed start):
            # make sure it is gone, and free its place under the cap.
            self._lost += 1
            del cluster.worker_spec[name]
            job = cluster.workers.pop(name, None)
            if job is not None and job.job_id:
                self._leaving.add(str(job.job_id))
                await job.close()
        waiting = (
            len(scheduler.queued)
            + len(scheduler.unrunnable)
            + sum(len(worker.processing) for worker in scheduler.workers.values())
        )
        held = len(cluster.worker_spec)
        wanted = min(self.options.max_jobs - len(self._leaving), waiting)
        if wanted > held:
            self._submitted += wanted - held
            cluster.scale(wanted)

    def _gone(self, name: str, connected: set[str], queued: tuple[set[str], set[str]]) -> bool:
        """Whether the job of worker ``name`` ended: its worker came and went, or
        the job left Slurm's queue (also before its worker ever connected)."""
        if name in connected:
            return False
        if name in self._seen:
            return True
        known, listed = queued
        job_id = getattr(self.cluster.workers.get(name), "job_id", None)
        return job_id in known and job_id not in listed

    async def _poll_queue(self) -> tuple[set[str], set[str]]:
        """This cluster's jobs in Slurm's queue, asked at most every ``poll_every`` s:
        the ids known when asking (a job submitted since is not judged by the
        answer), and the ids squeue listed."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._polled < self.options.poll_every:
            return self._queued
        self._polled = loop.time()
        known = {str(job.job_id) for job in self.cluster.workers.values() if job.job_id}
        leaving = set(self._leaving)
        # squeue's default states: pending, running, completing and the like.
        try:
            process = await asyncio.create_subprocess_exec(
                "squeue",
                "--noheader",
                f"--name={self.job_name}",
                "--format=%i",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            log.warning("cannot run squeue (%s): jobs that end unseen are not replaced", exc)
            return self._queued
        out, err = await process.communicate()
        if process.returncode != 0:
            log.warning("squeue failed (%s): %s", process.returncode, err.decode().strip())
            return self._queued
        listed = set(out.decode().split())
        self._leaving -= leaving - listed
        self._queued = (known, listed)
        return self._queued


def slurm(
    *,
    partition: str | None = None,
    walltime: float = 3600.0,
    cpus_per_instance: int = 1,
    memory_mb_per_instance: int = 2000,
    gpus_per_instance: int = 0,
    max_jobs: int = 8,
    retire_before: float = 60.0,
    account: str | None = None,
    job_directives: Sequence[str] = (),
    job_setup: Sequence[str] = (),
    python: str | None = None,
    interface: str | None = None,
    log_directory: str | None = None,
    dashboard_address: str = "127.0.0.1:0",
    poll_every: float = 5.0,
    **cluster_options: Any,
) -> SlurmCluster:
    """Run instances as Slurm jobs: one call, then ``async with`` it.

    ::

        async with lk.cluster.slurm(partition="gpu", walltime=4 * 3600,
                                    gpus_per_instance=1, max_jobs=8) as executor:
            result = await lk.run_experiment(exp, instances=16, executor=executor,
                                             store=store, resume=True)

    Each job runs one instance at a time; jobs are submitted while instances wait
    (at most ``max_jobs`` at once, pending ones included) and held until the
    block ends, so a sweep's trials reuse them. Jobs run ``python`` (by default
    this interpreter: the nodes must see the same path, as on a shared home or
    software folder) with labkit and the instance function importable there; a
    function from a module the workers cannot import fails each instance at once
    with :class:`labkit.errors.WorkerImportError`, which says how to ship it.

    Args:
        partition: The Slurm partition (``-p``); ``None``: the cluster's default.
        walltime: Each job's time limit (``-t``), in seconds (Slurm rounds up to
            whole minutes).
        cpus_per_instance: CPUs of each job (``--cpus-per-task``).
        memory_mb_per_instance: Memory of each job (``--mem``), in MiB; the worker
            is restarted past it (the instance then runs again elsewhere).
        gpus_per_instance: GPUs of each job (``--gres=gpu:N``): Slurm sets
            ``CUDA_VISIBLE_DEVICES``, and ``ctx.gpus`` and ``ctx.env`` carry it.
        max_jobs: The most jobs held at once, pending or running.
        retire_before: Seconds before the walltime at which a job's worker retires
            cleanly (an instance it runs then starts again on another job).
        account: The account to charge (``-A``).
        job_directives: More ``#SBATCH`` options, e.g. ``["--qos=low"]``.
        job_setup: Shell lines each job runs before its worker starts, e.g.
            ``["module load cuda", "export PYTHONPATH=/shared/code"]``.
        python: The Python the jobs run (default: ``sys.executable``).
        interface: The network interface the scheduler and workers use (``ib0``).
        log_directory: Where jobs write their output (default: Slurm's, the
            submitting folder).
        dashboard_address: Where the scheduler's dashboard listens.
        poll_every: Seconds between looks at Slurm's queue for jobs that ended.
        **cluster_options: Passed on to dask-jobqueue's ``SLURMCluster``.

    Returns:
        A :class:`SlurmCluster`, not started yet.

    Raises:
        ConfigError: An option is out of range.
        MissingDependency: dask-jobqueue is missing (the ``slurm`` extra); raised
            on entering.
    """
    return SlurmCluster(
        SlurmOptions(
            partition=partition,
            walltime=walltime,
            cpus_per_instance=cpus_per_instance,
            memory_mb_per_instance=memory_mb_per_instance,
            gpus_per_instance=gpus_per_instance,
            max_jobs=max_jobs,
            retire_before=retire_before,
            account=account,
            job_directives=job_directives,
            job_setup=job_setup,
            python=python,
            interface=interface,
            log_directory=log_directory,
            dashboard_address=dashboard_address,
            poll_every=poll_every,
            cluster_options=cluster_options,
        )
    )


def slurm_time(seconds: float) -> str:
    """Seconds as Slurm's ``D-HH:MM:SS``, rounded up to whole minutes as Slurm counts."""
    minutes = math.ceil(seconds / 60)
    days, minutes = divmod(minutes, 24 * 60)
    return f"{days}-{minutes // 60:02d}:{minutes % 60:02d}:00"


def _slurm_cluster_class() -> Any:
    """dask-jobqueue's ``SLURMCluster``, imported without its side effect, and with
    worker names that are never used twice.

    Importing dask-jobqueue replaces the process's SIGINT handler with one that
    calls ``sys.exit()`` (for its own runner scripts): the caller's Ctrl-C handling
    (:class:`labkit.errors.RunInterrupted`) is put back at once.
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        from dask_jobqueue.slurm import SLURMCluster
    except ImportError as exc:
        raise MissingDependency("dask_jobqueue", "slurm", "Running instances on Slurm") from exc
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)

    class LabkitSLURMCluster(SLURMCluster):
        """A ``SLURMCluster`` whose every job gets a worker name of its own.

        Dask would give a replacement job the name of the lost one it replaces:
        the keeper would take it for the lost one, and Dask's lost-worker timer
        would cancel it.
        """

        def new_worker_spec(self) -> dict[str, Any]:
            spec: dict[str, Any] = super().new_worker_spec()  # type: ignore[no-untyped-call]
            self._i += 1  # the next job's number, even once this one is gone
            return spec

    return LabkitSLURMCluster
