"""labkit's exception tree.

Every error labkit raises on purpose derives from :class:`LabkitError`; option
errors are also ``ValueError`` and timeouts are also ``TimeoutError``, so code
that already catches the built-ins keeps working::

    LabkitError
     +-- ConfigError (ValueError)           a bad option: names it, its value, what is allowed
     +-- MissingDependency (ImportError)    an optional extra is not installed
     +-- WorkerImportError (ImportError)    a cluster's workers cannot import what a task needs
     +-- WorkerLost                         an instance's runs kept losing their worker
     +-- TaskFailed                         raised by RunReport.raise_for_errors() (in a group)
     +-- TaskTimeout (TimeoutError)         one attempt of a task ran past the run's `timeout`
     +-- ResultRejected                     `Retry(retry_if_result=...)` rejected every value
     +-- RetryAfter                         raised by a task: "refused, try again in N seconds"
     +-- ItemsFailed                        the `items` iterable raised; carries `.report`
     +-- DependencyFailed                   a task did not run: a task it depends on failed
     +-- GraphError (ValueError)            a task graph has a cycle or an unknown name
     +-- ResourceUnavailable                a task needs more than the host could ever give
     +-- GPUError
     |    +-- GPUUnavailable                no NVML, no driver, or a request no fleet can meet
     |    +-- GPUTimeout (TimeoutError)     waited longer than `timeout` for GPUs
 |    +-- GPUPoolClosed                 the GPU pool was closed (waiters and new requests)
     +-- SandboxError
     |    +-- SandboxStartError             a sandbox could not be created
     |    +-- SandboxAuthError              the E2B key is missing or rejected (names E2B_API_KEY)
     |    +-- SandboxRateLimited            the provider asked us to slow down (retryable)
     |    +-- SandboxPathError (ValueError) a file path escapes the sandbox
     |    +-- SandboxClosed                 the sandbox was used after close()
     |    +-- SandboxTimeout (TimeoutError) a pool session waited past its `timeout`
     +-- StoreError                         the experiment store cannot be read or written
     +-- WorkerDied                         a worker process died while it ran a call
     +-- ExperimentError                    an experiment as a whole could not run

    RunInterrupted (KeyboardInterrupt)      Ctrl-C during a blocking run; carries `.report`
    OversubscribedWarning (UserWarning)     more instances in processes at once than cores
    StoreLockWarning (UserWarning)          a store call waits for another process's lock

``RunInterrupted`` is deliberately outside ``LabkitError``: an ``except Exception``
must never swallow a Ctrl-C.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sized
from typing import Any, Protocol, overload

__all__ = (
    "ConfigError",
    "DependencyFailed",
    "ExperimentError",
    "GPUError",
    "GPUPoolClosed",
    "GPUTimeout",
    "GPUUnavailable",
    "GraphError",
    "LabkitError",
    "MissingDependency",
    "ItemsFailed",
    "ResourceUnavailable",
    "ResultRejected",
    "RetryAfter",
    "RunInterrupted",
    "SandboxAuthError",
    "SandboxClosed",
    "SandboxError",
    "SandboxPathError",
    "SandboxRateLimited",
    "SandboxStartError",
    "SandboxTimeout",
    "OversubscribedWarning",
    "StoreError",
    "StoreLockWarning",
    "WorkerDied",
    "TaskFailed",
    "TaskTimeout",
    "WorkerImportError",
    "WorkerLost",
)


class LabkitError(Exception):
    """Root of every error labkit raises on purpose."""


class _Totals(Protocol):
    @property
    def submitted(self) -> int: ...

    @property
    def completed(self) -> int: ...


class _Report(Protocol):
    """What these errors read of a :class:`labkit.RunReport` (errors.py imports nothing
    of labkit: it is the bottom layer)."""

    @property
    def results(self) -> Sized: ...

    @property
    def stats(self) -> _Totals: ...


class ConfigError(LabkitError, ValueError):
    """An option has a value labkit cannot accept.

    Args:
        option: The option's name as the user wrote it (``"max_concurrency"``).
        value: The value that was given.
        allowed: What would have been accepted, in words (``"an integer >= 1"``).
    """

    def __init__(self, option: str, value: Any, allowed: str) -> None:
        self.option = option
        self.value = value
        self.allowed = allowed
        super().__init__(f"{option}={value!r} is not allowed: expected {allowed}")


@overload
def error_text(error: BaseException) -> str: ...


@overload
def error_text(error: None) -> None: ...


def error_text(error: BaseException | None) -> str | None:
    """An error in one line, as results, reports and the store keep it.

    Returns:
        ``"TypeName: message"``, or just ``"TypeName"`` when the message is empty;
        ``None`` for ``None``.
    """
    if error is None:
        return None
    message = str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


class MissingDependency(LabkitError, ImportError):
    """An optional dependency is missing; the message says which extra installs it.

    Args:
        package: The import name that failed (``"pynvml"``).
        extra: The labkit extra that provides it (``"gpu"``).
        purpose: What it is needed for, in a few words.
    """

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{purpose} needs the '{package}' package: pip install 'labkit[{extra}]'",
            name=package,
        )


class WorkerImportError(LabkitError, ImportError):
    """A cluster's workers cannot import a module that a task's function needs.

    The caller's process can import it (the function was pickled there by
    reference), the workers cannot, so they cannot unpickle the task. The message
    names the module and the ways to make it reach the workers.

    Args:
        message: What failed and the ways out.
        name: The module the workers could not import.
    """

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message, name=name)

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised on a worker and pickled back to the caller: keep the module's name.
        return (type(self), (str(self), self.name))


class WorkerLost(LabkitError):
    """An instance's attempt lost the worker running it too many times in a row
    (each run cut off, by a Slurm job's walltime or preemption, say)."""


class TaskFailed(LabkitError):
    """One failed task, as raised inside ``RunReport.raise_for_errors()``'s group.

    The original exception is the ``__cause__``; ``index`` and ``item`` say which task.
    """

    def __init__(self, index: int, item: Any, error: BaseException) -> None:
        self.index = index
        self.item = item
        self.error = error
        super().__init__(f"task {index} ({item!r:.60}) failed: {error_text(error)}")


class ResultRejected(LabkitError):
    """The last attempt returned a value that ``Retry(retry_if_result=...)`` rejected.

    Attributes:
        index: The task's index.
        attempt: The attempt whose value was rejected (1-based).
        value: That value (also on the failed result's ``value``).
    """

    def __init__(self, index: int, attempt: int, value: Any) -> None:
        self.index = index
        self.attempt = attempt
        self.value = value
        super().__init__(f"task {index}: attempt {attempt} returned a rejected value {value!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.index, self.attempt, self.value))


class ItemsFailed(LabkitError):
    """The ``items`` iterable raised part-way through a run.

    No further item was pulled; the items pulled before it ran to their end, and
    their results are on ``report`` (its ``results`` hold exactly those items). The
    iterable's own exception is ``__cause__``.

    Attributes:
        report: The :class:`labkit.RunReport` of the items pulled before the error.
        pulled: How many items were pulled.
    """

    def __init__(self, report: _Report, cause: BaseException) -> None:
        self.report: Any = report  # a labkit.RunReport
        self.pulled = len(report.results)
        super().__init__(
            f"the items iterable raised {error_text(cause)} after {self.pulled} "
            "items; their results are on .report"
        )


class TaskTimeout(LabkitError, TimeoutError):
    """An attempt ran past the run's ``timeout`` and was cancelled.

    Attributes:
        index: The task's position in the input.
        attempt: Which attempt timed out (1-based).
        timeout: The limit, in seconds.
    """

    def __init__(self, index: int, attempt: int, timeout: float) -> None:
        self.index = index
        self.attempt = attempt
        self.timeout = timeout
        super().__init__(f"task {index}, attempt {attempt}: timed out after {timeout} s")


class RetryAfter(LabkitError):
    """Raised by a task's function: the service refused it, try again after a while.

    A :class:`labkit.Retry` waits ``retry_after`` seconds (at least) before the
    next attempt instead of its own backoff, and ``RateLimit(..., adaptive=True)``
    counts it as a rejection and lowers its rate. Errors of HTTP clients carrying a
    ``Retry-After`` header (httpx, aiohttp, requests) are read the same way, without
    wrapping (see :func:`labkit.policies.retry_after_of`).

    Args:
        retry_after: Seconds to wait before trying again (>= 0, finite).
        message: What was refused, for the error's text.

    Raises:
        ConfigError: ``retry_after`` is not a finite number >= 0.

    Example:
        >>> async def call(item):
        ...     response = await client.post(URL, json=item)
        ...     if response.status_code == 429:
        ...         raise RetryAfter(float(response.headers.get("Retry-After", 1)))
    """

    def __init__(self, retry_after: float, message: str = "") -> None:
        # labkit._checks.is_real written as a range: that module sits above this one
        # (it raises ConfigError); a real number in [0, inf) is finite and not NaN.
        given: object = retry_after  # typed float, but any object can come in
        number = isinstance(given, numbers.Real) and not isinstance(given, bool)
        if not (number and 0 <= retry_after < math.inf):
            raise ConfigError("retry_after", retry_after, "a finite number of seconds >= 0")
        self.retry_after = float(retry_after)
        self.message = message
        detail = f"{message}: " if message else ""
        super().__init__(f"{detail}refused, retry after {self.retry_after:g} s")

    def __reduce__(self) -> tuple[Any, ...]:  # pickled from process workers
        return (type(self), (self.retry_after, self.message))


class DependencyFailed(LabkitError):
    """A task was not run because a task it depends on failed or was cancelled.

    Attributes:
        dependency: The failed dependency's name (``run_graph``) or index (``submit``).
        error: The dependency's own error.
    """

    def __init__(self, dependency: object, error: BaseException | None) -> None:
        self.dependency = dependency
        self.error = error
        what = "was cancelled" if error is None or _is_cancel(error) else "failed"
        detail = "" if error is None else f": {error_text(error)}"
        super().__init__(f"not run: dependency {dependency!r} {what}{detail}")


def _is_cancel(error: BaseException) -> bool:
    import asyncio

    return isinstance(error, asyncio.CancelledError)


class GraphError(LabkitError, ValueError):
    """A task graph cannot run: it has a cycle or names an unknown task.

    Attributes:
        cycle: The tasks of one cycle, in order, the first repeated at the end.
        unknown: ``{task: [unknown dependency names]}``.
    """

    def __init__(
        self, *, cycle: list[str] | None = None, unknown: dict[str, list[str]] | None = None
    ) -> None:
        self.cycle = cycle or []
        self.unknown = unknown or {}
        parts = []
        if self.unknown:
            named = "; ".join(f"{task!r} depends on {deps}" for task, deps in self.unknown.items())
            parts.append(f"unknown task names: {named}")
        if self.cycle:
            parts.append("cycle: " + " -> ".join(repr(n) for n in self.cycle))
        super().__init__("task graph refused, nothing ran: " + "; ".join(parts))


class ResourceUnavailable(LabkitError):
    """A task declares more resources than the host could ever provide."""


class GPUError(LabkitError):
    """Base of GPU pool errors."""


class GPUUnavailable(GPUError):
    """NVML is unusable here, or a request could never be met by this fleet."""


class GPUTimeout(GPUError, TimeoutError):
    """A GPU request waited longer than its ``timeout``."""


class GPUPoolClosed(GPUError):
    """The GPU pool was closed: a waiting request was cancelled, or a new one refused."""


class SandboxError(LabkitError):
    """Base of sandbox errors."""


class SandboxStartError(SandboxError):
    """A sandbox could not be created or started."""


class SandboxAuthError(SandboxError):
    """The sandbox provider's key is missing or was rejected."""


class SandboxRateLimited(SandboxError):
    """The provider refused the call for now (HTTP 429 or 503); retrying later may work."""


class SandboxPathError(SandboxError, ValueError):
    """A file path would leave the sandbox's directory."""


class SandboxClosed(SandboxError):
    """The sandbox was used after it was closed."""


class SandboxTimeout(SandboxError, TimeoutError):
    """A pool session waited longer than its ``timeout`` for a sandbox.

    Attributes:
        timeout: The limit, in seconds.
        max_size: The pool's cap on live sandboxes.
        pool_size: Live sandboxes when the wait ended.
        active: Sandboxes in a session then.
        waiting: Other sessions still queued then.
    """

    def __init__(
        self, timeout: float, *, max_size: int, pool_size: int, active: int, waiting: int
    ) -> None:
        self.timeout = timeout
        self.max_size = max_size
        self.pool_size = pool_size
        self.active = active
        self.waiting = waiting
        super().__init__(
            f"no sandbox came free within {timeout} s: pool size {pool_size} of max_size "
            f"{max_size}, {active} active, {waiting} other sessions waiting"
        )


class StoreError(LabkitError):
    """The experiment store cannot be opened, read or written.

    The message names the file, and the experiment and instance where there is one.
    """


class StoreLockWarning(UserWarning):
    """A store call has waited a few seconds for another process's write lock.

    It goes on waiting up to the store's ``timeout``, off the event loop; then the
    call fails with :class:`StoreError`.
    """


class WorkerDied(LabkitError):
    """A worker process (``executor="process"``) died while it started or ran a call.

    It was killed from outside, crashed, or ran out of memory; whatever its call
    sent before (an instance's samples) was delivered.

    Attributes:
        pid: The worker's process id.
        returncode: Its exit status (negative: the signal that ended it), or ``None``
            when not collected yet.
    """

    def __init__(self, pid: int, returncode: int | None, when: str) -> None:
        self.pid = pid
        self.returncode = returncode
        if returncode is None:
            how = "died"
        elif returncode < 0:
            import signal

            try:
                how = f"was killed by {signal.Signals(-returncode).name}"
            except ValueError:
                how = f"was killed by signal {-returncode}"
        else:
            how = f"exited with status {returncode}"
        super().__init__(f"worker process {pid} {how} {when}")


class OversubscribedWarning(UserWarning):
    """More instances run at once in processes (worker processes, sandboxes) than the
    machine has cores: CPU-bound instances then share cores, and what they time is
    inflated. Said once per run, with the numbers."""


class ExperimentError(LabkitError):
    """An experiment could not run at all (as opposed to an instance failing)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a blocking run; ``report`` holds what had finished.

    Tasks that had not finished appear in the report as failed with a
    ``CancelledError``. Being a ``KeyboardInterrupt``, it still stops a script; when
    it came out of :func:`labkit.loop.run_sync`, left uncaught it ends the process with
    status 130, as Ctrl-C does (see :func:`labkit.loop.install_interrupt_exit`).
    """

    def __init__(self, report: _Report) -> None:
        self.report: Any = report  # a labkit.RunReport
        stats = report.stats
        super().__init__(f"interrupted: {stats.completed} of {stats.submitted} tasks had completed")
