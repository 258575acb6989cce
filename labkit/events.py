"""Frozen event records and the tiny bus the UI subscribes to.

The core never calls the UI: it emits events, and a widget, a progress bar or a
user's ``on_event`` callback subscribes. Events are ``NamedTuple`` records: frozen,
cheap to create (the runner emits several per task) and easy to print.

Times are seconds on the emitter's clock (:mod:`labkit.clock`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

from labkit.samplelog import SampleLog

__all__ = (
    "ConcurrencyEvent",
    "EventBus",
    "GuardEvent",
    "InstanceEvent",
    "InstanceEventKind",
    "TaskEvent",
    "TaskEventKind",
    "TimelineEvent",
    "TrialEvent",
    "Unsubscribe",
)

log = logging.getLogger("labkit.events")

TaskEventKind = Literal["queued", "started", "retrying", "succeeded", "failed", "cancelled"]


class TaskEvent(NamedTuple):
    """One step in a task's life.

    Attributes:
        kind: ``queued``, ``started`` (an attempt began), ``retrying`` (an attempt
            failed and another follows after ``delay``), ``succeeded``, ``failed``
            or ``cancelled``.
        index: The task's index, as on its :class:`labkit.TaskResult` (the item's
            position in the input, or the submission number for ``submit``). It
            shadows ``tuple.index``, on purpose: events name their task the way
            results do.
        time: When it happened, in seconds on the runner's clock.
        attempt: The attempt number (1-based; 0 while only queued).
        error: The exception of a failed attempt, else ``None``.
        delay: For ``retrying``, the backoff before the next attempt (seconds).
        duration: For ``succeeded``/``failed``, seconds since the first attempt began.
    """

    kind: TaskEventKind
    index: int  # type: ignore[assignment]
    time: float
    attempt: int = 0
    error: BaseException | None = None
    delay: float = 0.0
    duration: float = 0.0


InstanceEventKind = Literal["started", "sample", "log", "finished", "failed"]


class InstanceEvent(NamedTuple):
    """One step in an experiment instance's life, for progress bars and widgets.

    Attributes:
        kind: ``started`` (an attempt began, resources held), ``sample`` (a
            timeline sample: ``metrics``), ``log`` (``ctx.log``: ``message``),
            ``finished`` (the function returned) or ``failed`` (an attempt raised:
            ``message`` holds the error; the runner may still retry).
        instance: The instance's index.
        time: When it happened, in seconds on the run's clock.
        offset: Seconds since the instance's attempt started (the timeline's ``t``).
        metrics: The sample's values, for ``sample``.
        message: The log line or the error text.
    """

    kind: InstanceEventKind
    instance: int
    time: float
    offset: float = 0.0
    metrics: Mapping[str, float] | None = None
    message: str | None = None


class TimelineEvent(NamedTuple):
    """An instance's attempt began: ``log`` is its timeline, and grows as it records.

    Emitted once per attempt, right after its ``started`` :class:`InstanceEvent`.
    Every sample enters the log before its ``sample`` event goes out, so a
    watcher holding the log may read new rows in bulk whenever it pleases
    (:meth:`labkit.SampleLog.read`) and let that attempt's sample events pass:
    the live chart does, so a flood of samples costs it nothing per sample.
    Read the log only; never append to it.

    Attributes:
        instance: The instance's index.
        time: When the attempt started, in seconds on the run's clock.
        log: The attempt's samples, in recording order.
        kind: Always ``"timeline"`` (code that reads every event's ``kind`` keeps working).
    """

    instance: int
    time: float
    log: SampleLog
    kind: Literal["timeline"] = "timeline"


class TrialEvent(NamedTuple):
    """An event of one trial of a sweep, with the trial it belongs to.

    A sweep wraps every event its trials' experiments emit (their
    :class:`InstanceEvent` and :class:`TaskEvent`), so concurrent trials can be
    told apart: two trials' instance 0 are ``TrialEvent(3, ...)`` and
    ``TrialEvent(5, ...)``.

    Attributes:
        trial: The trial's number in the sweep (its ``trial`` column).
        event: The wrapped event, as the trial's experiment emitted it.
    """

    trial: int
    event: Any


class GuardEvent(NamedTuple):
    """The resource guard held starts back, or let them go again.

    Attributes:
        kind: ``held`` (a start waits for the host) or ``resumed``.
        time: When, in seconds on the runner's clock.
        reason: What was over its limit: ``cpu`` or ``memory``.
        index: The index of the task whose start waited.
        waited: For ``resumed``, how long that start waited, in seconds.
    """

    kind: Literal["held", "resumed"]
    time: float
    reason: str
    index: int  # type: ignore[assignment]
    waited: float = 0.0


class ConcurrencyEvent(NamedTuple):
    """An adaptive runner changed its concurrency limit.

    Attributes:
        time: When, in seconds on the runner's clock.
        limit: The new limit.
        previous: The limit before.
        throughput: The throughput measured at ``previous``, in tasks per second.
        reason: ``probe`` (raising to measure), ``back-off`` (throughput fell) or
            ``pressure`` (the resource guard held starts back).
    """

    time: float
    limit: int
    previous: int
    throughput: float
    reason: str


Unsubscribe = Callable[[], None]

_Subscriber = tuple[Callable[[Any], object], tuple[type, ...] | None, bool]
"""A subscription: the callback, the event types it wants (``None``: all), and
whether it takes the sample events of attempts whose log was announced."""


class EventBus:
    """Fan-out of events to subscribers, in subscription order.

    A subscriber may ask for some event types only (``types=``, or an
    ``event_types`` attribute on the callback); emitters ask :meth:`route` which
    subscribers want a type, and skip creating events nobody wants. A subscriber
    that reads samples from each attempt's log (a :class:`TimelineEvent`) may
    decline the per-sample :class:`InstanceEvent` (``sample_events=False``, or a
    ``sample_events`` attribute on the callback): emitters that announce every
    attempt's log send samples along :meth:`sample_route`, which leaves it out.
    A subscriber that raises is logged and kept: watching must never break the
    work watched.
    """

    __slots__ = ("_routes", "_sample_route", "_subscribers")

    def __init__(self) -> None:
        self._subscribers: tuple[_Subscriber, ...] = ()
        self._routes: dict[type, tuple[Callable[[Any], object], ...]] = {}
        self._sample_route: tuple[Callable[[Any], object], ...] | None = None

    def subscribe(
        self,
        callback: Callable[[Any], object],
        *,
        types: type | tuple[type, ...] | None = None,
        sample_events: bool | None = None,
    ) -> Unsubscribe:
        """Call ``callback(event)`` for every event from now on; returns an unsubscriber.

        Args:
            callback: Called with each event, on the emitter's thread.
            types: Only events of these types; default: the callback's own
                ``event_types`` attribute if it has one, else every event.
            sample_events: ``False``: not the ``sample`` events of attempts whose
                log was announced (the callback reads the logs); default: the
                callback's own ``sample_events`` attribute, else ``True``.
        """
        if types is None:
            types = getattr(callback, "event_types", None)
        if sample_events is None:
            sample_events = bool(getattr(callback, "sample_events", True))
        wanted = (types,) if isinstance(types, type) else types
        entry = (callback, None if wanted is None else tuple(wanted), sample_events)
        self._subscribers = (*self._subscribers, entry)
        self._changed()

        def unsubscribe() -> None:
            self._subscribers = tuple(s for s in self._subscribers if s is not entry)
            self._changed()

        return unsubscribe

    def _changed(self) -> None:
        self._routes.clear()  # in place: emitters may hold this dict (see routes)
        self._sample_route = None

    @property
    def routes(self) -> dict[type, tuple[Callable[[Any], object], ...]]:
        """The route cache itself, for hot loops: ``routes.get(T)`` is the callbacks for
        type ``T``, or ``None`` until :meth:`route` computes them. The same dict for the
        bus's life (cleared in place when subscriptions change)."""
        return self._routes

    def route(self, event_type: type) -> tuple[Callable[[Any], object], ...]:
        """The callbacks that want events of ``event_type`` (cached until subscriptions change)."""
        callbacks = self._routes.get(event_type)
        if callbacks is None:
            callbacks = tuple(
                callback
                for callback, types, _ in self._subscribers
                if types is None or issubclass(event_type, types)
            )
            self._routes[event_type] = callbacks
        return callbacks

    def sample_route(self) -> tuple[Callable[[Any], object], ...]:
        """The callbacks for a ``sample`` :class:`InstanceEvent` of an attempt whose
        log was announced in a :class:`TimelineEvent`: those of :meth:`route` that
        did not decline sample events."""
        callbacks = self._sample_route
        if callbacks is None:
            callbacks = self._sample_route = tuple(
                callback
                for callback, types, wanted in self._subscribers
                if wanted and (types is None or issubclass(InstanceEvent, types))
            )
        return callbacks

    def emit_sample(self, event: InstanceEvent) -> None:
        """Deliver a ``sample`` event of an attempt whose log was announced (see
        :meth:`sample_route`)."""
        self.deliver(self.sample_route(), event)

    def __bool__(self) -> bool:
        return bool(self._subscribers)

    def emit(self, event: Any) -> None:
        """Deliver ``event`` to every subscriber that wants its type."""
        self.deliver(self.route(type(event)), event)

    def deliver(self, callbacks: tuple[Callable[[Any], object], ...], event: Any) -> None:
        """Deliver ``event`` to ``callbacks``, the :meth:`route` of its type.

        The fast path for emitters that routed once (``routes.get(T)``) and so know
        whether anybody wants the event before they build it.
        """
        for callback in callbacks:
            try:
                callback(event)
            except Exception:
                self.report(callback)

    @staticmethod
    def report(callback: Callable[[Any], object]) -> None:
        """Log the exception a subscriber just raised (call from its ``except``)."""
        log.exception("event subscriber %r raised; event dropped for it", callback)
