"""Finding the real processes a sandbox test started, by a mark on their command line."""

from __future__ import annotations

import asyncio
import random

import psutil


def token(hundreds: int) -> str:
    """A ``sleep`` duration no other process on the machine uses (``hundreds`` apart
    per test file, so two files never share one)."""
    return f"{random.randint(hundreds, hundreds + 99)}.{random.randint(10**8, 10**9 - 1)}"


def remaining(mark: str) -> list[psutil.Process]:
    """Live processes (not zombies) whose command line holds ``mark``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(mark in part for part in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


async def none_remain(mark: str, seconds: float = 5.0) -> list[psutil.Process]:
    """``[]`` once no process holds ``mark``; what is left after ``seconds`` otherwise."""
    for _ in range(int(seconds / 0.02)):
        left = remaining(mark)
        if not left:
            return []
        await asyncio.sleep(0.02)
    return remaining(mark)


async def appear(mark: str, count: int) -> None:
    """Until ``count`` processes hold ``mark`` (about 5 s at most)."""
    for _ in range(250):
        if len(remaining(mark)) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {count} processes holding {mark}, saw {remaining(mark)}")
