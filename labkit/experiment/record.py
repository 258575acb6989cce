"""A run's record in a store: begun, kept alive, marked when it ends unfinished.

- :func:`begin_record` begins it (``store.begin``, in a thread) and hands back the
  instances a resume takes over, with their seeds;
- :func:`heartbeat` keeps it alive while the run runs, and marks it
  ``interrupted`` at once when the run ends by an exception;
- :func:`mark_interrupted` is that mark, for a recorder that has it.

A recorder is any :class:`labkit.results.ExperimentRecorder`; ``heartbeat`` and
``mark_interrupted`` are optional on it (a run recorded without them reads as
interrupted once its heartbeat goes stale).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from labkit.clock import SYSTEM_CLOCK
from labkit.experiment.attempt import InstanceLedger
from labkit.experiment.options import ExperimentOptions
from labkit.results import ExperimentRecorder, InstanceResult
from labkit.seeds import instance_seed

__all__ = ("begin_record", "heartbeat", "mark_interrupted")


async def begin_record(
    store: ExperimentRecorder | None,
    book: InstanceLedger,
    options: ExperimentOptions,
    config: dict[str, Any],
) -> dict[int, InstanceResult]:
    """Begin the store's record of the run; the instances it resumes, with their seeds.

    ``store.begin`` runs in a thread: it may wait for another process's lock or a
    live run. A run cancelled meanwhile still leaves its record ``interrupted``, not
    ``running``: whichever of the thread and the cancelled run comes second marks it.
    """
    if store is None:
        return {}
    lock = threading.Lock()
    begun: list[str] = []  # the record's id, once begun
    cancelled: list[bool] = []

    def begin() -> tuple[str, dict[int, InstanceResult]]:
        experiment_id, loaded = store.begin(
            name=book.experiment.name,
            params=dict(book.experiment.params or {}),
            instances=options.planned,
            config=config,
            resume=options.resume,
        )
        with lock:
            begun.append(experiment_id)
            late = bool(cancelled)
        if late:
            mark_interrupted(store, experiment_id)
        return experiment_id, loaded

    try:
        book.experiment_id, loaded = await asyncio.to_thread(begin)
    except asyncio.CancelledError:
        with lock:
            cancelled.append(True)
            done = list(begun)
        for experiment_id in done:
            mark_interrupted(store, experiment_id)
        raise
    return {
        index: replace(result, seed=instance_seed(book.seed, index))
        for index, result in loaded.items()
    }


def mark_interrupted(store: ExperimentRecorder | None, experiment_id: str) -> None:
    """Mark a run that ended without finishing, with the store's ``mark_interrupted``
    if it has one (a recorder without it says so by its heartbeat going stale)."""
    mark = getattr(store, "mark_interrupted", None)
    if mark is not None:
        mark(experiment_id)


@contextlib.asynccontextmanager
async def heartbeat(
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

    async def beating() -> None:
        while True:
            beat(experiment_id, every=every)
            await SYSTEM_CLOCK.sleep(every)

    task = asyncio.get_running_loop().create_task(beating())
    try:
        yield
    except BaseException:
        mark_interrupted(store, experiment_id)
        raise
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
