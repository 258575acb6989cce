"""The labkit side of a LocalSandbox's supervisor process (see ``_supervisor.py``).

:class:`Supervisor` starts the supervisor, sends it commands over a
``SOCK_SEQPACKET`` socket and resolves one future per command when its shell
exits. It holds no reference to the sandbox, so the sandbox's finalizer can shut
it down.

What is guaranteed, per platform:

- Linux: every process a command starts, ``setsid`` and double-forked daemons
  included, stays below a subreaper (the command's reaper, or the supervisor) and
  dies at the command's timeout, at ``reset()``/``close()``, and when the labkit
  process dies by any signal (SIGTERM, SIGHUP, SIGKILL, Ctrl-C): the supervisor
  sees its socket close, or gets its parent-death signal, kills the whole tree and
  removes the sandbox's directory and cgroups. Only a command that kills its own
  supervisor (it runs as the same user) can leave processes behind; ``close()``
  then falls back to killing processes that still carry ``LABKIT_SANDBOX``.
- Linux without ``prctl`` subreapers (kernels before 3.4, some sandboxed
  runtimes): a daemon that double-forks is re-parented to init and escapes the
  tree; the rest holds.
- macOS and other systems: the supervisor needs ``/proc`` and ``AF_UNIX``
  ``SOCK_SEQPACKET`` sockets, which they lack (:func:`supervisor_missing` says
  which). ``LocalSandbox(boundary="auto")``, the default, then uses the weaker
  process-group boundary of :mod:`labkit.sandbox.group`; with
  ``boundary="supervisor"`` ``start()`` raises
  :class:`~labkit.errors.SandboxStartError` saying what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from labkit.errors import SandboxError, SandboxStartError
from labkit.sandbox.caps import CgroupSet

__all__ = ("CommandExit", "Supervisor", "supervisor_missing")

_SCRIPT = str(Path(__file__).with_name("_supervisor.py"))
_MAX_MESSAGE = 1 << 16


@functools.cache
def supervisor_missing() -> tuple[str, ...]:
    """What this system lacks for the supervisor, in words; empty where it can run.

    Checked once per process: ``/proc/self/task`` and a ``socketpair`` of
    ``AF_UNIX`` ``SOCK_SEQPACKET`` sockets (macOS has neither).
    """
    missing = [] if os.path.isdir("/proc/self/task") else ["/proc"]
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except (AttributeError, OSError) as exc:
        missing.append(f"AF_UNIX SOCK_SEQPACKET sockets ({exc})")
    else:
        ours.close()
        theirs.close()
    return tuple(missing)


class CommandExit:
    """How a command's shell ended: its raw wait status and whether memory killed it."""

    __slots__ = ("oom", "status")

    def __init__(self, status: int, oom: bool) -> None:
        self.status = status
        self.oom = oom

    @property
    def exit_code(self) -> int:
        """The shell's exit status, or ``128 + n`` when signal ``n`` ended it."""
        if os.WIFSIGNALED(self.status):
            return 128 + os.WTERMSIG(self.status)
        return os.WEXITSTATUS(self.status)


_KILLED = CommandExit(signal.SIGKILL, False)  # what a command killed by close() reports


class Supervisor:
    """A running supervisor for one sandbox directory.

    Args:
        root: The sandbox directory (commands run there; removed if labkit dies).
        cgroups: Where commands' shells go, and the memory cap without a cgroup.
    """

    __slots__ = (
        "_empty",
        "_ids",
        "_loop",
        "_pending",
        "_popen",
        "_sock",
        "_spare",
        "argv",
        "broken",
    )

    def __init__(self, root: Path, cgroups: CgroupSet) -> None:
        missing = [] if os.path.isdir("/proc/self/task") else ["/proc"]
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except (AttributeError, OSError) as exc:
            missing.append(f"AF_UNIX SOCK_SEQPACKET sockets ({exc})")
        else:
            if missing:
                ours.close()
                theirs.close()
        if missing:
            raise SandboxStartError(
                f"LocalSandbox's supervisor needs Linux; this system ({sys.platform}) "
                f"lacks {' and '.join(missing)}"
            )
        args = [sys.executable, "-I", "-S", _SCRIPT, "--fd", str(theirs.fileno())]
        args += ["--root", str(root)]
        for group in cgroups.paths:
            args += ["--cgroup", group]
        if cgroups.oom_file is not None:
            args += ["--oom-file", cgroups.oom_file]
        if cgroups.rlimit_as is not None:
            args += ["--rlimit-as", str(cgroups.rlimit_as)]
        try:
            self._popen = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # terminal signals (Ctrl-C) do not reach it
            )
        except OSError as exc:
            ours.close()
            raise SandboxStartError(f"cannot start the sandbox supervisor: {exc}") from exc
        finally:
            theirs.close()
        self._sock = ours
        self._ids = itertools.count(1)
        self._pending: dict[object, asyncio.Future[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # Children of the supervisor known to have nothing below them: the spare
        # reaper and reapers whose command tree is gone (they are about to exit).
        self._empty: set[int] = set()
        self._spare = 0  # the reaper the next command goes to
        self.argv = args
        """The supervisor's command line, which its reapers (forks of it) share."""
        self.broken = False
        """``True`` once the supervisor is gone."""

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def alive(self) -> bool:
        return not self.broken and self._popen.poll() is None

    async def ready(self) -> None:
        """Wait for the supervisor's hello.

        Raises:
            SandboxStartError: It exited instead.
        """
        try:
            await self._request("ready", None)
        except SandboxError as exc:
            self.shutdown()
            raise SandboxStartError(f"the sandbox supervisor did not start: {exc}") from exc

    async def run(self, cmd: str, env: dict[str, str], out: int, err: int) -> CommandExit:
        """Start ``cmd``; the result comes when its shell exits.

        The returned coroutine may be cancelled; call :meth:`kill` with the same
        command then (see :meth:`submit`).
        """
        ident = self.submit(cmd, env, out, err)
        return await self.result(ident)

    def submit(self, cmd: str, env: dict[str, str], out: int, err: int) -> int:
        """Send ``cmd`` to the supervisor; returns its id for :meth:`result`/:meth:`kill`.

        Raises:
            SandboxError: The supervisor is gone.
        """
        ident = next(self._ids)
        self._expect(ident)
        self._empty.discard(self._spare)  # busy from now on, before "started" says so
        message = {"op": "run", "id": ident, "cmd": cmd, "env": env}
        self._send(message, [out, err])
        return ident

    async def result(self, ident: int) -> CommandExit:
        """Wait for command ``ident``'s shell to exit."""
        future = self._pending[ident]
        # Shielded: a timeout around this wait must not cancel the pending result,
        # which stays here until it has been taken.
        outcome: CommandExit = await asyncio.shield(future)
        self._pending.pop(ident, None)
        return outcome

    def kill(self, ident: int) -> None:
        """Kill command ``ident``'s whole tree; its result still arrives (non-blocking)."""
        with contextlib.suppress(SandboxError):
            self._send({"op": "kill", "id": ident})

    def forget(self, ident: int) -> None:
        """Kill command ``ident`` and drop its result (its caller was cancelled)."""
        self.kill(ident)
        future = self._pending.pop(ident, None)
        if future is not None and not future.done():
            future.cancel()

    async def kill_all(self) -> None:
        """Kill every process below the supervisor; returns once they are dead.

        Raises:
            SandboxError: The supervisor is gone.
        """
        if self._nothing_below():
            return
        ack = f"k{next(self._ids)}"
        await self._request(ack, {"op": "killall", "ack": ack})

    def _nothing_below(self) -> bool:
        """Whether every child of the supervisor is known to be empty (no round trip)."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children", "rb") as file:
                children = {int(pid) for pid in file.read().split()}
        except OSError:
            return False  # no such file here: ask the supervisor
        self._empty &= children
        return children <= self._empty

    def shutdown(self) -> None:
        """Stop the supervisor and everything below it (blocks for milliseconds)."""
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
        with contextlib.suppress(OSError):
            self._sock.send(b'{"op": "exit"}')
        self._sock.close()
        if not _exited_within(self._popen, 10.0):
            self._popen.kill()  # its reapers' parent-death signal kills their trees
        self._popen.wait()
        self.broken = True
        for future in self._pending.values():
            if not future.done():
                with contextlib.suppress(RuntimeError):  # a loop that is already closed
                    future.set_result(_KILLED)
        self._pending.clear()

    # -- messages -------------------------------------------------------------------

    async def _request(self, key: str, message: dict[str, Any] | None) -> None:
        self._expect(key)
        if message is not None:
            self._send(message)
        await self._pending[key]

    def _expect(self, key: object) -> None:
        if self.broken:
            raise SandboxError("the sandbox supervisor is gone")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._sock.fileno())
            loop.add_reader(self._sock.fileno(), self._on_readable)
            self._loop = loop
        self._pending[key] = loop.create_future()

    def _send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        try:
            socket.send_fds(self._sock, [json.dumps(message).encode()], fds or [])
        except OSError as exc:
            self._fail(f"the sandbox supervisor is gone ({exc})")
            raise SandboxError("the sandbox supervisor is gone") from exc

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(_MAX_MESSAGE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._fail("the sandbox supervisor exited")
            return
        message = json.loads(data)
        op = message["op"]
        if op in ("spare", "done"):
            self._empty.add(message["reaper"])
            if op == "spare":
                self._spare = message["reaper"]
            return
        if op == "started":
            self._empty.discard(message["reaper"])
            return
        key = {"ready": "ready", "killed": message.get("ack")}.get(op, message.get("id"))
        # Command results stay until result() takes them; the rest are taken here.
        future = self._pending.get(key) if op in ("exit", "lost") else self._pending.pop(key, None)
        if op == "exit" or op == "lost":
            outcome: Any = CommandExit(message["status"], bool(message.get("oom")))
        else:
            outcome = None
        if future is not None and not future.done():
            future.set_result(outcome)

    def _fail(self, why: str) -> None:
        self.broken = True
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
        for future in self._pending.values():
            if not future.done():
                future.set_exception(SandboxError(why))
        self._pending.clear()


def _exited_within(process: subprocess.Popen[bytes], seconds: float) -> bool:
    """Whether ``process`` exits within ``seconds``, woken the moment it does.

    ``Popen.wait(timeout=)`` polls with sleeps that grow to 50 ms, which costs a
    closing sandbox about 15 ms; a pidfd (Linux 5.3+) wakes at the exit itself.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        try:
            fd = pidfd_open(process.pid)
        except OSError:  # already reaped, or no pidfd here
            fd = -1
        if fd >= 0:
            try:
                readable, _, _ = select.select([fd], [], [], seconds)
            finally:
                os.close(fd)
            return bool(readable)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True
