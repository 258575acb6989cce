"""The injectable clocks and the token bucket that runs on them."""

from __future__ import annotations

import asyncio

import pytest

import labkit as lk
from labkit.policies import RateLimiter
from labkit.testing import FakeClock


async def test_fake_clock_moves_only_when_advanced() -> None:
    clock = FakeClock(start=10.0)
    woke: list[float] = []

    async def sleeper(seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(seconds)

    tasks = [asyncio.create_task(sleeper(s)) for s in (3.0, 1.0, 2.0)]
    await asyncio.sleep(0)
    assert clock.pending == 3 and woke == []
    clock.advance(1.5)
    await asyncio.sleep(0)
    assert woke == [1.0]
    assert clock.now() == 11.5
    clock.advance(10)
    await asyncio.gather(*tasks)
    assert woke == [1.0, 2.0, 3.0]
    assert clock.now() == 21.5
    with pytest.raises(ValueError, match="seconds"):
        clock.advance(-1)


async def test_fake_clock_autojump_skips_idle_time() -> None:
    clock = FakeClock(autojump=True)
    await clock.sleep(3600)
    assert clock.now() == 3600
    assert clock.sleeps == [3600]


async def test_fake_clock_timeout_raises_timeout_error_only_when_it_expires() -> None:
    clock = FakeClock(autojump=True)
    with pytest.raises(TimeoutError):
        async with clock.timeout(5):
            await clock.sleep(10)
    assert clock.now() == 5
    async with clock.timeout(5):
        await clock.sleep(1)
    async with clock.timeout(None):
        await clock.sleep(100)
    assert clock.now() == 106


async def test_system_clock_is_the_default() -> None:
    clock = lk.SystemClock()
    before = clock.now()
    await clock.sleep(0.001)
    assert clock.now() > before
    with pytest.raises(TimeoutError):
        async with clock.timeout(0.001):
            await asyncio.sleep(1)


def test_rate_limiter_is_exact_after_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(lk.RateLimit(10, per=1.0, burst=2), clock=clock)
    # the burst is granted at once; then a start is refused with the wait it needs
    assert [limiter.try_acquire() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.1])
    clock.advance(0.1)
    assert limiter.try_acquire() == 0.0 and limiter.try_acquire() == pytest.approx(0.1)
    clock.advance(10)  # a long idle period refills the burst, no more
    assert [limiter.try_acquire() == 0.0 for _ in range(3)] == [True, True, False]
