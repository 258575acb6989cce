"""Retry and rate-limit policies: small frozen option objects, plus the limiter state.

``Retry`` and ``RateLimit`` only describe a policy; they hold no state and can be
shared between runs. :class:`RateLimiter` is the live token bucket a runner builds
from a ``RateLimit``.
"""

from __future__ import annotations

import math
import random
from dataclasses import KW_ONLY, dataclass

from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import check

__all__ = ("RateLimit", "RateLimiter", "Retry")


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
        attempts: Total attempts including the first (1 means never retry).
        initial: The first delay, in seconds.
        backoff: The factor between successive delays (>= 1).
        max_delay: The cap on any one delay, in seconds.
        jitter: The random spread as a fraction of the delay, 0 to 1.
        retry_on: Exception types that are retried; others fail at once.
            ``asyncio.CancelledError`` is never retried.

    Raises:
        ConfigError: If an option is out of range.
    """

    attempts: int = 3
    initial: float = 0.5
    backoff: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        check(
            isinstance(self.attempts, int) and self.attempts >= 1,
            "attempts",
            self.attempts,
            "an integer >= 1",
        )
        check(self.initial >= 0, "initial", self.initial, "a delay in seconds >= 0")
        check(self.backoff >= 1, "backoff", self.backoff, "a factor >= 1")
        check(self.max_delay >= 0, "max_delay", self.max_delay, "a delay in seconds >= 0")
        check(0 <= self.jitter <= 1, "jitter", self.jitter, "a fraction from 0 to 1")
        object.__setattr__(self, "retry_on", _exception_types(self.retry_on))

    def should_retry(self, error: BaseException, failed_attempts: int) -> bool:
        """Whether to try again after ``failed_attempts`` attempts ended in ``error``."""
        return failed_attempts < self.attempts and isinstance(error, self.retry_on)

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
        per: The period, in seconds.
        burst: How many starts may happen back to back (>= 1).
        jitter: Extra random delay per start, in seconds (>= 0).

    Raises:
        ConfigError: If an option is out of range.
    """

    rate: float
    _: KW_ONLY
    per: float = 1.0
    burst: int = 1
    jitter: float = 0.0

    def __post_init__(self) -> None:
        check(
            isinstance(self.rate, int | float) and math.isfinite(self.rate) and self.rate > 0,
            "rate",
            self.rate,
            "a finite number of starts > 0",
        )
        check(self.per > 0, "per", self.per, "a period in seconds > 0")
        check(
            isinstance(self.burst, int) and self.burst >= 1, "burst", self.burst, "an integer >= 1"
        )
        check(self.jitter >= 0, "jitter", self.jitter, "a delay in seconds >= 0")

    @property
    def interval(self) -> float:
        """Seconds between starts once the burst is spent."""
        return self.per / self.rate


class RateLimiter:
    """The live bucket for a :class:`RateLimit` (GCRA, reservation style).

    Each caller reserves the next free start time and sleeps until it; this is
    exact (no over-grant at start, unlike a bucket that begins full of ``rate``
    tokens) and costs one clock read when no wait is needed.

    Args:
        policy: The rate to enforce.
        clock: Where time comes from and where waiting happens.
        rng: The source of jitter.
    """

    __slots__ = ("_clock", "_interval", "_jitter", "_next_free", "_rng", "_tolerance", "policy")

    def __init__(
        self, policy: RateLimit, *, clock: Clock = SYSTEM_CLOCK, rng: random.Random | None = None
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._rng = rng or random.Random()
        self._interval = policy.interval
        self._tolerance = (policy.burst - 1) * self._interval
        self._jitter = policy.jitter
        self._next_free = -math.inf

    def reserve(self) -> float:
        """Claim the next start; returns how many seconds to wait for it."""
        now = self._clock.now()
        theoretical = max(self._next_free, now)
        self._next_free = theoretical + self._interval
        wait = theoretical - self._tolerance - now
        if self._jitter:
            wait = max(wait, 0.0) + self._rng.uniform(0.0, self._jitter)
        return wait

    async def acquire(self) -> None:
        """Wait until this caller may start."""
        wait = self.reserve()
        if wait > 0:
            await self._clock.sleep(wait)
