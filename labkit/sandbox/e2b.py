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

The key never reaches a traceback: labkit's error is raised outside the ``except``
block that caught the SDK's (so it has no ``__context__``), and its ``__cause__`` is
a copy of the SDK's exception, same type and message with the key masked, that was
never raised and so holds no frame. The SDK's own frames, whose locals hold the key
(``opts = {'api_key': ...}``), are dropped with the original exception; error
reporters that collect locals (Sentry, rich, ``pytest -l``) never see them.

Within E2B's limits: creations are paced process-wide (``create_rate``, 1 per
second by default, E2B's Hobby limit; Pro allows 5), and a pool probes an idle VM
before handing it out (:meth:`E2BSandbox.probe`), replacing one E2B deleted early.
Resources (vCPUs, memory) come from the template, not from options.
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

from labkit._checks import check, is_int, is_real
from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import (
    ConfigError,
    MissingDependency,
    SandboxAuthError,
    SandboxClosed,
    SandboxError,
    SandboxRateLimited,
    SandboxStartError,
    error_text,
)
from labkit.sandbox.base import (
    DEFAULT_MAX_OUTPUT,
    DEFAULT_SECRETS,
    MARKER_VARIABLE,
    TIMEOUT_EXIT_CODE,
    CommandResult,
    ResourceSample,
    SandboxLifecycle,
    capped,
    check_command,
    check_env,
    check_max_output,
    check_timeout,
    refuse_secrets,
    relative_path,
)
from labkit.sandbox.cost import price_per_second

__all__ = ("E2BSandbox",)

DEFAULT_CREATE_RATE = 1.0
"""Sandbox creations per second, process-wide: E2B's Hobby plan limit (Pro: 5/s)."""

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


class _Pacer:
    """Spaces events ``1 / rate`` seconds apart on a clock (reservation style)."""

    __slots__ = ("_clock", "_interval", "_next")

    def __init__(self, rate: float, clock: Clock) -> None:
        self._interval = 1.0 / rate
        self._clock = clock
        self._next = float("-inf")

    async def wait(self) -> None:
        now = self._clock.now()
        slot = max(self._next, now)
        self._next = slot + self._interval
        if slot > now:
            await self._clock.sleep(slot - now)


_pacers: dict[tuple[float, Clock], _Pacer] = {}


def _pacer(rate: float, clock: Clock) -> _Pacer:
    """The process-wide pacer for ``rate`` on ``clock``: E2B limits per account, not VM."""
    key = (rate, clock)
    if key not in _pacers:
        _pacers[key] = _Pacer(rate, clock)
    return _pacers[key]


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
        create_rate: Creations per second, shared by every ``E2BSandbox`` of this
            process with the same rate and clock (E2B limits creations per account:
            1/s on Hobby, the default, 5/s on Pro); ``None`` does not pace.
        template_vcpus: The template's vCPUs, for :attr:`price_per_second` only.
        template_memory_gib: The template's RAM in GiB, likewise.
        memory_mb: Refused: an E2B VM's memory comes from its template.
        cpus: Refused: an E2B VM's CPUs come from its template.
        clock: The clock creations are paced on.
        max_output: Bytes of each command's stdout, and of its stderr, kept in
            its result (16 MiB by default); the rest is dropped and the result
            says ``truncated``. The SDK itself receives the whole output (it
            streams it into its own buffers), so this bounds what results hold,
            not what the SDK reads: send large outputs to a file in the VM.

    Raises:
        SandboxAuthError: No key was given and ``E2B_API_KEY`` is not set.
        ConfigError: An option is out of range, ``envs`` holds a secret, or
            ``memory_mb``/``cpus`` was given (build a template with the resources
            instead).
    """

    __slots__ = (
        "_clock",
        "_closed",
        "_create_args",
        "_create_rate",
        "_deadline",
        "_gone",
        "_id",
        "_key",
        "_max_output",
        "_price",
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
        create_rate: float | None = DEFAULT_CREATE_RATE,
        template_vcpus: float = 2.0,
        template_memory_gib: float = 0.5,
        memory_mb: float | None = None,
        cpus: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> None:
        check_env("envs", envs)
        check_max_output(max_output, allow_none=False)
        self._max_output = int(max_output)
        _check_options(
            template=template,
            timeout=timeout,
            workdir=workdir,
            create_rate=create_rate,
            memory_mb=memory_mb,
            cpus=cpus,
        )
        self._secrets = DEFAULT_SECRETS | frozenset(secrets)
        refuse_secrets("envs", envs or {}, self._secrets)
        key = api_key or os.environ.get(KEY_VARIABLE)
        if not key:
            raise SandboxAuthError(
                f"no E2B API key: set the {KEY_VARIABLE} environment variable or pass api_key="
            )
        self._key: _Secret | None = _Secret(key)
        self._price = price_per_second(vcpus=template_vcpus, memory_gib=template_memory_gib)
        self._create_rate = create_rate
        self._clock = clock
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
    def price_per_second(self) -> float:
        """USD per second while it runs, at E2B's rates for the template's size."""
        return self._price

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
        if self._create_rate is not None:
            await _pacer(self._create_rate, self._clock).wait()
        error: SandboxError | None = None
        try:
            made = await sdk_class.create(api_key=self._key.reveal(), **self._create_args)
        except Exception as exc:
            error = _translate(exc, "create a sandbox", SandboxStartError, self._key)
        if error is not None:
            raise error  # outside the except block: no __context__ with the SDK's frames
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
        error: SandboxError | None = None
        try:
            await sdk.commands.run(script, timeout=60)
            await sdk.set_timeout(self._timeout)
        except Exception as exc:
            error = self._failure(exc, "reset the sandbox")
        if error is not None:
            raise error
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
        error: SandboxError | None = None
        try:
            await asyncio.shield(sdk.kill())
        except Exception as exc:
            error = _translate(exc, "kill the sandbox", SandboxError)
        if error is not None:
            raise error

    # -- commands -------------------------------------------------------------------

    async def run(
        self,
        cmd: str,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        max_output: int | None = None,
    ) -> CommandResult:
        """Run ``cmd`` with bash in ``workdir``.

        Args:
            cmd: The command line.
            timeout: Seconds before E2B ends the command; it is then killed and the
                result has ``timed_out=True`` and exit code 124. ``None``: no limit.
            env: Variables for this command, on top of the sandbox's ``envs``.
            max_output: Bytes of stdout, and of stderr, kept in the result; the
                rest is dropped and the result is ``truncated``. ``None``: the
                sandbox's ``max_output``.

        Returns:
            The command's result; a non-zero exit is a result, not an exception.

        Raises:
            ConfigError: ``cmd`` is not a ``str`` or holds a NUL byte, ``timeout``
                is not a positive number, ``env`` holds a secret, a NUL byte or a
                value that is not a ``str``, or ``max_output`` is not an int >= 1.
            SandboxClosed: The sandbox was closed.
            SandboxRateLimited, SandboxAuthError, SandboxError: E2B failed the call.
            asyncio.CancelledError: The caller was cancelled; the command was killed.
        """
        check_command(cmd)
        check_env("env", env)
        check_timeout(timeout)
        check_max_output(max_output, allow_none=True)
        limit = self._max_output if max_output is None else int(max_output)
        refuse_secrets("env", env or {}, self._secrets)
        sdk = await self._ready()
        started = time.perf_counter()
        handle = await self._start(sdk, cmd, {**(env or {}), MARKER_VARIABLE: self._id}, timeout)
        return capped(await self._wait(handle, started), limit)

    async def _start(
        self, sdk: Any, cmd: str, command_env: dict[str, str], timeout: float | None
    ) -> Any:
        """Start ``cmd`` in the background (making ``workdir`` first); its handle.

        Raises:
            SandboxRateLimited, SandboxAuthError, SandboxError: E2B failed the call.
        """
        error: SandboxError | None = None
        try:
            if not self._workdir_ready:
                await sdk.files.make_dir(self._workdir)
                self._workdir_ready = True
            return await sdk.commands.run(
                cmd,
                background=True,
                envs=command_env,
                cwd=self._workdir,
                timeout=0 if timeout is None else timeout,  # 0: no limit, for the SDK
            )
        except Exception as exc:
            error = self._failure(exc, "start a command")
        raise error

    async def _wait(self, handle: Any, started: float) -> CommandResult:
        """The result of the command of ``handle``, started at ``started`` (perf_counter
        seconds); killed when it times out or the caller is cancelled.

        Raises:
            SandboxError: E2B failed the call (or a subclass).
        """
        e2b = _sdk()
        error: SandboxError | None = None
        try:
            outcome = await handle.wait()
        except asyncio.CancelledError:
            await _kill_command(handle)
            raise
        except e2b.CommandExitException as exc:
            outcome = exc  # a non-zero exit: it carries exit_code, stdout and stderr
        except (e2b.SandboxNotRunningException, e2b.SandboxUnreachableException) as exc:
            error = self._failure(exc, "run a command")  # before TimeoutException: subclasses
        except e2b.TimeoutException:
            await _kill_command(handle)
            return CommandResult(
                TIMEOUT_EXIT_CODE,
                handle.stdout or "",
                handle.stderr or "",
                time.perf_counter() - started,
                timed_out=True,
                killed_reason="timeout",
            )
        except Exception as exc:
            error = self._failure(exc, "run a command")
        if error is not None:
            raise error
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
        error: SandboxError | None = None
        try:
            await sdk.files.write(remote, data)
        except Exception as exc:
            error = self._failure(exc, f"write {path!r}")
        if error is not None:
            raise error

    async def read_file(self, path: str) -> bytes:
        """The content of ``workdir/path`` in the VM, as bytes.

        Raises:
            SandboxPathError: ``path`` is absolute or has ``..``.
            FileNotFoundError: There is no such file.
            SandboxClosed, SandboxRateLimited, SandboxAuthError, SandboxError: as ``run``.
        """
        remote = self._remote(path)
        sdk = await self._ready()
        error: Exception
        try:
            return bytes(await sdk.files.read(remote, format="bytes"))
        except _sdk().FileNotFoundException:
            error = FileNotFoundError(f"{path!r} does not exist in {self._id}")
        except Exception as exc:
            error = self._failure(exc, f"read {path!r}")
        raise error

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
        error: SandboxError | None = None
        try:
            samples = await sdk.get_metrics(start=since)
        except Exception as exc:
            error = self._failure(exc, "read metrics")
        if error is not None:
            raise error
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

    async def probe(self) -> bool:
        """Whether the VM still runs (E2B deletes 1 to 3 % of sandboxes early).

        One health request to the VM; a pool calls it before it hands out a sandbox
        that idled. ``True`` before the VM is created; ``False`` once closed or gone.
        """
        if self._closed or self._gone:
            return False
        sdk = self._sdk_obj
        if sdk is None:
            return True
        try:
            running = bool(await sdk.is_running())
        except Exception:
            running = False
        if not running:
            self._gone = True
        return running

    def _failure(self, exc: Exception, action: str) -> SandboxError:
        error = _translate(exc, action, SandboxError)
        if _is_gone(exc):
            self._gone = True
        return error


def _is_gone(exc: Exception) -> bool:
    e2b = _sdk()
    return isinstance(exc, e2b.SandboxNotRunningException | e2b.SandboxNotFoundException)


def _translate(
    exc: Exception, action: str, default: type[SandboxError], key: _Secret | None = None
) -> SandboxError:
    """labkit's error for an SDK exception, caused by a sanitised copy of it."""
    error = _labkit_error(exc, action, default)
    error.__cause__ = _sanitised(exc, key)
    return error


def _sanitised(exc: Exception, key: _Secret | None) -> BaseException:
    """A never-raised copy of ``exc``: same type and message (key masked), no frames."""
    message = str(exc)
    if key is not None and key.reveal():
        message = message.replace(key.reveal(), "<E2B_API_KEY>")
    try:
        copy = type(exc)(message)
    except Exception:
        copy = SandboxError(f"{type(exc).__name__}: {message}")
    copy.__traceback__ = None
    copy.__cause__ = None
    copy.__context__ = None
    return copy


def _labkit_error(exc: Exception, action: str, default: type[SandboxError]) -> SandboxError:
    """labkit's error for an SDK exception; its message never holds the key."""
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
    return default(f"E2B failed to {action}: {error_text(exc)}")


async def _kill_command(handle: Any) -> None:
    """Best-effort SIGKILL of a command; shielded so a cancellation cannot cut it."""
    with contextlib.suppress(Exception):
        await asyncio.shield(handle.kill())


async def _kill_quietly(sdk: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.shield(sdk.kill())


def _check_options(
    *,
    template: str | None,
    timeout: int,
    workdir: str,
    create_rate: float | None,
    memory_mb: float | None,
    cpus: float | None,
) -> None:
    """Refuse a bad option of :class:`E2BSandbox`, naming it (ConfigError)."""
    for option, value in (("memory_mb", memory_mb), ("cpus", cpus)):
        if value is not None:
            raise ConfigError(
                option,
                value,
                "None: an E2B sandbox's memory and CPUs come from its template; build "
                "a template with them (e2b template build --memory-mb N --cpu-count N) "
                "and pass template=",
            )
    check(
        create_rate is None or (is_real(create_rate) and create_rate > 0),
        "create_rate",
        create_rate,
        "None (no pacing) or a finite number of creations per second > 0",
    )
    check(
        is_int(timeout) and 1 <= timeout <= MAX_LIFETIME,
        "timeout",
        timeout,
        f"an int of seconds from 1 to {MAX_LIFETIME}",
    )
    check(
        template is None or (isinstance(template, str) and bool(template)),
        "template",
        template,
        "None (E2B's base) or a template name or id",
    )
    check(
        isinstance(workdir, str) and workdir.startswith("/"),
        "workdir",
        workdir,
        "an absolute path in the VM",
    )
