"""Where each instance of a run stands: :class:`InstanceProgress`.

One model of a run's progress, read by every view: the notebook panel's bars,
the compact grid it shows for many instances, and a terminal's text bars draw
the same :class:`ProgressSnapshot` and differ only in drawing (dask's
``diagnostics/progress.py`` keeps its text and widget bars the same way).

The model takes labkit's events (:class:`~labkit.events.InstanceEvent`,
:class:`~labkit.events.TaskEvent`, :class:`~labkit.events.TimelineEvent`) in
:meth:`InstanceProgress.handle`, and reads what it needs of the samples from each
attempt's :class:`~labkit.samplelog.SampleLog` when asked for a snapshot, so a
flood of samples costs it nothing per sample.

A bar is full only when its instance ended. While it runs, the fraction done is
known only from an expected length the function itself honours (``expected_s``:
pass ``ctx.duration`` only when the function reads it); otherwise the snapshot
tells what is known (steps, samples, elapsed time) and leaves the fraction
``None``.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.events import InstanceEvent, TaskEvent, TimelineEvent, Watcher
from labkit.samplelog import SampleLog

__all__ = (
    "STATES",
    "InstanceProgress",
    "InstanceState",
    "InstanceStatus",
    "ProgressSnapshot",
    "reads_duration",
)

InstanceState = Literal["queued", "running", "retrying", "done", "failed", "stopped", "cancelled"]

STATES: tuple[InstanceState, ...] = (
    "running",
    "retrying",
    "queued",
    "done",
    "failed",
    "stopped",
    "cancelled",
)
"""Every state, in the order a summary lists them (what still moves first)."""

ENDED: frozenset[InstanceState] = frozenset({"done", "failed", "stopped", "cancelled"})
"""States an instance does not leave (but a retry leaves ``failed``)."""

_CANCELLED = "CancelledError"  # how an attempt's error text names a cancellation


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    """One instance's progress at one moment.

    Attributes:
        index: The instance's index.
        state: ``queued``, ``running``, ``retrying`` (an attempt failed, another
            follows), ``done``, ``failed``, ``stopped`` (the run was stopped by its
            user) or ``cancelled`` (cancelled from elsewhere).
        attempt: The attempt running or last run (1-based; 0 before the first).
        retries: Attempts that failed and were retried.
        samples: Samples the current attempt has recorded.
        offset: The latest sample's offset (s since the attempt started), or ``None``.
        step: The latest sample's ``step`` value, when the samples carry one.
        elapsed: Seconds since the attempt started (to its end once it ended).
        error: The last failed attempt's error text, or ``None``.
        fraction: How much is done, 0.0 to 1.0: 1.0 only once the instance
            finished or failed; otherwise (running, or stopped and cancelled
            part way) elapsed over the expected length (never 1.0), or ``None``
            when nothing tells how long it would take.
    """

    index: int
    state: InstanceState
    attempt: int = 0
    retries: int = 0
    samples: int = 0
    offset: float | None = None
    step: float | None = None
    elapsed: float = 0.0
    error: str | None = None
    fraction: float | None = None

    @property
    def ended(self) -> bool:
        """Whether the instance ended (done, failed, stopped or cancelled)."""
        return self.state in ENDED

    def text(self) -> str:
        """What is known, in a few words: ``running · step 40 · 120 samples · 3 s``."""
        parts: list[str] = [self.state]
        if self.state == "retrying" or self.attempt > 1:
            parts.append(f"attempt {self.attempt + (self.state == 'retrying')}")
        if self.step is not None:
            parts.append(f"step {self.step:g}")
        if self.samples:
            parts.append(f"{self.samples} sample{'s' if self.samples != 1 else ''}")
        if self.state != "queued":
            parts.append(f"{self.elapsed:.0f} s")
        if self.error and self.state in ("failed", "retrying"):
            parts.append(self.error)
        return " · ".join(parts)


@dataclass(frozen=True, slots=True)
class ProgressSnapshot:
    """Every instance's status at one moment, with counts by state.

    Attributes:
        instances: Each instance's status, by index.
        counts: How many instances are in each state (states with none left out),
            in the order of :data:`STATES`.
        stopped: Whether the run was stopped by its user.
    """

    instances: tuple[InstanceStatus, ...]
    counts: dict[str, int] = field(default_factory=dict)
    stopped: bool = False

    @property
    def total(self) -> int:
        """How many instances the run has."""
        return len(self.instances)

    @property
    def ended(self) -> int:
        """How many instances ended."""
        return sum(status.ended for status in self.instances)

    def slowest(self, count: int = 3) -> tuple[InstanceStatus, ...]:
        """The ``count`` running instances furthest behind.

        Behind means the smallest fraction done when one is known, else the
        fewest steps, else the fewest samples; the earliest started first on a tie.
        """
        moving = [s for s in self.instances if s.state in ("running", "retrying")]
        moving.sort(
            key=lambda s: (
                s.fraction if s.fraction is not None else 0.0,
                s.step if s.step is not None else -1.0,
                s.samples,
                -s.elapsed,
            )
        )
        return tuple(moving[:count])

    def summary(self, slowest: int = 3) -> str:
        """One line: counts by state, then the slowest instances.

        For example ``64 instances: 40 running, 20 done, 4 queued; slowest:
        #3 (step 12), #17 (step 14)``.
        """
        counts = ", ".join(f"{n} {state}" for state, n in self.counts.items())
        line = f"{self.total} instance{'s' if self.total != 1 else ''}: {counts or 'none'}"
        behind = self.slowest(slowest)
        if behind:
            line += "; slowest: " + ", ".join(f"#{s.index} ({_position(s)})" for s in behind)
        return line


class _Instance:
    """The mutable record behind one :class:`InstanceStatus`."""

    __slots__ = (
        "attempt",
        "ended_at",
        "error",
        "log",
        "retries",
        "started",
        "state",
    )

    def __init__(self) -> None:
        self.state: InstanceState = "queued"
        self.attempt = 0
        self.retries = 0
        self.started: float | None = None
        self.ended_at: float | None = None
        self.error: str | None = None
        self.log: SampleLog | None = None


class InstanceProgress(Watcher):
    """Follows a run's events and tells where each instance stands.

    Subscribe the model (it is a :class:`~labkit.events.Watcher`: it reads the
    instances' state changes, their attempts' logs, retries and cancellations, and
    no per-sample event), or hand it events with :meth:`handle`; call
    :meth:`stop` when the user stops the run, so that the instances it ends read
    ``stopped`` whatever events their cancellation sends; read :meth:`snapshot`
    whenever a view redraws.

    A sketch of a text drawing::

        progress = InstanceProgress(instances=4)
        await run_experiment(experiment, instances=4, on_event=progress)
        for status in progress.snapshot().instances:
            print(f"#{status.index} {status.fraction or 0:4.0%} {status.text()}")

    Runner task indices are taken as instance indices (true of a run whose
    instances all start in one batch, as the panel's and the command line's do).

    Args:
        instances: How many instances the run has (they start ``queued``);
            instances seen in events later are added.
        expected_s: How long each instance is expected to run, in seconds, if its
            function honours a duration (``ctx.duration``); ``None``: unknown.
        clock: The run's clock (elapsed time of running instances).
    """

    def __init__(
        self, instances: int = 0, *, expected_s: float | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.expected_s = expected_s if expected_s and expected_s > 0 else None
        self._clock = clock
        self._instances: dict[int, _Instance] = {i: _Instance() for i in range(instances)}
        self._stopped = False
        self.version = 0
        """Grows with every change of state (a view redraws when it moved)."""

    # Events -----------------------------------------------------------------------

    def _take(self, event: Any) -> None:
        self.handle(event)

    on_instance_started = on_samples = on_instance_finished = on_instance_failed = _take
    on_task_retry = on_task_cancelled = _take

    def handle(self, event: Any) -> bool:
        """Take one event; returns whether an instance's state changed.

        Args:
            event: An :class:`InstanceEvent`, :class:`TaskEvent` or
                :class:`TimelineEvent`; anything else is ignored.
        """
        kind = type(event)
        if kind is TimelineEvent:
            self._record(event.instance).log = event.log
            return False
        if kind is InstanceEvent:
            return self._instance_event(event)
        if kind is TaskEvent:
            return self._task_event(event)
        return False

    def _instance_event(self, event: InstanceEvent) -> bool:
        record = self._record(event.instance)
        if event.kind in ("sample", "log") or (self._stopped and record.state == "stopped"):
            return False  # a stopped instance stays stopped, whatever its cancellation says
        if event.kind == "started":
            if record.attempt and record.state in ("failed", "retrying"):
                record.retries += 1
            record.attempt += 1
            record.started, record.ended_at, record.log = event.time, None, None
            return self._set(record, "running")
        record.ended_at = event.time
        if event.kind == "finished":
            return self._set(record, "done")
        message = event.message or "failed"
        if message.startswith(_CANCELLED):
            return self._set(record, "cancelled")
        record.error = message
        return self._set(record, "failed")

    def _task_event(self, event: TaskEvent) -> bool:
        record = self._instances.get(event.index)
        if record is None or (self._stopped and record.state == "stopped"):
            return False
        if event.kind == "retrying" and record.state == "failed":
            return self._set(record, "retrying")
        if event.kind == "cancelled" and record.state not in ENDED:
            record.ended_at = event.time
            return self._set(record, "cancelled")
        return False

    def stop(self) -> None:
        """The user stopped the run: every instance not ended now reads ``stopped``."""
        self._stopped = True
        now = self._clock.now()
        for record in self._instances.values():
            if record.state not in ENDED:
                if record.started is not None:
                    record.ended_at = now
                record.state = "stopped"
        self.version += 1

    # Reading ------------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopped

    def snapshot(self) -> ProgressSnapshot:
        """Every instance's status now, read from the events and the attempts' logs."""
        now = self._clock.now()
        statuses = tuple(
            self._status(index, record, now) for index, record in sorted(self._instances.items())
        )
        counts = Counter(status.state for status in statuses)
        return ProgressSnapshot(
            statuses,
            {state: counts[state] for state in STATES if counts[state]},
            self._stopped,
        )

    def _status(self, index: int, record: _Instance, now: float) -> InstanceStatus:
        samples, offset, step = (0, None, None) if record.log is None else _latest(record.log)
        elapsed = 0.0
        if record.started is not None:
            elapsed = max(
                (record.ended_at if record.ended_at is not None else now) - record.started, 0.0
            )
        fraction: float | None = None
        if record.state in ("done", "failed"):
            fraction = 1.0
        elif record.state == "queued" or record.started is None:
            fraction = 0.0
        elif self.expected_s is not None:
            # Full only once ended: a function may run past what it was told.
            fraction = min(elapsed / self.expected_s, 0.99)
        return InstanceStatus(
            index=index,
            state=record.state,
            attempt=record.attempt,
            retries=record.retries,
            samples=samples,
            offset=offset,
            step=step,
            elapsed=elapsed,
            error=record.error,
            fraction=fraction,
        )

    def _record(self, index: int) -> _Instance:
        record = self._instances.get(index)
        if record is None:
            record = self._instances[index] = _Instance()
        return record

    def _set(self, record: _Instance, state: InstanceState) -> bool:
        if record.state == state:
            return False
        record.state = state
        self.version += 1
        return True


def reads_duration(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` reads ``ctx.duration`` or ``ctx.remaining``, as far as its code tells.

    Only then does a run's ``duration`` say how long an instance takes (pass it
    as ``expected_s``), and only then is it worth asking for or recording.

    Looks for those attribute names in the function's code, its nested functions,
    and the functions of its own module it calls by name (one level at a time,
    each once). A callable whose code cannot be read counts as reading it.
    """
    fn = inspect.unwrap(getattr(fn, "func", fn))  # functools.partial, decorators
    code = getattr(fn, "__code__", None)
    if code is None:
        return True
    namespace = getattr(fn, "__globals__", {})
    seen: set[Any] = set()
    todo = [code]
    while todo:
        code = todo.pop()
        if code in seen:
            continue
        seen.add(code)
        if {"duration", "remaining"} & set(code.co_names):
            return True
        todo += [const for const in code.co_consts if inspect.iscode(const)]
        todo += [
            namespace[name].__code__
            for name in code.co_names
            if inspect.isfunction(namespace.get(name))
            and namespace[name].__module__ == getattr(fn, "__module__", None)
        ]
    return False


def _latest(log: SampleLog | None) -> tuple[int, float | None, float | None]:
    """A log's sample count, and its last sample's offset and ``step`` (if any)."""
    if log is None:
        return 0, None, None
    count = len(log)
    if not count:
        return 0, None, None
    offsets, values = log.read(count - 1, count)
    if not offsets.size:
        return 0, None, None
    steps = values.get("step")
    step = float(steps[-1]) if steps is not None and steps.size and steps[-1] == steps[-1] else None
    return count, float(offsets[-1]), step


def _position(status: InstanceStatus) -> str:
    if status.step is not None:
        return f"step {status.step:g}"
    if status.fraction is not None:
        return f"{status.fraction:.0%}"
    return f"{status.samples} samples"
