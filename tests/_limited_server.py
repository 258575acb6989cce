"""An HTTP/1.1 server on 127.0.0.1 that enforces a request rate, as an API gateway does.

Run as ``python tests/_limited_server.py RATE BURST``: it prints its port, serves
until its stdin closes, and answers each ``GET`` past RATE requests/s (GCRA with
BURST) with ``429 Too Many Requests`` and ``Retry-After`` in whole seconds
(rounded up: the header's usual form). ``GET /counts`` (never limited) answers
``ACCEPTED REJECTED`` since the previous ``/counts``.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time


class Gate:
    """GCRA: ``rate`` requests per second, ``burst`` back to back."""

    def __init__(self, rate: float, burst: int) -> None:
        self.interval = 1.0 / rate
        self.tolerance = (burst - 1) * self.interval
        self.tat = 0.0
        self.accepted = self.rejected = 0

    def answer(self, path: bytes) -> bytes:
        if path == b"/counts":
            body = b"%d %d" % (self.accepted, self.rejected)
            self.accepted = self.rejected = 0
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        now = time.monotonic()
        tat = max(self.tat, now)
        wait = tat - self.tolerance - now
        if wait > 0:
            self.rejected += 1
            return (
                b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: %d\r\n"
                b"Content-Length: 0\r\n\r\n" % math.ceil(wait)
            )
        self.tat = tat + self.interval
        self.accepted += 1
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def main(rate: float, burst: int) -> None:
    gate = Gate(rate, burst)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # headers: a GET has no body
                parts = line.split()
                writer.write(gate.answer(parts[1] if len(parts) > 1 else b"/"))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]), int(sys.argv[2])))
