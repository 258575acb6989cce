"""E2BSandbox: a cloud VM from E2B (https://e2b.dev), through the ``e2b`` SDK.

The SDK is imported on first use, so labkit works without the ``e2b`` extra.
The API key comes from ``E2B_API_KEY`` or ``api_key=``; labkit never logs, prints
or shows it, keeps it only until the sandbox is created (the SDK holds its own
copy for later calls) and never passes it into the sandbox.

Errors are mapped onto labkit's tree: a missing or rejected key is
:class:`~labkit.errors.SandboxAuthError` (retrying will not help); HTTP 429 and
503 are :class:`~labkit.errors.SandboxRateLimited`, which the runner retries with
``lk.Retry(retry_on=(SandboxRateLimited,))``; anything else the SDK raises becomes
a :class:`~labkit.errors.SandboxError` (``SandboxStartError`` during creation).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib
import os
import shlex
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

from labkit.errors import (
    MissingDependency,
    SandboxAuthError,
    SandboxClosed,
    SandboxError,
    SandboxRateLimited,
    SandboxStartError,
    check,
)
from labkit.sandbox.base import (
    DEFAULT_SECRETS,
    MARKER_VARIABLE,
    TIMEOUT_EXIT_CODE,
    CommandResult,
    ResourceSample,
    SandboxLifecycle,
    check_timeout,
    refuse_secrets,
    relative_path,
)

__all__ = ("E2BSandbox",)

KEY_VARIABLE = "E2B_API_KEY"
MAX_LIFETIME = 86_400
"""The longest sandbox life E2B allows (Pro plan), in seconds; Hobby allows 3,600."""

_MB = float(2**20)
_EXPIRY_MARGIN = 5.0  # seconds: a sandbox this close to its end is not handed out
_METRICS_WINDOW = dt.timedelta(seconds=30)  # E2B samples every 5 s; ask only for recent ones


def _sdk() -> Any:
    """The ``e2b`` module (typed ``Any``: labkit only touches a few names of it)."""
    try:
        return importlib.import_module("e2b")
    except ImportError as exc:
        raise MissingDependency("e2b", "e2b", "E2BSandbox") from exc


class _Secret:
    """A string that never shows itself in a repr, a traceback's locals or a pickle."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("an API key cannot be pickled")


class E2BSandbox(SandboxLifecycle):
    """A sandbox that is an E2B cloud VM (``e2b.AsyncSandbox``).

    It is created on first use (or by ``start()``, which is what the pool times);
    commands run with ``bash`` in ``workdir``, which is created by the first
    ``run``; ``reset()`` kills every process labkit's commands started (they carry
    ``LABKIT_SANDBOX=<id>``), empties ``workdir`` and renews the VM's lifetime with
    ``set_timeout``, so a pooled sandbox stays alive while it is used; ``close()``
    kills the VM.

    File paths are relative to ``workdir`` and may not leave it, as with
    :class:`labkit.LocalSandbox`; use :attr:`sdk` for anything else in the VM.

    Args:
        template: E2B template name or id; ``None`` is E2B's ``base``.
        timeout: The VM's lifetime in seconds, from creation and again from each
            ``reset()`` (1 to 86,400; E2B's Hobby plan stops at 3,600).
        api_key: The E2B key; by default the ``E2B_API_KEY`` environment variable.
        envs: Variables for every command (set when the VM is created).
        metadata: Labels E2B stores with the sandbox.
        workdir: The absolute path commands run in and files are relative to.
        secrets: Variable names never to pass to the VM, on top of ``E2B_API_KEY``.
        sdk_options: More keyword arguments for ``AsyncSandbox.create`` (such as
            ``request_timeout``, ``retries``, ``domain``, ``network``).
        sdk_class: A stand-in for ``e2b.AsyncSandbox`` with the same ``create``
            classmethod, for tests.

    Raises:
        SandboxAuthError: No key was given and ``E2B_API_KEY`` is not set.
        ConfigError: An option is out of range, or ``envs`` holds a secret.
    """

    __slots__ = (
        "_closed",
        "_create_args",
        "_deadline",
        "_gone",
        "_id",
        "_key",
        "_sdk_class",
        "_sdk_obj",
        "_secrets",
        "_start_lock",
        "_template",
        "_timeout",
        "_workdir",
        "_workdir_ready",
    )

    def __init__(
        self,
        template: str | None = None,
        timeout: int = 300,
        *,
        api_key: str | None = None,
        envs: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        workdir: str = "/home/user/labkit",
        secrets: Iterable[str] = (),
        sdk_options: Mapping[str, Any] | None = None,
        sdk_class: Any = None,
    ) -> None:
        check(
            isinstance(timeout, int) and 1 <= timeout <= MAX_LIFETIME,
            "timeout",
            timeout,
            f"an int of seconds from 1 to {MAX_LIFETIME}",
        )
        check(workdir.startswith("/"), "workdir", workdir, "an absolute path in the VM")
        self._secrets = DEFAULT_SECRETS | frozenset(secrets)
        refuse_secrets("envs", envs or {}, self._secrets)
        key = api_key or os.environ.get(KEY_VARIABLE)
        if not key:
            raise SandboxAuthError(
                f"no E2B API key: set the {KEY_VARIABLE} environment variable or pass api_key="
            )
        self._key: _Secret | None = _Secret(key)
        self._id = f"e2b-{uuid.uuid4().hex[:8]}"
        self._template = template
        self._timeout = timeout
        self._workdir = workdir.rstrip("/") or "/"
        self._create_args: dict[str, Any] = {
            **(sdk_options or {}),
            "template": template,
            "timeout": timeout,
            "envs": dict(envs) if envs else None,
            "metadata": dict(metadata) if metadata else None,
        }
        self._sdk_class = sdk_class
        self._sdk_obj: Any = None
        self._start_lock = asyncio.Lock()
        self._closed = False
        self._gone = False
        self._deadline = 0.0
        self._workdir_ready = False

    # -- identity and state ---------------------------------------------------------

    @property
    def id(self) -> str:
        """labkit's name for it, ``e2b-`` and 8 hex digits (see :attr:`sandbox_id`)."""
        return self._id

    @property
    def sandbox_id(self) -> str | None:
        """E2B's id for the VM, once created."""
        return None if self._sdk_obj is None else str(self._sdk_obj.sandbox_id)

    @property
    def sdk(self) -> Any:
        """The underlying ``e2b.AsyncSandbox``, once created (``None`` before)."""
        return self._sdk_obj

    @property
    def healthy(self) -> bool:
        """``False`` once closed, known to be gone, or within 5 s of its lifetime's end."""
        if self._closed or self._gone:
            return False
        return self._sdk_obj is None or time.monotonic() < self._deadline - _EXPIRY_MARGIN

    def __repr__(self) -> str:
        state = "closed" if self._closed else "new" if self._sdk_obj is None else "running"
        return (
            f"E2BSandbox(id={self._id!r}, template={self._template!r}, "
            f"sandbox_id={self.sandbox_id!r}, state={state!r})"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError("an E2BSandbox is a live handle and cannot be pickled")

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Create the VM now (idempotent; concurrent callers share one creation).

        Raises:
            SandboxClosed: The sandbox was closed.
            SandboxAuthError: E2B rejected the key.
            SandboxRateLimited: E2B answered 429 or 503: retry later.
            SandboxStartError: Any other failure to create the VM.
            MissingDependency: The ``e2b`` package is not installed.
        """
        await self._ready()

    async def _ready(self) -> Any:
        if self._closed:
            raise SandboxClosed(f"{self._id} is closed")
        if self._sdk_obj is not None:
            return self._sdk_obj
        async with self._start_lock:
            if self._sdk_obj is None:
                await self._create()
        if self._closed:
            raise SandboxClosed(f"{self._id} is closed")
        return self._sdk_obj

    async def _create(self) -> None:
        sdk_class = self._sdk_class or _sdk().AsyncSandbox
        assert self._key is not None  # dropped only after a successful creation
        try:
            made = await sdk_class.create(api_key=self._key.reveal(), **self._create_args)
        except Exception as exc:
            raise _translate(exc, "create a sandbox", SandboxStartError) from exc
        if self._closed:  # closed while it was being created
            await _kill_quietly(made)
            raise SandboxClosed(f"{self._id} was closed while it started")
        self._sdk_obj = made
        self._key = None
        self._deadline = time.monotonic() + self._timeout

    async def reset(self) -> None:
        """Kill what labkit's commands started, empty ``workdir``, renew the lifetime.

        Raises:
            SandboxClosed: The sandbox was closed.
            SandboxError: The VM is gone or did not answer (the pool then replaces it).
        """
        sdk = await self._ready()
        w = shlex.quote(self._workdir)
        # Every process started by run() carries the marker; this shell does not.
        script = (
            "for p in /proc/[0-9]*; do "
            f'grep -qzx {shlex.quote(f"{MARKER_VARIABLE}={self._id}")} "$p/environ" '
            '2>/dev/null && kill -9 "${p#/proc/}" 2>/dev/null; '
            f"done; rm -rf -- {w} && mkdir -p -- {w}"
        )
        try:
            await sdk.commands.run(script, timeout=60)
            await sdk.set_timeout(self._timeout)
        except Exception as exc:
            raise self._failure(exc, "reset the sandbox") from exc
        self._deadline = time.monotonic() + self._timeout
        self._workdir_ready = True

    async def close(self) -> None:
        """Kill the VM (idempotent). The kill is shielded: cancelling ``close()``
        does not stop it.

        Raises:
            SandboxError: E2B refused the kill (the VM then ends at its timeout).
        """
        if self._closed:
            return
        self._closed = True
        self._key = None
        sdk = self._sdk_obj
        if sdk is None or self._gone:
            return
        try:
            await asyncio.shield(sdk.kill())
        except Exception as exc:
            raise _translate(exc, "kill the sandbox", SandboxError) from exc

    # -- commands -------------------------------------------------------------------

    async def run(
        self,
        cmd: str,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``cmd`` with bash in ``workdir``.

        Args:
            cmd: The command line.
            timeout: Seconds before E2B ends the command; it is then killed and the
                result has ``timed_out=True`` and exit code 124. ``None``: no limit.
            env: Variables for this command, on top of the sandbox's ``envs``.

        Returns:
            The command's result; a non-zero exit is a result, not an exception.

        Raises:
            ConfigError: ``timeout`` is not positive, or ``env`` holds a secret.
            SandboxClosed: The sandbox was closed.
            SandboxRateLimited, SandboxAuthError, SandboxError: E2B failed the call.
            asyncio.CancelledError: The caller was cancelled; the command was killed.
        """
        check_timeout(timeout)
        refuse_secrets("env", env or {}, self._secrets)
        sdk = await self._ready()
        e2b = _sdk()
        command_env = {**(env or {}), MARKER_VARIABLE: self._id}
        started = time.perf_counter()
        try:
            if not self._workdir_ready:
                await sdk.files.make_dir(self._workdir)
                self._workdir_ready = True
            handle = await sdk.commands.run(
                cmd,
                background=True,
                envs=command_env,
                cwd=self._workdir,
                timeout=0 if timeout is None else timeout,  # 0: no limit, for the SDK
            )
        except Exception as exc:
            raise self._failure(exc, "start a command") from exc
        try:
            outcome = await handle.wait()
        except asyncio.CancelledError:
            await _kill_command(handle)
            raise
        except e2b.CommandExitException as exc:
            outcome = exc  # a non-zero exit: it carries exit_code, stdout and stderr
        except (e2b.SandboxNotRunningException, e2b.SandboxUnreachableException) as exc:
            raise self._failure(exc, "run a command") from exc
        except e2b.TimeoutException:
            await _kill_command(handle)
            return CommandResult(
                TIMEOUT_EXIT_CODE,
                handle.stdout or "",
                handle.stderr or "",
                time.perf_counter() - started,
                timed_out=True,
            )
        except Exception as exc:
            raise self._failure(exc, "run a command") from exc
        return CommandResult(
            int(outcome.exit_code),
            outcome.stdout or "",
            outcome.stderr or "",
            time.perf_counter() - started,
        )

    # -- files ----------------------------------------------------------------------

    async def write_file(self, path: str, data: str | bytes) -> None:
        """Write ``data`` to ``workdir/path`` in the VM, creating parent directories.

        Raises:
            SandboxPathError: ``path`` is absolute or has ``..``.
            SandboxClosed, SandboxRateLimited, SandboxAuthError, SandboxError: as ``run``.
        """
        remote = self._remote(path)
        sdk = await self._ready()
        try:
            await sdk.files.write(remote, data)
        except Exception as exc:
            raise self._failure(exc, f"write {path!r}") from exc

    async def read_file(self, path: str) -> bytes:
        """The content of ``workdir/path`` in the VM, as bytes.

        Raises:
            SandboxPathError: ``path`` is absolute or has ``..``.
            FileNotFoundError: There is no such file.
            SandboxClosed, SandboxRateLimited, SandboxAuthError, SandboxError: as ``run``.
        """
        remote = self._remote(path)
        sdk = await self._ready()
        try:
            return bytes(await sdk.files.read(remote, format="bytes"))
        except _sdk().FileNotFoundException as exc:
            raise FileNotFoundError(f"{path!r} does not exist in {self._id}") from exc
        except Exception as exc:
            raise self._failure(exc, f"read {path!r}") from exc

    def _remote(self, path: str) -> str:
        return f"{self._workdir}/{relative_path(path)}"

    # -- metrics --------------------------------------------------------------------

    async def metrics(self) -> ResourceSample:
        """The VM's latest CPU and memory sample, from E2B's metrics API.

        E2B samples each VM every 5 seconds, so consecutive calls within 5 s return
        the same reading, and a VM younger than that has none yet (then a zero
        sample stamped now is returned). The figures cover the whole VM, not only
        labkit's commands. E2B reports CPU in percent of all the VM's cores; it is
        multiplied by the core count to match :class:`ResourceSample` (percent of
        one core).

        Raises:
            SandboxClosed, SandboxRateLimited, SandboxAuthError, SandboxError: as ``run``.
        """
        sdk = await self._ready()
        since = dt.datetime.now(dt.UTC) - _METRICS_WINDOW
        try:
            samples = await sdk.get_metrics(start=since)
        except Exception as exc:
            raise self._failure(exc, "read metrics") from exc
        if not samples:
            return ResourceSample(time=time.time(), cpu=0.0, memory=0.0, memory_percent=0.0)
        last = max(samples, key=lambda s: s.timestamp)
        total = float(last.mem_total)
        return ResourceSample(
            time=last.timestamp.timestamp(),
            cpu=float(last.cpu_used_pct) * float(last.cpu_count or 1),
            memory=float(last.mem_used) / _MB,
            memory_percent=100.0 * float(last.mem_used) / total if total else 0.0,
        )

    # -- errors ---------------------------------------------------------------------

    def _failure(self, exc: Exception, action: str) -> Exception:
        error = _translate(exc, action, SandboxError)
        if _is_gone(exc):
            self._gone = True
        return error


def _is_gone(exc: Exception) -> bool:
    e2b = _sdk()
    return isinstance(exc, e2b.SandboxNotRunningException | e2b.SandboxNotFoundException)


def _translate(exc: Exception, action: str, default: type[SandboxError]) -> SandboxError:
    """labkit's error for an SDK exception; the SDK's message never holds the key."""
    e2b = _sdk()
    if isinstance(exc, e2b.AuthenticationException):
        return SandboxAuthError(
            f"E2B rejected the API key (from {KEY_VARIABLE} or api_key=) when trying to "
            f"{action}: check that it is valid and not revoked"
        )
    if isinstance(exc, e2b.RateLimitException | e2b.ServiceBusyException):
        status = getattr(exc, "status_code", None) or "busy"
        return SandboxRateLimited(
            f"E2B asked to slow down ({status}) when trying to {action}; retry later, "
            "for example with lk.Retry(retry_on=(SandboxRateLimited,))"
        )
    if _is_gone(exc):
        return SandboxError(f"the E2B sandbox is gone (killed or timed out): cannot {action}")
    return default(f"E2B failed to {action}: {type(exc).__name__}: {exc}")


async def _kill_command(handle: Any) -> None:
    """Best-effort SIGKILL of a command; shielded so a cancellation cannot cut it."""
    with contextlib.suppress(Exception):
        await asyncio.shield(handle.kill())


async def _kill_quietly(sdk: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.shield(sdk.kill())
