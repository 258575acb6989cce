"""The process-group boundary of a LocalSandbox, for systems without the supervisor.

Where :mod:`labkit.sandbox.supervision` cannot run (macOS and other systems
without ``/proc`` and ``SOCK_SEQPACKET`` sockets), a sandbox's commands are plain
children of the labkit process, each ``/bin/sh -c CMD`` in a new session (and so
a new process group). :class:`GroupBoundary` then finds what a command started
in three ways, none of which needs Linux:

1. its process group, killed with ``killpg`` (background jobs such as
   ``sleep 60 &`` stay in it);
2. snapshots of the shell's descendants (``psutil`` ``children(recursive=True)``)
   taken while the command runs, first after 10 ms and then at doubling
   intervals up to every 0.5 s, and kept after the shell exits, so a child that
   moved to a session of its own (``setsid``) but was seen once is still killed;
3. every process whose environment carries ``LABKIT_SANDBOX=<sandbox id>``.

At a command's timeout (and when its caller is cancelled) its group, its
snapshots and the marked processes started since it began (other commands'
groups and snapshots spared) are killed; at
``reset()`` and ``close()`` everything the sandbox's commands ever started that
any of the three finds. The labkit process's exit runs ``close()`` (the
sandbox's finalizer is an ``atexit`` hook), and so does SIGTERM or SIGHUP while
their handlers are the default ones: labkit then installs a handler that closes
every live group boundary's processes and directory and re-raises the signal.

What is *not* guaranteed: a daemon that leaves the command's tree before a
snapshot sees it (``setsid`` from a short-lived subshell) and drops the marker
(``env -u LABKIT_SANDBOX``) escapes, and so does everything when the labkit
process is killed with SIGKILL or a signal whose handler the program replaced.
Their sandbox directories are removed by the next sandbox start (they carry the
owner's pid); the processes are not. A sandbox with caps whose cgroups could be
made (Linux with writable cgroup v1 controllers) also has every process it started
in them, and ``close()`` empties them, which catches such escapes; without cgroups
(macOS) nothing does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import resource
import shutil
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import psutil

from labkit.errors import SandboxError, SandboxStartError
from labkit.sandbox._supervisor import oom_kills
from labkit.sandbox.base import MARKER_VARIABLE
from labkit.sandbox.caps import CgroupSet
from labkit.sandbox.supervision import CommandExit

__all__ = ("GroupBoundary", "marked_processes")

_FIRST_SNAPSHOT = 0.01  # seconds after the start, doubling up to _SNAPSHOT_EVERY
_SNAPSHOT_EVERY = 0.5
_SIGNALS = ("SIGTERM", "SIGHUP")
_LIVE: weakref.WeakSet[GroupBoundary] = weakref.WeakSet()
_HANDLED: set[int] = set()


class _Command:
    __slots__ = ("killed", "pid", "seen", "task")

    task: asyncio.Task[CommandExit]  # set right after creation

    def __init__(self) -> None:
        self.pid = 0  # the shell, once spawned
        self.killed = False
        self.seen: dict[int, psutil.Process] = {}


class GroupBoundary:
    """The processes of one sandbox's commands, as process groups swept with psutil.

    It has the interface LocalSandbox uses of a
    :class:`~labkit.sandbox.supervision.Supervisor` (``submit``, ``result``,
    ``kill``, ``forget``, ``kill_all``, ``shutdown``, ``alive``).

    Args:
        root: The sandbox directory (commands run there; removed on SIGTERM/SIGHUP).
        cgroups: The caps' cgroups (each shell joins them) and ``RLIMIT_AS``.
        marker: The sandbox's id, the value of ``LABKIT_SANDBOX`` in its commands.

    Raises:
        SandboxStartError: ``RLIMIT_AS`` is asked for above this process's hard limit.
    """

    __slots__ = (
        "__weakref__",
        "_commands",
        "_dirty",
        "_groups",
        "_ids",
        "_seen",
        "_spawn",
        "broken",
        "on_signal",
    )

    def __init__(self, root: Path, cgroups: CgroupSet, marker: str) -> None:
        self._spawn = _Spawn(root, cgroups, marker)
        self._ids = itertools.count(1)
        self._commands: dict[int, _Command] = {}
        # Processes seen in snapshots of commands that have ended (background jobs,
        # daemons), kept until killed.
        self._seen: dict[int, psutil.Process] = {}
        self._groups: set[int] = set()  # process groups of commands, while they may exist
        self._dirty = False  # something may be running: kill_all has work to do
        self.broken = False
        """``True`` once shut down."""
        self.on_signal: Callable[[], object] | None = None
        """What SIGTERM/SIGHUP run for this sandbox (LocalSandbox sets its close);
        ``None``: kill its processes and remove its directory."""

    @property
    def alive(self) -> bool:
        return not self.broken

    async def ready(self) -> None:
        """Register for cleanup when the labkit process gets SIGTERM or SIGHUP."""
        _LIVE.add(self)
        _handle_signals()

    def submit(self, cmd: str, env: dict[str, str], out: int, err: int) -> int:
        """Start ``cmd`` (on the next turn of the loop); returns its id for :meth:`result`.

        ``out`` and ``err`` must stay open until the result has arrived.

        Raises:
            SandboxError: The boundary was shut down.
        """
        if self.broken:
            raise SandboxError("the sandbox's processes were shut down")
        ident = next(self._ids)
        command = _Command()
        self._commands[ident] = command
        self._dirty = True
        command.task = asyncio.get_running_loop().create_task(
            self._watch(command, cmd, env, out, err)
        )
        return ident

    async def result(self, ident: int) -> CommandExit:
        """Wait for command ``ident``'s shell to exit.

        Raises:
            SandboxError: The shell could not be started (a cap could not be applied).
        """
        command = self._commands[ident]
        # Shielded: a timeout around this wait must not cancel the command's watcher.
        try:
            return await asyncio.shield(command.task)
        finally:
            if command.task.done():
                self._retire(ident)

    def kill(self, ident: int) -> None:
        """Kill command ``ident``'s group and snapshots, and the marked processes it
        may have started; its result still arrives."""
        command = self._commands.get(ident)
        if command is None:
            return
        command.killed = True
        if not command.pid:
            return  # not started yet: its watcher kills it as soon as it is
        self._snapshot(command)
        _killpg(command.pid)
        try:
            # The clock of other processes' create_time, which is what is compared.
            since = command.seen[command.pid].create_time()
        except (KeyError, psutil.Error):
            since = time.time() - 1.0
        # What earlier or concurrent commands started is theirs, not this one's.
        spare = set(self._seen) | set(self._in_groups(exclude=command.pid))
        for other_ident, other in self._commands.items():
            if other_ident != ident:
                spare.update(other.seen)
        victims = list(command.seen.values())
        victims += [
            proc
            for proc in marked_processes(self._spawn.marker, since=since)
            if proc.pid not in spare
        ]
        _kill(victims)

    def forget(self, ident: int) -> None:
        """Kill command ``ident`` and drop its result (its caller was cancelled)."""
        self.kill(ident)
        command = self._commands.get(ident)
        if command is not None:
            # Not cancelled: the watcher kills a shell it has yet to start at once.
            command.task.add_done_callback(lambda task: self._drop(ident, task))

    async def kill_all(self) -> None:
        """Kill every process the sandbox's commands started that can be found."""
        if not self._dirty:
            return
        self._kill_everything()
        # SIGKILL lands asynchronously: wait (briefly) until the victims are gone.
        victims = list(self._seen.values())
        for _ in range(200):
            if not any(_running(proc) for proc in victims):
                break
            await asyncio.sleep(0.005)
        self._seen = {pid: proc for pid, proc in self._seen.items() if _running(proc)}
        self._in_groups()  # forgets the groups that are empty now
        self._dirty = bool(self._seen or self._live_commands())

    def shutdown(self) -> None:
        """Kill everything that can be found and stop (non-blocking, idempotent)."""
        if self.broken:
            return
        self.broken = True
        _LIVE.discard(self)
        self._kill_everything()  # a shell about to start is killed by its watcher

    def members(self) -> list[psutil.Process]:
        """Live processes of the sandbox: its running shells' trees, the members of its
        commands' process groups, and those seen before (not a marker scan)."""
        self._seen.update(self._in_groups())
        found = dict(self._seen)
        for command in self._commands.values():
            if command.pid:
                self._snapshot(command)
                found.update(command.seen)
        return [proc for proc in found.values() if _running(proc)]

    # -- internals ------------------------------------------------------------------

    def _live_commands(self) -> list[_Command]:
        return [c for c in self._commands.values() if not c.task.done()]

    def _drop(self, ident: int, task: asyncio.Task[CommandExit]) -> None:
        """A forgotten command's end: retrieve its outcome (no one will) and retire it."""
        if not task.cancelled():
            task.exception()
        self._retire(ident)

    def _retire(self, ident: int) -> None:
        command = self._commands.pop(ident, None)
        if command is not None:
            self._seen.update((pid, p) for pid, p in command.seen.items() if _running(p))

    async def _watch(
        self, command: _Command, cmd: str, env: dict[str, str], out: int, err: int
    ) -> CommandExit:
        before = oom_kills(self._spawn.cgroups.oom_file)
        proc = await self._spawn.start(cmd, env, out, err)
        command.pid = proc.pid
        self._groups.add(proc.pid)
        with contextlib.suppress(psutil.Error):
            shell = psutil.Process(proc.pid)
            command.seen[shell.pid] = shell
        if command.killed or self.broken:
            _killpg(proc.pid)
        wait = asyncio.ensure_future(proc.wait())
        interval = _FIRST_SNAPSHOT
        try:
            while not wait.done():
                await asyncio.wait((wait,), timeout=interval)
                self._snapshot(command)
                interval = min(interval * 2, _SNAPSHOT_EVERY)
        except asyncio.CancelledError:  # its loop is winding down: the command goes too
            _killpg(proc.pid)
            wait.cancel()
            raise
        code = wait.result()
        with contextlib.suppress(PermissionError):
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:  # nothing left in it: its id may be reused now
                self._groups.discard(proc.pid)
        status = -code if code < 0 else code << 8  # a raw wait status, as the supervisor's
        return CommandExit(status, oom_kills(self._spawn.cgroups.oom_file) > before)

    def _snapshot(self, command: _Command) -> None:
        """Add the shell's current descendants to what the command is known to have run."""
        shell = command.seen.get(command.pid)
        if shell is None:
            return
        with contextlib.suppress(psutil.Error):
            for proc in shell.children(recursive=True):
                command.seen.setdefault(proc.pid, proc)

    def _in_groups(self, exclude: int = 0) -> dict[int, psutil.Process]:
        """Processes in the commands' process groups but ``exclude`` (they share them
        unless they called ``setsid``); groups found empty are forgotten."""
        for pgid in list(self._groups):
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                self._groups.discard(pgid)
            except PermissionError:
                pass
        found: dict[int, psutil.Process] = {}
        groups = self._groups - {exclude}
        if not groups:
            return found
        for pid in psutil.pids():
            try:
                if os.getpgid(pid) in groups:
                    found[pid] = psutil.Process(pid)
            except (OSError, psutil.Error):
                continue
        return found

    def _kill_everything(self) -> None:
        for command in self._commands.values():
            if command.pid:
                self._snapshot(command)
                self._seen.update(command.seen)
        self._seen.update(self._in_groups())
        for pgid in self._groups:
            _killpg(pgid)
        _kill([*self._seen.values(), *marked_processes(self._spawn.marker)])

    def _remove_directory(self) -> None:
        shutil.rmtree(self._spawn.root, ignore_errors=True)


class _Spawn:
    """How a shell is started: directory, marker, and the caps applied before exec."""

    __slots__ = ("cgroups", "confine", "marker", "root")

    def __init__(self, root: Path, cgroups: CgroupSet, marker: str) -> None:
        self.root = root
        self.cgroups = cgroups
        self.marker = marker
        limit = cgroups.rlimit_as
        if limit is not None:
            _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            if hard != resource.RLIM_INFINITY and hard < limit:
                raise SandboxStartError(
                    f"memory_mb needs RLIMIT_AS={limit} bytes here, above this process's "
                    f"hard limit of {hard} bytes"
                )
        self.confine: Callable[[], None] | None = None
        if cgroups.paths or limit is not None:
            self.confine = _confiner(cgroups.paths, limit)

    async def start(
        self, cmd: str, env: dict[str, str], out: int, err: int
    ) -> asyncio.subprocess.Process:
        try:
            return await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.root,
                env=env,
                start_new_session=True,
                preexec_fn=self.confine,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxError(f"cannot start the command in {self.root}: {exc}") from exc


def _confiner(paths: tuple[str, ...], limit: int | None) -> Callable[[], None]:
    """The function a shell runs between fork and exec: join ``paths``, cap memory."""

    def confine() -> None:
        pid = str(os.getpid())
        for group in paths:
            with open(os.path.join(group, "cgroup.procs"), "w") as file:
                file.write(pid)
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return confine


def marked_processes(marker: str, *, since: float = 0.0) -> list[psutil.Process]:
    """Processes (not this one) whose environment has ``LABKIT_SANDBOX=marker``.

    Args:
        marker: The sandbox's id.
        since: Only processes created at or after this Unix time.

    Processes whose environment cannot be read (another user's) are skipped.
    """
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["create_time"]):
        if proc.pid == me or (proc.info["create_time"] or 0.0) < since:
            continue
        try:
            if proc.environ().get(MARKER_VARIABLE) == marker:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill(procs: list[psutil.Process]) -> None:
    for proc in procs:
        # psutil refuses to signal a pid that now belongs to another process.
        with contextlib.suppress(psutil.Error):
            proc.kill()


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _handle_signals() -> None:
    """Install the SIGTERM/SIGHUP cleanup where the handler is still the default.

    Only the main thread can set handlers; a program's own handler is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for name in _SIGNALS:
        signum = int(getattr(signal, name))
        if signum in _HANDLED or signal.getsignal(signum) is not signal.SIG_DFL:
            continue
        signal.signal(signum, _on_signal)
        _HANDLED.add(signum)


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    """Kill every live group boundary's processes, remove their directories, then die
    of ``signum`` as the default handler would have."""
    for boundary in list(_LIVE):
        with contextlib.suppress(Exception):
            if boundary.on_signal is not None:
                boundary.on_signal()
            else:
                boundary.shutdown()
                boundary._remove_directory()
    signal.signal(signum, signal.SIG_DFL)
    _HANDLED.discard(signum)
    os.kill(os.getpid(), signum)
