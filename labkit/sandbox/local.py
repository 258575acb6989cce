"""LocalSandbox: shell commands in a private temporary directory on this machine.

What holds a sandbox's processes (its *boundary*) depends on the platform:

- Linux: a supervisor process (:mod:`labkit.sandbox.supervision`) runs the
  commands, is the subreaper of everything they start, and kills all of it at a
  timeout, at ``reset()``/``close()`` and when the labkit process dies by any
  signal, SIGKILL included: ``setsid`` and double-forked daemons without the
  ``LABKIT_SANDBOX`` marker too.
- macOS and other systems without ``/proc`` and ``SOCK_SEQPACKET`` sockets: each
  command in its own process group and session, the group killed at the timeout,
  ``reset()`` and ``close()``, plus a best-effort psutil sweep of the descendants
  seen while the command ran and of every process carrying the marker
  (:mod:`labkit.sandbox.group`); ``close()`` runs at exit and on SIGTERM/SIGHUP
  where their handlers are the default. A daemon that leaves the tree before a
  snapshot sees it and drops the marker escapes, and SIGKILL of the labkit
  process leaves the processes running.

``LocalSandbox(boundary="auto")`` picks the supervisor where it works;
``"supervisor"`` and ``"group"`` choose one. Commands get a clean
environment. Resource caps (``memory_mb``, ``cpus``) use cgroups where they are
writable (:mod:`labkit.sandbox.caps`). File access goes through the sandbox
directory's file descriptor and never follows a symbolic link
(:mod:`labkit.sandbox.safefs`).

This is isolation for bookkeeping, cleanup and resource limits, not security
against a hostile program: the commands run as the current user and can read (and
write) anything that user can. Only labkit's own ``write_file`` and
``read_file`` are guaranteed to stay inside the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

import psutil

from labkit.errors import ConfigError, SandboxClosed, SandboxError, SandboxStartError
from labkit.sandbox.base import (
    DEFAULT_MAX_OUTPUT,
    DEFAULT_SECRETS,
    MARKER_VARIABLE,
    TIMEOUT_EXIT_CODE,
    CommandResult,
    ResourceSample,
    SandboxLifecycle,
    check_command,
    check_env,
    check_max_output,
    check_timeout,
    decode_head,
    refuse_secrets,
    relative_path,
)
from labkit.sandbox.caps import (
    CgroupSet,
    check_caps,
    create_cgroups,
    pid_alive,
    remove_cgroups,
    sweep_cgroups,
)
from labkit.sandbox.group import GroupBoundary, marked_processes
from labkit.sandbox.safefs import read_below, write_below
from labkit.sandbox.supervision import CommandExit, Supervisor, supervisor_missing

__all__ = ("LocalSandbox",)

_MB = float(2**20)
_OWNED_DIR = re.compile(r"^labkit-local-[0-9a-f]{8}-p(\d+)-")
_BOUNDARIES = ("auto", "supervisor", "group")

Boundary = Supervisor | GroupBoundary
"""What runs a sandbox's commands and kills their processes."""


class LocalSandbox(SandboxLifecycle):
    """A sandbox made of local subprocesses, the embedded default.

    Usable alone (``sb = LocalSandbox(); await sb.run("echo hi"); await sb.close()``
    or ``async with LocalSandbox() as sb:``) and as a :class:`labkit.SandboxPool`
    factory (``SandboxPool(LocalSandbox, max_size=4)``, or with caps
    ``SandboxPool(functools.partial(LocalSandbox, memory_mb=256, cpus=0.5), ...)``).
    It starts on first use: the first ``run``, file call or ``start()`` creates its
    directory and its supervisor process. A start also removes the directories
    and cgroups that sandboxes of a killed labkit process left behind (their names
    carry the owner's pid).

    Commands see a clean environment: ``PATH`` and ``LANG`` from this process,
    ``HOME`` and ``TMPDIR`` set to the sandbox's directory, ``LABKIT_SANDBOX`` set to
    its id, then the ``env`` given here, then the ``env`` given to ``run`` (later ones
    win, except ``LABKIT_SANDBOX``). Nothing else of this process's environment is
    passed, so its secrets never are. Passing a secret explicitly, that is a name in
    ``secrets`` or ``E2B_API_KEY``, is refused with :class:`~labkit.errors.ConfigError`
    rather than silently dropped: a command that expects a variable should fail
    loudly, not run without it.

    On Linux (the supervisor boundary) no process a command starts outlives its
    timeout, ``close()`` or the labkit process. Elsewhere (the group boundary) the
    command's process group, the descendants seen while it ran and the processes
    carrying ``LABKIT_SANDBOX`` die then; a daemon that left the tree unseen and
    dropped the marker escapes, and so does everything at a SIGKILL of the labkit
    process (see :mod:`labkit.sandbox.group`). Files and environment behave the
    same on both.

    Args:
        env: Variables for every command (``{"CUDA_VISIBLE_DEVICES": "0"}``).
        secrets: Names of variables that must never reach a command, on top of
            ``E2B_API_KEY``.
        parent_dir: Where the private directory is created; the system's temporary
            directory by default.
        memory_mb: Memory cap for the sandbox's processes together, in MB (2**20
            bytes); ``None``: no cap. With a writable cgroup v1 memory controller a
            command past it is killed and its result has ``killed_reason="memory"``;
            elsewhere each command's address space is capped (``RLIMIT_AS``), so its
            allocations fail instead (see :mod:`labkit.sandbox.caps`).
        cpus: CPU cap in cores (``0.5``: half of one core), enforced by the cgroup
            CPU quota; ``None``: no cap. Without a writable cgroup ``cpu``
            controller (macOS has none), starting the sandbox raises
            :class:`~labkit.errors.SandboxError`.
        boundary: What holds the commands' processes: ``"auto"`` (the supervisor
            where this system has what it needs, else the process group),
            ``"supervisor"`` (Linux only: elsewhere ``start()`` raises
            :class:`~labkit.errors.SandboxStartError` naming what is missing) or
            ``"group"`` (any POSIX system; best effort, as above).
        max_output: Bytes of each command's stdout, and of its stderr, kept in
            its result (16 MiB by default); the rest is dropped, the result says
            ``truncated``, and labkit's process never holds more than that,
            whatever a command prints (the output passes through an unnamed
            temporary file on this machine's disk). ``run(max_output=...)``
            overrides it for one command.

    Raises:
        ConfigError: ``env`` holds a secret, a NUL byte or a value that is not a
            ``str``, a cap is not a positive number, ``max_output`` is not an int
            >= 1, or ``boundary`` is not one of the three.
    """

    __slots__ = (
        "__weakref__",
        "_boundary",
        "_caps",
        "_closed",
        "_env",
        "_finalizer",
        "_id",
        "_max_output",
        "_parent_dir",
        "_procs",
        "_root",
        "_root_fd",
        "_secrets",
        "_start_lock",
        "_supervisor",
    )

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
        parent_dir: str | os.PathLike[str] | None = None,
        memory_mb: float | None = None,
        cpus: float | None = None,
        boundary: str = "auto",
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> None:
        if not isinstance(boundary, str) or boundary not in _BOUNDARIES:
            raise ConfigError("boundary", boundary, '"auto", "supervisor" or "group"')
        if boundary == "auto":
            boundary = "group" if supervisor_missing() else "supervisor"
        self._boundary = boundary
        self._id = f"local-{uuid.uuid4().hex[:8]}"
        self._secrets = DEFAULT_SECRETS | frozenset(secrets)
        check_env("env", env)
        check_max_output(max_output, allow_none=False)
        self._max_output = int(max_output)
        self._env = dict(env or {})
        refuse_secrets("env", self._env, self._secrets)
        check_caps(memory_mb, cpus)
        self._caps = (memory_mb, cpus)
        self._parent_dir = None if parent_dir is None else os.fspath(parent_dir)
        self._root: Path | None = None
        self._root_fd = -1
        self._closed = False
        self._supervisor: Boundary | None = None
        self._start_lock: asyncio.Lock | None = None
        # psutil handles kept between metrics() calls: cpu_percent() measures the
        # interval since the same handle's previous call.
        self._procs: dict[int, psutil.Process] = {}
        self._finalizer: weakref.finalize[..., LocalSandbox] | None = None

    # -- identity and state ---------------------------------------------------------

    @property
    def id(self) -> str:
        """A short name, ``local-`` and 8 hex digits."""
        return self._id

    @property
    def path(self) -> Path | None:
        """The private directory (``HOME`` and working directory); ``None`` before start."""
        return self._root

    @property
    def boundary(self) -> str:
        """``"supervisor"`` or ``"group"``: what holds its processes (``"auto"`` resolved)."""
        return self._boundary

    @property
    def memory_mb(self) -> float | None:
        """The memory cap in MB, or ``None``."""
        return self._caps[0]

    @property
    def cpus(self) -> float | None:
        """The CPU cap in cores, or ``None``."""
        return self._caps[1]

    @property
    def healthy(self) -> bool:
        """``False`` once closed, or when its directory or its supervisor is gone."""
        if self._closed:
            return False
        if self._supervisor is None:
            return True
        return self._supervisor.alive and self._root is not None and self._root.is_dir()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "new" if self._root is None else "started"
        return f"LocalSandbox(id={self._id!r}, path={self._root!r}, state={state!r})"

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Create the private directory, its cgroups and the supervisor now (idempotent).

        Raises:
            SandboxClosed: The sandbox was closed.
            SandboxStartError: The directory or the supervisor could not be created.
            SandboxError: ``cpus`` is set and this machine has no writable cgroup
                ``cpu`` controller (the message names what is missing).
        """
        await self._started()

    async def _started(self) -> Boundary:
        if self._closed:
            raise SandboxClosed(f"{self._id} is closed")
        if self._supervisor is not None:
            return self._supervisor
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            supervisor = self._supervisor or await self._create()
        if self._closed:
            raise SandboxClosed(f"{self._id} is closed")
        return supervisor

    async def _create(self) -> Boundary:
        parent = self._parent_dir or tempfile.gettempdir()
        sweep_leftovers(parent)
        try:
            root = _make_dir(parent, f"labkit-{self._id}-p{os.getpid()}-")
        except OSError as exc:
            raise SandboxStartError(f"cannot create a directory for {self._id}: {exc}") from exc
        cgroups = CgroupSet()
        supervisor: Boundary | None = None
        try:
            self._root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
            memory_mb, cpus = self._caps
            if memory_mb is not None or cpus is not None:
                cgroups = create_cgroups(f"labkit-{self._id}-p{os.getpid()}", memory_mb, cpus)
            if self._boundary == "group":
                supervisor = GroupBoundary(root, cgroups, self._id)
            else:
                supervisor = Supervisor(root, cgroups)
            await supervisor.ready()
        except BaseException:
            if supervisor is not None:
                supervisor.shutdown()
            _cleanup(self._id, root, self._root_fd, None, cgroups.paths)
            self._root_fd = -1
            raise
        self._root = root
        self._supervisor = supervisor
        self._finalizer = weakref.finalize(
            self, _cleanup, self._id, root, self._root_fd, supervisor, cgroups.paths
        )
        if isinstance(supervisor, GroupBoundary):
            supervisor.on_signal = self._finalizer  # SIGTERM/SIGHUP: a whole close()
        return supervisor

    async def reset(self) -> None:
        """Kill every process the sandbox started and empty its directory.

        Raises:
            SandboxClosed: The sandbox was closed.
            SandboxError: The processes could not be killed (the supervisor is gone)
                or the directory could not be emptied.
        """
        supervisor = await self._started()
        await supervisor.kill_all()
        self._procs.clear()
        root = self._root
        assert root is not None  # set with the supervisor
        try:
            if not root.is_dir():
                raise SandboxError(f"{self._id}'s directory {root} has disappeared")
            if _has_entries(root):
                await asyncio.to_thread(_empty_dir, root)
        except OSError as exc:
            raise SandboxError(f"cannot clean {self._id}'s directory {root}: {exc}") from exc

    async def close(self) -> None:
        """Kill everything the sandbox started, detached daemons too, and remove its
        directory and cgroups. Idempotent; never awaits, so a cancellation cannot
        interrupt it (it blocks for the milliseconds the supervisor needs).

        With the group boundary, "everything" is what it can find: the commands'
        process groups, the descendants seen while they ran and the processes
        carrying ``LABKIT_SANDBOX`` (see :mod:`labkit.sandbox.group`)."""
        if self._closed:
            return
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()

    # -- commands -------------------------------------------------------------------

    async def run(
        self,
        cmd: str,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        max_output: int | None = None,
    ) -> CommandResult:
        """Run ``cmd`` with ``/bin/sh`` in the sandbox's directory, in a new session.

        Output goes to unnamed temporary files rather than pipes, so a background
        process that keeps stdout open (``sleep 60 &``) does not hold the result
        back; it keeps running, inside the sandbox, until ``reset()`` or ``close()``.

        Args:
            cmd: The command line.
            timeout: Seconds before the command and every process it started, even
                those that left its session, are killed (SIGKILL); the result then
                has ``timed_out=True``, exit code 124 and ``killed_reason="timeout"``.
                ``None`` means no limit. With the group boundary: its process group,
                the descendants seen while it ran and the marked processes started
                since it began.
            env: Variables added to the clean environment for this command.
            max_output: Bytes of stdout, and of stderr, kept in the result (the
                first ones); the rest is dropped and the result is ``truncated``.
                ``None``: the sandbox's ``max_output`` (16 MiB by default).

        Returns:
            The command's result; a non-zero exit is a result, not an exception.
            ``killed_reason`` is ``"memory"`` when a process of the sandbox was
            killed for going past ``memory_mb`` while the command ran, and
            ``"closed"`` when ``close()`` killed it.

        Raises:
            ConfigError: ``cmd`` is not a ``str`` or holds a NUL byte, ``timeout``
                is not a positive number, ``env`` holds a secret, a NUL byte or a
                value that is not a ``str``, or ``max_output`` is not an int >= 1.
            SandboxClosed: The sandbox was closed.
            SandboxError: The supervisor is gone.
            asyncio.CancelledError: The caller was cancelled; the command's process
                tree has been killed.
        """
        check_command(cmd)
        check_env("env", env)
        check_timeout(timeout)
        check_max_output(max_output, allow_none=True)
        limit = self._max_output if max_output is None else int(max_output)
        if env:
            refuse_secrets("env", env, self._secrets)
        supervisor = await self._started()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            started = time.perf_counter()
            ident = supervisor.submit(cmd, self._command_env(env), out.fileno(), err.fileno())
            outcome, timed_out = await _wait(supervisor, ident, timeout)
            duration = time.perf_counter() - started
            (stdout, cut_out), (stderr, cut_err) = _read_head(out, limit), _read_head(err, limit)
        if timed_out:
            reason: str | None = "timeout"
        elif self._closed:
            reason = "closed"
        else:
            reason = "memory" if outcome.oom else None
        code = TIMEOUT_EXIT_CODE if timed_out else outcome.exit_code
        return CommandResult(code, stdout, stderr, duration, timed_out, reason, cut_out or cut_err)

    def _command_env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        """A command's whole environment: a clean one, the sandbox's, ``env``, the marker."""
        root = str(self._root)
        return {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": root,
            "TMPDIR": root,
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            **self._env,
            **(env or {}),
            MARKER_VARIABLE: self._id,
        }

    # -- files ----------------------------------------------------------------------

    async def write_file(self, path: str, data: str | bytes) -> None:
        """Write ``data`` to ``path`` inside the sandbox, creating parent directories.

        The path is resolved from the sandbox directory's file descriptor and no
        symbolic link is followed on any component, so a command swapping a
        directory for a link while this runs cannot redirect it; the data goes to a
        new file renamed into place, so a hard link to a file outside is replaced
        rather than written through.

        Args:
            path: A path relative to the sandbox's directory.
            data: Bytes, or text to encode as UTF-8.

        Raises:
            SandboxPathError: ``path`` is absolute, has ``..``, or goes through a
                symbolic link.
            SandboxClosed: The sandbox was closed.
            OSError: The file cannot be written.
        """
        rel = relative_path(path)
        await self._started()
        payload = data.encode() if isinstance(data, str) else bytes(data)
        await asyncio.to_thread(write_below, self._root_fd, rel, payload)

    async def read_file(self, path: str) -> bytes:
        """The content of the regular file ``path`` inside the sandbox, as bytes.

        Raises:
            SandboxPathError: ``path`` would leave the sandbox, goes through a
                symbolic link, or is not a regular file (see :meth:`write_file`).
            SandboxClosed: The sandbox was closed.
            FileNotFoundError: There is no such file.
        """
        rel = relative_path(path)
        await self._started()
        return await asyncio.to_thread(read_below, self._root_fd, rel)

    # -- processes and metrics ------------------------------------------------------

    async def metrics(self) -> ResourceSample:
        """CPU and memory of every live process the sandbox started.

        That is every process below the sandbox's supervisor (background and
        detached ones included), not the supervisor's own bookkeeping processes;
        with the group boundary, the running commands' trees, the members of their
        process groups and the processes seen in them before.
        Under caps the figures stay within them: ``memory`` below ``memory_mb``
        (the kernel kills past it) and ``cpu`` near ``cpus * 100`` at most. A
        process's CPU use is measured since the previous ``metrics()`` call that
        saw it, so a process seen for the first time reads 0 %: sample regularly
        (the experiment sampler does) rather than once. Processes that vanish
        mid-sample are skipped.

        Returns:
            A sample stamped with the current Unix time; zeros when nothing runs.

        Raises:
            SandboxClosed: The sandbox was closed.
        """
        if self._closed:
            raise SandboxClosed(f"{self._id} is closed")
        cpu = 0.0
        rss = 0
        for proc in self._members():
            try:
                with proc.oneshot():
                    cpu += proc.cpu_percent(None)
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue
        return ResourceSample(
            time=time.time(),
            cpu=cpu,
            memory=rss / _MB,
            memory_percent=100.0 * rss / _total_memory(),
        )

    def _members(self) -> list[psutil.Process]:
        supervisor = self._supervisor
        if supervisor is None or not supervisor.alive:
            self._procs.clear()
            return []
        if isinstance(supervisor, GroupBoundary):
            below = supervisor.members()
        else:
            try:
                below = psutil.Process(supervisor.pid).children(recursive=True)
            except psutil.Error:
                below = []
            below = [proc for proc in below if not _is_reaper(proc, supervisor)]
        found: dict[int, psutil.Process] = {}
        for proc in below:
            known = self._procs.get(proc.pid)
            # A kept handle only if it is the same process (psutil compares start times).
            found[proc.pid] = known if known is not None and known == proc else proc
        self._procs = found
        return list(found.values())


# -- helpers (module level, so the finalizer holds no reference to the sandbox) -----


def _is_reaper(proc: psutil.Process, supervisor: Supervisor) -> bool:
    """A per-command reaper: a child of the supervisor with its command line (a fork)."""
    try:
        return proc.ppid() == supervisor.pid and proc.cmdline() == supervisor.argv
    except psutil.Error:
        return True  # gone: nothing to count


def _cleanup(
    sandbox_id: str,
    root: Path,
    root_fd: int,
    supervisor: Boundary | None,
    cgroups: tuple[str, ...],
) -> None:
    """Stop the supervisor (killing everything below it), then remove what is left.

    Also run at garbage collection and at interpreter exit.
    """
    escaped = isinstance(supervisor, Supervisor) and not supervisor.alive
    if supervisor is not None:
        supervisor.shutdown()
    if escaped:
        # The supervisor died before us (a command killed it): its orphans were
        # re-parented to init, so fall back to the marker they may still carry.
        for proc in marked_processes(sandbox_id):
            with contextlib.suppress(psutil.Error):
                proc.kill()
    remove_cgroups(cgroups)
    if root_fd >= 0:
        with contextlib.suppress(OSError):
            os.close(root_fd)
    with contextlib.suppress(OSError):
        _remove_tree(root)


def sweep_leftovers(parent: str) -> None:
    """Remove sandbox directories (and cgroups) whose owning labkit process is dead.

    A labkit process killed together with its supervisors (``kill -9`` of a whole
    process group, a machine reset) leaves ``labkit-local-<id>-p<pid>-*``
    directories behind; the next sandbox start in any process removes them.
    """
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        match = _OWNED_DIR.match(name)
        if match and not pid_alive(int(match[1])):
            with contextlib.suppress(OSError):
                _remove_tree(Path(parent, name))
    sweep_cgroups()


def _make_dir(parent: str, prefix: str) -> Path:
    # Resolved once, so symlinked temp dirs (macOS /tmp) compare correctly.
    return Path(os.path.realpath(tempfile.mkdtemp(prefix=prefix, dir=parent)))


def _remove_tree(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError:
        # A command may have made directories read-only; give them back and retry.
        _make_writable(path)
        shutil.rmtree(path)


def _has_entries(root: Path) -> bool:
    with os.scandir(root) as entries:
        return next(entries, None) is not None


def _empty_dir(root: Path) -> None:
    with os.scandir(root) as scan:
        entries = list(scan)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            _remove_tree(Path(entry.path))
        else:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass
            except PermissionError:
                _make_writable(root)
                os.unlink(entry.path)


def _make_writable(path: Path) -> None:
    for dirpath, _dirnames, _files in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)


def _read_head(file: IO[bytes], limit: int) -> tuple[str, bool]:
    """The first ``limit`` bytes of an output file as text, and whether it holds more."""
    file.seek(0)
    data = file.read(limit)
    truncated = os.fstat(file.fileno()).st_size > len(data)
    return decode_head(data, truncated), truncated


@functools.cache
def _total_memory() -> int:
    return psutil.virtual_memory().total


async def _wait(
    supervisor: Boundary, ident: int, timeout: float | None
) -> tuple[CommandExit, bool]:
    """The outcome of the supervisor's command ``ident``, and whether it timed out (it is
    then killed, and its outcome awaited).

    Raises:
        asyncio.CancelledError: The caller was cancelled; the command was killed first.
    """
    try:
        async with asyncio.timeout(timeout):
            return await supervisor.result(ident), False
    except TimeoutError:
        supervisor.kill(ident)
        return await supervisor.result(ident), True
    except BaseException:
        # Cancelled (or worse): kill now, before anything else can interrupt
        # us, so no orphan survives the caller.
        supervisor.forget(ident)
        raise
