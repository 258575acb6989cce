"""Retry and rate-limit policies: small frozen option objects, plus the limiter state.

``Retry`` and ``RateLimit`` only describe a policy; they hold no state and can be
shared between runs. :class:`RateLimiter` is the live token bucket a runner builds
from a ``RateLimit``.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any

from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import check, is_int, is_real

__all__ = ("RateLimit", "RateLimiter", "Retry")

# Bounds on what a policy may ask for: past them a run would wait for days or
# the arithmetic of the bucket stops being exact, so they are refused as typos.
_MAX_DELAY_S = 86_400.0  # one day
_MAX_ATTEMPTS = 1_000_000
_MAX_BURST = 1_000_000_000


def _exception_types(value: object) -> tuple[type[BaseException], ...]:
    types = value if isinstance(value, tuple) else (value,)
    ok = bool(types) and all(isinstance(t, type) and issubclass(t, BaseException) for t in types)
    check(ok, "retry_on", value, "an exception class or a non-empty tuple of them")
    return types


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """Retry a failed attempt with exponential backoff.

    The delay after the k-th failed attempt (k = 1, 2, ...) is
    ``min(initial * backoff ** (k - 1), max_delay)``, then spread by ``jitter``: a
    uniformly random fraction of that delay, up to ``jitter`` either way, so that
    many tasks failing together do not retry in lockstep.

    Args:
        attempts: Total attempts including the first (1 means never retry; at most
            1,000,000).
        initial: The first delay, in seconds (0 to 86,400: one day).
        backoff: The factor between successive delays (>= 1).
        max_delay: The cap on any one delay, in seconds (0 to 86,400).
        jitter: The random spread as a fraction of the delay, 0 to 1.
        retry_on: Exception types that are retried; others fail at once.
            ``asyncio.CancelledError`` is never retried.
        retry_if_result: A predicate on the value an attempt returned: when it
            returns True the value is rejected and the item is tried again (as
            tenacity's ``retry_if_result``). When the attempts run out, the item
            fails with :class:`labkit.errors.ResultRejected` and its result keeps
            the last rejected value as ``value``.

    Raises:
        ConfigError: If an option is not a finite number of the right kind (bools
            are refused where numbers are wanted) or is out of range.
    """

    attempts: int = 3
    initial: float = 0.5
    backoff: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    retry_if_result: Callable[[Any], bool] | None = None

    def __post_init__(self) -> None:
        check(
            is_int(self.attempts) and 1 <= self.attempts <= _MAX_ATTEMPTS,
            "attempts",
            self.attempts,
            f"an integer from 1 to {_MAX_ATTEMPTS:,}",
        )
        check(
            is_real(self.initial) and 0 <= self.initial <= _MAX_DELAY_S,
            "initial",
            self.initial,
            f"a finite delay in seconds from 0 to {_MAX_DELAY_S:,.0f}",
        )
        check(
            is_real(self.backoff) and self.backoff >= 1,
            "backoff",
            self.backoff,
            "a finite factor >= 1",
        )
        check(
            is_real(self.max_delay) and 0 <= self.max_delay <= _MAX_DELAY_S,
            "max_delay",
            self.max_delay,
            f"a finite delay in seconds from 0 to {_MAX_DELAY_S:,.0f}",
        )
        check(
            is_real(self.jitter) and 0 <= self.jitter <= 1,
            "jitter",
            self.jitter,
            "a fraction from 0 to 1",
        )
        object.__setattr__(self, "retry_on", _exception_types(self.retry_on))
        check(
            self.retry_if_result is None or callable(self.retry_if_result),
            "retry_if_result",
            self.retry_if_result,
            "None or a callable value -> bool (True rejects the value)",
        )

    def should_retry(self, error: BaseException, failed_attempts: int) -> bool:
        """Whether to try again after ``failed_attempts`` attempts ended in ``error``.

        A value rejected by ``retry_if_result`` is retried whatever ``retry_on`` says.
        """
        if failed_attempts >= self.attempts:
            return False
        from labkit.errors import ResultRejected

        return isinstance(error, (*self.retry_on, ResultRejected))

    def delay(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failed_attempts``-th failure (1-based)."""
        exponent = max(failed_attempts - 1, 0)
        # Cap the exponent's effect before computing it: backoff**1000 overflows.
        if self.backoff > 1 and exponent * math.log(self.backoff) > math.log(1e300):
            base = self.max_delay
        else:
            base = min(self.initial * self.backoff**exponent, self.max_delay)
        if self.jitter:
            spread = (rng or random).uniform(-self.jitter, self.jitter)
            base *= 1.0 + spread
        return min(max(base, 0.0), self.max_delay)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Limit how often tasks start: a token bucket.

    At most ``burst`` starts happen at once; after that, starts are spaced so that
    no more than ``rate`` happen in any ``per`` seconds. Every attempt is a start,
    retries included. ``jitter`` adds a random delay of up to that many seconds to
    each start, to break up synchronized bursts against a remote service.

    Args:
        rate: Starts allowed per ``per`` seconds (> 0).
        per: The period, in seconds (> 0, at most 86,400).
        burst: How many starts may happen back to back (1 to 10**9).
        jitter: Extra random delay per start, in seconds (0 to 86,400).

    Raises:
        ConfigError: If an option is not a finite number of the right kind (bools
            are refused where numbers are wanted) or is out of range.
    """

    rate: float
    _: KW_ONLY
    per: float = 1.0
    burst: int = 1
    jitter: float = 0.0

    def __post_init__(self) -> None:
        check(
            is_real(self.rate) and self.rate > 0,
            "rate",
            self.rate,
            "a finite number of starts > 0",
        )
        check(
            is_real(self.per) and 0 < self.per <= _MAX_DELAY_S,
            "per",
            self.per,
            f"a finite period in seconds > 0 and <= {_MAX_DELAY_S:,.0f}",
        )
        check(
            is_int(self.burst) and 1 <= self.burst <= _MAX_BURST,
            "burst",
            self.burst,
            f"an integer from 1 to {_MAX_BURST:,}",
        )
        check(
            is_real(self.jitter) and 0 <= self.jitter <= _MAX_DELAY_S,
            "jitter",
            self.jitter,
            f"a finite delay in seconds from 0 to {_MAX_DELAY_S:,.0f}",
        )
        check(
            self.interval > 0 and math.isfinite(self.interval),
            "rate",
            self.rate,
            f"a rate whose interval per / rate is a positive finite time (per={self.per!r})",
        )

    @property
    def interval(self) -> float:
        """Seconds between starts once the burst is spent."""
        return self.per / self.rate


class RateLimiter:
    """The live bucket for a :class:`RateLimit` (GCRA, reserved at wake-up).

    GCRA's guarantee holds in every window, also after the event loop stalled: in
    any span of ``T`` seconds at most ``burst + rate * T / per`` starts happen. A
    start is granted only at the moment it happens: waiters queue in FIFO order,
    the first one sleeps until the bucket allows it, re-reads the clock when it
    wakes, and takes its start then. A stall therefore makes late starts late, never
    bunched (a limiter that hands out start times before sleeping fires every
    overdue waiter at once after a stall, and then a fresh burst on top).

    ``jitter`` delays each caller by a random ``[0, jitter]`` seconds *before* it
    queues, so it spreads starts without breaking the guarantee.

    Args:
        policy: The rate to enforce.
        clock: Where time comes from and where waiting happens.
        rng: The source of jitter.
    """

    __slots__ = (
        "_clock",
        "_interval",
        "_jitter",
        "_rng",
        "_tat",
        "_tolerance",
        "_waiters",
        "policy",
    )

    def __init__(
        self, policy: RateLimit, *, clock: Clock = SYSTEM_CLOCK, rng: random.Random | None = None
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._rng = rng or random.Random()
        self._interval = policy.interval
        self._tolerance = (policy.burst - 1) * self._interval
        self._jitter = policy.jitter
        self._tat = -math.inf  # the theoretical arrival time of the next start
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Callers queued for a start now."""
        return len(self._waiters)

    def try_acquire(self) -> float:
        """Take a start now if the bucket allows it: 0.0, else the seconds to wait."""
        now = self._clock.now()
        tat = self._tat if self._tat > now else now
        wait = tat - self._tolerance - now
        if wait > 0:
            return wait
        self._tat = tat + self._interval
        return 0.0

    async def acquire(self) -> None:
        """Wait until this caller may start; the start is taken when this returns."""
        if self._jitter:
            await self._clock.sleep(self._rng.uniform(0.0, self._jitter))
        waiters = self._waiters
        if not waiters and self.try_acquire() == 0.0:
            return
        me: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(me)
        try:
            if waiters[0] is not me:
                await me  # the head hands the turn on when it has started
            while (wait := self.try_acquire()) > 0:
                await self._clock.sleep(wait)
        finally:
            waiters.remove(me)
            if waiters and not waiters[0].done():
                waiters[0].set_result(None)
