"""A warm pool of worker processes that stream messages back while they run a call.

:class:`WorkerPool` runs one call at a time per worker process (``fn(channel, *args)``,
pickled with cloudpickle, so a function defined in a notebook cell travels by
value). While the call runs, whatever it sends through its
:class:`~labkit.executors._worker.Channel` reaches the caller's ``on_message`` on
the event loop, in order; everything sent before a worker dies is delivered.

Why a pool of its own: ``pebble`` kills a worker at a timeout but has no side
channel for messages during a call and kills only the worker, not what it started;
``loky`` (joblib's executor) pickles with cloudpickle and reuses its workers, but
cannot stop one call (only the whole executor) nor pin a worker to the
``CUDA_VISIBLE_DEVICES`` it used. Both lack the one thing an instance needs most: its
samples live, and none lost when it crashes.

How workers start: each is a fresh interpreter (``subprocess`` with the caller's
``sys.executable`` and ``sys.path``), not a fork. A fork of a process that holds an
event loop, threads (Jupyter's, the thread pool's) and their locks can deadlock in
the child; ``forkserver`` avoids that but makes the workers children of its server,
so they would outlive a labkit process killed with SIGKILL, and it re-imports the
main script in every worker. A direct child instead gets a parent-death signal
(it dies with the labkit process however that ends) and imports nothing of the
caller's ``__main__``. The price is the interpreter's start (about 0.5 to 1 s with
labkit imported), paid once per worker: workers are kept warm across calls and
runs in one Python process (:func:`shared_pool`).

What stops a call: a timeout or a cancellation kills the worker and every process
below it (it is a child subreaper, so even processes that left their parent stay
in its tree), waits until they are gone, and replaces the worker with a fresh one
on the next call. The call's ``timeout`` counts from when the worker begins the
call, never while it waits for a worker to start.

CUDA: a worker reports after each call whether the CUDA driver is loaded in it;
such a worker keeps the ``CUDA_VISIBLE_DEVICES`` it ran with (CUDA reads it once per
process) and only ever runs calls with that same value again.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import psutil

from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import WorkerDied
from labkit.executors.base import AttemptExpired

__all__ = ("WorkerPool", "WorkerPoolStats", "available_cores", "shared_pool")

_HEADER = struct.Struct(">I")
_READ_SIZE = 1 << 16
_KILL_ROUNDS = 100  # rounds of "kill what is still below the worker", 10 ms apart at most


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class WorkerPoolStats:
    """A snapshot of a :class:`WorkerPool`.

    Attributes:
        workers: Worker processes alive now (idle and busy).
        busy: Workers running a call.
        idle: Workers waiting for a call.
        started: Workers started since the pool was made.
        reused: Calls that ran on a worker that had run one before.
        killed: Workers killed (with their process trees) at a timeout or cancel.
        lost: Workers that died by themselves while running a call.
        pinned: Idle workers kept for one ``CUDA_VISIBLE_DEVICES`` (CUDA loaded).
    """

    workers: int
    busy: int
    idle: int
    started: int
    reused: int
    killed: int
    lost: int
    pinned: int


class _Worker:
    """One worker process and the labkit end of its socket."""

    __slots__ = ("buffer", "calls", "cuda", "handler", "pid", "process", "sock")

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.process = process
        self.pid = process.pid
        self.sock = sock
        self.buffer = bytearray()
        self.calls = 0
        self.cuda: str | None = None
        """The ``CUDA_VISIBLE_DEVICES`` this worker is pinned to, once CUDA is loaded in it."""
        self.handler: Callable[[Any], None] = _ignore

    @classmethod
    def spawn(cls) -> _Worker:
        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        code = (
            f"import sys; sys.path[:] = {list(sys.path)!r}; "
            f"from labkit.executors._worker import main; main({fd}, {os.getpid()})"
        )
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", code],
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(process, ours)

    def alive(self) -> bool:
        return self.process.poll() is None

    def readable(self) -> None:
        """Read what the socket holds and hand every whole frame to ``handler``;
        ``None`` at the end of the stream."""
        try:
            chunk = self.sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.handler(None)
            return
        buffer = self.buffer
        buffer += chunk
        start = 0
        while len(buffer) - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, start)
            end = start + _HEADER.size + size
            if len(buffer) < end:
                break
            frame = pickle.loads(memoryview(buffer)[start + _HEADER.size : end])
            start = end
            self.handler(frame)
        del buffer[:start]

    def send(self, frame: Any) -> Coroutine[Any, Any, None]:
        data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
        loop = asyncio.get_running_loop()
        return loop.sock_sendall(self.sock, _HEADER.pack(len(data)) + data)

    def close(self) -> bool:
        """Close the socket (the worker then exits); False, to filter on."""
        with contextlib.suppress(OSError):
            self.sock.close()
        return False


def _ignore(frame: Any) -> None:
    pass


class _Call:
    """One call on one worker, seen from the event loop."""

    __slots__ = ("done", "on_message", "started")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_message: Callable[[Any], None]):
        self.started: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[tuple[Any, ...]] = loop.create_future()
        self.on_message = on_message

    def handle(self, frame: Any) -> None:
        if frame is None:
            self._end(None)
            return
        kind = frame[0]
        if kind == "msg":
            self.on_message(frame[1])
        elif kind == "started":
            if not self.started.done():
                self.started.set_result(None)
        else:  # "ok" or "err": the call is over
            self._end(frame)

    def _end(self, frame: tuple[Any, ...] | None) -> None:
        if not self.started.done():
            self.started.set_result(None)
        if not self.done.done():
            self.done.set_result(("lost",) if frame is None else frame)


class WorkerPool:
    """Worker processes kept warm between calls; see the module's docstring.

    Args:
        keep_idle: The most idle workers kept between calls (default: the cores
            this process may use). Extra ones exit when their call ends.
    """

    def __init__(self, *, keep_idle: int | None = None) -> None:
        self._keep_idle = available_cores() if keep_idle is None else keep_idle
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._lock = threading.Lock()  # calls may come from several event loops
        self._started = self._reused = self._killed = self._lost = 0

    def stats(self) -> WorkerPoolStats:
        """A snapshot of the pool."""
        with self._lock:
            idle = [worker for worker in self._idle if worker.alive()]
            return WorkerPoolStats(
                workers=len(idle) + len(self._busy),
                busy=len(self._busy),
                idle=len(idle),
                started=self._started,
                reused=self._reused,
                killed=self._killed,
                lost=self._lost,
                pinned=sum(worker.cuda is not None for worker in idle),
            )

    def pids(self) -> tuple[int, ...]:
        """The process ids of the workers alive now."""
        with self._lock:
            return tuple(w.pid for w in (*self._idle, *self._busy) if w.alive())

    async def call(
        self,
        payload: bytes,
        *,
        env: Mapping[str, str],
        on_message: Callable[[Any], None],
        on_started: Callable[[], None] | None = None,
        timeout: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> Any:
        """Run one pickled call ``(fn, args)`` (``fn(channel, *args)``) on a worker.

        Args:
            payload: ``cloudpickle.dumps((fn, args))``.
            env: Environment variables set in the worker for the call, restored after.
            on_message: Gets every message the call sends, on this event loop, in order.
            on_started: Called when the worker begins the call.
            timeout: Seconds the call may run, counted from when it begins.
            clock: The clock the timeout is kept on.

        Returns:
            What ``fn`` returned.

        Raises:
            AttemptExpired: ``timeout`` ran out; the worker and its tree were killed.
            WorkerDied: The worker died during the call (killed, crashed, out of memory).
            BaseException: What ``fn`` raised, with the worker's traceback as its cause.
        """
        loop = asyncio.get_running_loop()
        worker = await self._take(env.get("CUDA_VISIBLE_DEVICES"))
        call = _Call(loop, on_message)
        worker.handler = call.handle
        loop.add_reader(worker.sock.fileno(), worker.readable)
        reusable = False
        try:
            signal_start = timeout is not None or on_started is not None
            await worker.send(("job", payload, dict(env), list(sys.path), signal_start))
            if signal_start:
                await call.started  # waiting for the worker to begin is not the call's time
                if on_started is not None and not call.done.done():
                    on_started()
            if timeout is None:
                outcome = await call.done
            else:
                outcome = await _within(clock, call.done, timeout)
            reusable = outcome[0] != "lost"
            if not reusable:
                loop.remove_reader(worker.sock.fileno())
                # The stream ended before the process did: collect how it ended.
                await _uncancellable(self._kill(worker, lost=True))
                raise WorkerDied(worker.pid, worker.process.returncode, "while running a call")
            return self._value(worker, outcome, env)
        finally:
            if worker.handler is not _ignore:
                loop.remove_reader(worker.sock.fileno())
                worker.handler = _ignore
                if reusable:
                    self._put_back(worker)
                else:
                    await _uncancellable(self._kill(worker, lost=False))

    # -- workers -------------------------------------------------------------------

    async def _take(self, cuda: str | None) -> _Worker:
        """An idle worker that may run with ``cuda`` (one pinned to it first, where CUDA
        is ready), else a fresh one (started here)."""
        with self._lock:
            self._idle = [worker for worker in self._idle if worker.alive() or worker.close()]
            fits = [w for w in self._idle if w.cuda is not None and w.cuda == cuda] or [
                w for w in self._idle if w.cuda is None
            ]
            if fits:
                worker = fits[-1]  # the one used last: the warmest
                self._idle.remove(worker)
                self._busy.add(worker)
                self._reused += 1
                return worker
            worker = _Worker.spawn()
            self._started += 1
            self._busy.add(worker)
        try:
            await _uncancellable(self._ready(worker))
        except BaseException:
            await _uncancellable(self._kill(worker, lost=False))
            raise
        return worker

    async def _ready(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[Any] = loop.create_future()

        def handle(frame: Any) -> None:
            if not ready.done():
                ready.set_result(frame)

        worker.handler = handle
        loop.add_reader(worker.sock.fileno(), worker.readable)
        try:
            frame = await ready
        finally:
            loop.remove_reader(worker.sock.fileno())
            worker.handler = _ignore
        if frame is None or frame[0] != "ready":
            code = await asyncio.to_thread(worker.process.wait)
            raise WorkerDied(worker.pid, code, "while starting")

    def _value(self, worker: _Worker, outcome: tuple[Any, ...], env: Mapping[str, str]) -> Any:
        import cloudpickle

        kind = outcome[0]
        if outcome[-1]:  # CUDA is loaded: this worker keeps its devices
            worker.cuda = env.get("CUDA_VISIBLE_DEVICES")
        if kind == "ok":
            return cloudpickle.loads(outcome[1])
        _, data, text, trace, _ = outcome
        error: BaseException | None = None
        if data is not None:
            with contextlib.suppress(Exception):
                error = cloudpickle.loads(data)
        if not isinstance(error, BaseException):
            error = RemoteError(text)
        error.__cause__ = RemoteTraceback(trace)
        raise error

    def _put_back(self, worker: _Worker) -> None:
        worker.calls += 1
        with self._lock:
            self._busy.discard(worker)
            self._idle.append(worker)
            extra = len(self._idle) - self._keep_idle
            # Pinned workers go first: they can serve only one set of GPUs.
            retire = sorted(self._idle, key=lambda w: w.cuda is None)[: max(extra, 0)]
            for old in retire:
                self._idle.remove(old)
        for old in retire:
            _stop(old)

    async def _kill(self, worker: _Worker, *, lost: bool) -> None:
        """Kill ``worker`` and everything below it; return once the worker is gone.

        ``lost``: the worker died by itself (counted apart from the ones killed here).
        """
        worker.handler = _ignore
        with self._lock:
            self._busy.discard(worker)
            if lost:
                self._lost += 1
            else:
                self._killed += 1
        await asyncio.to_thread(kill_tree, worker.process)
        worker.close()

    def shutdown(self) -> None:
        """Kill every worker, idle or busy, with its process tree; the pool stays usable."""
        with self._lock:
            workers = [*self._idle, *self._busy]
            self._idle.clear()
        for worker in workers:
            kill_tree(worker.process)
            worker.close()


class RemoteError(Exception):
    """An error raised in a worker that could not be sent back as itself."""


class RemoteTraceback(Exception):
    """The traceback of an error raised in a worker process (the error's ``__cause__``)."""

    def __str__(self) -> str:
        return f"\n\nin the worker process:\n{self.args[0]}"


async def _within(clock: Clock, done: asyncio.Future[Any], seconds: float) -> Any:
    try:
        async with clock.timeout(max(seconds, 0.0)):
            return await asyncio.shield(done)
    except TimeoutError as exc:
        if done.done():
            return done.result()
        raise AttemptExpired from exc


async def _uncancellable(work: Coroutine[Any, Any, Any]) -> Any:
    """Run ``work`` to its end even if the caller is cancelled meanwhile (then re-raise)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``process`` and every process below it, and reap ``process``.

    The process is stopped first (SIGSTOP), so it starts nothing new while its tree
    is walked; as a child subreaper it keeps the orphans of killed processes in its
    tree, so each round finds what the last one left. Blocking: call it in a thread.
    """
    try:
        root = psutil.Process(process.pid)
        root.suspend()
    except psutil.Error:
        root = None
    if root is not None:
        for _ in range(_KILL_ROUNDS):
            try:
                below = [p for p in root.children(recursive=True) if _running(p)]
            except psutil.Error:
                break
            if not below:
                break
            for child in below:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait()


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _stop(worker: _Worker) -> None:
    """Ask an idle worker to exit (it closes at the end of its socket's stream)."""
    worker.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        worker.process.wait(timeout=0)


_SHARED: list[WorkerPool] = []
_SHARED_LOCK = threading.Lock()


def shared_pool() -> WorkerPool:
    """The process-wide warm pool that experiments with ``executor="process"`` use.

    Its workers are killed when the interpreter exits.
    """
    with _SHARED_LOCK:
        if not _SHARED:
            pool = WorkerPool()
            _SHARED.append(pool)
            atexit.register(pool.shutdown)
        return _SHARED[0]
