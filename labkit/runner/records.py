"""What a run hands back: one :class:`TaskResult` per item, totals, live snapshots."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from labkit._json import to_builtins
from labkit.errors import TaskFailed, error_text

if TYPE_CHECKING:
    import pandas as pd

__all__ = ("RunReport", "RunStats", "RunnerStats", "TaskResult")

T = TypeVar("T")


@dataclass(slots=True)
class TaskResult(Generic[T]):
    """What happened to one item.

    Attributes:
        index: The item's position in the input (for ``submit``, the submission number).
        item: The item itself (for ``submit``, the positional arguments); ``None``
            when the run's ``keep_items`` let it go.
        ok: True when an attempt returned a value that was accepted.
        value: That value; for a failure whose last value ``Retry(retry_if_result=)``
            rejected, the rejected value; else ``None``.
        error: The last attempt's exception when not ok (``asyncio.CancelledError``
            for a task cancelled before it finished).
        attempts: Attempts made, the first included (0 if it never started).
        started: When the first attempt began, in seconds on the runner's clock
            (after any wait for a slot, the resource guard or the rate limiter).
        finished: When the task ended, same clock.
        duration: Task time in seconds: from ``started`` to ``finished``, less the
            time later attempts waited for the rate limiter (backoff included).
    """

    index: int
    item: Any
    ok: bool
    value: T | None = None
    error: BaseException | None = None
    attempts: int = 1
    started: float = 0.0
    finished: float = 0.0
    duration: float = 0.0

    @property
    def cancelled(self) -> bool:
        """True when the task was cancelled before it finished."""
        return isinstance(self.error, asyncio.CancelledError)

    def to_dict(self, *, item: bool = True) -> dict[str, Any]:
        """This result as JSON-able builtins; values that JSON cannot hold as their repr.

        Args:
            item: Include the item.
        """
        record: dict[str, Any] = {"index": self.index}
        if item:
            record["item"] = to_builtins(self.item, fallback=repr)
        record.update(
            ok=self.ok,
            value=to_builtins(self.value, fallback=repr),
            error=error_text(self.error),
            attempts=self.attempts,
            started=self.started,
            finished=self.finished,
            duration=self.duration,
        )
        return record


@dataclass(frozen=True, slots=True)
class RunStats:
    """Totals of one finished run.

    Attributes:
        submitted: Items in the run (after a cancel: every item the run knew of,
            the never-started ones included).
        completed: Items that succeeded (``completed + failed == submitted``).
        failed: Items that failed, timed out or were cancelled.
        retries: Extra attempts over all items.
        total_time: Seconds from the run's start to its end.
        avg_time: Mean task time (``TaskResult.duration``) of the items that started,
            in seconds: waiting for a slot, the guard or the rate limiter is not in it.
        throughput: Started items per second of ``total_time``.
        success_rate: ``completed / submitted`` (1.0 for an empty run).
        peak_concurrency: The most attempts in flight at once.
    """

    submitted: int
    completed: int
    failed: int
    retries: int
    total_time: float
    avg_time: float
    throughput: float
    success_rate: float
    peak_concurrency: int


@dataclass(frozen=True, slots=True)
class RunnerStats:
    """A live snapshot of a :class:`~labkit.Runner`, for monitors and progress bars.

    Every task the runner accepted is in exactly one of ``queued``, ``held``,
    ``throttled``, ``running``, ``done`` and ``failed``.

    Attributes:
        queued: Tasks accepted that wait for a concurrency slot (or to be pulled).
        running: Tasks in an attempt, or in the backoff before their next one.
        done: Tasks that succeeded.
        failed: Tasks that failed or were cancelled (never-started ones included).
        retries: Extra attempts so far.
        throughput: Finished tasks per second since the runner's first task.
        peak_concurrency: The most attempts in flight at once.
        elapsed: Seconds since the runner's first task.
        max_concurrency: The concurrency limit now (it moves with ``"auto"``).
        held_back: Starts the resource guard made wait, in total.
        held_seconds: Seconds those starts waited, summed.
        held_reason: Why starts wait right now (``"cpu"``, ``"memory"``), or None.
        held: Tasks waiting for the resource guard now.
        throttled: Tasks waiting for the rate limiter now.
        abandoned: Sync calls still running in a thread after their timeout ran out
            (their tasks have moved on; a thread cannot be stopped).
    """

    queued: int
    running: int
    done: int
    failed: int
    retries: int
    throughput: float
    peak_concurrency: int
    elapsed: float
    max_concurrency: int
    held_back: int = 0
    held_seconds: float = 0.0
    held_reason: str | None = None
    held: int = 0
    throttled: int = 0
    abandoned: int = 0


@dataclass(slots=True)
class RunReport(Generic[T]):
    """The outcome of a run: one :class:`TaskResult` per item, in input order."""

    results: list[TaskResult[T]]
    stats: RunStats
    _values: list[T] | None = field(default=None, repr=False)

    @property
    def values(self) -> list[T]:
        """The values of the items that succeeded, in input order."""
        if self._values is None:
            self._values = [r.value for r in self.results if r.ok]  # type: ignore[misc]
        return self._values

    @property
    def errors(self) -> list[BaseException]:
        """The exceptions of the items that failed, in input order."""
        return [r.error for r in self.results if not r.ok and r.error is not None]

    @property
    def failures(self) -> list[TaskResult[T]]:
        """The results of the items that failed, in input order."""
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        """True when every item succeeded."""
        return self.stats.failed == 0

    def raise_for_errors(self) -> None:
        """Raise an ``ExceptionGroup`` of :class:`TaskFailed` if any item failed.

        Each member's ``__cause__`` is the item's own exception.
        """
        failures = self.failures
        if not failures:
            return
        members = []
        for result in failures:
            error = result.error or RuntimeError("failed without an exception")
            member = TaskFailed(result.index, result.item, error)
            member.__cause__ = error
            members.append(member)
        raise ExceptionGroup(f"{len(members)} of {len(self.results)} tasks failed", members)

    def to_dict(self, *, items: bool = True) -> dict[str, Any]:
        """The execution summary and one record per task, as JSON-able builtins.

        ``{"stats": {...RunStats...}, "results": [{"index", "item", "ok", "value",
        "error", "attempts", "started", "finished", "duration"}, ...]}``; errors as
        ``"TypeName: message"``, non-finite floats as ``None``, and values JSON cannot
        hold as their ``repr``.

        Args:
            items: Include each task's item.
        """
        return {
            "stats": to_builtins(asdict(self.stats), fallback=repr),
            "results": [result.to_dict(item=items) for result in self.results],
        }

    def to_json(self, *, items: bool = True, **dumps_options: Any) -> str:
        """:meth:`to_dict` as a JSON string (strict JSON: no NaN)."""
        return json.dumps(self.to_dict(items=items), allow_nan=False, **dumps_options)

    def to_frame(self) -> pd.DataFrame:
        """One row per item: index, item, ok, value, error (text), attempts, times (s)."""
        import pandas as pd

        return pd.DataFrame(
            {
                "index": [r.index for r in self.results],
                "item": [r.item for r in self.results],
                "ok": [r.ok for r in self.results],
                "value": [r.value for r in self.results],
                "error": [error_text(r.error) for r in self.results],
                "attempts": [r.attempts for r in self.results],
                "started": [r.started for r in self.results],
                "finished": [r.finished for r in self.results],
                "duration": [r.duration for r in self.results],
            }
        )

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"RunReport(submitted={s.submitted}, completed={s.completed}, failed={s.failed}, "
            f"retries={s.retries}, total_time={s.total_time:.3f}s)"
        )
