"""The resource sampler: a sandbox's cpu and memory, every few seconds, into a timeline.

While an instance that has a sandbox runs, :class:`ResourceSampler` asks the
sandbox for ``metrics()`` every ``every`` seconds on the injected clock and hands
``cpu`` (percent) and ``memory`` (MB) to a ``record`` callback (the instance's
``ctx.record``). Monitoring degrades instead of raising: a failed or incomplete
reading is skipped (and logged once), never allowed to stop the instance.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from labkit._checks import check
from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import error_text

__all__ = ("MetricsSource", "ResourceSampler")

log = logging.getLogger("labkit.sampling")


class MetricsSource(Protocol):
    """Anything with an async ``metrics()`` returning an object with ``cpu`` and ``memory``."""

    async def metrics(self) -> Any: ...


class ResourceSampler:
    """Samples a sandbox's resources in the background while a block runs.

    Use it as an async context manager: the first sample is taken on entry's next
    loop turn, then one every ``every`` seconds, until the block exits::

        async with ResourceSampler(sandbox, ctx.record, every=1.0):
            await sandbox.run("python work.py", timeout=60)

    Args:
        source: The sandbox (or anything with ``async metrics()``).
        record: Called as ``record(cpu=..., memory=...)`` with the readings that
            are present and finite (cpu in percent, memory in MB).
        every: Seconds between samples on ``clock``; must be > 0.
        clock: Where time comes from (tests pass a ``FakeClock``).

    Raises:
        ConfigError: ``every`` is not a positive number.
    """

    __slots__ = ("_clock", "_every", "_failures", "_record", "_source", "_task", "samples")

    def __init__(
        self,
        source: MetricsSource,
        record: Callable[..., object],
        *,
        every: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        check(
            isinstance(every, int | float) and math.isfinite(every) and every > 0,
            "sample_every",
            every,
            "a number of seconds > 0",
        )
        self._source = source
        self._record = record
        self._every = float(every)
        self._clock = clock or SYSTEM_CLOCK
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self.samples = 0
        """How many readings were recorded so far."""

    @property
    def failures(self) -> int:
        """How many readings failed or came back empty."""
        return self._failures

    async def sample_once(self) -> bool:
        """Take one reading and record it; returns whether anything was recorded."""
        try:
            reading = await self._source.metrics()
        except Exception as exc:
            self._note_failure(error_text(exc))
            return False
        values = {
            name: float(value)
            for name in ("cpu", "memory")
            if isinstance(value := getattr(reading, name, None), int | float)
            and math.isfinite(value)
        }
        if not values:
            self._note_failure("the reading had neither cpu nor memory")
            return False
        self._record(**values)
        self.samples += 1
        return True

    def _note_failure(self, why: str) -> None:
        self._failures += 1
        # Once is enough: a sandbox without metrics would otherwise log every second.
        if self._failures == 1:
            log.warning(
                "resource sampling of %r failed (%s); skipping such readings", self._source, why
            )

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            await self.sample_once()
            await self._clock.sleep(self._every)

    async def __aenter__(self) -> ResourceSampler:
        self._task = asyncio.create_task(self.run(), name=f"labkit-sampler-{id(self):x}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # asyncio.wait never raises the sampler's own CancelledError, yet lets a
        # cancellation of the caller through.
        await asyncio.wait((task,))
        if not task.cancelled() and task.exception() is not None:
            log.warning("resource sampler stopped early", exc_info=task.exception())
