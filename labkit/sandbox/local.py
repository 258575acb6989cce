"""LocalSandbox: shell commands in a private temporary directory on this machine.

Each command runs in its own session (so its own process group) with a clean
environment. A timeout, a cancelled ``run``, ``reset()`` and ``close()`` kill whole
process trees: the group with ``os.killpg``, and with psutil the descendants that
left it. Every process also carries a ``LABKIT_SANDBOX=<id>`` variable, which lets
``close()`` find even daemons that detached themselves.

This is isolation for bookkeeping and cleanup, not security: the commands run as
the current user and can read anything that user can.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

import psutil

from labkit.errors import (
    SandboxClosed,
    SandboxError,
    SandboxPathError,
    SandboxStartError,
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

__all__ = ("LocalSandbox",)

_MB = float(2**20)


class LocalSandbox(SandboxLifecycle):
    """A sandbox made of local subprocesses, the embedded default.

    Usable alone (``sb = LocalSandbox(); await sb.run("echo hi"); await sb.close()``
    or ``async with LocalSandbox() as sb:``) and as a :class:`labkit.SandboxPool`
    factory (``SandboxPool(LocalSandbox, max_size=4)``). It starts on first use:
    the first ``run``, file call or ``start()`` creates its directory.

    Commands see a clean environment: ``PATH`` and ``LANG`` from this process,
    ``HOME`` and ``TMPDIR`` set to the sandbox's directory, ``LABKIT_SANDBOX`` set to
    its id, then the ``env`` given here, then the ``env`` given to ``run`` (later ones
    win, except ``LABKIT_SANDBOX``). Nothing else of this process's environment is
    passed, so its secrets never are. Passing a secret explicitly, that is a name in
    ``secrets`` or ``E2B_API_KEY``, is refused with :class:`~labkit.errors.ConfigError`
    rather than silently dropped: a command that expects a variable should fail
    loudly, not run without it.

    Args:
        env: Variables for every command (``{"CUDA_VISIBLE_DEVICES": "0"}``).
        secrets: Names of variables that must never reach a command, on top of
            ``E2B_API_KEY``.
        parent_dir: Where the private directory is created; the system's temporary
            directory by default.

    Raises:
        ConfigError: ``env`` holds a secret.
    """

    __slots__ = (
        "__weakref__",
        "_closed",
        "_env",
        "_finalizer",
        "_groups",
        "_id",
        "_parent_dir",
        "_procs",
        "_root",
        "_secrets",
    )

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
        parent_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._id = f"local-{uuid.uuid4().hex[:8]}"
        self._secrets = DEFAULT_SECRETS | frozenset(secrets)
        self._env = dict(env or {})
        refuse_secrets("env", self._env, self._secrets)
        self._parent_dir = None if parent_dir is None else os.fspath(parent_dir)
        self._root: Path | None = None
        self._closed = False
        # Process groups (= session ids: each command gets its own session) that
        # may still hold processes. Mutated in place only: the finalizer shares it.
        self._groups: set[int] = set()
        # psutil handles kept between metrics() calls: cpu_percent() measures the
        # interval since the same handle's previous call.
        self._procs: dict[int, psutil.Process] = {}
        self._finalizer: weakref.finalize[[Path, set[int]], LocalSandbox] | None = None

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
    def healthy(self) -> bool:
        """``False`` once closed or when its directory has disappeared."""
        if self._closed:
            return False
        return self._root is None or self._root.is_dir()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "new" if self._root is None else "started"
        return f"LocalSandbox(id={self._id!r}, path={self._root!r}, state={state!r})"

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Create the private directory now (idempotent).

        Raises:
            SandboxClosed: The sandbox was closed.
            SandboxStartError: The directory could not be created.
        """
        self._ensure_started()

    def _ensure_started(self) -> Path:
        if self._closed:
            raise SandboxClosed(f"{self._id} is closed")
        if self._root is None:
            try:
                made = tempfile.mkdtemp(prefix=f"labkit-{self._id}-", dir=self._parent_dir)
            except OSError as exc:
                raise SandboxStartError(f"cannot create a directory for {self._id}: {exc}") from exc
            # Resolved once, so symlinked temp dirs (macOS /tmp) compare correctly.
            self._root = Path(made).resolve()
            self._finalizer = weakref.finalize(self, _cleanup, self._root, self._groups)
        return self._root

    async def reset(self) -> None:
        """Kill every process the sandbox started and empty its directory.

        Raises:
            SandboxClosed: The sandbox was closed.
            SandboxError: The directory could not be emptied.
        """
        root = self._ensure_started()
        self._kill_all(sweep=False)
        try:
            if not root.is_dir():
                root.mkdir(mode=0o700)
            elif _has_entries(root):
                await asyncio.to_thread(_empty_dir, root)
        except OSError as exc:
            raise SandboxError(f"cannot clean {self._id}'s directory {root}: {exc}") from exc

    async def close(self) -> None:
        """Kill everything the sandbox started, detached daemons too, and remove its
        directory. Idempotent; never awaits, so a cancellation cannot interrupt it."""
        if self._closed:
            return
        self._closed = True
        if self._root is None:
            return
        self._kill_all(sweep=True)
        if self._finalizer is not None:
            self._finalizer()

    # -- commands -------------------------------------------------------------------

    async def run(
        self,
        cmd: str,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``cmd`` with ``/bin/sh`` in the sandbox's directory, in a new session.

        Output goes to unnamed temporary files rather than pipes, so a background
        process that keeps stdout open (``sleep 60 &``) does not hold the result
        back; it keeps running, inside the sandbox, until ``reset()`` or ``close()``.

        Args:
            cmd: The command line.
            timeout: Seconds before the command and every process it started are
                killed (SIGKILL); the result then has ``timed_out=True`` and exit code
                124. ``None`` means no limit.
            env: Variables added to the clean environment for this command.

        Returns:
            The command's result; a non-zero exit is a result, not an exception.

        Raises:
            ConfigError: ``timeout`` is not positive, or ``env`` holds a secret.
            SandboxClosed: The sandbox was closed.
            SandboxError: The shell could not be started.
            asyncio.CancelledError: The caller was cancelled; the command's process
                tree has been killed.
        """
        check_timeout(timeout)
        if env:
            refuse_secrets("env", env, self._secrets)
        root = self._ensure_started()
        command_env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(root),
            "TMPDIR": str(root),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            **self._env,
            **(env or {}),
            MARKER_VARIABLE: self._id,
        }
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            started = time.perf_counter()
            try:
                proc = await asyncio.create_subprocess_shell(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=root,
                    env=command_env,
                    start_new_session=True,
                )
            except OSError as exc:
                raise SandboxError(f"{self._id} cannot start a shell: {exc}") from exc
            self._groups.add(proc.pid)
            timed_out = False
            try:
                async with asyncio.timeout(timeout):
                    await proc.wait()
            except TimeoutError:
                timed_out = True
                _kill_tree(proc.pid)
                await proc.wait()
            except BaseException:
                # Cancelled (or worse): kill synchronously, before anything else can
                # interrupt us, so no orphan survives the caller.
                _kill_tree(proc.pid)
                raise
            duration = time.perf_counter() - started
            if not _group_exists(proc.pid):
                self._groups.discard(proc.pid)
            stdout, stderr = _read_all(out), _read_all(err)
        if timed_out:
            exit_code = TIMEOUT_EXIT_CODE
        else:
            code = proc.returncode
            assert code is not None  # wait() returned
            exit_code = 128 - code if code < 0 else code
        return CommandResult(exit_code, stdout, stderr, duration, timed_out)

    # -- files ----------------------------------------------------------------------

    async def write_file(self, path: str, data: str | bytes) -> None:
        """Write ``data`` to ``path`` inside the sandbox, creating parent directories.

        Args:
            path: A path relative to the sandbox's directory.
            data: Bytes, or text to encode as UTF-8.

        Raises:
            SandboxPathError: ``path`` is absolute, has ``..``, or a symbolic link on
                it leads out of the sandbox.
            SandboxClosed: The sandbox was closed.
            OSError: The file cannot be written.
        """
        target = self._inside(path)
        payload = data.encode() if isinstance(data, str) else bytes(data)
        await asyncio.to_thread(_write_nofollow, target, payload, self._root)

    async def read_file(self, path: str) -> bytes:
        """The content of ``path`` inside the sandbox, as bytes.

        Raises:
            SandboxPathError: ``path`` would leave the sandbox (see :meth:`write_file`).
            SandboxClosed: The sandbox was closed.
            FileNotFoundError: There is no such file.
        """
        target = self._inside(path)
        return await asyncio.to_thread(_read_nofollow, target)

    def _inside(self, path: str) -> Path:
        rel = relative_path(path)
        root = self._ensure_started()
        target = (root / rel).resolve()
        if not target.is_relative_to(root):
            raise SandboxPathError(
                f"path {path!r} leads out of the sandbox through a symbolic link (to {target})"
            )
        return target

    # -- processes and metrics ------------------------------------------------------

    async def metrics(self) -> ResourceSample:
        """CPU and memory of every live process the sandbox started.

        That is the processes of each command's session, background ones included,
        and their descendants, even those that left the session. A process's CPU use
        is measured since the previous ``metrics()`` call that saw it, so a process
        seen for the first time reads 0 %: sample regularly (the experiment sampler
        does) rather than once. Processes that vanish mid-sample are skipped.

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
        found: dict[int, psutil.Process] = {}
        for pid, proc in self._procs.items():
            if proc.is_running():  # also compares creation times: no reused pids
                found[pid] = proc
        self._groups.intersection_update([g for g in self._groups if _group_exists(g)])
        if self._groups:
            for proc in psutil.process_iter():
                if proc.pid in found:
                    continue
                try:
                    if os.getpgid(proc.pid) in self._groups:
                        found[proc.pid] = proc
                except OSError:
                    continue
        for proc in list(found.values()):
            try:
                children = proc.children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                found.setdefault(child.pid, child)
        self._procs = found
        return list(found.values())

    def _kill_all(self, *, sweep: bool) -> None:
        victims = self._members()
        for group in list(self._groups):
            _killpg(group)
        if sweep:
            victims.extend(_marked_processes(self._id))
        for proc in victims:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self._procs.clear()
        self._groups.clear()


# -- helpers (module level, so the finalizer holds no reference to the sandbox) -----


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _kill_tree(pgid: int) -> None:
    """SIGKILL the session ``pgid`` and every descendant of its leader."""
    try:
        leader = psutil.Process(pgid)
        victims = [leader, *leader.children(recursive=True)]
    except psutil.Error:
        victims = []
    _killpg(pgid)
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def _marked_processes(sandbox_id: str) -> list[psutil.Process]:
    found = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(MARKER_VARIABLE) == sandbox_id:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _cleanup(root: Path, groups: set[int]) -> None:
    """Last resort, also run at garbage collection and interpreter exit."""
    for group in list(groups):
        _killpg(group)
    groups.clear()
    with contextlib.suppress(OSError):
        _remove_tree(root)


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


def _read_all(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read().decode("utf-8", errors="replace")


def _write_nofollow(target: Path, payload: bytes, root: Path | None) -> None:
    # Parents were resolved inside the sandbox; O_NOFOLLOW refuses a symlink swapped
    # in for the last component since.
    if root is not None and target.parent != root:
        target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as file:
        file.write(payload)


def _read_nofollow(target: Path) -> bytes:
    fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as file:
        return file.read()


@functools.cache
def _total_memory() -> int:
    return psutil.virtual_memory().total
