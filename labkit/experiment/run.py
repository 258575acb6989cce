"""run_experiment: run an experiment's instances through a Runner and average them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import check
from labkit.events import EventBus
from labkit.experiment.attempt import Instances, LocalAttempts
from labkit.experiment.auto import run_instances
from labkit.experiment.dask import DaskAttempts, cluster_executor, on_dask
from labkit.experiment.options import ExperimentOptions, check_resources
from labkit.experiment.spec import Experiment
from labkit.results import ExperimentRecorder, ExperimentResult, InstanceResult, error_text

if TYPE_CHECKING:
    from labkit.cluster import DaskExecutor
    from labkit.gpu import GPUPool
    from labkit.sandbox.pool import SandboxPool

__all__ = ("run_experiment",)


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
    on_event: Callable[[Any], object] | EventBus | None = None,
    clock: Clock | None = None,
    target_rel_half_width: float = 0.05,
    max_instances: int = 32,
    auto_metric: str | None = None,
    heartbeat_every: float = 5.0,
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
        on_event: A callback, or an :class:`~labkit.events.EventBus`, given every
            :class:`~labkit.events.InstanceEvent` and the runner's ``TaskEvent``.
        clock: The clock for timestamps and sampling (tests pass a ``FakeClock``).
        target_rel_half_width: For ``"auto"``: the wanted 95 % confidence
            half-width of the mean, relative to the mean (0.05 is 5 %).
        max_instances: For ``"auto"``: the cap on instances run.
        auto_metric: For ``"auto"``: the summary figure to estimate (default:
            ``cpu_peak``, else ``memory_peak``, else the first numeric figure).
        heartbeat_every: Seconds between heartbeats to a store that takes them
            (``Store.heartbeat``); wall-clock time, whatever ``clock`` is.
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
    check_resources(gpu_pool, sandbox_pool, store)
    executor = runner_options.pop("executor", None)
    cluster = _cluster(executor, options, experiment, gpu_pool, sandbox_pool, clock)
    gpus = options.gpus_per_instance if cluster is None else cluster.gpus
    gpu_pool = gpu_pool if cluster is not None else _local_gpu_pool(gpus, gpu_pool)
    clock = clock or SYSTEM_CLOCK
    bus = _bus(on_event)
    runner_options.setdefault("max_concurrency", options.planned)
    from labkit.runner import Runner

    # Built here so that bad runner options fail before anything starts.
    runner = Runner(on_event=bus, clock=clock, **runner_options)
    config = {**options.config(runner_options), "gpus_per_instance": gpus}
    book = Instances(
        experiment=experiment,
        clock=clock,
        emit=bus.emit,
        emit_sample=bus.emit_sample,
        recorder=store,
    )
    results: dict[int, InstanceResult] = {}
    if store is not None:
        # In a thread: begin() may wait for another process's lock or a live run.
        book.experiment_id, results = await asyncio.to_thread(
            store.begin,
            name=experiment.name,
            params=dict(experiment.params or {}),
            instances=options.planned,
            config=config,
            resume=options.resume,
        )
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(runner)
        await stack.enter_async_context(_heartbeat(store, book.experiment_id, heartbeat_every))
        attempt = await _attempts(
            stack, book, cluster, options, experiment, gpus, gpu_pool, sandbox_pool, config
        )
        batch = functools.partial(_run_batch, runner, attempt, book, results)
        await run_instances(options, results, batch)
    if options.adaptive:
        config["instances_run"] = len(results)
    return await _finish(experiment, book, list(results.values()), config)


async def _attempts(
    stack: contextlib.AsyncExitStack,
    book: Instances,
    cluster: Any,
    options: ExperimentOptions,
    experiment: Experiment,
    gpus: int,
    gpu_pool: Any,
    sandbox_pool: Any,
    config: dict[str, Any],
) -> Callable[[int], Awaitable[Any]]:
    """The function that runs one instance: on the Dask cluster, or here (holding its
    GPUs, sandbox and sampler); what it holds is closed with ``stack``."""
    if cluster is not None:
        config["executor"] = "dask"
        remote = await stack.enter_async_context(DaskAttempts(book, cluster, options.duration))
        return remote.instance
    if sandbox_pool is None and experiment.needs_sandbox:
        sandbox_pool = await stack.enter_async_context(_local_sandboxes(options.planned))
    config["sandbox"] = None if sandbox_pool is None else type(sandbox_pool).__name__
    local = LocalAttempts(
        instances=book,
        duration=options.duration,
        gpus=gpus,
        gpu_pool=gpu_pool,
        sandbox_pool=sandbox_pool,
        sample_every=options.sample_every,
    )
    return local.instance


async def _run_batch(
    runner: Any,
    attempt: Callable[[int], Awaitable[Any]],
    book: Instances,
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
    experiment: Experiment, book: Instances, results: list[InstanceResult], config: dict[str, Any]
) -> ExperimentResult:
    """Average the instances and record the run; a failure here becomes a note."""
    result = ExperimentResult.build(
        experiment.name,
        dict(experiment.params or {}),
        results,
        config,
        experiment_id=book.experiment_id,
        notes=book.notes,
    )
    if book.recorder is not None and book.experiment_id is not None:
        try:
            await book.recorder.finish(book.experiment_id, result)
        except Exception as exc:
            note = f"the store could not record the finished experiment: {error_text(exc)}"
            result = replace(result, notes=(*result.notes, note))
    return result


def _cluster(
    executor: Any,
    options: ExperimentOptions,
    experiment: Experiment,
    gpu_pool: GPUPool | None,
    sandbox_pool: SandboxPool | None,
    clock: Clock | None,
) -> DaskExecutor | None:
    """The Dask executor to run on, or ``None`` to run here."""
    if executor is None:
        return None
    check(
        on_dask(executor),
        "executor",
        executor,
        "None (instances run on the event loop, a sync function in a thread), "
        "a distributed.Client or a labkit.cluster.DaskExecutor",
    )
    # The cluster's workers own their GPUs: no local fleet to check against; a
    # request no worker can meet fails each instance with GPUUnavailable.
    return cluster_executor(
        executor, options.gpus_per_instance, experiment, gpu_pool, sandbox_pool, clock
    )


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


def _bus(on_event: Callable[[Any], object] | EventBus | None) -> EventBus:
    if isinstance(on_event, EventBus):
        return on_event
    bus = EventBus()
    if on_event is not None:
        check(callable(on_event), "on_event", on_event, "a callable or an EventBus")
        bus.subscribe(on_event)
    return bus


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


@contextlib.asynccontextmanager
async def _heartbeat(
    store: ExperimentRecorder | None, experiment_id: str | None, every: float
) -> AsyncIterator[None]:
    """Beat ``store.heartbeat(experiment_id, every=every)`` every ``every`` s while the run runs.

    Liveness is about the real process, so this sleeps on the system clock even
    when the run's clock is a test's ``FakeClock``. A recorder without a
    ``heartbeat`` method gets none. A run that ends by an exception (cancelled,
    Ctrl-C) is marked at once with ``store.mark_interrupted``, if it has one.
    """
    beat = getattr(store, "heartbeat", None)
    if beat is None or experiment_id is None:
        yield
        return
    mark = getattr(store, "mark_interrupted", None)

    async def beating() -> None:
        while True:
            beat(experiment_id, every=every)
            await SYSTEM_CLOCK.sleep(every)

    task = asyncio.get_running_loop().create_task(beating())
    try:
        yield
    except BaseException:
        if mark is not None:
            mark(experiment_id)
        raise
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
