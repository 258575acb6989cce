"""E2BSandbox against the real service: runs only where E2B_API_KEY is set."""

from __future__ import annotations

import os

import pytest

from labkit.sandbox import E2BSandbox, SandboxPool

pytestmark = [
    pytest.mark.e2b,
    pytest.mark.asyncio,
    pytest.mark.skipif(not os.environ.get("E2B_API_KEY"), reason="needs E2B_API_KEY"),
]


async def test_run_files_metrics_and_timeout_in_a_real_vm() -> None:
    async with E2BSandbox(timeout=120) as sb:
        result = await sb.run("echo hi; echo err >&2; exit 3")
        assert (result.exit_code, result.stdout, result.stderr) == (3, "hi\n", "err\n")
        assert "E2B_API_KEY" not in (await sb.run("env")).stdout
        await sb.write_file("in.txt", "data")
        assert (await sb.run("cat in.txt")).stdout == "data"
        assert await sb.read_file("in.txt") == b"data"
        slow = await sb.run("sleep 30", timeout=2)
        assert slow.timed_out and slow.exit_code == 124
        sample = await sb.metrics()
        assert sample.memory >= 0.0


async def test_pool_reuses_and_resets_a_real_vm() -> None:
    async with SandboxPool(lambda: E2BSandbox(timeout=120), max_size=1, prewarm=1) as pool:
        async with pool.session() as sb:
            await sb.run("touch leftover; sleep 300 &")
        async with pool.session() as sb:
            assert (await sb.run("ls")).stdout == ""
            assert "sleep 300" not in (await sb.run("ps -eo args")).stdout
        assert pool.stats().hits == 2


async def test_probe_price_and_pool_cost_of_a_real_vm() -> None:
    async with SandboxPool(lambda: E2BSandbox(timeout=120), max_size=1, max_idle=None) as pool:
        async with pool.session() as sb:
            assert isinstance(sb, E2BSandbox)
            assert await sb.probe()
            assert sb.price_per_second > 0
        async with pool.session():
            pass
        stats = pool.stats()
        assert stats.vanished == 0 and stats.cost_usd > 0
