"""LocalSandbox(memory_mb=, cpus=): real subprocesses against the caps.

This machine has writable cgroup v1 memory and cpu controllers (see FACTS.md);
the tests of the fallback hide them from labkit's detection, as a machine with
cgroup v2 only (or without write access) would.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys

import psutil
import pytest

from labkit.errors import ConfigError, SandboxError
from labkit.sandbox import LocalSandbox, SandboxPool, caps
from labkit.sandbox.base import DEFAULT_MAX_OUTPUT, CommandResult
from labkit.testing import FakeSandbox

pytestmark = pytest.mark.asyncio

ALLOCATE = f"{sys.executable} -c \"x = b'x' * ({{mb}} << 20); print(len(x) >> 20)\""
BURN = (
    f'{sys.executable} -c "'
    "import os, time; t = time.time()\n"
    "while time.time() - t < 1.5: pass\n"
    'c = os.times(); print(c.user + c.system)"'
)
needs_cgroups = pytest.mark.skipif(
    not {"memory", "cpu"} <= set(caps._hierarchies()), reason="needs cgroup v1 memory and cpu"
)


@pytest.fixture
def no_cgroups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(caps, "_hierarchies", lambda: {})


async def test_caps_are_validated() -> None:
    for bad in ({"memory_mb": 0}, {"memory_mb": -5}, {"cpus": 0}, {"cpus": True}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            LocalSandbox(**bad)  # type: ignore[arg-type]


@needs_cgroups
async def test_a_command_past_the_memory_cap_is_killed_and_says_so() -> None:
    async with LocalSandbox(memory_mb=64) as sb:
        small = await sb.run(ALLOCATE.format(mb=8))
        assert small.ok and small.stdout == "8\n" and small.killed_reason is None
        big = await sb.run(ALLOCATE.format(mb=256))
        assert not big.ok
        assert big.exit_code == 137  # SIGKILL from the cgroup's OOM killer
        assert big.killed_reason == "memory"
        assert (await sb.run("echo still usable")).ok


@needs_cgroups
async def test_the_sampler_sees_memory_within_the_cap() -> None:
    hold = f"{sys.executable} -c \"import time; x = b'x' * (40 << 20); time.sleep(30)\" &"
    async with LocalSandbox(memory_mb=64) as sb:
        await sb.run(hold)
        for _ in range(200):
            sample = await sb.metrics()
            if sample.memory >= 40:
                break
            await asyncio.sleep(0.02)
        assert 40 <= sample.memory <= 64
        await sb.run(ALLOCATE.format(mb=256))  # killed; the holder may go too
        assert (await sb.metrics()).memory <= 64


@needs_cgroups
async def test_cpu_cap_limits_cpu_time_and_the_sampler_agrees() -> None:
    async with LocalSandbox(cpus=0.2) as sb:
        task = asyncio.create_task(sb.run(BURN))
        await sb.metrics()
        await asyncio.sleep(1.0)
        sample = await sb.metrics()
        result = await task
    assert result.ok, result
    used = float(result.stdout)
    assert used < 1.5 * 0.2 * 1.6  # CPU seconds over 1.5 s of wall time, quota 0.2
    assert sample.cpu < 0.2 * 100 * 1.6


@needs_cgroups
async def test_caps_reach_pooled_sandboxes_and_cgroups_are_removed() -> None:
    factory = functools.partial(LocalSandbox, memory_mb=64, cpus=1)
    async with SandboxPool(factory, max_size=1) as pool, pool.session() as sb:
        assert isinstance(sb, LocalSandbox)
        big = await sb.run(ALLOCATE.format(mb=256))
        assert big.killed_reason == "memory"
        groups = [
            base / name
            for base in caps._hierarchies().values()
            for name in (f"labkit-{sb.id}-p{os.getpid()}",)
            if (base / name).exists()
        ]
        assert len(groups) == 2  # memory and cpu
    assert not any(g.exists() for g in groups)


async def test_without_cgroups_memory_falls_back_to_rlimit(no_cgroups: None) -> None:
    async with LocalSandbox(memory_mb=128) as sb:
        big = await sb.run(ALLOCATE.format(mb=512))
        assert not big.ok
        assert "MemoryError" in big.stderr  # the allocation failed inside the command
        assert big.killed_reason is None
        assert (await sb.run(ALLOCATE.format(mb=8))).ok


async def test_without_cgroups_a_cpu_cap_refuses_to_start(no_cgroups: None) -> None:
    sb = LocalSandbox(cpus=0.5)
    with pytest.raises(SandboxError, match=r"cpus=0\.5 needs a writable cgroup v1 'cpu'"):
        await sb.start()
    await sb.close()


async def test_a_gigabyte_of_output_costs_labkit_only_the_cap() -> None:
    gigabyte = 1 << 30
    me = psutil.Process()
    async with LocalSandbox(memory_mb=256) as sb:
        await sb.run("true")  # the supervisor and its buffers exist before measuring
        before = me.memory_info().rss
        flood = await sb.run(f"yes labkit | head -c {gigabyte}; echo done >&2")
        grown = me.memory_info().rss - before
        print(f"1 GiB of output: labkit's RSS grew by {grown / 2**20:.1f} MiB")
        assert flood.ok and flood.truncated and flood.killed_reason is None
        assert len(flood.stdout.encode()) == DEFAULT_MAX_OUTPUT  # the first 16 MiB, whole lines
        assert flood.stdout.startswith("labkit\nlabkit\n") and flood.stderr == "done\n"
        assert grown < 4 * DEFAULT_MAX_OUTPUT, f"grew {grown / 2**20:.0f} MiB"

        small = await sb.run("printf 'héllo wörld'", max_output=9)  # cut inside the ö
        assert (small.stdout, small.truncated) == ("héllo w", True)
        whole = await sb.run("printf 'héllo wörld'", max_output=13)
        assert (whole.stdout, whole.truncated) == ("héllo wörld", False)


async def test_the_sandbox_default_cap_and_a_per_command_one() -> None:
    async with LocalSandbox(max_output=4) as sb:
        capped = await sb.run("echo 123456789; echo abcdefgh >&2")
        assert (capped.stdout, capped.stderr, capped.truncated) == ("1234", "abcd", True)
        wider = await sb.run("echo 123456789", max_output=100)
        assert (wider.stdout, wider.truncated) == ("123456789\n", False)


async def test_a_fake_sandbox_cuts_scripted_output_the_same_way() -> None:
    sb = FakeSandbox([CommandResult(0, "x" * 20, "", 0.0)] * 2, max_output=16)
    cut = await sb.run("anything")
    assert (len(cut.stdout), cut.truncated) == (16, True)
    assert not (await sb.run("anything", max_output=20)).truncated
