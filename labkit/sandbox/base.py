"""What every sandbox offers: the :class:`Sandbox` protocol and its two records.

A sandbox runs shell commands somewhere isolated (a local process group in a
private directory, or an E2B cloud VM) and reports what they cost. Implementations:
:class:`labkit.LocalSandbox`, :class:`labkit.E2BSandbox` and, for tests,
``labkit.testing.FakeSandbox``. :class:`labkit.SandboxPool` keeps started ones warm.
"""

from __future__ import annotations

import codecs
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from labkit._checks import check, is_int, is_real
from labkit.errors import ConfigError, SandboxPathError

__all__ = (
    "DEFAULT_MAX_OUTPUT",
    "TIMEOUT_EXIT_CODE",
    "CommandResult",
    "ResourceSample",
    "Sandbox",
    "SandboxLifecycle",
)

TIMEOUT_EXIT_CODE = 124
"""Exit code reported for a command killed by its timeout (the code GNU ``timeout`` uses)."""

DEFAULT_MAX_OUTPUT = 16 * 2**20
"""Bytes of a command's stdout, and as many of its stderr, kept by default (16 MiB).

What a command writes past it is dropped and its result says ``truncated``: a
command printing without end costs labkit's process this much at most."""

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
        truncated: ``True`` when ``stdout`` or ``stderr`` holds only the first
            ``max_output`` bytes of what the command wrote (the rest was dropped).
    """

    exit_code: int
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    killed_reason: str | None = None
    truncated: bool = False

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
        max_output: int | None = None,
    ) -> CommandResult:
        """Run ``cmd`` with a shell in the working directory.

        Args:
            cmd: A shell command line.
            timeout: Seconds before the command (and every process it started) is
                killed; ``None`` means no limit.
            env: Variables added to the sandbox's clean environment.
            max_output: Bytes of stdout, and of stderr, kept in the result; what
                is past them is dropped and the result is ``truncated``. ``None``:
                the sandbox's own ``max_output``.
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
        ConfigError: ``timeout`` is not a number (``"1"``), is zero or negative, or is
            not finite (``None`` is the way to say "no limit").
    """
    if timeout is not None:
        check(
            is_real(timeout) and timeout > 0,
            "timeout",
            timeout,
            "None (no limit) or a finite number of seconds > 0",
        )


def check_command(cmd: object) -> None:
    """Refuse a command line that no shell can be given.

    Raises:
        ConfigError: ``cmd`` is not a ``str`` or holds a NUL byte.
    """
    check(isinstance(cmd, str), "cmd", cmd, "a shell command line (a str)")
    check("\0" not in str(cmd), "cmd", cmd, "a command line without NUL bytes")


def check_env(option: str, env: object) -> None:
    """Refuse an environment that no process can be given.

    Raises:
        ConfigError: ``env`` is not ``None`` or a mapping of ``str`` to ``str``, a
            name is empty or holds ``=`` or a NUL byte, or a value holds a NUL byte.
    """
    if env is None:
        return
    check(isinstance(env, Mapping), option, env, "None or a mapping of variable names to str")
    assert isinstance(env, Mapping)
    for name, value in env.items():
        good_name = isinstance(name, str) and name and "=" not in name and "\0" not in name
        check(bool(good_name), option, name, "variable names: non-empty str without '=' or NUL")
        check(
            isinstance(value, str) and "\0" not in value,
            f"{option}[{name!r}]",
            value,
            "a str without NUL bytes",
        )


def check_max_output(max_output: int | None, *, allow_none: bool) -> None:
    """Refuse a ``max_output`` that is not a whole number of bytes >= 1.

    Raises:
        ConfigError: ``max_output`` is not an int >= 1 (or ``None`` where allowed).
    """
    if max_output is None and allow_none:
        return
    allowed = "an int of bytes >= 1" + (" or None (the sandbox's own)" if allow_none else "")
    good = max_output is not None and is_int(max_output) and max_output >= 1
    check(good, "max_output", max_output, allowed)


def decode_head(data: bytes, truncated: bool) -> str:
    """The text of ``data`` (UTF-8, undecodable bytes replaced); a character cut in
    two at the end of a truncated output is left out rather than replaced."""
    return codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=not truncated)


def capped(result: CommandResult, max_output: int) -> CommandResult:
    """``result`` with ``stdout`` and ``stderr`` cut to ``max_output`` bytes of UTF-8 each.

    For sandboxes whose output arrives whole (a scripted fake, a cloud SDK).
    """
    outputs = []
    truncated = result.truncated
    for text in (result.stdout, result.stderr):
        if len(text) <= max_output // 4:  # 4 bytes a character at most: nothing to cut
            outputs.append(text)
            continue
        data = text.encode("utf-8", errors="surrogatepass")
        cut = len(data) > max_output
        truncated |= cut
        outputs.append(decode_head(data[:max_output], cut) if cut else text)
    if not truncated:
        return result
    return replace(result, stdout=outputs[0], stderr=outputs[1], truncated=True)


def refuse_secrets(option: str, env: Mapping[str, str], secrets: Collection[str]) -> None:
    """Refuse an ``env`` that would hand a secret to a sandbox.

    Raises:
        ConfigError: ``env`` names a variable in ``secrets``; the message names the
            variables, never their values.
    """
    leaked = sorted(set(env) & set(secrets))
    if leaked:
        raise ConfigError(option, leaked, f"no secret variables (refused: {', '.join(leaked)})")
