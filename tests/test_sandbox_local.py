"""LocalSandbox against real subprocesses."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from labkit.errors import ConfigError, SandboxClosed, SandboxPathError
from labkit.sandbox import CommandResult, LocalSandbox, ResourceSample, Sandbox

pytestmark = pytest.mark.asyncio


@pytest.fixture(params=["supervisor", "group"])
def boundary(request: pytest.FixtureRequest) -> str:
    """Every test runs under both boundaries: Linux's supervisor and the process
    group that other systems get (see tests/test_sandbox_fallback.py)."""
    return str(request.param)


def alive(pid: int) -> bool:
    """Running and not a zombie (this container's init does not reap orphans)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def dies(pid: int) -> bool:
    """Whether ``pid`` is gone within a second: SIGKILL takes effect asynchronously."""
    for _ in range(100):
        if not alive(pid):
            return True
        await asyncio.sleep(0.01)
    return False


async def wait_for_file(sb: LocalSandbox, name: str) -> str:
    """Poll until a background command has written ``name`` (a pid, usually)."""
    for _ in range(200):
        try:
            text = (await sb.read_file(name)).decode().strip()
        except FileNotFoundError:
            text = ""
        if text:
            return text
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} never appeared")


async def test_is_a_sandbox_and_starts_on_first_use(boundary: str) -> None:
    sb = LocalSandbox(boundary=boundary)
    assert isinstance(sb, Sandbox)
    assert sb.path is None
    result = await sb.run("echo hi")
    assert sb.path is not None and sb.path.is_dir()
    assert result == CommandResult(0, "hi\n", "", result.duration, False)
    assert result.ok and result.duration > 0
    await sb.close()


async def test_exit_codes_stdout_and_stderr(boundary: str) -> None:
    async with LocalSandbox(boundary=boundary) as sb:
        result = await sb.run("echo out; echo err >&2; exit 3")
        assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
        assert not result.ok and not result.timed_out
        killed = await sb.run("kill -9 $$")
        assert killed.exit_code == 128 + 9


async def test_runs_in_its_directory_with_a_clean_environment(
    boundary: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("E2B_API_KEY", "e2b_parent_secret")
    monkeypatch.setenv("MY_TOKEN", "hunter2")
    monkeypatch.setenv("UNRELATED_PARENT_VAR", "x")
    sandbox = LocalSandbox(
        boundary=boundary, env={"CUDA_VISIBLE_DEVICES": "GPU-1"}, secrets=["MY_TOKEN"]
    )
    async with sandbox as sb:
        result = await sb.run("pwd; env", env={"EXTRA": "1"})
        lines = result.stdout.splitlines()
        assert lines[0] == str(sb.path)
        env = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
        assert env["HOME"] == str(sb.path)
        assert env["PATH"] == os.environ["PATH"]
        assert env["CUDA_VISIBLE_DEVICES"] == "GPU-1"
        assert env["EXTRA"] == "1"
        assert env["LABKIT_SANDBOX"] == sb.id
        for leaked in ("E2B_API_KEY", "MY_TOKEN", "UNRELATED_PARENT_VAR"):
            assert leaked not in env
        assert "hunter2" not in result.stdout and "e2b_parent_secret" not in result.stdout


async def test_secrets_passed_explicitly_are_refused_without_showing_the_value(
    boundary: str,
) -> None:
    with pytest.raises(ConfigError, match="E2B_API_KEY") as info:
        LocalSandbox(boundary=boundary, env={"E2B_API_KEY": "e2b_value"})
    assert "e2b_value" not in str(info.value)
    async with LocalSandbox(boundary=boundary, secrets=["MY_TOKEN"]) as sb:
        with pytest.raises(ConfigError, match="MY_TOKEN") as info:
            await sb.run("true", env={"MY_TOKEN": "hunter2"})
        assert "hunter2" not in str(info.value)


async def test_timeout_kills_the_whole_tree_and_reports_it(boundary: str) -> None:
    async with LocalSandbox(boundary=boundary) as sb:
        # The grandchild `sleep` is started by a child shell, and writes its pid.
        cmd = "sh -c 'sleep 30 & echo $! > grandchild.pid; wait' & echo started; wait"
        started = time.perf_counter()
        result = await sb.run(cmd, timeout=0.5)
        assert time.perf_counter() - started < 5
        assert result.timed_out and result.exit_code == 124 and not result.ok
        assert result.stdout == "started\n"  # what it wrote before the kill is kept
        pid = int((await sb.read_file("grandchild.pid")).decode())
        assert await dies(pid)


async def test_background_processes_do_not_hold_the_result_and_die_at_close(boundary: str) -> None:
    sb = LocalSandbox(boundary=boundary)
    started = time.perf_counter()
    result = await sb.run("sleep 30 & echo $! > bg.pid; echo done")
    assert result.stdout == "done\n"
    assert time.perf_counter() - started < 5  # did not wait for the sleep
    pid = int(await wait_for_file(sb, "bg.pid"))
    assert alive(pid)
    path = sb.path
    assert path is not None
    await sb.close()
    assert not path.exists()
    assert await dies(pid)
    assert not sb.healthy
    with pytest.raises(SandboxClosed):
        await sb.run("true")
    await sb.close()  # idempotent


async def test_close_finds_daemons_that_left_the_session(boundary: str) -> None:
    sb = LocalSandbox(boundary=boundary)
    await sb.run(
        f"{sys.executable} -c 'import os, time; os.setsid(); time.sleep(30)' & echo $! > d.pid"
    )
    pid = int(await wait_for_file(sb, "d.pid"))
    await sb.run("true")
    assert alive(pid)
    await sb.close()
    assert await dies(pid)


async def test_reset_kills_processes_and_empties_the_directory(boundary: str) -> None:
    async with LocalSandbox(boundary=boundary) as sb:
        await sb.write_file("a/b.txt", "x")
        await sb.run("mkdir ro && touch ro/f && chmod 500 ro; sleep 30 & echo $! > bg.pid")
        pid = int(await wait_for_file(sb, "bg.pid"))
        await sb.reset()
        assert sb.path is not None and list(sb.path.iterdir()) == []
        assert await dies(pid)
        assert sb.healthy
        assert (await sb.run("echo again")).stdout == "again\n"


async def test_files_round_trip_and_paths_that_escape_are_refused(
    boundary: str, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    async with LocalSandbox(boundary=boundary) as sb:
        await sb.write_file("dir/data.bin", b"\x00\xff")
        await sb.write_file("note.txt", "héllo")
        assert await sb.read_file("dir/data.bin") == b"\x00\xff"
        assert (await sb.read_file("note.txt")).decode() == "héllo"
        assert (await sb.run("cat note.txt")).stdout == "héllo"
        for bad in ("../x", "a/../../x", "/etc/passwd", str(outside), "~/x", ""):
            with pytest.raises(SandboxPathError):
                await sb.read_file(bad)
            with pytest.raises(SandboxPathError):
                await sb.write_file(bad, "x")
        await sb.run(f"ln -s {outside} link.txt && ln -s {tmp_path} linkdir")
        with pytest.raises(SandboxPathError, match="symbolic link"):
            await sb.read_file("link.txt")
        with pytest.raises(SandboxPathError):
            await sb.write_file("link.txt", "overwrite")
        with pytest.raises(SandboxPathError):
            await sb.write_file("linkdir/new.txt", "x")
        assert outside.read_text() == "secret"
        assert not (tmp_path / "new.txt").exists()
        with pytest.raises(FileNotFoundError):
            await sb.read_file("missing.txt")


async def test_metrics_of_a_busy_process(boundary: str) -> None:
    async with LocalSandbox(boundary=boundary) as sb:
        idle = await sb.metrics()
        assert isinstance(idle, ResourceSample)
        assert (idle.cpu, idle.memory) == (0.0, 0.0)
        await sb.run(f"{sys.executable} -c 'while True: pass' &")
        await sb.metrics()  # first sight of the process: cpu_percent needs a baseline
        await asyncio.sleep(0.3)
        busy = await sb.metrics()
        assert busy.cpu > 10
        assert busy.memory > 1
        assert 0 < busy.memory_percent < 100
        assert abs(busy.time - time.time()) < 60


async def test_cancelling_run_kills_its_tree(boundary: str) -> None:
    async with LocalSandbox(boundary=boundary) as sb:
        task = asyncio.create_task(sb.run("sh -c 'sleep 30 & echo $! > gc.pid; wait'"))
        pid = int(await wait_for_file(sb, "gc.pid"))
        assert alive(pid)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await dies(pid)


async def test_bad_timeout_is_a_config_error(boundary: str) -> None:
    async with LocalSandbox(boundary=boundary) as sb:
        with pytest.raises(ConfigError, match="timeout"):
            await sb.run("true", timeout=0)


async def test_forgotten_sandbox_is_cleaned_up_when_collected(boundary: str) -> None:
    sb = LocalSandbox(boundary=boundary)
    await sb.run("true")
    path = sb.path
    assert path is not None and path.exists()
    del sb
    assert not path.exists()
