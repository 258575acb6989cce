"""What one instance's function sees: :class:`InstanceContext`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import pandas as pd

from labkit._checks import check, is_real
from labkit.clock import Clock
from labkit.events import InstanceEvent
from labkit.loop import running_loop
from labkit.samplelog import SampleLog

if TYPE_CHECKING:
    from labkit.sandbox.base import Sandbox

__all__ = ("InstanceContext", "Sample")

Sample = tuple[float, dict[str, float]]
"""One timeline sample: its offset in seconds and its values by metric name."""


class InstanceContext:
    """What one instance's function sees: its index, parameters, resources, and a recorder.

    Attributes:
        index: The instance's number, from 0.
        seed: The instance's seed (an int from 0 to 2**32 - 1), derived from the
            run's base seed and ``index`` (:func:`labkit.seeds.instance_seed`):
            the one way to seed an instance. Instance *i* of every configuration
            of a sweep shares it; no two instances of one experiment do.
        params: The experiment's parameters (read-only).
        duration: How long the instance is meant to run, in seconds, or ``None``.
        env: Environment for anything the instance starts: the GPU allocation's
            ``CUDA_VISIBLE_DEVICES`` (set to empty when it holds no GPU).
        gpus: UUIDs of the GPUs this instance holds.
        sandbox: The sandbox session it holds, or ``None``.
        attempt: Which attempt this is (1 unless the runner retried).

    labkit builds one per attempt. Every sample goes to ``sample_log``, the
    attempt's timeline and the one carrier of its samples (watchers, the live
    chart and the store read it at their own pace), and, when given, to
    ``forward(offset, values)`` on the event loop's thread: a worker process ships
    samples to its caller with it, and a run builds per-sample events with it only
    when a watcher reads them. ``emit`` takes the ``log`` events.
    """

    __slots__ = (
        "_clock",
        "_emit",
        "_forward",
        "_lines",
        "_log",
        "_loop",
        "_loop_thread",
        "_started",
        "attempt",
        "duration",
        "env",
        "gpus",
        "index",
        "params",
        "sandbox",
        "seed",
    )

    def __init__(
        self,
        *,
        index: int,
        params: Mapping[str, Any],
        duration: float | None,
        env: Mapping[str, str],
        gpus: Sequence[str],
        sandbox: Sandbox | None,
        attempt: int,
        clock: Clock,
        emit: Callable[[InstanceEvent], None],
        sample_log: SampleLog | None = None,
        forward: Callable[[float, Mapping[str, float]], None] | None = None,
        seed: int = 0,
    ) -> None:
        self.index = index
        self.seed = seed
        self.params: Mapping[str, Any] = MappingProxyType(dict(params))
        self.duration = duration
        self.env: dict[str, str] = dict(env)
        self.gpus: tuple[str, ...] = tuple(gpus)
        self.sandbox = sandbox
        self.attempt = attempt
        self._clock = clock
        self._emit = emit
        self._forward = forward
        self._log = SampleLog() if sample_log is None else sample_log
        self._lines: list[str] = []
        self._started = clock.now()
        # On a Dask worker a sync function runs in the task thread with no loop at
        # all; its samples are then published straight from that thread.
        self._loop: asyncio.AbstractEventLoop | None = running_loop()
        self._loop_thread = threading.get_ident()

    @property
    def started(self) -> float:
        """When this attempt started, in seconds on the run's clock."""
        return self._started

    @property
    def samples(self) -> tuple[Sample, ...]:
        """Every sample recorded so far, in recording order (read-only)."""
        return tuple(self._log.samples())

    @property
    def elapsed(self) -> float:
        """Seconds since this instance started."""
        return self._clock.now() - self._started

    @property
    def remaining(self) -> float | None:
        """Seconds left of ``duration`` (never negative), or ``None`` without one."""
        if self.duration is None:
            return None
        return max(self.duration - self.elapsed, 0.0)

    async def sleep(self, seconds: float) -> None:
        """Wait on the run's clock (a test's ``FakeClock`` makes this instant)."""
        await self._clock.sleep(seconds)

    def record(self, **metrics: float) -> None:
        """Add one timeline sample, stamped with the seconds since the instance started.

        Args:
            **metrics: Numeric values by metric name (``cpu=41.5, errors=2``).
                ``errors`` counts the errors since the previous sample.

        Raises:
            ConfigError: A value is not a real number, or a name is ``t``.
        """
        self.record_at(self.elapsed, **metrics)

    def record_at(self, t: float, /, **metrics: float) -> None:
        """Add one timeline sample at offset ``t``: for values measured elsewhere, read late.

        Args:
            t: Seconds since the instance started when the values were measured.
            **metrics: Numeric values by metric name, as for :meth:`record`.

        Raises:
            ConfigError: ``t`` is not a finite number, a value is not a real
                number, or a name is ``t``.
        """
        check(is_real(t), "t", t, "a finite number of seconds")
        values: dict[str, float] = {}
        for name, value in metrics.items():
            check(name != "t", "metric name", name, "any name but 't' (the time column)")
            check(is_real(value, finite=False), name, value, "a real number")
            values[name] = float(value)
        if not values:
            return
        offset = float(t)
        self._log.append(offset, values)
        if self._forward is not None:
            self._call_on_loop(self._forward, offset, values)

    def log(self, *parts: object) -> None:
        """Note a line about this instance (joined like ``print``); it goes to ``on_event``."""
        line = " ".join(str(part) for part in parts)
        self._lines.append(line)
        self._deliver(
            InstanceEvent("log", self.index, self._clock.now(), self.elapsed, message=line)
        )

    @property
    def logs(self) -> tuple[str, ...]:
        """Every line logged so far."""
        return tuple(self._lines)

    def timeline(self) -> pd.DataFrame:
        """The samples so far as a DataFrame: ``t`` and one column per metric."""
        return self._log.frame()

    def _deliver(self, event: InstanceEvent) -> None:
        self._call_on_loop(self._emit, event)

    def _call_on_loop(self, fn: Callable[..., object], *args: Any) -> None:
        # A sync instance function runs in a worker thread; subscribers and the
        # store expect to be called on the event loop's thread.
        if self._loop is None or threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def __repr__(self) -> str:
        return (
            f"InstanceContext(index={self.index}, seed={self.seed}, attempt={self.attempt}, "
            f"gpus={self.gpus})"
        )
