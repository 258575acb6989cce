"""Live events from Dask workers: :func:`publish` in a task, :func:`subscribe` in the caller.

Every message passes through the scheduler, so a worker batches them: one
scheduler message per topic every :data:`FLUSH_EVERY` seconds, when
:data:`MAX_BATCH` are pending, and when the task that published them ends (so a
task's messages arrive before its result).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from labkit._checks import check
from labkit.errors import LabkitError
from labkit.events import EventBus, Unsubscribe
from labkit.executors.dask import at_task_end, distributed, is_dask_client
from labkit.loop import running_loop

__all__ = ("FLUSH_EVERY", "MAX_BATCH", "publish", "subscribe")

log = logging.getLogger("labkit.cluster")

FLUSH_EVERY = 0.1
"""Seconds a worker holds published messages before sending them as one batch."""

MAX_BATCH = 500
"""Messages per topic that make a worker send a batch at once."""


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
        worker = distributed().get_worker()
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
        worker = distributed().get_worker()
        outbox = _outboxes.get(worker)
        if outbox is not None:
            outbox.flush()


at_task_end(_flush_current_worker)

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
    distributed()
    check(is_dask_client(client), "client", client, "a distributed.Client")
    home = running_loop()

    def receive(batch: list[Any]) -> None:
        if home is None or running_loop() is home:
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


def _deliver(callback: Callable[[Any], object], batch: list[Any]) -> None:
    for message in batch:
        try:
            callback(message)
        except Exception:
            log.exception("subscriber %r raised; message dropped for it", callback)
