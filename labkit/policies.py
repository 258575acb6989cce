"""Retry and rate-limit policies: small frozen option objects, plus the limiter state.

``Retry`` and ``RateLimit`` only describe a policy; they hold no state and can be
shared between runs. :class:`RateLimiter` is the live token bucket a runner builds
from a ``RateLimit``.

A service that refuses a call says when to come back: :func:`retry_after_of`
reads that from :class:`labkit.errors.RetryAfter` and from the errors of common
HTTP clients, a ``Retry`` waits that long, and an adaptive ``RateLimit`` slows
down (:func:`is_rejection`).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any

from labkit._checks import check, is_int, is_real
from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import RetryAfter

__all__ = ("RateLimit", "RateLimiter", "Retry", "is_rejection", "retry_after_of")

# Bounds on what a policy may ask for: past them a run would wait for days or
# the arithmetic of the bucket stops being exact, so they are refused as typos.
_MAX_DELAY_S = 86_400.0  # one day
_MAX_ATTEMPTS = 1_000_000
_MAX_BURST = 1_000_000_000

# Adaptive rate (AIMD): a rejection multiplies the rate by _DECREASE, at most once
# per _CALM_S (the rejections of one overload arrive together: one cut for all of
# them); the rate then grows back by _RECOVERY of the configured rate per second,
# and never falls below _FLOOR of it.
_DECREASE = 0.9
_CALM_S = 0.25
_RECOVERY = 0.01
_FLOOR = 0.01
_SECONDS = re.compile(r"\d+(\.\d*)?")
_TOO_MANY_REQUESTS = 429


def retry_after_of(error: BaseException) -> float | None:
    """Seconds the service asked to wait before trying again, if the error says.

    Read, in order, from: a :class:`labkit.errors.RetryAfter`; a numeric
    ``retry_after`` attribute (clients that parse it themselves); a
    ``Retry-After`` header on the error (aiohttp's ``ClientResponseError.headers``)
    or on its response (httpx's ``HTTPStatusError.response.headers``,
    requests' ``HTTPError.response.headers``). The header may hold seconds
    (``"120"``, ``"1.5"``) or an HTTP date (``"Wed, 21 Oct 2026 07:28:00 GMT"``:
    the seconds from now until then, 0 when past). Anything else, or a value
    that does not parse, gives ``None``.
    """
    if isinstance(error, RetryAfter):
        return error.retry_after
    value: Any = getattr(error, "retry_after", None)
    if is_real(value) and value >= 0:
        return float(value)
    headers = getattr(error, "headers", None)
    if headers is None:
        headers = getattr(getattr(error, "response", None), "headers", None)
    getter = getattr(headers, "get", None)
    if getter is None:
        return None
    header = getter("Retry-After")
    return _parse_retry_after(header) if isinstance(header, str | bytes) else None


def _parse_retry_after(header: str | bytes) -> float | None:
    text = (header.decode("latin-1") if isinstance(header, bytes) else header).strip()
    if _SECONDS.fullmatch(text):
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def is_rejection(error: BaseException) -> bool:
    """Whether ``error`` is a service refusing a call for now: it carries a
    retry-after (:func:`retry_after_of`) or an HTTP status 429 (Too Many Requests)."""
    if retry_after_of(error) is not None:
        return True
    status = getattr(error, "status", None)  # aiohttp
    if status is None:
        status = getattr(getattr(error, "response", None), "status_code", None)  # httpx
    return status == _TOO_MANY_REQUESTS


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

    When the failed attempt's error says when to come back (a
    :class:`labkit.errors.RetryAfter`, or an HTTP client's error with a
    ``Retry-After`` header, in seconds or as a date: see :func:`retry_after_of`),
    the next attempt waits at least that long: ``max(backoff delay, retry_after)``,
    jitter only adding to the server's figure, honoured beyond ``max_delay`` up to
    one day.

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

    def delay(
        self,
        failed_attempts: int,
        rng: random.Random | None = None,
        retry_after: float | None = None,
    ) -> float:
        """Seconds to wait after the ``failed_attempts``-th failure (1-based).

        ``retry_after`` is what the service asked for (seconds), if it did.
        """
        backoff = self._backoff(failed_attempts, rng)
        if retry_after is None or retry_after <= backoff:
            return backoff
        asked = min(retry_after, _MAX_DELAY_S)
        if self.jitter:  # never earlier than asked: the server refuses those again
            asked *= 1.0 + (rng or random).uniform(0.0, self.jitter)
        return min(asked, _MAX_DELAY_S)

    def _backoff(self, failed_attempts: int, rng: random.Random | None) -> float:
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

    With ``adaptive=True`` the limit also learns the service's own (AIMD): an
    attempt that fails with a rejection (:func:`is_rejection`: a
    :class:`labkit.errors.RetryAfter`, an HTTP 429, or an error carrying a
    ``Retry-After`` header) multiplies the rate by 0.9, at most once per 0.25 s
    (the rejections of one overload arrive together); the rate then grows back
    by 1 % of ``rate`` per second, up to ``rate``, and never falls below 1 % of
    it. ``rate`` is then the ceiling. Measured against a real server allowing
    200 requests/s (429 past it), 1,200 calls at a limit of 250/s (burst 10):
    223 refused without ``adaptive``, 11 with it, at 193 calls/s.

    Args:
        rate: Starts allowed per ``per`` seconds (> 0).
        per: The period, in seconds (> 0, at most 86,400).
        burst: How many starts may happen back to back (1 to 10**9).
        jitter: Extra random delay per start, in seconds (0 to 86,400).
        adaptive: Lower the rate on rejections and recover slowly (above).

    Raises:
        ConfigError: If an option is not a finite number of the right kind (bools
            are refused where numbers are wanted) or is out of range.
    """

    rate: float
    _: KW_ONLY
    per: float = 1.0
    burst: int = 1
    jitter: float = 0.0
    adaptive: bool = False

    def __post_init__(self) -> None:
        check(isinstance(self.adaptive, bool), "adaptive", self.adaptive, "True or False")
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

    An adaptive policy's rate moves between 1 % of ``rate`` and ``rate`` as the
    runner reports rejections (:meth:`rejected`); the guarantee then holds with
    the rate of the moment.

    Args:
        policy: The rate to enforce.
        clock: Where time comes from and where waiting happens.
        rng: The source of jitter.
    """

    __slots__ = (
        "_calm_until",
        "_ceiling",
        "_clock",
        "_interval",
        "_jitter",
        "_rate",
        "_rng",
        "_since",
        "_tat",
        "_tolerance",
        "_waiters",
        "policy",
        "rejections",
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
        # Adaptive: the rate (starts/s) set at the last cut, at time _since; it
        # grows back linearly from there (see rate()).
        self._ceiling = policy.rate / policy.per
        self._rate = self._ceiling
        self._since = -math.inf
        self._calm_until = -math.inf
        self.rejections = 0

    @property
    def waiting(self) -> int:
        """Callers queued for a start now."""
        return len(self._waiters)

    def rate(self) -> float:
        """Starts per second allowed now (below ``rate / per`` after rejections)."""
        return self._rate_at(self._clock.now())

    def _rate_at(self, now: float) -> float:
        if self._rate >= self._ceiling:
            return self._ceiling
        return min(self._ceiling, self._rate + _RECOVERY * self._ceiling * (now - self._since))

    def _set_rate(self, rate: float, now: float) -> None:
        self._rate, self._since = rate, now
        self._interval = 1.0 / rate
        self._tolerance = (self.policy.burst - 1) * self._interval

    def rejected(self) -> None:
        """The service refused a start: cut the rate (adaptive policies only).

        At most one cut per 0.25 s; later rejections of the same overload are
        only counted (:attr:`rejections`).
        """
        if not self.policy.adaptive:
            return
        self.rejections += 1
        now = self._clock.now()
        if now < self._calm_until:
            return
        self._calm_until = now + _CALM_S
        self._set_rate(max(self._rate_at(now) * _DECREASE, self._ceiling * _FLOOR), now)

    def try_acquire(self) -> float:
        """Take a start now if the bucket allows it: 0.0, else the seconds to wait."""
        now = self._clock.now()
        if self._rate < self._ceiling:  # recovering from a cut: the rate of this moment
            self._set_rate(self._rate_at(now), now)
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
