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

from labkit.errors import ConfigError
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
    "Watcher",
    "as_bus",
    "method_of",
    "name_methods",
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

    @property
    def kind(self) -> str | None:
        """The wrapped event's kind (``"sample"``, ``"started"``...), for routing."""
        return getattr(self.event, "kind", None)


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


class Watcher:
    """A typed observer: override the methods of the events you read.

    The bus calls only the methods a subclass overrides, and learns from them which
    events anyone reads: an emitter builds an event only when some subscriber wants
    its kind, so a watcher of finished tasks costs the runner nothing for the
    others. Every method is called on the emitter's thread (the event loop's, for
    the runner and the experiments) and must return quickly; an exception is logged
    and the watcher kept.

    Samples travel in each attempt's :class:`~labkit.samplelog.SampleLog`:
    :meth:`on_samples` hands it over when the attempt starts, and the watcher reads
    its new rows whenever it pleases. :meth:`on_sample`, one call per sample, is
    for the rare watcher that must see each one as it comes.

    A plain callable still subscribes (``on_event=print``) and gets every event.
    """

    def on_task_queued(self, event: TaskEvent) -> None:
        """A task entered the queue."""

    def on_task_started(self, event: TaskEvent) -> None:
        """An attempt of a task began."""

    def on_task_retry(self, event: TaskEvent) -> None:
        """An attempt failed and another follows after ``event.delay`` seconds."""

    def on_task_succeeded(self, event: TaskEvent) -> None:
        """A task returned (``event.duration``: seconds since its first attempt began)."""

    def on_task_failed(self, event: TaskEvent) -> None:
        """A task failed for good (``event.error``)."""

    def on_task_cancelled(self, event: TaskEvent) -> None:
        """A task was cancelled."""

    def on_instance_started(self, event: InstanceEvent) -> None:
        """An attempt of an experiment instance began, its resources held."""

    def on_samples(self, event: TimelineEvent) -> None:
        """An attempt's log: ``event.log`` grows as the instance records; read it at will."""

    def on_sample(self, event: InstanceEvent) -> None:
        """One sample as it is recorded (``event.metrics``); costs an event per sample."""

    def on_instance_log(self, event: InstanceEvent) -> None:
        """The instance called ``ctx.log`` (``event.message``)."""

    def on_instance_finished(self, event: InstanceEvent) -> None:
        """The instance's function returned."""

    def on_instance_failed(self, event: InstanceEvent) -> None:
        """An attempt of the instance raised (``event.message``); it may be retried."""

    def on_trial_event(self, event: TrialEvent) -> None:
        """An event of one trial of a sweep, wrapped with the trial's number (its
        per-sample events excepted: :meth:`on_trial_sample`)."""

    def on_trial_sample(self, event: TrialEvent) -> None:
        """One sample of one trial's instance, as it is recorded (an event per sample)."""

    def on_trial_started(self, event: Any) -> None:
        """A trial of a sweep started (a ``labkit.sweep.SweepEvent``)."""

    def on_trial_finished(self, event: Any) -> None:
        """A trial of a sweep ended, ok or failed (a ``labkit.sweep.SweepEvent``)."""

    def on_race_decided(self, event: Any) -> None:
        """A racing round ended (a ``labkit.sweep.SweepEvent``)."""

    def on_guard(self, event: GuardEvent) -> None:
        """The resource guard held starts back, or let them go."""

    def on_concurrency(self, event: ConcurrencyEvent) -> None:
        """An adaptive runner changed its concurrency limit."""


Route = tuple[Callable[[Any], object], ...]
"""The callables an event of one kind goes to, in subscription order."""

_METHODS: dict[type, dict[str | None, str]] = {
    TaskEvent: {
        "queued": "on_task_queued",
        "started": "on_task_started",
        "retrying": "on_task_retry",
        "succeeded": "on_task_succeeded",
        "failed": "on_task_failed",
        "cancelled": "on_task_cancelled",
    },
    InstanceEvent: {
        "started": "on_instance_started",
        "sample": "on_sample",
        "log": "on_instance_log",
        "finished": "on_instance_finished",
        "failed": "on_instance_failed",
    },
    TimelineEvent: {None: "on_samples"},
    TrialEvent: {"sample": "on_trial_sample", None: "on_trial_event"},
    GuardEvent: {None: "on_guard"},
    ConcurrencyEvent: {None: "on_concurrency"},
}


def name_methods(event_type: type, methods: Mapping[str | None, str]) -> None:
    """Say which :class:`Watcher` method reads each kind of ``event_type``.

    For event records defined above this module's layer (a sweep's events): keys
    are the record's ``kind`` values (``None`` when one method reads every kind).
    """
    _METHODS[event_type] = dict(methods)


def method_of(event_type: type, kind: str | None) -> str | None:
    """The :class:`Watcher` method that reads events of this type and kind, if any."""
    methods = _METHODS.get(event_type)
    if methods is None:
        return None
    return methods.get(kind, methods.get(None))


class EventBus:
    """Fan-out of events to watchers and callables, in subscription order.

    Emitters ask :meth:`route` who reads a type and kind of event before they build
    one: a :class:`Watcher` reads the kinds whose methods it overrides, a plain
    callable every event (or the types it subscribed with). A subscriber that
    raises is logged and kept: watching must never break the work watched.
    """

    __slots__ = ("_kinds", "_routes", "_subscribers")

    def __init__(self) -> None:
        self._subscribers: tuple[
            tuple[Watcher | Callable[[Any], object], tuple[type, ...] | None], ...
        ] = ()
        self._routes: dict[tuple[type, str | None], Route] = {}
        self._kinds: dict[type, dict[str | None, Route]] = {}

    def subscribe(
        self,
        watcher: Watcher | Callable[[Any], object],
        *,
        types: type | tuple[type, ...] | None = None,
    ) -> Unsubscribe:
        """Deliver events to ``watcher`` from now on; returns an unsubscriber.

        Args:
            watcher: A :class:`Watcher` (its overridden methods say what it reads),
                or a callable given each event.
            types: For a callable: only events of these types (default: every event).

        Raises:
            ConfigError: ``watcher`` is neither, or ``types`` is given with a Watcher.
        """
        if not isinstance(watcher, Watcher) and not callable(watcher):
            raise ConfigError(
                "watcher", watcher, "a labkit.events.Watcher or a callable taking an event"
            )
        if types is not None and isinstance(watcher, Watcher):
            raise ConfigError(
                "types", types, "None for a Watcher (it reads the events its methods name)"
            )
        wanted = (types,) if isinstance(types, type) else types
        entry = (watcher, None if wanted is None else tuple(wanted))
        self._subscribers = (*self._subscribers, entry)
        self._changed()

        def unsubscribe() -> None:
            self._subscribers = tuple(s for s in self._subscribers if s is not entry)
            self._changed()

        return unsubscribe

    def _changed(self) -> None:
        self._routes.clear()
        for event_type, routes in self._kinds.items():
            routes.update({kind: self._build_route(event_type, kind) for kind in routes})

    def routes_of(self, event_type: type) -> Mapping[str | None, Route]:
        """The route of every kind of ``event_type``, by kind, for a hot path.

        The same mapping for the bus's life, kept current as subscriptions change:
        an emitter holds it and looks a kind up with no call at all.
        """
        routes = self._kinds.get(event_type)
        if routes is None:
            kinds = _METHODS.get(event_type, {None: ""})
            routes = {kind: self._build_route(event_type, kind) for kind in kinds}
            self._kinds[event_type] = routes
        return routes

    def route(self, event_type: type, kind: str | None = None) -> Route:
        """Who reads events of ``event_type`` and ``kind`` (cached until subscriptions change).

        Empty when nobody does: the emitter then need not build the event.
        """
        key = (event_type, kind)
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = self._build_route(event_type, kind)
        return route

    def _build_route(self, event_type: type, kind: str | None) -> Route:
        method = method_of(event_type, kind)
        route: list[Callable[[Any], object]] = []
        for subscriber, types in self._subscribers:
            if isinstance(subscriber, Watcher):
                if method is not None and _overrides(subscriber, method):
                    route.append(getattr(subscriber, method))
            elif types is None or issubclass(event_type, types):
                route.append(subscriber)
        return tuple(route)

    def __bool__(self) -> bool:
        return bool(self._subscribers)

    def emit(self, event: Any) -> None:
        """Deliver ``event`` to whoever reads its type and kind."""
        route = self.route(type(event), getattr(event, "kind", None))
        if route:
            self.deliver(route, event)

    def deliver(self, route: Route, event: Any) -> None:
        """Deliver ``event`` along ``route``, the :meth:`route` of its type and kind.

        The fast path for emitters that routed first, and so build only the
        events somebody reads.
        """
        for callback in route:
            try:
                callback(event)
            except Exception:
                log.exception("event subscriber %r raised; event dropped for it", callback)


def _overrides(watcher: Watcher, method: str) -> bool:
    """Whether ``watcher``'s class (or the watcher itself) defines ``method`` anew."""
    own = getattr(type(watcher), method, None)
    if own is None:
        return method in getattr(watcher, "__dict__", {})
    return own is not getattr(Watcher, method, None) or method in getattr(watcher, "__dict__", {})


def as_bus(
    on_event: Watcher | Callable[[Any], object] | EventBus | None, option: str = "on_event"
) -> EventBus:
    """The bus an ``on_event=`` option names: itself, or a new bus with it subscribed.

    Raises:
        ConfigError: ``on_event`` is none of a bus, a watcher, a callable or ``None``.
    """
    if isinstance(on_event, EventBus):
        return on_event
    bus = EventBus()
    if on_event is not None:
        if not isinstance(on_event, Watcher) and not callable(on_event):
            raise ConfigError(
                option,
                on_event,
                "a labkit.events.Watcher, a callable taking an event, a labkit.EventBus or None",
            )
        bus.subscribe(on_event)
    return bus
