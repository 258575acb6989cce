"""The supervisor of one LocalSandbox: the process every command of the sandbox runs under.

Run by :mod:`labkit.sandbox.supervision` as ``python -I -S <this file> ...`` (the
standard library only, so it starts in tens of milliseconds). It talks to the
labkit process over one ``SOCK_SEQPACKET`` socket, one JSON object per message.

Process tree::

    labkit process
     +-- supervisor            subreaper; parent-death signal SIGTERM; own session
          +-- command reaper   one per command (a fork): subreaper, parent-death SIGTERM
               +-- /bin/sh -c CMD, and everything it starts

Each reaper is forked one command ahead (the "spare"), so a command costs the
supervisor no fork on its path; the reaper starts the shell with ``posix_spawn``
(a vfork) unless the shell must first join cgroups or take an rlimit.

A process whose parent exits is re-parented to its nearest subreaper ancestor, so
double-forked and ``setsid`` daemons stay below their command's reaper (or, if the
reaper itself was killed, below the supervisor). Killing "every descendant" is thus
a walk of the process tree that needs no cooperation from the commands: no
environment marker, no process group.

The supervisor kills everything below it and removes the sandbox's cgroups when
told to (``exit``), when the labkit process dies (the socket reaches end of file;
the parent-death signal covers a socket inherited by a forked child), and when a
reaper dies its command tree goes with it (the reaper's own parent-death signal).
On an orphaned exit it also removes the sandbox's directory.

Requests (labkit -> supervisor):
    ``{"op": "run", "id": N, "cmd": ..., "env": {...}}`` with two file descriptors
    (stdout, stderr) attached; ``{"op": "kill", "id": N}`` (the command's whole
    tree); ``{"op": "killall", "ack": K}`` (everything; answered ``killed``);
    ``{"op": "exit"}``.
Replies: ``ready``, ``spare``, ``started`` and ``done`` (with a reaper's pid; ``done``:
its command's whole tree is gone), ``exit`` (the shell's raw
wait status and whether a process was killed for memory meanwhile), ``lost`` (a
reaper died before it could report), ``killed``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import resource
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_MAX_MESSAGE = 1 << 20
_KILL_ROUNDS = 200
# Python ignores SIGPIPE (and a terminal may have SIGINT ignored): commands get defaults.
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGXFSZ)


_LIBC: list[ctypes.CDLL] = []


def _prctl(option: int, value: int) -> bool:
    """``prctl(option, value)``; ``False`` where the call does not exist (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return int(_LIBC[0].prctl(option, value, 0, 0, 0)) == 0


def _children(pid: int) -> list[int] | None:
    """Direct children of ``pid`` from ``/proc/<pid>/task/*/children``.

    ``None`` where the kernel has no such file (then the whole of /proc is scanned).
    """
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []  # gone
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as file:
                found.extend(int(p) for p in file.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}"):
                return []
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread ended
            return None
        except OSError:
            continue
    return found


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return True  # gone
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] in (b"Z", b"X")


def _tree() -> dict[int, list[int]]:
    """Live (non-zombie) processes by parent pid, from /proc."""
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return children
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as file:
                stat = file.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields and fields[0] not in (b"Z", b"X"):
            children.setdefault(int(fields[1]), []).append(int(name))
    return children


def descendants(root: int, *, full_scan: bool = False) -> list[int]:
    """Every live process below ``root``.

    Walks the kernel's per-task ``children`` lists (cost: the descendants, not the
    machine's processes); ``full_scan`` or a kernel without them reads every
    ``/proc/<pid>/stat`` instead.
    """
    found: list[int] = []
    if not full_scan:
        stack = [root]
        while stack:
            kids = _children(stack.pop())
            if kids is None:
                break
            for pid in kids:
                stack.append(pid)
                if not _zombie(pid):
                    found.append(pid)
        else:
            return found
        found = []
    children = _tree()
    stack = list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return found


def kill_below(
    root: int,
    *,
    spare: frozenset[int] = frozenset(),
    reap: Callable[[], object] | None = None,
    full_scan: bool = False,
) -> None:
    """SIGKILL every process below ``root`` except ``spare``, until none is left.

    Rounds repeat because a process may fork between the scan and its kill; a
    killed process's orphans are re-parented to a subreaper below ``root`` and the
    next round finds them. With ``full_scan`` the last round reads all of /proc.
    """
    for _ in range(_KILL_ROUNDS):
        victims = [pid for pid in descendants(root) if pid not in spare]
        if not victims and full_scan:
            victims = [pid for pid in descendants(root, full_scan=True) if pid not in spare]
        if not victims:
            return
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if reap is not None:
            reap()
        time.sleep(0.001)


def reap_children() -> list[tuple[int, int]]:
    """Collect every exited child without blocking: ``[(pid, wait status)]``."""
    done: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done.append((pid, status))


def oom_kills(path: str | None) -> int:
    """The memory cgroup's ``oom_kill`` counter (0 without one)."""
    if path is None:
        return 0
    try:
        with open(path) as file:
            for line in file:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def empty_cgroups(cgroups: list[str]) -> None:
    """Kill what is left in each cgroup (processes that escaped the tree) and remove it."""
    for group in cgroups:
        for _ in range(_KILL_ROUNDS):
            try:
                with open(os.path.join(group, "cgroup.procs")) as file:
                    pids = [int(line) for line in file if line.strip()]
            except OSError:
                break
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            reap_children()
            time.sleep(0.001)
        for _ in range(100):  # rmdir fails while the last zombies are charged
            try:
                os.rmdir(group)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.005)


class Supervisor:
    """The supervisor's state and event loop."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.sock = socket.socket(fileno=args.fd)
        self.root: str = args.root
        self.cgroups: list[str] = list(args.cgroup)
        self.oom_file: str | None = args.oom_file
        self.rlimit_as: int | None = args.rlimit_as
        self.parent = os.getppid()
        self.reapers: dict[int, int] = {}  # reaper pid -> command id
        self.spare: tuple[int, socket.socket] | None = None  # a reaper forked ahead

    def send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(json.dumps(message).encode())

    def serve(self) -> None:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: None)
        for name in ("SIGINT", "SIGHUP", "SIGPIPE"):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        if os.getppid() != self.parent:  # the parent died before the signal was armed
            self.shutdown(orphaned=True)
            return
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ, "sock")
        selector.register(wake_r, selectors.EVENT_READ, "signal")
        self.fork_spare()
        self.send({"op": "ready", "pid": os.getpid()})
        while True:
            for key, _ in selector.select():
                if key.data == "signal":
                    with contextlib.suppress(OSError):
                        wake_r.recv(4096)
                    self.on_children()
                    if os.getppid() != self.parent:  # parent-death signal
                        self.shutdown(orphaned=True)
                        return
                    continue
                try:
                    data, fds, _flags, _addr = socket.recv_fds(self.sock, _MAX_MESSAGE, 2)
                except OSError:
                    data, fds = b"", []
                if not data:  # the labkit process is gone
                    self.shutdown(orphaned=True)
                    return
                if not self.handle(json.loads(data), fds):
                    return

    def handle(self, message: dict[str, Any], fds: list[int]) -> bool:
        op = message["op"]
        if op == "run":
            self.start(message, fds)
        elif op == "kill":
            for reaper, ident in list(self.reapers.items()):
                if ident == message["id"]:
                    kill_below(reaper)
        elif op == "killall":
            keep = set(self.reapers)
            if self.spare is not None:
                keep.add(self.spare[0])
            kill_below(os.getpid(), spare=frozenset(keep), reap=self.on_children)
            self.send({"op": "killed", "ack": message["ack"]})
        elif op == "exit":
            self.shutdown(orphaned=False)
            return False
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        return True

    def on_children(self) -> None:
        for pid, status in reap_children():
            ident = self.reapers.pop(pid, None)
            if ident is not None and not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                self.send({"op": "lost", "id": ident, "status": status})

    def start(self, message: dict[str, Any], fds: list[int]) -> None:
        if self.spare is None:
            self.fork_spare()
        assert self.spare is not None
        pid, channel = self.spare
        self.spare = None
        self.reapers[pid] = message["id"]
        try:
            socket.send_fds(channel, [json.dumps(message).encode()], fds)
        except OSError:  # the spare died (it is reaped without a report)
            self.reapers.pop(pid, None)
            self.send({"op": "lost", "id": message["id"], "status": signal.SIGKILL})
        channel.close()
        self.send({"op": "started", "id": message["id"], "reaper": pid})
        self.fork_spare()  # off the next command's path

    def fork_spare(self) -> None:
        """Fork the reaper for the next command now, so a command costs no fork of ours."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ours.close()
                # Exit status 0 means "reported"; anything else makes the supervisor
                # report the command as lost.
                code = 0 if CommandReaper(self, theirs).run() else 1
            finally:
                os._exit(code)
        theirs.close()
        self.spare = (pid, ours)
        self.send({"op": "spare", "reaper": pid})

    def shutdown(self, *, orphaned: bool) -> None:
        kill_below(os.getpid(), reap=reap_children, full_scan=True)
        empty_cgroups(self.cgroups)
        if orphaned:
            import shutil

            def writable(_func: Any, path: str, _exc: Any) -> None:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.dirname(path), 0o700)
                    os.chmod(path, 0o700)

            shutil.rmtree(self.root, onerror=writable)
            with contextlib.suppress(OSError):
                shutil.rmtree(self.root)


class CommandReaper:
    """A forked child that waits for one command, runs it, and stays until its whole
    tree is gone (it is their subreaper)."""

    def __init__(self, supervisor: Supervisor, channel: socket.socket) -> None:
        self.sup = supervisor
        self.channel = channel
        self.supervisor_pid = os.getppid()

    def run(self) -> bool:
        """Wait for the command, run it, reap until its tree is gone.

        Returns:
            Whether a command ran and its exit was reported.
        """
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self.on_parent_death)
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != self.supervisor_pid:  # it died before the signal was armed
            return False
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.channel, _MAX_MESSAGE, 2)
        except OSError:
            return False
        self.channel.close()
        if not data or len(fds) != 2:
            return False
        message = json.loads(data)
        # The reporting socket is the supervisor's: message boundaries keep
        # concurrent reapers' replies whole.
        before = oom_kills(self.sup.oom_file)
        shell = self.spawn(message["cmd"], message["env"], fds)
        while True:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                # Nothing of the command is left: labkit may skip a kill round trip.
                self.sup.send({"op": "done", "reaper": os.getpid()})
                return True
            if pid == shell:
                oom = oom_kills(self.sup.oom_file) > before
                self.sup.send({"op": "exit", "id": message["id"], "status": status, "oom": oom})

    def on_parent_death(self, _signum: int, _frame: object) -> None:
        kill_below(os.getpid())
        os._exit(1)

    def spawn(self, cmd: str, env: dict[str, str], fds: list[int]) -> int:
        """Start ``/bin/sh -c cmd`` in its own session with ``fds`` as stdout/stderr.

        ``posix_spawn`` (a vfork: no copy of this process) unless the shell must
        join cgroups or get an rlimit first, which only a fork can do before exec.
        """
        out, err = fds
        argv = ["/bin/sh", "-c", cmd]
        if not self.sup.cgroups and self.sup.rlimit_as is None:
            os.chdir(self.sup.root)
            try:
                return os.posix_spawn(
                    argv[0],
                    argv,
                    env,
                    file_actions=[
                        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                        (os.POSIX_SPAWN_DUP2, out, 1),
                        (os.POSIX_SPAWN_DUP2, err, 2),
                        (os.POSIX_SPAWN_CLOSE, out),
                        (os.POSIX_SPAWN_CLOSE, err),
                    ],
                    setsid=True,
                    setsigdef=_DEFAULT_SIGNALS,
                )
            except OSError as exc:
                os.write(err, f"labkit: cannot start the command: {exc}\n".encode())
                os._exit(1)
            finally:
                os.close(out)
                os.close(err)
        pid = os.fork()
        if pid == 0:
            self.exec_shell(argv, env, out, err)
        os.close(out)
        os.close(err)
        return pid

    def exec_shell(self, argv: list[str], env: dict[str, str], out: int, err: int) -> None:
        try:
            os.setsid()
            for group in self.sup.cgroups:
                with open(os.path.join(group, "cgroup.procs"), "w") as file:
                    file.write(str(os.getpid()))
            if self.sup.rlimit_as is not None:
                resource.setrlimit(resource.RLIMIT_AS, (self.sup.rlimit_as, self.sup.rlimit_as))
            for signum in _DEFAULT_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            for fd in (null, out, err):
                if fd > 2:
                    os.close(fd)
            os.chdir(self.sup.root)
            os.execve(argv[0], argv, env)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(2, f"labkit: cannot start the command: {exc}\n".encode())
        os._exit(127)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--cgroup", action="append", default=[])
    parser.add_argument("--oom-file")
    parser.add_argument("--rlimit-as", type=int)
    Supervisor(parser.parse_args()).serve()
    # Everything below is dead and cleaned up: skip the interpreter's teardown, which
    # the closing sandbox would otherwise wait for.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
