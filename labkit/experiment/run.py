"""run_experiment: run an experiment's instances through a Runner and average them."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from labkit._checks import check, is_int
from labkit.clock import SYSTEM_CLOCK, Clock, SystemClock
from labkit.errors import OversubscribedWarning
from labkit.events import EventBus, Watcher, as_bus
from labkit.executors.workers import available_cores
from labkit.experiment.attempt import InstanceCaller, InstanceLedger, LocalInstances, call_here
from labkit.experiment.auto import run_instances
from labkit.experiment.dask import DaskInstances, cluster_executor, on_dask
from labkit.experiment.options import ExperimentOptions, check_resources
from labkit.experiment.process import ProcessCaller
from labkit.experiment.record import begin_record, heartbeat
from labkit.experiment.spec import Experiment, averaging_config, display_config
from labkit.results import ExperimentRecorder, ExperimentResult, InstanceResult, error_text
from labkit.runner.options import RunOptions
from labkit.seeds import check_seed

if TYPE_CHECKING:
    from labkit.cluster import DaskExecutor
    from labkit.gpu import GPUPool
    from labkit.runner import Runner
    from labkit.sandbox.pool import SandboxPool
    from labkit.timeline import Method

__all__ = ("ExperimentRun", "open_run", "run_experiment")


async def run_experiment(
    experiment: Experiment,
    *,
    instances: int | Literal["auto"] = 1,
    duration: float | None = None,
    gpus_per_instance: int = 0,
    gpu_pool: GPUPool | None = None,
    sandbox_pool: SandboxPool | None = None,
    store: ExperimentRecorder | None = None,
    resume: bool = False,
    sample_every: float = 1.0,
    on_event: Watcher | Callable[[Any], object] | EventBus | None = None,
    clock: Clock | None = None,
    target_rel_half_width: float = 0.05,
    max_instances: int = 32,
    auto_metric: str | None = None,
    heartbeat_every: float = 5.0,
    seed: int = 0,
    executor: Any = None,
    max_gap: float | Mapping[str, float | None] | None = None,
    method: Method | Mapping[str, Method] | None = None,
    labels: Mapping[str, str | int | float | bool] | None = None,
    **runner_options: Any,
) -> ExperimentResult:
    """Run ``experiment`` as parallel instances and average what they measured.

    Every option is checked before anything starts (:class:`ExperimentOptions`).
    Instances run through a :class:`labkit.Runner` (``runner_options`` such as
    ``timeout``, ``retry`` and ``rate_limit`` go to it; ``max_concurrency``
    defaults to all instances at once). Each instance holds ``gpus_per_instance``
    GPUs from ``gpu_pool`` and a sandbox session from ``sandbox_pool`` for its
    whole life, and gives them back however it ends. A failing instance is a
    recorded result, not an exception: the result averages those that succeeded
    and keeps the failures (``summary["num_failed"]``, ``summary["errors"]``);
    when none succeeded, ``result.all_failed`` is true.

    No instance that ran is lost: if averaging, the outlier search or the store
    fails after the instances ran, the result still holds every instance and
    says what failed in ``result.notes`` (and the store records the experiment
    as finished). With a store, the run writes a heartbeat every
    ``heartbeat_every`` seconds; a run killed mid-way reads as ``interrupted``
    in ``store.experiments()`` and ``resume=True`` picks it up.

    With ``instances="auto"``, a pilot of 3 instances runs first; then instances
    are added until the confidence interval of ``auto_metric``'s mean is within
    ``target_rel_half_width`` of the mean (``timeline.instances_needed``) or
    ``max_instances`` have run.

    With ``executor=`` a ``distributed.Client`` or a
    :class:`labkit.cluster.DaskExecutor`, every attempt of an instance is one task
    on the Dask cluster, and the runner's cap, retries, timeouts and events stay
    here as for a local run. ``experiment.fn`` (and what it returns) must pickle
    and labkit must be importable on the workers. Each instance's ``ctx.record``
    samples are stamped on its worker and streamed back while it runs
    (:func:`labkit.cluster.publish`), so ``on_event`` sees ``sample`` and ``log``
    events live and ``store`` records them; the final timeline is the one the
    worker returns. The cluster's workers own their GPUs: ``gpus_per_instance``
    becomes the Dask resource ``{"GPU": n}`` (start GPU workers with
    :func:`labkit.cluster.gpu_cluster`), ``ctx.gpus`` and ``ctx.env`` come from the
    worker's ``CUDA_VISIBLE_DEVICES``, and an instance that no worker can place
    fails with ``GPUUnavailable``. A local ``gpu_pool``, a sandbox and a test clock
    do not travel to workers and are refused.

    Args:
        experiment: What to run.
        instances: How many instances (1 to :data:`MAX_INSTANCES`), or ``"auto"``.
        duration: How long each instance is meant to run, in seconds
            (``ctx.duration``); at most :data:`MAX_DURATION`. Enforce a hard limit
            with ``timeout=``.
        gpus_per_instance: GPUs each instance holds; needs a fleet that has them.
            Without ``gpu_pool``, a ``GPUPool()`` over this machine's GPUs is used.
        gpu_pool: Where GPUs come from.
        sandbox_pool: Where sandboxes come from; none means the instances run in
            this process (unless the experiment ``needs_sandbox``: then local ones).
        store: Records the run (``labkit.Store`` or any ``ExperimentRecorder``).
        resume: With ``store``, load the instances a previous run of the same
            experiment, parameters and instance count finished, and run only the rest.
            A run of it that is still alive is never taken over: ``labkit.Store``
            refuses with a ``StoreError`` (or waits, see its ``resume_wait``).
        sample_every: Seconds between resource samples of an instance's sandbox.
        on_event: A :class:`~labkit.events.Watcher` (its methods name the events
            it reads), a callable given every event, or an
            :class:`~labkit.events.EventBus`: the instances' and the runner's events.
        clock: The clock for timestamps and sampling (tests pass a ``FakeClock``).
        target_rel_half_width: For ``"auto"``: the wanted 95 % confidence
            half-width of the mean, relative to the mean (0.05 is 5 %).
        max_instances: For ``"auto"``: the cap on instances run.
        auto_metric: For ``"auto"``: the summary figure to estimate (default:
            ``cpu_peak``, else ``memory_peak``, else the first numeric figure).
        heartbeat_every: Seconds between heartbeats to a store that takes them
            (``Store.heartbeat``); wall-clock time, whatever ``clock`` is.
        labels: Names for the run kept in its config and the store's record
            (``store.experiments()["labels"]``): a sweep marks each trial's run
            with ``{"sweep": ..., "trial": ...}``, which ``labkit history`` shows.
        max_gap: The averaged timeline's gaps, overriding ``experiment.max_gap``
            (see :func:`labkit.timeline.average_timelines`: by default a silence
            longer than 3 median sampling intervals of a metric is a gap where
            that instance does not count).
        method: How each metric is averaged, overriding ``experiment.method``
            (default: ``errors`` summed, so its total is kept; the rest linear).
        **runner_options: Passed to :class:`labkit.Runner`, except ``executor``:
            ``None`` (instances run on this event loop, a sync function in a
            thread), a ``distributed.Client`` or a
            :class:`labkit.cluster.DaskExecutor` (instances run on the cluster).

    Returns:
        The :class:`~labkit.results.ExperimentResult`.

    Raises:
        ConfigError: An option is out of range (before anything starts), such as
            ``instances`` below 1 or above the cap, or more GPUs per instance than
            the fleet has; with a Dask executor, ``gpu_pool``, ``sandbox_pool``,
            an experiment that ``needs_sandbox``, a clock other than the system's,
            or ``gpus_per_instance`` unlike the ``DaskExecutor``'s ``gpus``.
        asyncio.CancelledError: The caller was cancelled; every instance was
            cancelled and gave its GPUs and sandbox back.
    """
    async with open_run(
        experiment,
        instances=instances,
        duration=duration,
        gpus_per_instance=gpus_per_instance,
        gpu_pool=gpu_pool,
        sandbox_pool=sandbox_pool,
        store=store,
        resume=resume,
        sample_every=sample_every,
        on_event=on_event,
        clock=clock,
        target_rel_half_width=target_rel_half_width,
        max_instances=max_instances,
        auto_metric=auto_metric,
        heartbeat_every=heartbeat_every,
        seed=seed,
        executor=executor,
        max_gap=max_gap,
        method=method,
        labels=labels,
        **runner_options,
    ) as run:
        await run_instances(run.options, run.results, run.run)
        if run.options.adaptive:
            run.config["instances_run"] = len(run.results)
        return await run.finish()


class ExperimentRun:
    """An experiment whose instances run in batches: one record, indices and seeds continuing.

    Made by :func:`open_run`. :meth:`add` runs the next ``n`` instances (their
    indices continue from the highest one run or resumed, so their seeds never
    repeat); :meth:`finish` averages every instance run so far into one
    :class:`~labkit.results.ExperimentResult` and records it as one experiment.
    A racing sweep grows each trial this way; ``run_experiment`` is one batch (or
    the batches of ``instances="auto"``).

    Attributes:
        options: The run's checked options.
        results: Every instance run (or resumed) so far, by index.
        config: The run's configuration as the store and the result keep it.
    """

    def __init__(
        self,
        experiment: Experiment,
        options: ExperimentOptions,
        runner: Runner,
        book: InstanceLedger,
        results: dict[int, InstanceResult],
        config: dict[str, Any],
        shared_cores: _SharedCores | None = None,
    ) -> None:
        self.experiment = experiment
        self.options = options
        self.results = results
        self.config = config
        self._runner = runner
        self._book = book
        self._next = max(results, default=-1) + 1
        self._attempt: Callable[[int], Awaitable[Any]] | None = None
        self.shared_cores = shared_cores
        """More instances at once in processes of this machine than its cores, if so."""

    @property
    def experiment_id(self) -> str | None:
        """The store's key for this experiment, when it is recorded."""
        return self._book.experiment_id

    async def run(self, indices: Sequence[int]) -> None:
        """Run the instances of ``indices`` that have no result yet; each is recorded."""
        assert self._attempt is not None, "use ExperimentRun through open_run()"
        self._next = max(self._next, max(indices, default=-1) + 1)
        await _run_batch(self._runner, self._attempt, self._book, self.results, indices)

    async def add(self, n: int) -> list[InstanceResult]:
        """Run ``n`` more instances (the next indices) and return their results.

        Raises:
            ConfigError: ``n`` is not an int >= 1.
        """
        check(is_int(n) and n >= 1, "n", n, "an int >= 1 (instances to add)")
        indices = range(self._next, self._next + n)
        await self.run(indices)
        return [self.results[index] for index in indices]

    async def finish(self) -> ExperimentResult:
        """Average every instance so far into the result, and record it as finished.

        A failure here (averaging, the store) becomes a note; no instance is lost.
        """
        shared = self.shared_cores
        return await _finish(
            self.experiment,
            self._book,
            list(self.results.values()),
            self.config,
            review=None if shared is None else shared.after,
        )


@contextlib.asynccontextmanager
async def open_run(
    experiment: Experiment,
    *,
    instances: int | Literal["auto"] = 1,
    duration: float | None = None,
    gpus_per_instance: int = 0,
    gpu_pool: GPUPool | None = None,
    sandbox_pool: SandboxPool | None = None,
    store: ExperimentRecorder | None = None,
    resume: bool = False,
    sample_every: float = 1.0,
    on_event: Watcher | Callable[[Any], object] | EventBus | None = None,
    clock: Clock | None = None,
    target_rel_half_width: float = 0.05,
    max_instances: int = 32,
    auto_metric: str | None = None,
    heartbeat_every: float = 5.0,
    seed: int = 0,
    executor: Any = None,
    max_gap: float | Mapping[str, float | None] | None = None,
    method: Method | Mapping[str, Method] | None = None,
    labels: Mapping[str, str | int | float | bool] | None = None,
    **runner_options: Any,
) -> AsyncIterator[ExperimentRun]:
    """An :class:`ExperimentRun` of ``experiment``, open for the block.

    Takes :func:`run_experiment`'s arguments and checks them all before anything
    starts; ``instances`` is the count the store keeps (and resume matches on) and
    the default concurrency. Leaving the block stops the heartbeat and the runner;
    a block left by an exception marks a stored run ``interrupted``.

    Raises:
        ConfigError: An option is out of range (see :func:`run_experiment`).
    """
    check(isinstance(experiment, Experiment), "experiment", experiment, "a labkit.Experiment")
    options = ExperimentOptions(
        instances=instances,
        duration=duration,
        gpus_per_instance=gpus_per_instance,
        sample_every=sample_every,
        resume=resume,
        target_rel_half_width=target_rel_half_width,
        max_instances=max_instances,
        auto_metric=auto_metric,
        heartbeat_every=heartbeat_every,
    )
    base_seed = check_seed(seed)
    check_resources(gpu_pool, sandbox_pool, store)
    where = _where(executor, options, experiment, gpu_pool, sandbox_pool, clock)
    cluster = where if not isinstance(where, str) else None
    gpus = options.gpus_per_instance if cluster is None else cluster.gpus
    gpu_pool = gpu_pool if cluster is not None else _local_gpu_pool(gpus, gpu_pool)
    clock = clock or SYSTEM_CLOCK
    bus = as_bus(on_event)
    runner, timeout = _runner(where, options, bus, clock, runner_options)
    caller = ProcessCaller(experiment.fn, experiment.params or {}) if where == "process" else None
    config = {
        **options.config({**runner_options, "timeout": timeout} if timeout else runner_options),
        **_run_config(experiment, where, gpus, base_seed, max_gap, method, labels),
    }
    book = InstanceLedger(
        experiment=experiment,
        clock=clock,
        bus=bus,
        recorder=store,
        seed=base_seed,
    )
    results = await begin_record(store, book, options, config)
    shared = _shared_cores(
        where, sandbox_pool, experiment, runner_options["max_concurrency"], options
    )
    if shared is not None and shared.kind == "worker processes":
        _say(book.notes, shared.message())
    run = ExperimentRun(experiment, options, runner, book, results, config, shared)
    async with contextlib.AsyncExitStack() as stack:
        # The heartbeat first: from here, a run that ends by an exception is marked.
        await stack.enter_async_context(heartbeat(store, book.experiment_id, heartbeat_every))
        await stack.enter_async_context(runner)
        run._attempt = await _attempts(
            stack,
            book,
            cluster,
            options,
            experiment,
            gpus,
            gpu_pool,
            sandbox_pool,
            config,
            timeout=timeout,
            caller=caller,
        )
        yield run


def _run_config(
    experiment: Experiment,
    where: str | DaskExecutor,
    gpus: int,
    seed: int,
    max_gap: float | Mapping[str, float | None] | None,
    method: Method | Mapping[str, Method] | None,
    labels: Mapping[str, str | int | float | bool] | None,
) -> dict[str, Any]:
    """What the store keeps of a run beside its options: GPUs, the base seed, where
    instances run, how they are averaged and shown, and the caller's labels."""
    return {
        "gpus_per_instance": gpus,
        "seed": seed,
        "executor": where if isinstance(where, str) else "dask",
        **averaging_config(experiment, max_gap, method),
        **display_config(experiment),
        **_labels(labels),
    }


def _runner(
    where: str | DaskExecutor,
    options: ExperimentOptions,
    bus: EventBus,
    clock: Clock,
    runner_options: dict[str, Any],
) -> tuple[Runner, float | None]:
    """The run's Runner (built now, so bad options fail before anything starts) and the
    timeout its attempts keep themselves (``None`` on Dask, where the runner keeps it).

    Here an attempt keeps the timeout, from when its function begins: waiting for GPUs,
    a sandbox or a worker process is not run time. In worker processes, one instance
    per core by default.
    """
    from labkit.runner import Runner

    timeout = None
    if isinstance(where, str):
        timeout = runner_options.pop("timeout", None)
        RunOptions(timeout=timeout)
    default_concurrency = options.planned
    if where == "process":
        default_concurrency = min(options.planned, available_cores())
    runner_options.setdefault("max_concurrency", default_concurrency)
    return Runner(on_event=bus, clock=clock, **runner_options), timeout


async def _attempts(
    stack: contextlib.AsyncExitStack,
    book: InstanceLedger,
    cluster: Any,
    options: ExperimentOptions,
    experiment: Experiment,
    gpus: int,
    gpu_pool: Any,
    sandbox_pool: Any,
    config: dict[str, Any],
    *,
    timeout: float | None,
    caller: InstanceCaller | None,
) -> Callable[[int], Awaitable[Any]]:
    """The function that runs one instance: on the Dask cluster, or here (holding its
    GPUs, sandbox and sampler); what it holds is closed with ``stack``."""
    if cluster is not None:
        remote = await stack.enter_async_context(DaskInstances(book, cluster, options.duration))
        return remote.instance
    if sandbox_pool is None and experiment.needs_sandbox:
        sandbox_pool = await stack.enter_async_context(_local_sandboxes(options.planned))
    config["sandbox"] = None if sandbox_pool is None else type(sandbox_pool).__name__
    local = LocalInstances(
        instances=book,
        duration=options.duration,
        gpus=gpus,
        gpu_pool=gpu_pool,
        sandbox_pool=sandbox_pool,
        sample_every=options.sample_every,
        timeout=timeout,
        caller=caller or call_here,
    )
    return local.instance


async def _run_batch(
    runner: Any,
    attempt: Callable[[int], Awaitable[Any]],
    book: InstanceLedger,
    results: dict[int, InstanceResult],
    indices: Sequence[int],
) -> None:
    """Run the instances of ``indices`` not in ``results`` yet, and record each."""
    todo = [index for index in indices if index not in results]
    if not todo:
        return
    for task in (await runner.map(attempt, todo)).results:
        error = None if task.ok else task.error or RuntimeError("unknown error")
        results[task.item] = book.result(task.item, error)
        if error is not None:
            await book.record(results[task.item])


async def _finish(
    experiment: Experiment,
    book: InstanceLedger,
    results: list[InstanceResult],
    config: dict[str, Any],
    *,
    review: Callable[[ExperimentResult], str | None] | None = None,
) -> ExperimentResult:
    """Average the instances and record the run; a failure here becomes a note.

    ``review`` may add one note about the averaged result before it is recorded.
    """
    result = ExperimentResult.build(
        experiment.name,
        dict(experiment.params or {}),
        results,
        config,
        experiment_id=book.experiment_id,
        notes=book.notes,
    )
    said = review(result) if review is not None else None
    if said is not None:
        _say(book.notes, said)
        result = replace(result, notes=(*result.notes, said))
    if book.recorder is not None and book.experiment_id is not None:
        try:
            await book.recorder.finish(book.experiment_id, result)
        except Exception as exc:
            note = f"the store could not record the finished experiment: {error_text(exc)}"
            result = replace(result, notes=(*result.notes, note))
    return result


def _where(
    executor: Any,
    options: ExperimentOptions,
    experiment: Experiment,
    gpu_pool: GPUPool | None,
    sandbox_pool: SandboxPool | None,
    clock: Clock | None,
) -> str | DaskExecutor:
    """Where instances run: ``"thread"`` (this process), ``"process"`` (worker
    processes), or the Dask executor to submit to."""
    if executor is None or executor == "thread":
        return "thread"
    if executor == "process":
        on = "with executor='process'"
        check(
            sandbox_pool is None and not experiment.needs_sandbox,
            "sandbox_pool",
            sandbox_pool,
            f"None {on}: a sandbox is a process already (run sandboxed instances "
            "with executor='thread')",
        )
        check(
            clock is None or isinstance(clock, SystemClock),
            "clock",
            clock,
            f"None or the system clock {on}: workers stamp samples in real time",
        )
        return "process"
    check(
        on_dask(executor),
        "executor",
        executor,
        "None or 'thread' (instances run here: async on the event loop, sync in a thread), "
        "'process' (each instance in a worker process), a distributed.Client or a "
        "labkit.cluster.DaskExecutor",
    )
    # The cluster's workers own their GPUs: no local fleet to check against; a
    # request no worker can meet fails each instance with GPUUnavailable.
    return cluster_executor(
        executor, options.gpus_per_instance, experiment, gpu_pool, sandbox_pool, clock
    )


@dataclass(frozen=True, slots=True)
class _SharedCores:
    """More instances at once in processes of this machine than it has cores.

    CPU-bound instances then share cores, and what they time is inflated. Worker
    processes run Python functions, most often CPU-bound: that is said when the
    run starts. Local sandboxes often wait on the network or a disk: that is said
    at the end, only when their sampled ``cpu`` (% of one core) added up to at
    least half of the machine's (``cores * 50 %``) at some moment.
    """

    at_once: int
    cores: int
    kind: str

    def message(self, measured: str = "") -> str:
        return (
            f"{self.at_once} instances run at once in {self.kind} on {self.cores} CPU cores"
            f"{measured}: CPU-bound instances then share cores and their timings are "
            f"inflated (max_concurrency={self.cores} runs them one per core)"
        )

    def after(self, result: ExperimentResult) -> str | None:
        """What to say once local sandboxes ran, from the CPU they used together."""
        frame = result.averaged
        if self.kind != "local sandboxes" or "cpu" not in frame or frame.empty:
            return None
        together = float((frame["cpu"] * frame["n"]).max())
        if not together >= 50.0 * self.cores:
            return None
        return self.message(f" (together they used up to {together:.0f} % CPU)")


def _shared_cores(
    where: str | DaskExecutor,
    sandbox_pool: SandboxPool | None,
    experiment: Experiment,
    max_concurrency: Any,
    options: ExperimentOptions,
) -> _SharedCores | None:
    """The cores the run's instances share, when they are more than the cores."""
    if where == "process":
        kind = "worker processes"
    elif _local_sandboxes_used(sandbox_pool, experiment):
        kind = "local sandboxes"
    else:
        return None
    at_once = options.planned
    if is_int(max_concurrency):
        at_once = min(at_once, max_concurrency)
    cores = available_cores()
    return _SharedCores(at_once, cores, kind) if at_once > cores else None


def _labels(labels: Mapping[str, Any] | None) -> dict[str, Any]:
    """``labels`` as the run's config keeps them (``{"labels": {...}}``), checked."""
    if labels is None:
        return {}
    check(
        isinstance(labels, Mapping)
        and all(
            isinstance(key, str) and isinstance(value, str | int | float | bool)
            for key, value in labels.items()
        ),
        "labels",
        labels,
        "None or a mapping of str to str, int, float or bool (kept with the run's record)",
    )
    return {"labels": dict(labels)}


def _say(notes: list[str], note: str) -> None:
    """A warning for whoever watches, and a note the result and the store keep."""
    notes.append(note)
    warnings.warn(note, OversubscribedWarning, stacklevel=4)


def _local_sandboxes_used(sandbox_pool: SandboxPool | None, experiment: Experiment) -> bool:
    """Whether instances run in sandboxes on this machine (E2B's run elsewhere)."""
    from labkit.sandbox.local import LocalSandbox

    if sandbox_pool is None:
        return experiment.needs_sandbox  # then local ones are made
    factory = sandbox_pool.factory
    factory = getattr(factory, "func", factory)  # a functools.partial of a class
    return isinstance(factory, type) and issubclass(factory, LocalSandbox)


def _local_gpu_pool(gpus: int, gpu_pool: GPUPool | None) -> GPUPool | None:
    """The pool to take ``gpus`` per instance from, checked against its fleet."""
    if not gpus:
        return gpu_pool
    if gpu_pool is None:
        from labkit.gpu import GPUPool

        gpu_pool = GPUPool()
    fleet = len(gpu_pool.stats().gpus)
    check(gpus <= fleet, "gpus_per_instance", gpus, f"at most {fleet} (the GPUs in this fleet)")
    return gpu_pool


@contextlib.asynccontextmanager
async def _local_sandboxes(size: int) -> AsyncIterator[SandboxPool]:
    """A pool of ``LocalSandbox`` es for an experiment that ``needs_sandbox``."""
    from labkit.sandbox.local import LocalSandbox
    from labkit.sandbox.pool import SandboxPool

    pool = SandboxPool(LocalSandbox, max_size=size)
    try:
        yield pool
    finally:
        await pool.close()
