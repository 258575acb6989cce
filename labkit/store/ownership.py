"""Who runs an experiment: the owner a run writes into the store, and whether it lives.

A run that begins an experiment (new or resumed) writes itself as the owner in
the same ``BEGIN IMMEDIATE`` transaction that checks the current one, so two runs
can never both claim it. An owner is the host, the process (its pid and start
time, which a reused pid does not share) and a token for the run. A running
experiment's owner is alive while its heartbeat is fresh, unless it is known dead
for sure: a process of this host that no longer exists (killed, crashed), or a
run of this very process that has ended.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

import psutil

__all__ = ("HEARTBEAT_EVERY", "MISSED_HEARTBEATS", "Owner", "ended_here", "started_here")

HEARTBEAT_EVERY = 5.0
"""Seconds between heartbeats assumed for a run that has not said (``Store.heartbeat``)."""

MISSED_HEARTBEATS = 3
"""A running experiment whose heartbeat is older than this many intervals is ``interrupted``."""

# The runs of this process that have begun and not ended yet, as written.
_RUNNING_HERE: set[str] = set()


@dataclass(frozen=True, slots=True, kw_only=True)
class Owner:
    """The run that holds an experiment.

    Attributes:
        host: The machine's host name.
        pid: The process id.
        process_started: When the process started (s since the epoch, as psutil
            reads it), telling a reused pid apart.
        token: The run, unique among all runs.
    """

    host: str
    pid: int
    process_started: float
    token: str

    @classmethod
    def new(cls) -> Owner:
        """A new run of this process."""
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            process_started=_process_started(os.getpid()) or 0.0,
            token=uuid.uuid4().hex[:12],
        )

    @classmethod
    def parse(cls, text: str | None) -> Owner | None:
        """The owner written as :meth:`__str__` wrote it; ``None`` if there is none."""
        if not text:
            return None
        try:
            host, pid, started, token = text.rsplit(":", 3)
            return cls(host=host, pid=int(pid), process_started=float(started), token=token)
        except ValueError:
            return None

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.process_started:.3f}:{self.token}"

    def describe(self) -> str:
        """The owner in words, for messages."""
        return f"process {self.pid} on {self.host}"

    def dead(self) -> bool:
        """Whether this run has ended for sure (a live owner elsewhere reads ``False``)."""
        if self.host != socket.gethostname():
            return False  # another machine: only its heartbeat can tell
        if self.pid == os.getpid():
            return str(self) not in _RUNNING_HERE
        try:
            process = psutil.Process(self.pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return True  # killed, not reaped yet
            # Another process now has the pid: the owner is gone.
            return abs(process.create_time() - self.process_started) > 0.01
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return True
        except psutil.AccessDenied:
            return False  # cannot tell: the heartbeat decides


def started_here(owner: str) -> None:
    """Note that ``owner`` (as written), a run of this process, has begun."""
    _RUNNING_HERE.add(owner)


def ended_here(owner: str) -> None:
    """Note that ``owner`` (as written), a run of this process, has ended."""
    _RUNNING_HERE.discard(owner)


def _process_started(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None
