"""Instances in worker processes: ``run_experiment(..., executor="process")``.

Each attempt runs in a worker process of the warm pool
(:func:`labkit.executors.workers.shared_pool`), so CPU-bound Python instances run
on all cores at once and each instance is a process of its own (what CUDA needs
to give it its own GPUs). The caller keeps everything else as for a thread: the
runner (cap, retries, events), the GPU allocation, the store and the averaging.

In the worker the function sees an :class:`~labkit.experiment.context.InstanceContext`
with the same ``index``, ``seed``, ``params``, ``duration``, ``env``, ``gpus`` and
``attempt``; ``ctx.env`` is also set in the worker's ``os.environ`` for the call
(``CUDA_VISIBLE_DEVICES`` included) and restored after it. Every ``ctx.record``
sample and ``ctx.log`` line is written to the caller at once, so the live chart,
the progress bars and the store see it while the instance runs, and nothing
recorded before a crash of the worker is lost. A sync function runs in the
worker's main thread; an async one in a fresh event loop there
(``asyncio.run``). ``ctx.sleep`` waits in real time.

A timeout (counted from when the function begins) or a cancellation kills the
worker with every process it started and waits until they are gone; only then do
the attempt's GPUs go back to the pool.
"""

from __future__ import annotations

import asyncio
import inspect
import pickle
from collections.abc import Awaitable, Mapping
from typing import Any

from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import ConfigError
from labkit.events import InstanceEvent
from labkit.executors.base import is_async_callable
from labkit.executors.workers import WorkerPool, shared_pool
from labkit.experiment.attempt import LocalAttempt
from labkit.experiment.context import InstanceContext
from labkit.experiment.spec import InstanceFunction

__all__ = ("ProcessCaller", "pickled")


def pickled(value: Any, what: str) -> bytes:
    """``value`` pickled by cloudpickle (by value where it was defined in a notebook
    or a script), or a ConfigError that names what in it cannot travel.

    Raises:
        ConfigError: ``value`` (or something it refers to) cannot be pickled.
    """
    import cloudpickle

    try:
        return bytes(cloudpickle.dumps(value))
    except Exception as exc:
        culprit = _culprit(value)
        holds = "" if culprit is None else f"; it refers to {culprit}"
        raise ConfigError(
            what,
            value,
            "something a worker process can receive (executor='process' pickles it with "
            f"cloudpickle, which failed: {type(exc).__name__}: {exc}{holds}). Create such "
            "objects inside the function, or run with executor='thread'",
        ) from exc


def _culprit(value: Any) -> str | None:
    """The first name a function refers to (closure cell, global) that cannot be pickled."""
    import cloudpickle

    if not callable(value):
        return None
    function = getattr(value, "__func__", value)
    try:
        names = inspect.getclosurevars(function)
    except TypeError:
        return None
    for scope, refs in (("closure", names.nonlocals), ("global", names.globals)):
        for name, ref in refs.items():
            try:
                cloudpickle.dumps(ref)
            except Exception:
                return f"{name!r} ({scope}), a {type(ref).__module__}.{type(ref).__qualname__}"
    return None


class ProcessCaller:
    """Calls an experiment's function in a worker process; see the module's docstring.

    Args:
        fn: The instance function (checked here: it must pickle).
        params: The experiment's parameters (they must pickle too).
        pool: The worker pool (default: the process-wide warm pool).

    Raises:
        ConfigError: ``fn`` or ``params`` cannot be sent to a worker process.
    """

    __slots__ = ("_function", "_pool")

    def __init__(
        self, fn: InstanceFunction, params: Mapping[str, Any], pool: WorkerPool | None = None
    ) -> None:
        self._function = pickled(fn, "experiment.fn")
        pickled(dict(params), "params")
        self._pool = pool

    async def __call__(
        self, fn: InstanceFunction, attempt: LocalAttempt, timeout: float | None, clock: Clock
    ) -> Any:
        ctx = attempt.ctx
        job = (
            self._function,
            ctx.index,
            ctx.seed,
            ctx.attempt,
            dict(ctx.params),
            ctx.duration,
            dict(ctx.env),
            ctx.gpus,
        )
        # Plain data and a module-level function: the standard pickle is enough (and
        # fast); the user's function went through cloudpickle once, in __init__.
        payload = pickle.dumps((_in_worker, job), protocol=pickle.HIGHEST_PROTOCOL)
        pool = self._pool or shared_pool()
        return await pool.call(
            payload,
            env=ctx.env,
            on_message=lambda message: _deliver(ctx, message),
            timeout=timeout,
            clock=clock,
        )


def _deliver(ctx: InstanceContext, message: tuple[Any, ...]) -> None:
    """A message from the worker, on the caller's loop: into the instance's log, its
    events and the store, as a sample recorded here would go."""
    if message[0] == "s":
        ctx.record_at(message[1], **message[2])
    else:
        ctx.log(message[1])


# -- in the worker ------------------------------------------------------------------------


def _in_worker(
    channel: Any,
    function: bytes,
    index: int,
    seed: int,
    attempt: int,
    params: Mapping[str, Any],
    duration: float | None,
    env: Mapping[str, str],
    gpus: tuple[str, ...],
) -> Any:
    """One attempt of one instance, in a worker process."""
    fn = _function(function)
    send = channel.send

    def forward(offset: float, values: Mapping[str, float]) -> None:
        send(("s", offset, values))

    def emit(event: InstanceEvent) -> None:
        if event.kind == "log":
            send(("l", event.message))

    def context() -> InstanceContext:
        return InstanceContext(
            index=index,
            seed=seed,
            params=params,
            duration=duration,
            env=env,
            gpus=gpus,
            sandbox=None,
            attempt=attempt,
            clock=SYSTEM_CLOCK,
            emit=emit,
            forward=forward,
        )

    if is_async_callable(fn):
        return asyncio.run(_async_attempt(fn, context))
    value = fn(context())
    if inspect.isawaitable(value):
        return asyncio.run(_awaited(value))
    return value


_FUNCTIONS: dict[bytes, Any] = {}
"""The instance functions this worker has unpickled, by their pickle (a few per run)."""


def _function(data: bytes) -> Any:
    fn = _FUNCTIONS.get(data)
    if fn is None:
        import cloudpickle

        if len(_FUNCTIONS) >= 16:
            _FUNCTIONS.clear()
        fn = _FUNCTIONS[data] = cloudpickle.loads(data)
    return fn


async def _async_attempt(fn: Any, context: Any) -> Any:
    # Built inside the loop, so the context records on the loop's own thread.
    return await fn(context())


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
