"""FakeSandbox: a scripted, in-memory sandbox for labkit's tests and users' own.

It runs nothing. Each ``run`` returns the next scripted result (or raises the next
scripted exception) after ``latency`` seconds on an injectable clock, and every
call is counted, so tests of pools, runners and experiments assert exactly what
happened without a process, a network or a real sleep.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Mapping

from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import SandboxClosed
from labkit.sandbox.base import (
    DEFAULT_MAX_OUTPUT,
    TIMEOUT_EXIT_CODE,
    CommandResult,
    ResourceSample,
    SandboxLifecycle,
    capped,
    check_command,
    check_env,
    check_max_output,
    check_timeout,
    relative_path,
)

__all__ = ("FakeSandbox",)

ScriptItem = CommandResult | BaseException | Callable[[str], CommandResult]
"""One scripted answer: a result, an exception to raise, or a function of the command."""

_ids = itertools.count(1)


class FakeSandbox(SandboxLifecycle):
    """A sandbox double that scripts results, failures and latency and counts calls.

    Args:
        results: Answers for successive ``run`` calls, in order: a
            :class:`CommandResult`, an exception to raise, or a callable taking the
            command and returning a result. When they run out, ``default`` answers.
        default: The answer once ``results`` is exhausted (exit 0, no output).
        latency: Seconds each ``run`` takes on ``clock``. A ``run`` whose ``timeout``
            is shorter returns a timed-out result (exit 124) after ``timeout``.
        start_latency: Seconds ``start()`` takes on ``clock``.
        start_error: Raised by ``start()`` (every time) when set.
        reset_error: Raised by ``reset()`` while set; assign it at any time.
        clock: Where latencies are spent; inject a ``FakeClock`` to avoid real sleeps.
        sample: What ``metrics()`` returns (its ``time`` is replaced by ``clock.now()``).
        max_output: Bytes of a scripted stdout, and stderr, kept in a result
            (16 MiB by default); longer ones are cut and the result is ``truncated``.

    Attributes (all public, for assertions and for scripting mid-test):
        commands: Every command passed to ``run``, in call order.
        envs: The ``env`` of each ``run`` call.
        files: The in-memory file system, path -> bytes.
        starts, resets, closes, metrics_calls: How often each was called.
        running: ``run`` calls in progress now.
        cancelled_runs: ``run`` calls that were cancelled mid-way.
        dirty: ``True`` after a ``run`` or a write, until the next ``reset()``.
        healthy: Set it to ``False`` (or call :meth:`crash`) to simulate a dead sandbox.
    """

    __slots__ = (
        "_clock",
        "_id",
        "_max_output",
        "_results",
        "cancelled_runs",
        "closed",
        "closes",
        "commands",
        "default",
        "dirty",
        "envs",
        "files",
        "healthy",
        "latency",
        "metrics_calls",
        "reset_error",
        "resets",
        "running",
        "sample",
        "start_error",
        "start_latency",
        "started",
        "starts",
    )

    def __init__(
        self,
        results: Iterable[ScriptItem] = (),
        *,
        default: ScriptItem | None = None,
        latency: float = 0.0,
        start_latency: float = 0.0,
        start_error: BaseException | None = None,
        reset_error: BaseException | None = None,
        clock: Clock = SYSTEM_CLOCK,
        sample: ResourceSample | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> None:
        check_max_output(max_output, allow_none=False)
        self._max_output = int(max_output)
        self._id = f"fake-{next(_ids)}"
        self._results: deque[ScriptItem] = deque(results)
        self._clock = clock
        self.default: ScriptItem = default if default is not None else CommandResult(0, "", "", 0.0)
        self.latency = latency
        self.start_latency = start_latency
        self.start_error = start_error
        self.reset_error = reset_error
        self.sample = sample or ResourceSample(time=0.0, cpu=0.0, memory=0.0, memory_percent=0.0)
        self.commands: list[str] = []
        self.envs: list[dict[str, str]] = []
        self.files: dict[str, bytes] = {}
        self.starts = self.resets = self.closes = self.metrics_calls = 0
        self.running = self.cancelled_runs = 0
        self.started = self.closed = self.dirty = False
        self.healthy = True

    @property
    def id(self) -> str:
        """``fake-`` and a process-wide counter."""
        return self._id

    def __repr__(self) -> str:
        return (
            f"FakeSandbox(id={self._id!r}, runs={len(self.commands)}, "
            f"healthy={self.healthy}, closed={self.closed})"
        )

    def script(self, *items: ScriptItem) -> None:
        """Queue more answers for later ``run`` calls."""
        self._results.extend(items)

    def crash(self) -> None:
        """Simulate a sandbox that died: ``healthy`` becomes ``False``."""
        self.healthy = False

    async def start(self) -> None:
        """Count the call, wait ``start_latency``, raise ``start_error`` if set."""
        self._check_open()
        if self.started:
            return
        self.starts += 1
        await self._clock.sleep(self.start_latency)
        if self.start_error is not None:
            raise self.start_error
        self.started = True

    async def run(
        self,
        cmd: str,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        max_output: int | None = None,
    ) -> CommandResult:
        """Record ``cmd`` and give the next scripted answer after ``latency`` seconds,
        its output cut to ``max_output`` bytes (``None``: the sandbox's).

        Raises:
            ConfigError: A bad ``cmd``, ``timeout``, ``env`` or ``max_output``, as
                for a real sandbox.
            SandboxClosed: The sandbox was closed.
            BaseException: Whatever exception was scripted for this call.
        """
        check_command(cmd)
        check_env("env", env)
        check_timeout(timeout)
        check_max_output(max_output, allow_none=True)
        limit = self._max_output if max_output is None else int(max_output)
        await self.start()
        self.commands.append(cmd)
        self.envs.append(dict(env or {}))
        self.dirty = True
        item = self._results.popleft() if self._results else self.default
        self.running += 1
        try:
            if timeout is not None and timeout < self.latency:
                await self._clock.sleep(timeout)
                return CommandResult(
                    TIMEOUT_EXIT_CODE, "", "", timeout, timed_out=True, killed_reason="timeout"
                )
            await self._clock.sleep(self.latency)
        except BaseException:
            self.cancelled_runs += 1
            raise
        finally:
            self.running -= 1
        if isinstance(item, BaseException):
            raise item
        return capped(item(cmd) if callable(item) else item, limit)

    async def write_file(self, path: str, data: str | bytes) -> None:
        """Store ``data`` in :attr:`files` (paths are checked like a real sandbox's)."""
        key = str(relative_path(path))
        await self.start()
        self.files[key] = data.encode() if isinstance(data, str) else bytes(data)
        self.dirty = True

    async def read_file(self, path: str) -> bytes:
        """Bytes stored by :meth:`write_file`.

        Raises:
            FileNotFoundError: Nothing was written there.
        """
        key = str(relative_path(path))
        await self.start()
        try:
            return self.files[key]
        except KeyError:
            raise FileNotFoundError(key) from None

    async def metrics(self) -> ResourceSample:
        """:attr:`sample`, stamped with ``clock.now()``."""
        self._check_open()
        self.metrics_calls += 1
        s = self.sample
        return ResourceSample(self._clock.now(), s.cpu, s.memory, s.memory_percent)

    async def reset(self) -> None:
        """Count the call, clear :attr:`files` and :attr:`dirty`, raise ``reset_error`` if set."""
        self._check_open()
        self.resets += 1
        if self.reset_error is not None:
            raise self.reset_error
        self.files.clear()
        self.dirty = False

    async def close(self) -> None:
        """Mark closed (idempotent; ``closes`` counts every call)."""
        self.closes += 1
        self.closed = True
        self.healthy = False

    def _check_open(self) -> None:
        if self.closed:
            raise SandboxClosed(f"{self._id} is closed")
