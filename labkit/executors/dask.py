"""Dask as an executor: every attempt of a run is one task on a ``distributed`` cluster.

:class:`DaskExecutor` (a client plus the worker resources each task needs) and a
plain ``distributed.Client`` are recognised by :class:`labkit.executors.Backend`,
which hands them to :class:`DaskBackend`. ``distributed`` is imported on first use
only. How a run behaves on a cluster, GPU workers and live events from workers:
:mod:`labkit.cluster`.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit._checks import check, is_int, is_real
from labkit.errors import ConfigError, GPUUnavailable, MissingDependency, WorkerImportError
from labkit.executors.base import Call, is_async_callable

__all__ = ("DaskBackend", "DaskExecutor", "at_task_end", "distributed", "is_dask_client")

_WATCH_EVERY = 0.05
"""Seconds between a worker's checks that a running async task is still wanted."""

_task_end_hooks: list[Callable[[], None]] = []


def is_dask_client(obj: object) -> bool:
    """True for a ``distributed.Client`` (or a subclass), without importing ``distributed``.

    An object can only be a Client once ``distributed`` has been imported, so
    until then the answer is False without looking further.
    """
    module = sys.modules.get("distributed")
    client = getattr(module, "Client", None)
    return isinstance(client, type) and isinstance(obj, client)


def at_task_end(hook: Callable[[], None]) -> None:
    """Run ``hook()`` on the worker after every task labkit submits, however it ended.

    :mod:`labkit.cluster.topics` registers its flush here, so that what a task
    published arrives before the task's result. A hook registered twice runs once.
    """
    if hook not in _task_end_hooks:
        _task_end_hooks.append(hook)


def _task_ended() -> None:
    for hook in _task_end_hooks:
        hook()


def distributed() -> Any:
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
            (see :func:`labkit.cluster.gpu_cluster`) run it. 0 asks for none.
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
            is_int(self.gpus) and self.gpus >= 0,
            "gpus",
            self.gpus,
            "an integer >= 0",
        )
        for name, amount in (self.resources or {}).items():
            check(
                isinstance(name, str) and is_real(amount, finite=False) and amount > 0,
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

    It travels pickled (:func:`_pack`): Dask looks into tuples, lists and dicts
    among a task's arguments for keys and futures, which would misread items such
    as ``(len, "abc")`` and cost time on large ones, and a worker that cannot
    unpickle a task's arguments fails the task instead of its connection.
    """

    fn: Callable[..., Any]
    mode: str
    argument: Any


def _pack(payload: _Payload) -> bytes:
    """The payload pickled here, by cloudpickle (which honours
    ``cloudpickle.register_pickle_by_value``)."""
    import cloudpickle

    data: bytes = cloudpickle.dumps(payload)
    return data


def _unpack(data: bytes) -> _Payload:
    """The payload, unpickled on the worker.

    Left to Dask, a function from a module only the caller can import breaks the
    worker's connection to the scheduler, which sends the task again, forever:
    unpickled here, the task fails and the caller hears why.

    Raises:
        WorkerImportError: This worker cannot import a module the payload needs.
    """
    import pickle

    try:
        payload: _Payload = pickle.loads(data)
    except ImportError as exc:
        raise WorkerImportError(f"a worker cannot import {exc.name!r}: {exc}", exc.name) from None
    return payload


def _apply(data: bytes) -> Any:
    payload = _unpack(data)
    if payload.mode == "kwargs":
        return payload.fn(**payload.argument)
    if payload.mode == "none":
        return payload.fn()
    return payload.fn(payload.argument)


def _run_sync_task(payload: bytes) -> Any:
    """The task for a sync function: call it in the worker's task thread."""
    try:
        return _apply(payload)
    finally:
        _task_ended()


def _run_async_task(payload: bytes) -> Any:
    """The task for an async function: run it in a loop of its own on the task thread.

    A watcher cancels the coroutine once the worker has dropped the task (the
    caller cancelled it or its attempt timed out), so it does not hold the worker's
    thread until it would have ended.
    """
    worker = distributed().get_worker()
    key = worker.get_current_task()
    try:
        return asyncio.run(_until_released(payload, worker, key))
    finally:
        _task_ended()


async def _until_released(payload: bytes, worker: Any, key: Any) -> Any:
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
        distributed()
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
                _pack(_Payload(fn, mode, argument)),
                key=f"{name}-{uuid.uuid4().hex}",
                pure=False,
                resources=resources,
            )
            try:
                if same_loop:
                    return await _outcome(client, future)
                # The client's own loop waits for the future; the caller's loop only
                # waits for that wait, so nothing here blocks.
                waiting = asyncio.run_coroutine_threadsafe(_outcome(client, future), client_loop)
                return await asyncio.wrap_future(waiting)
            except WorkerImportError as exc:
                raise WorkerImportError(_import_advice(exc.name, name), exc.name) from None

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


def _import_advice(module: str | None, name: str) -> str:
    """Why the workers could not unpickle the tasks called ``name``, and the ways out."""
    top = (module or "").split(".")[0]
    source = getattr(sys.modules.get(top), "__file__", None)
    what = f"module {module!r}" if module else "a module"
    text = (
        f"the cluster's workers cannot import {what}, which the tasks {name!r} need "
        "(this process can"
    )
    if source is None:
        return (
            f"{text}). Make it importable on the workers: install it there, or put its "
            "folder on the workers' PYTHONPATH"
        )
    path = Path(source)
    folder = path.parent.parent if path.name == "__init__.py" else path.parent
    upload = f"client.upload_file({str(path if path.name != '__init__.py' else path.parent)!r})"
    return (
        f"{text}, from {path}). Ways out: ship it by value, "
        f"cloudpickle.register_pickle_by_value(sys.modules[{top!r}]) before the run; "
        f"send it to the workers, {upload} (a package as a .zip); or put {str(folder)!r} "
        "on the workers' PYTHONPATH (lk.cluster.slurm(job_setup=...) runs shell lines "
        "in each job before its worker starts)"
    )


def _asyncio_loop(client: Any) -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop = client.loop.asyncio_loop
    return loop


def _task_name(fn: Callable[..., Any]) -> str:
    from dask.utils import funcname

    try:
        return str(funcname(fn))
    except Exception:  # an exotic callable: the key only needs to be readable
        return "labkit-task"
