"""Beyond one machine: running labkit's calls on a Dask cluster.

Pass a ``distributed.Client`` as the ``executor`` of :func:`labkit.run_parallel`,
:class:`labkit.Runner` or :func:`labkit.run_parallel_sync` (or a
:class:`DaskExecutor` to ask for GPUs or other worker resources) and every attempt
becomes one Dask task, submitted with ``pure=False`` so that identical arguments
never share a key. Everything else stays in the caller's process and behaves as in
a local run: the concurrency cap (tasks in flight on the cluster), retries,
per-attempt timeouts, the rate limit, priorities, events, and the
:class:`labkit.TaskResult`/:class:`labkit.RunReport` of each item. A failing task
comes back with the exception its function raised, of the same type and message
as locally. Cancelling the caller, or a timed-out attempt, cancels the Dask
future; an async function still running on a worker is then cancelled there too
(within about 50 ms), while a sync one runs to its end, as in a local thread.

Both client kinds work. An asynchronous client (``Client(..., asynchronous=True)``)
is awaited directly on its own loop. A synchronous client runs its own loop in
another thread; labkit waits for its futures on that loop and hands the outcome
back to the caller's loop, which never blocks. The same goes for an asynchronous
client whose loop runs in another thread. In a script, where
:func:`labkit.run_parallel_sync` starts a fresh loop, pass a synchronous client.

Functions run on the workers: they and their items must pickle (cloudpickle
handles closures and lambdas) and labkit must be importable there. Async functions
run on the worker in a fresh event loop of their own, one per task, in the
worker's task thread, so a slow coroutine never stalls the worker's heartbeats.

When Dask pays
    Every task crosses the network twice and passes through the scheduler: about
    2 to 4 ms per task on a small machine, against a few microseconds for a local
    coroutine and about 20 µs for a local thread. Use a cluster for tasks of
    100 ms or more, or when one machine lacks the cores, memory or GPUs. Set
    ``max_concurrency`` to the cluster's thread count (``sum(client.nthreads()
    .values())``) or a little more: items beyond it wait on the scheduler, and a
    per-attempt ``timeout`` counts that wait.

GPUs
    On one machine, :class:`labkit.GPUPool` hands whole GPUs to instances by free
    memory and load and pins each instance through ``CUDA_VISIBLE_DEVICES``. Dask
    does neither: a worker's ``resources={"GPU": 1}`` is only a counter the
    scheduler subtracts from. :func:`gpu_cluster` joins the two: it starts one
    worker per GPU of an inventory, pins the worker's process to that GPU's UUID
    through its nanny's environment and advertises ``GPU`` resources, so that
    ``DaskExecutor(client, gpus=n)`` (``gpus_per_instance`` of an experiment)
    lands each task on a worker that owns ``n`` GPUs and sees only them. The pool
    and the cluster are alternatives, never stacked: on a cluster the scheduler
    places tasks, and the worker's pinned GPUs are the task's. On other machines
    start the same workers by hand::

        CUDA_VISIBLE_DEVICES=GPU-... dask worker tcp://scheduler:8786 \\
            --nworkers 1 --nthreads 1 --resources GPU=1

Live events from workers
    :func:`publish` (inside a task, on a worker) and :func:`subscribe` (in the
    caller) stream messages, such as timeline samples, while tasks run. Every
    message passes through the scheduler, so a worker batches them: one
    scheduler message per topic every 0.1 s, when 500 are pending, and when the
    task that published them ends (so a task's messages arrive before its result).

A remote cluster is a scheduler address away: ``Client("tcp://host:8786")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from labkit.errors import ConfigError, GPUUnavailable, LabkitError, MissingDependency, check
from labkit.events import EventBus, Unsubscribe
from labkit.executors import Call, is_async_callable, is_dask_client

if TYPE_CHECKING:
    from labkit.gpu.inventory import Inventory

__all__ = (
    "DaskBackend",
    "DaskExecutor",
    "gpu_cluster",
    "publish",
    "subscribe",
)

log = logging.getLogger("labkit.cluster")

FLUSH_EVERY = 0.1
"""Seconds a worker holds published messages before sending them as one batch."""

MAX_BATCH = 500
"""Messages per topic that make a worker send a batch at once."""

_WATCH_EVERY = 0.05
"""Seconds between a worker's checks that a running async task is still wanted."""


def _distributed() -> Any:
    """Import ``distributed`` on first use, so labkit itself does not need it."""
    try:
        import distributed
    except ImportError as exc:
        raise MissingDependency("distributed", "dask", "Running on a Dask cluster") from exc
    return distributed


# -- what a run submits ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DaskExecutor:
    """A Dask client plus what every task of a run asks of its worker.

    Pass it as ``executor=`` where a plain ``distributed.Client`` would do, to
    place tasks on workers that advertise resources.

    Args:
        client: A ``distributed.Client``, asynchronous or not. labkit never closes it.
        gpus: GPUs each task needs (``gpus_per_instance``); submitted as
            ``resources={"GPU": gpus}``, so only workers that advertise that many
            (see :func:`gpu_cluster`) run it. 0 asks for none.
        resources: Other worker resources each task needs, e.g. ``{"memory": 4e9}``
            (names and amounts are the cluster's own).

    Raises:
        ConfigError: ``client`` is not a Client, ``gpus`` is not an integer >= 0,
            or a resource amount is not a number > 0.
    """

    client: Any
    gpus: int = field(default=0, kw_only=True)
    resources: Mapping[str, float] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        check(is_dask_client(self.client), "client", self.client, "a distributed.Client")
        check(
            isinstance(self.gpus, int) and not isinstance(self.gpus, bool) and self.gpus >= 0,
            "gpus",
            self.gpus,
            "an integer >= 0",
        )
        for name, amount in (self.resources or {}).items():
            check(
                isinstance(name, str)
                and isinstance(amount, int | float)
                and not isinstance(amount, bool)
                and amount > 0,
                "resources",
                {name: amount},
                "resource names mapped to amounts > 0",
            )

    @property
    def task_resources(self) -> dict[str, float] | None:
        """The ``resources=`` every task is submitted with (``None`` for none)."""
        wanted = dict(self.resources or {})
        if self.gpus:
            wanted["GPU"] = self.gpus
        return wanted or None


@dataclass(frozen=True, slots=True)
class _Payload:
    """One attempt as shipped to a worker.

    An opaque object rather than plain arguments: Dask looks into tuples, lists and
    dicts among a task's arguments for keys and futures, which would misread
    items such as ``(len, "abc")`` and cost time on large ones.
    """

    fn: Callable[..., Any]
    mode: str
    argument: Any


def _apply(payload: _Payload) -> Any:
    if payload.mode == "kwargs":
        return payload.fn(**payload.argument)
    if payload.mode == "none":
        return payload.fn()
    return payload.fn(payload.argument)


def _run_sync_task(payload: _Payload) -> Any:
    """The task for a sync function: call it in the worker's task thread."""
    try:
        return _apply(payload)
    finally:
        _flush_current_worker()


def _run_async_task(payload: _Payload) -> Any:
    """The task for an async function: run it in a loop of its own on the task thread.

    A watcher cancels the coroutine once the worker has dropped the task (the
    caller cancelled it or its attempt timed out), so it does not hold the worker's
    thread until it would have ended.
    """
    worker = _distributed().get_worker()
    key = worker.get_current_task()
    try:
        return asyncio.run(_until_released(payload, worker, key))
    finally:
        _flush_current_worker()


async def _until_released(payload: _Payload, worker: Any, key: Any) -> Any:
    task = asyncio.ensure_future(_apply(payload))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_WATCH_EVERY)
            if done:
                return task.result()
            state = worker.state.tasks.get(key)
            if state is None or state.state == "cancelled":
                task.cancel()
                return await task
    finally:
        task.cancel()


# -- the backend -----------------------------------------------------------------------


class DaskBackend:
    """Turns functions into calls that run as Dask tasks; used by :class:`labkit.Runner`.

    Args:
        executor: A ``distributed.Client`` or a :class:`DaskExecutor`.

    Raises:
        MissingDependency: ``distributed`` is not installed (the ``dask`` extra).
        ConfigError: ``executor`` is neither.
    """

    def __init__(self, executor: Any) -> None:
        _distributed()
        if not isinstance(executor, DaskExecutor):
            executor = DaskExecutor(executor)
        self.executor = executor
        self._client = executor.client
        self._resources = executor.task_resources
        self._resource_check: asyncio.Task[None] | None = None

    def make_call(
        self, fn: Callable[..., Any], *, mode: str = "item", name: str | None = None
    ) -> Call:
        """Wrap ``fn`` as a call whose every invocation submits one Dask task.

        Must be called on the loop that will await the calls.

        Args:
            fn: The user's function, async or sync; it runs on a worker.
            mode: ``"item"``, ``"kwargs"`` or ``"none"``, as for
                :meth:`labkit.executors.Backend.make_call`.
            name: The prefix of the tasks' keys, as the dashboard shows them
                (default: ``fn``'s name).

        Raises:
            ConfigError: The client is closed, or its event loop neither is this one
                nor runs in another thread (then no call could ever finish).
        """
        client = self._client
        running = asyncio.get_running_loop()
        client_loop = _asyncio_loop(client)
        same_loop = client_loop is running
        if client.status != "running" or not (same_loop or client_loop.is_running()):
            # Waiting on a loop that never turns would hang every call.
            raise ConfigError(
                "executor",
                client,
                "a running Client whose event loop is this one or runs in another "
                "thread (a synchronous Client, or an asynchronous one whose loop runs)",
            )
        task = _run_async_task if is_async_callable(fn) else _run_sync_task
        name = name or _task_name(fn)
        resources = self._resources

        async def call(argument: Any) -> Any:
            if resources is not None:
                await self._check_resources()
            future = client.submit(
                task,
                _Payload(fn, mode, argument),
                key=f"{name}-{uuid.uuid4().hex}",
                pure=False,
                resources=resources,
            )
            if same_loop:
                return await _outcome(client, future)
            # The client's own loop waits for the future; the caller's loop only
            # waits for that wait, so nothing here blocks.
            waiting = asyncio.run_coroutine_threadsafe(_outcome(client, future), client_loop)
            return await asyncio.wrap_future(waiting)

        return call

    async def _check_resources(self) -> None:
        """Fail fast when no worker could ever run the tasks (Dask would wait forever)."""
        if self._resource_check is None:
            self._resource_check = asyncio.ensure_future(self._find_resources())
            # Read its outcome even if every call waiting for it was cancelled.
            self._resource_check.add_done_callback(
                lambda done: done.cancelled() or done.exception()
            )
        check_task = self._resource_check
        try:
            await asyncio.shield(check_task)
        except GPUUnavailable as exc:
            raise GPUUnavailable(str(exc)) from None  # one exception object per task
        except Exception:
            if self._resource_check is check_task:
                self._resource_check = None  # the scheduler did not answer: ask again
            raise

    async def _find_resources(self) -> None:
        client = self._client
        identity = client.scheduler.identity(n_workers=-1)
        if _asyncio_loop(client) is asyncio.get_running_loop():
            info = await identity
        else:
            info = await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(identity, _asyncio_loop(client))
            )
        workers = info.get("workers", {})
        wanted = self._resources or {}
        if workers and not any(
            all(w.get("resources", {}).get(name, 0) >= amount for name, amount in wanted.items())
            for w in workers.values()
        ):
            offered = sorted({str(w.get("resources", {})) for w in workers.values()})
            raise GPUUnavailable(
                f"no worker of the cluster offers resources={wanted} (workers offer "
                f"{', '.join(offered)}); start workers with gpu_cluster() or "
                "`dask worker --resources GPU=n`"
            )

    def close(self, *, cancel: bool = False) -> None:
        """Drop the pending resource check; the client stays open (it is the caller's)."""
        check_task, self._resource_check = self._resource_check, None
        if check_task is not None and not check_task.done():
            check_task.cancel()


async def _outcome(client: Any, future: Any) -> Any:
    """The future's value (or its task's exception), on the client's loop.

    Cancelling this coroutine cancels the future on the cluster.
    """
    try:
        # On the client's loop a Future is awaitable whatever the client's kind.
        # (Not ``client.gather``: cancelled while waiting, it leaves tasks behind
        # that fail later with nobody to retrieve their exception.)
        return await future
    except asyncio.CancelledError:
        await client.cancel([future], asynchronous=True)
        raise


def _asyncio_loop(client: Any) -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop = client.loop.asyncio_loop
    return loop


def _task_name(fn: Callable[..., Any]) -> str:
    from dask.utils import funcname

    try:
        return str(funcname(fn))
    except Exception:  # an exotic callable: the key only needs to be readable
        return "labkit-task"


# -- events from workers ---------------------------------------------------------------


class _Outbox:
    """Messages published on one worker and not yet sent, by topic."""

    __slots__ = ("__weakref__", "_lock", "_pending", "_scheduled", "_worker")

    def __init__(self, worker: Any) -> None:
        self._worker = worker
        self._lock = threading.Lock()
        self._pending: dict[str, list[Any]] = {}
        self._scheduled = False

    def put(self, topic: str, message: Any) -> None:
        with self._lock:
            batch = self._pending.setdefault(topic, [])
            batch.append(message)
            full = len(batch) >= MAX_BATCH
            schedule = not full and not self._scheduled
            if schedule:
                self._scheduled = True
        if full:
            self.flush()
        elif schedule:
            loop = self._worker.loop.asyncio_loop
            loop.call_soon_threadsafe(loop.call_later, FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._scheduled = False
        for topic, batch in pending.items():
            self._worker.log_event(topic, batch)


_outboxes: weakref.WeakKeyDictionary[Any, _Outbox] = weakref.WeakKeyDictionary()
_outboxes_lock = threading.Lock()


def publish(topic: str, message: Any) -> None:
    """Send ``message`` to the callers subscribed to ``topic``, from a task on a worker.

    Messages are batched (see the module's docstring); within a topic they arrive
    in the order one worker published them.

    Args:
        topic: The topic's name; :func:`subscribe` receives it.
        message: Plain data that msgpack can encode: dicts, lists, str, int,
            float, bool, None (not numpy scalars: convert with ``float()``).

    Raises:
        LabkitError: Not called inside a task on a Dask worker.
        TypeError: ``message`` cannot be encoded.
    """
    import msgpack  # type: ignore[import-untyped]

    try:
        worker = _distributed().get_worker()
    except ValueError as exc:
        raise LabkitError("publish() works only inside a task running on a Dask worker") from exc
    try:
        msgpack.packb(message)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            f"publish() needs plain data (dicts, lists, str, numbers); got {message!r:.80}"
        ) from exc
    with _outboxes_lock:
        outbox = _outboxes.get(worker)
        if outbox is None:
            outbox = _outboxes[worker] = _Outbox(worker)
    outbox.put(topic, message)


def _flush_current_worker() -> None:
    with contextlib.suppress(ValueError):  # not on a worker: nothing was published
        worker = _distributed().get_worker()
        outbox = _outboxes.get(worker)
        if outbox is not None:
            outbox.flush()


_buses: weakref.WeakKeyDictionary[Any, dict[str, EventBus]] = weakref.WeakKeyDictionary()


def subscribe(client: Any, topic: str, callback: Callable[[Any], object]) -> Unsubscribe:
    """Call ``callback(message)`` for every message workers :func:`publish` on ``topic``.

    Called inside a running event loop, ``callback`` runs on that loop (also for a
    synchronous client, whose messages arrive on its own thread); otherwise on the
    client's thread. Several callbacks may share a topic. A callback that raises is
    logged and kept. Pass an :class:`labkit.EventBus`'s ``emit`` to fan messages out
    to a live chart.

    Args:
        client: A ``distributed.Client``, asynchronous or not.
        topic: The topic's name.
        callback: Receives each message, in publishing order per worker.

    Returns:
        A function that stops the deliveries to this callback.

    Raises:
        MissingDependency: ``distributed`` is not installed.
        ConfigError: ``client`` is not a Client.
    """
    _distributed()
    check(is_dask_client(client), "client", client, "a distributed.Client")
    try:
        home: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        home = None

    def receive(batch: list[Any]) -> None:
        if home is None or _current_loop() is home:
            _deliver(callback, batch)
        else:
            home.call_soon_threadsafe(_deliver, callback, batch)

    topics = _buses.setdefault(client, {})
    bus = topics.get(topic)
    if bus is None:
        bus = topics[topic] = EventBus()

        def on_event(event: tuple[float, Any]) -> None:
            bus.emit(event[1])

        client.subscribe_topic(topic, on_event)
    stop = bus.subscribe(receive)

    def unsubscribe() -> None:
        stop()
        if not bus and topics.get(topic) is bus:
            del topics[topic]
            if client.status == "running":
                client.unsubscribe_topic(topic)

    return unsubscribe


def _current_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _deliver(callback: Callable[[Any], object], batch: list[Any]) -> None:
    for message in batch:
        try:
            callback(message)
        except Exception:
            log.exception("subscriber %r raised; message dropped for it", callback)


# -- GPU workers -----------------------------------------------------------------------


def gpu_cluster(
    inventory: Inventory | None = None,
    *,
    gpus_per_worker: int = 1,
    threads_per_worker: int = 1,
    asynchronous: bool = False,
    host: str = "127.0.0.1",
    dashboard_address: str | None = ":8787",
    **worker_options: Any,
) -> Any:
    """A local Dask cluster with one worker per GPU (or per group of GPUs).

    Each worker runs in its own process, started by a nanny whose environment sets
    ``CUDA_VISIBLE_DEVICES`` to its GPUs' UUIDs (stable, unlike indices), and
    advertises ``resources={"GPU": gpus_per_worker}``. Submit with
    ``DaskExecutor(client, gpus=gpus_per_worker)``: a worker's tasks all see the
    worker's GPUs, so one task per worker (``threads_per_worker=1``) keeps each
    task on GPUs of its own.

    Args:
        inventory: Where the GPUs come from; ``None`` reads this machine through
            NVML (the ``gpu`` extra). A :class:`labkit.StaticInventory` declares
            a fleet (tests, planning).
        gpus_per_worker: GPUs pinned to each worker; must divide the fleet.
        threads_per_worker: Task threads per worker.
        asynchronous: Build the cluster for ``await`` (then ``await cluster``
            before use and ``await cluster.close()`` after).
        host: The address the scheduler and workers listen on.
        dashboard_address: The scheduler's dashboard (``None`` for none).
        **worker_options: More options for each ``distributed.Nanny``
            (``memory_limit``, ``local_directory``, ...).

    Returns:
        A ``distributed.SpecCluster``; close it (``with`` / ``async with`` work).

    Raises:
        MissingDependency: ``distributed`` (the ``dask`` extra) or NVML is missing.
        GPUUnavailable: The inventory has no GPU.
        ConfigError: ``gpus_per_worker`` does not divide the fleet, or
            ``threads_per_worker`` < 1.
    """
    distributed = _distributed()
    if inventory is None:
        from labkit.gpu.nvml import NVMLInventory

        inventory = NVMLInventory(processes=False)
    devices = sorted(inventory.devices(), key=lambda gpu: gpu.index)
    if not devices:
        raise GPUUnavailable("gpu_cluster() needs at least one GPU; the inventory has none")
    check(
        isinstance(gpus_per_worker, int)
        and gpus_per_worker >= 1
        and len(devices) % gpus_per_worker == 0,
        "gpus_per_worker",
        gpus_per_worker,
        f"an integer >= 1 that divides the fleet's {len(devices)} GPUs",
    )
    check(threads_per_worker >= 1, "threads_per_worker", threads_per_worker, "an integer >= 1")
    workers = {}
    for start in range(0, len(devices), gpus_per_worker):
        group = devices[start : start + gpus_per_worker]
        name = "gpu-" + "-".join(str(gpu.index) for gpu in group)
        workers[name] = {
            "cls": distributed.Nanny,
            "options": {
                "name": name,
                "nthreads": threads_per_worker,
                "host": host,
                "resources": {"GPU": gpus_per_worker},
                "env": {"CUDA_VISIBLE_DEVICES": ",".join(gpu.uuid for gpu in group)},
                "memory_limit": _memory_share(len(devices) // gpus_per_worker),
                **worker_options,
            },
        }
    scheduler = {
        "cls": distributed.Scheduler,
        "options": {
            "host": host,
            "dashboard": dashboard_address is not None,
            # Without a dashboard the scheduler still serves health checks over
            # HTTP: on a free port, not on the dashboard's usual 8787.
            "dashboard_address": dashboard_address or f"{host}:0",
        },
    }
    return distributed.SpecCluster(
        workers=workers,
        scheduler=scheduler,
        asynchronous=asynchronous,
        name="labkit-gpu",
    )


def _memory_share(workers: int) -> int:
    """Bytes of this machine's memory per worker, as ``LocalCluster`` splits it."""
    from distributed.system import MEMORY_LIMIT

    return int(MEMORY_LIMIT) // workers
