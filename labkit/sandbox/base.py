"""What every sandbox offers: the :class:`Sandbox` protocol and its two records.

A sandbox runs shell commands somewhere isolated (a local process group in a
private directory, or an E2B cloud VM) and reports what they cost. Implementations:
:class:`labkit.LocalSandbox`, :class:`labkit.E2BSandbox` and, for tests,
``labkit.testing.FakeSandbox``. :class:`labkit.SandboxPool` keeps started ones warm.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from labkit.errors import ConfigError, SandboxPathError, check

__all__ = ("CommandResult", "ResourceSample", "Sandbox", "SandboxLifecycle", "TIMEOUT_EXIT_CODE")

TIMEOUT_EXIT_CODE = 124
"""Exit code reported for a command killed by its timeout (the code GNU ``timeout`` uses)."""

DEFAULT_SECRETS: frozenset[str] = frozenset({"E2B_API_KEY"})
"""Variables a sandbox never receives, whatever the caller passes."""

MARKER_VARIABLE = "LABKIT_SANDBOX"
"""Set to the sandbox's id in every process it starts, so cleanup can find them all."""


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What one command did.

    A non-zero exit and a timeout are results, not exceptions.

    Attributes:
        exit_code: The shell's exit status; ``124`` when the command timed out, and
            ``128 + n`` (local) when a signal ``n`` ended it.
        stdout: Standard output, decoded as UTF-8 (undecodable bytes replaced).
        stderr: Standard error, decoded the same way.
        duration: Wall time from start to end, in seconds.
        timed_out: ``True`` when the command ran past its ``timeout`` and was killed,
            children included; ``stdout``/``stderr`` then hold what it had written.
        killed_reason: Why labkit or the kernel killed the command, ``None`` when
            nothing did: ``"timeout"`` (with ``timed_out``), ``"memory"`` (a process
            went past the sandbox's ``memory_mb``; the exit code is then usually
            137) or ``"closed"`` (the sandbox was closed while it ran).
    """

    exit_code: int
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    killed_reason: str | None = None

    @property
    def ok(self) -> bool:
        """``True`` when the command exited with status 0 within its timeout."""
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True, slots=True)
class ResourceSample:
    """One reading of what a sandbox's processes use.

    Attributes:
        time: When it was measured, in seconds since the Unix epoch.
        cpu: CPU use in percent of one core (psutil's convention: two busy cores
            read 200.0).
        memory: Resident memory in MB (2**20 bytes).
        memory_percent: ``memory`` as a percentage of the machine's (or VM's) total.
    """

    time: float
    cpu: float
    memory: float
    memory_percent: float


class SandboxLifecycle:
    """``async with sandbox:`` starts it on entry and closes it on exit, errors included.

    A mixin for sandbox classes, which provide ``start()`` and ``close()``.
    """

    __slots__ = ()

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


@runtime_checkable
class Sandbox(Protocol):
    """An isolated place to run shell commands, as labkit and its pool use it.

    Every method is a coroutine except the ``id`` and ``healthy`` properties.
    Implementations start lazily (the first ``run`` or file call starts them, and
    ``start()`` may be awaited to pay that cost up front), support ``async with``,
    and make ``close()`` idempotent. File paths are relative to the sandbox's
    working directory; a path that would leave it raises
    :class:`~labkit.errors.SandboxPathError`.
    """

    @property
    def id(self) -> str:
        """A short name, unique in this process, fixed for the sandbox's life."""
        ...

    @property
    def healthy(self) -> bool:
        """``False`` once the sandbox is closed, gone, or known to be broken."""
        ...

    async def start(self) -> None:
        """Create the sandbox now (idempotent)."""
        ...

    async def run(
        self,
        cmd: str,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``cmd`` with a shell in the working directory.

        Args:
            cmd: A shell command line.
            timeout: Seconds before the command (and every process it started) is
                killed; ``None`` means no limit.
            env: Variables added to the sandbox's clean environment.
        """
        ...

    async def write_file(self, path: str, data: str | bytes) -> None:
        """Write ``data`` (``str`` is encoded as UTF-8) to ``path``, creating parents."""
        ...

    async def read_file(self, path: str) -> bytes:
        """The content of ``path`` as bytes (``.decode()`` it for text)."""
        ...

    async def metrics(self) -> ResourceSample:
        """What the sandbox's processes use now."""
        ...

    async def reset(self) -> None:
        """Make the sandbox as good as new for the next user: kill what still runs
        and empty the working directory. Raises if that is impossible."""
        ...

    async def close(self) -> None:
        """Kill everything the sandbox runs and release it (idempotent)."""
        ...


def relative_path(path: str) -> PurePosixPath:
    """``path`` as a relative path that stays below the working directory.

    Only the spelling is checked here; implementations that can see the real
    file system also refuse symbolic links that lead out.

    Raises:
        SandboxPathError: ``path`` is empty, absolute, or has a ``..`` component.
    """
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or path.startswith("~") or ".." in pure.parts:
        raise SandboxPathError(
            f"path {path!r} is not allowed: expected a relative path inside the sandbox "
            "(no leading '/', '~' or '..' components)"
        )
    if pure == PurePosixPath("."):
        raise SandboxPathError(f"path {path!r} names the sandbox directory itself, not a file")
    return pure


def check_timeout(timeout: float | None) -> None:
    """Refuse a command ``timeout`` that is neither ``None`` nor a positive number.

    Raises:
        ConfigError: ``timeout`` is zero or negative.
    """
    if timeout is not None:
        check(timeout > 0, "timeout", timeout, "None or a number of seconds > 0")


def refuse_secrets(option: str, env: Mapping[str, str], secrets: Collection[str]) -> None:
    """Refuse an ``env`` that would hand a secret to a sandbox.

    Raises:
        ConfigError: ``env`` names a variable in ``secrets``; the message names the
            variables, never their values.
    """
    leaked = sorted(set(env) & set(secrets))
    if leaked:
        raise ConfigError(option, leaked, f"no secret variables (refused: {', '.join(leaked)})")
