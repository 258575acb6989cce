"""Back-off when a service says so: RetryAfter, Retry-After headers, adaptive RateLimit.

The end-to-end checks run a real HTTP server on 127.0.0.1 (``_limited_server.py``,
in a process of its own) that allows 200 requests/s (GCRA, burst 10) and answers
every request past that with 429 and a ``Retry-After`` header, as an API gateway
does. A minimal keep-alive client (raising ``RetryAfter`` on a 429) calls it
through labkit at a limit of 250/s: with ``adaptive=False`` about a fifth of the
calls are refused all along; with ``adaptive=True`` the limit must learn the
server's rate (ten times fewer 429s) and still use it (throughput within 10 % of
200/s). httpx's own ``HTTPStatusError`` is checked against the same server.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import labkit as lk
from labkit.errors import ConfigError, RetryAfter
from labkit.policies import RateLimiter, is_rejection, retry_after_of
from labkit.testing import FakeClock

SERVER_RATE = 200.0  # requests per second the server allows
SERVER_BURST = 10
CLIENT_RATE = 250.0
CLIENT_BURST = 10  # starts a late wake-up may catch up on (burst 1 loses them)
REQUESTS = 1200  # per run: about 6 s at the server's rate


def _status_error(status: int, headers: dict[str, str]) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://127.0.0.1/")
    response = httpx.Response(status, headers=headers, request=request)
    return httpx.HTTPStatusError("refused", request=request, response=response)


# -- reading a retry-after ----------------------------------------------------------------


def test_retry_after_is_read_from_labkit_and_http_client_errors() -> None:
    assert retry_after_of(RetryAfter(2.5)) == 2.5
    assert retry_after_of(_status_error(429, {"Retry-After": "7"})) == 7.0
    assert retry_after_of(_status_error(503, {"retry-after": "1.5"})) == 1.5
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert retry_after_of(_status_error(429, {"Retry-After": soon})) == pytest.approx(30, abs=2)
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert retry_after_of(_status_error(429, {"Retry-After": past})) == 0.0
    for unreadable in ({"Retry-After": "soon"}, {}):
        assert retry_after_of(_status_error(429, unreadable)) is None
    assert retry_after_of(ConnectionError("down")) is None

    # Rejections: a retry-after, or a 429 without one; not other failures.
    assert is_rejection(RetryAfter(0))
    assert is_rejection(_status_error(429, {}))
    assert is_rejection(_status_error(503, {"Retry-After": "3"}))
    assert not is_rejection(_status_error(500, {}))
    assert not is_rejection(ValueError("bad"))


def test_retry_after_is_read_from_aiohttp_errors() -> None:
    aiohttp = pytest.importorskip("aiohttp")
    url = aiohttp.client.URL("http://127.0.0.1/")
    info = aiohttp.RequestInfo(url=url, method="GET", headers={}, real_url=url)  # type: ignore[arg-type]
    error = aiohttp.ClientResponseError(info, (), status=429, headers={"Retry-After": "4"})
    assert retry_after_of(error) == 4.0 and is_rejection(error)


def test_retry_after_checks_its_value_and_survives_pickling() -> None:
    error = RetryAfter(3, "POST /jobs")
    assert str(error) == "POST /jobs: refused, retry after 3 s"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.retry_after, str(copy)) == (3.0, str(error))
    for bad in (-1, math.nan, math.inf, "3", True):
        with pytest.raises(ConfigError) as caught:
            RetryAfter(bad)  # type: ignore[arg-type]
        assert caught.value.option == "retry_after"
    with pytest.raises(ConfigError):
        lk.RateLimit(10, adaptive=1)  # type: ignore[arg-type]


# -- Retry honours it ---------------------------------------------------------------------


def test_retry_waits_at_least_what_the_service_asked() -> None:
    retry = lk.Retry(initial=0.5, max_delay=2.0, jitter=0.0)
    assert retry.delay(1) == 0.5
    assert retry.delay(1, retry_after=10.0) == 10.0  # beyond max_delay: the server knows
    assert retry.delay(3, retry_after=0.1) == 2.0  # the backoff is longer: it stands
    jittery = lk.Retry(initial=0.5, jitter=0.5)
    assert all(10.0 <= jittery.delay(1, retry_after=10.0) <= 15.0 for _ in range(200))


async def test_a_task_raising_retry_after_is_retried_after_that_long() -> None:
    clock = FakeClock(autojump=True)
    calls = 0

    async def busy(_: int) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RetryAfter(12.0)
        if calls == 2:
            raise _status_error(429, {"Retry-After": "3"})
        return "done"

    retry = lk.Retry(attempts=3, initial=0.5, jitter=0.0)
    report = await lk.run_parallel(busy, [0], retry=retry, clock=clock)
    assert report.values == ["done"]
    assert clock.sleeps == [12.0, 3.0]  # not the backoff's 0.5 and 1.0


# -- the adaptive limiter (AIMD) on a fake clock ----------------------------------------


def test_adaptive_limit_cuts_once_per_overload_and_recovers_slowly() -> None:
    clock = FakeClock()
    limiter = RateLimiter(lk.RateLimit(100, adaptive=True), clock=clock)
    assert limiter.rate() == 100
    limiter.rejected()
    limiter.rejected()  # the same overload: no second cut
    assert limiter.rate() == pytest.approx(90)
    clock.advance(0.3)
    limiter.rejected()
    assert limiter.rate() == pytest.approx((90 + 0.3) * 0.9)
    clock.advance(10.0)  # +1 % of the ceiling per second
    assert limiter.rate() == pytest.approx((90 + 0.3) * 0.9 + 10.0)
    clock.advance(60.0)
    assert limiter.rate() == 100  # never above the ceiling
    assert limiter.rejections == 3
    fixed = RateLimiter(lk.RateLimit(100), clock=clock)
    fixed.rejected()
    assert fixed.rate() == 100 and fixed.rejections == 0


def test_adaptive_limit_spaces_starts_by_the_rate_of_the_moment() -> None:
    clock = FakeClock()
    limiter = RateLimiter(lk.RateLimit(100, adaptive=True), clock=clock)
    assert limiter.try_acquire() == 0.0
    assert limiter.try_acquire() == pytest.approx(0.01)
    clock.advance(0.01)
    for _ in range(8):
        limiter.rejected()  # one cut: 90/s
    clock.advance(1e-9)
    assert limiter.try_acquire() == 0.0
    assert limiter.try_acquire() == pytest.approx(1 / 90, rel=1e-3)


# -- against a real server ------------------------------------------------------------


class Server:
    """``tests/_limited_server.py`` in a process of its own (no GIL shared with the client)."""

    def __init__(self, rate: float, burst: int) -> None:
        script = Path(__file__).with_name("_limited_server.py")
        self.process = subprocess.Popen(
            [sys.executable, str(script), str(rate), str(burst)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()  # the server ends when its stdin does
        try:
            self.process.wait(10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


class Client:
    """A minimal keep-alive HTTP/1.1 client: a 429 raises RetryAfter from its header,
    as a user wraps any client of their own."""

    def __init__(self, port: int, connections: int) -> None:
        self.port = port
        self.size = connections
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        self.idle = asyncio.Queue()

    async def __aenter__(self) -> Client:
        for _ in range(self.size):
            self.idle.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))
        return self

    async def __aexit__(self, *exc: object) -> None:
        while not self.idle.empty():
            _, writer = self.idle.get_nowait()
            writer.close()

    async def get(self, path: str) -> bytes:
        reader, writer = await self.idle.get()
        try:
            writer.write(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers["content-length"]))
        finally:
            self.idle.put_nowait((reader, writer))
        if status == 429:
            raise RetryAfter(float(headers["retry-after"]), f"GET {path}")
        return body


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    running = Server(SERVER_RATE, SERVER_BURST)
    try:
        yield running
    finally:
        running.close()


async def _counts(client: Client) -> tuple[int, int]:
    accepted, rejected = (await client.get("/counts")).split()
    return int(accepted), int(rejected)


async def _run(server: Server, *, adaptive: bool) -> tuple[int, int, float]:
    """REQUESTS calls through labkit at CLIENT_RATE: accepted and rejected by the
    server, and the successful calls per second."""
    async with Client(server.port, 16) as client:

        async def call(_: int) -> bytes:
            return await client.get("/")

        await asyncio.sleep(0.2)  # the server's bucket refills
        await _counts(client)
        began = time.monotonic()
        report = await asyncio.wait_for(
            lk.run_parallel(
                call,
                range(REQUESTS),
                max_concurrency=16,
                rate_limit=lk.RateLimit(CLIENT_RATE, burst=CLIENT_BURST, adaptive=adaptive),
                retry=lk.Retry(attempts=100, initial=0.05),
            ),
            timeout=60,
        )
        elapsed = time.monotonic() - began
        accepted, rejected = await _counts(client)
    assert report.stats.completed == REQUESTS, report.errors[:3]
    return accepted, rejected, REQUESTS / elapsed


async def _capacity(server: Server) -> float:
    """Calls per second this machine can drive through the client right now."""
    async with Client(server.port, 16) as client:
        began = time.monotonic()
        await asyncio.gather(*(client.get("/counts") for _ in range(500)))
        return 500 / (time.monotonic() - began)


async def test_adaptive_rate_limit_learns_a_real_servers_limit(server: Server) -> None:
    capacity = await _capacity(server)
    if capacity < 2 * CLIENT_RATE:
        pytest.skip(f"this machine drives {capacity:.0f} calls/s now: too busy for a 250/s test")
    fixed_accepted, fixed, fixed_rate = await _run(server, adaptive=False)
    learned_accepted, learned, learned_rate = await _run(server, adaptive=True)
    print(
        f"\nserver {SERVER_RATE:.0f}/s (burst {SERVER_BURST}), client limit {CLIENT_RATE:.0f}/s, "
        f"{REQUESTS} calls (client capacity {capacity:.0f}/s):\n"
        f"  adaptive=False: {fixed} rejected (429), {fixed_rate:.1f} calls/s\n"
        f"  adaptive=True:  {learned} rejected (429), {learned_rate:.1f} calls/s\n"
        f"  rejections fell {fixed / max(learned, 1):.1f}x"
    )
    assert fixed_accepted == learned_accepted == REQUESTS
    assert fixed >= 10 * max(learned, 1)
    assert learned_rate >= 0.9 * SERVER_RATE


async def test_an_httpx_429_is_retried_after_its_retry_after(server: Server) -> None:
    # httpx's own error, unwrapped: its response's Retry-After header is honoured.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:

        async def call(_: int) -> int:
            response = await client.get("/")
            response.raise_for_status()
            return response.status_code

        await client.get("/counts")  # the connection is open
        async with Client(server.port, 4) as flood:
            # Another client keeps the server's bucket empty for 0.5 s.
            async def hammer(until: float) -> None:
                while time.monotonic() < until:
                    with contextlib.suppress(RetryAfter):
                        await flood.get("/")

            flooding = asyncio.gather(*(hammer(time.monotonic() + 0.5) for _ in range(4)))
            await asyncio.sleep(0.1)
            began = time.monotonic()
            retry = lk.Retry(attempts=5, initial=0.01, jitter=0.0)
            report = await lk.run_parallel(call, [0], retry=retry)
            elapsed = time.monotonic() - began
            await flooding
    assert report.values == [200]
    assert report.results[0].attempts >= 2  # refused first
    assert elapsed >= 1.0  # "Retry-After: 1", not the 0.01 s backoff
