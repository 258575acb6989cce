"""labkit's rate limit against a real limiter: nginx ``limit_req`` on 127.0.0.1.

nginx (rate=200r/s burst=10 nodelay) answers 503 to any request past its limit.
labkit's RateLimit(200, burst=10) must never trigger it, also when the event loop
stalls for 100 ms in the middle of the run (late wake-ups must not bunch up).
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import labkit as lk

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (Debian: apt-get install nginx)"
)

CONFIG = """
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    limit_req_zone $binary_remote_addr zone=z:1m rate=200r/s;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        location /warm {{ }}
        location / {{
            limit_req zone=z burst=10 nodelay;
            limit_req_status 503;
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    (tmp_path / "www" / "warm").mkdir(parents=True)
    (tmp_path / "www" / "ok.txt").write_text("ok")
    (tmp_path / "www" / "warm" / "ok.txt").write_text("ok")
    (tmp_path / "nginx.conf").write_text(CONFIG.format(root=tmp_path, port=port))
    assert NGINX is not None
    server = subprocess.Popen(
        [NGINX, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    err = server.stderr.read() if server.stderr else b""
                    pytest.fail(f"nginx did not start: {err.decode(errors='replace')}")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


class Connections:
    """Keep-alive HTTP/1.1 connections to nginx, each request written the moment the
    function starts (``transport.write`` sends at once), so the time nginx sees is the
    time labkit granted: no client library between them adds its own delay."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )

    async def open(self, n: int) -> None:
        for _ in range(n):
            self.free.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))
        # a first request on each connection, on the path that is not rate limited
        await asyncio.gather(*(self.get("/warm/ok.txt") for _ in range(n)))

    async def get(self, path: str) -> int:
        reader, writer = self.free.get_nowait()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        self.free.put_nowait((reader, writer))
        return status

    def close(self) -> None:
        while not self.free.empty():
            self.free.get_nowait()[1].close()


async def test_rate_limit_gets_no_rejection_from_nginx_even_after_a_stall(nginx: str) -> None:
    connections = Connections(int(nginx.rsplit(":", 1)[1]))
    await connections.open(16)
    stalled = False

    async def fetch(i: int) -> int:
        nonlocal stalled
        if i == 40 and not stalled:
            stalled = True
            time.sleep(0.1)  # noqa: ASYNC251 - stalls the loop on purpose
        return await connections.get("/ok.txt")

    # The one stall is the test's own: a collection of a big test process's garbage
    # would be a second one, between a start granted and its request written.
    gc.collect()
    gc.disable()
    try:
        report = await lk.run_parallel(
            fetch, range(150), max_concurrency=16, rate_limit=lk.RateLimit(200, burst=10)
        )
    finally:
        gc.enable()
        connections.close()
    codes = report.values
    assert len(codes) == 150 and stalled
    assert codes.count(503) == 0, f"nginx rejected {codes.count(503)} of 150"
    assert set(codes) == {200}


async def test_nginx_does_reject_an_unlimited_burst(nginx: str) -> None:
    """The control: without labkit's limit the same server rejects, so the test above
    would see a rejection if the limit were wrong."""
    connections = Connections(int(nginx.rsplit(":", 1)[1]))
    await connections.open(16)
    try:
        report = await lk.run_parallel(
            lambda _: connections.get("/ok.txt"), range(60), max_concurrency=16
        )
    finally:
        connections.close()
    assert report.values.count(503) > 0
