"""The main loop of one worker process of :class:`labkit.executors.workers.WorkerPool`.

Started by the pool as ``python -c "...; main(FD, PARENT)"``: a fresh interpreter (no
fork of a process that holds threads and an event loop), that talks to the labkit
process over one stream socket, one frame per message (a 4-byte big-endian length,
then a pickle).

Requests (labkit -> worker): ``("job", payload, env, sys_path, signal_start)`` where
``payload`` is ``cloudpickle.dumps((fn, args))``; ``("exit",)``.

Replies (worker -> labkit): ``("ready", pid)`` once; per job ``("started",)`` when
``fn`` begins (only when ``signal_start``: a timeout counts from then), any number
of ``("msg", message)`` that ``fn`` sends through the
:class:`Channel` it is called with, then ``("ok", value, cuda)`` or
``("err", error, text, traceback, cuda)``, where ``cuda`` says whether the CUDA
driver library is now loaded in this process (then the process keeps the
``CUDA_VISIBLE_DEVICES`` it ran with: CUDA reads it once per process).

A message is written to the socket as soon as it is sent, so everything sent before
the process dies (a crash, a kill) reaches the labkit process.

The worker is a child subreaper (processes its job starts stay below it even when
their parent exits, so the pool can kill the whole tree), runs in a session of its
own (a terminal's Ctrl-C reaches the labkit process, which decides), and dies with
the labkit process (parent-death signal SIGKILL).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Mapping
from typing import Any

__all__ = ("Channel", "main")

_HEADER = struct.Struct(">I")
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


class Channel:
    """The worker's end of the socket: :meth:`send` one message to the labkit process.

    Thread-safe: a job may send from several threads. Each message is written at
    once (no buffering), so a message sent is never lost to a later crash.
    """

    __slots__ = ("_lock", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, message: Any) -> None:
        """Send ``message`` (picklable plain data) to the labkit process."""
        self._write(("msg", message))

    def _write(self, frame: Any) -> None:
        data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            self._sock.sendall(_HEADER.pack(len(data)) + data)


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _receive(sock: socket.socket) -> Any:
    header = _read_exactly(sock, _HEADER.size)
    if header is None:
        return None
    body = _read_exactly(sock, _HEADER.unpack(header)[0])
    return None if body is None else pickle.loads(body)


_CUDA_USERS = ("torch", "jax", "jaxlib", "cupy", "tensorflow", "numba", "pycuda", "cuda")
"""Top-level packages that may load the CUDA driver: without one of them imported,
the (slow) read of this process's memory map is skipped."""


def _cuda_loaded() -> bool:
    """Whether the CUDA driver library is mapped into this process."""
    if not any(name in sys.modules for name in _CUDA_USERS):
        return False
    try:
        with open("/proc/self/maps", "rb") as maps:
            return b"libcuda.so" in maps.read()
    except OSError:
        return False


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Any:
    """``env`` set in ``os.environ`` for the block, the previous values restored after."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run(channel: Channel, payload: bytes, env: Mapping[str, str], signal_start: bool) -> None:
    import cloudpickle

    try:
        fn, args = cloudpickle.loads(payload)
    except BaseException as exc:
        _reply_error(channel, exc)
        return
    with _environment(env):
        if signal_start:
            channel._write(("started",))
        try:
            value = fn(channel, *args)
        except BaseException as exc:
            _reply_error(channel, exc)
            return
    try:
        data = _dumps(value)
    except Exception as exc:
        error = TypeError(f"the value returned cannot be pickled: {type(exc).__name__}: {exc}")
        _reply_error(channel, error)
        return
    channel._write(("ok", data, _cuda_loaded()))


def _dumps(value: Any) -> bytes:
    """``value`` pickled: by the standard pickle when it can (fast), else cloudpickle."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        import cloudpickle

        return bytes(cloudpickle.dumps(value))


def _reply_error(channel: Channel, error: BaseException) -> None:
    import cloudpickle

    text = "".join(traceback.format_exception(error))
    try:
        data: bytes | None = cloudpickle.dumps(error)
        cloudpickle.loads(data)  # an exception whose __init__ takes other arguments fails here
    except Exception:
        data = None
    channel._write(("err", data, f"{type(error).__name__}: {error}", text, _cuda_loaded()))


def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def main(fd: int, parent: int) -> None:
    """Serve jobs on socket ``fd`` until told to exit or the labkit process (``parent``) dies."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the labkit process died before the line above
        os._exit(0)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    sock = socket.socket(fileno=fd)
    channel = Channel(sock)
    channel._write(("ready", os.getpid()))
    while True:
        request = _receive(sock)
        if request is None or request[0] == "exit":
            break
        _, payload, env, path, signal_start = request
        if sys.path != path:
            sys.path[:] = path
        _run(channel, payload, env, signal_start)
        _reap()
    sock.close()
    # Skip the interpreter's teardown: nothing of a job's must run after this.
    os._exit(0)


def _reap() -> None:
    """Collect finished children the job left (they were re-parented to this subreaper)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
