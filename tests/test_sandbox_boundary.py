"""LocalSandbox's process boundary: nothing a command starts outlives its timeout,
close(), the pool's close(), or the labkit process (SIGTERM, SIGHUP, SIGKILL).

Every test gives its processes a unique ``sleep`` argument and then scans every
process on the machine with psutil, so a process that escaped the sandbox's tree
(``setsid``, double fork, ``env -u LABKIT_SANDBOX``) is still found.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import _processes
import psutil
import pytest
from _processes import appear, none_remain, remaining

from labkit.errors import SandboxStartError
from labkit.sandbox import LocalSandbox, SandboxPool
from labkit.sandbox.local import sweep_leftovers

pytestmark = pytest.mark.asyncio


def token() -> str:
    return _processes.token(200)


def escapes(mark: str) -> str:
    """Shell that starts four ``sleep`` processes that each leave the command's tree."""
    return (
        f"(setsid sleep {mark} &); "
        f"(env -u LABKIT_SANDBOX setsid sleep {mark} &); "
        f"sh -c 'sleep {mark} & exit 0'; "
        f"sleep {mark} &"
    )


async def test_setsid_daemon_dies_at_the_timeout() -> None:
    mark = token()
    async with LocalSandbox() as sb:
        result = await sb.run(f"sh -c '(setsid sleep {mark} &); sleep 100'", timeout=1)
        assert result.timed_out and result.exit_code == 124
        assert result.killed_reason == "timeout"
        assert await none_remain(mark) == []


async def test_daemons_without_the_marker_die_at_close() -> None:
    mark = token()
    sb = LocalSandbox()
    result = await sb.run(escapes(mark))
    assert result.ok
    await appear(mark, 4)
    await asyncio.sleep(0.2)
    assert len(remaining(mark)) == 4  # they run on after the command returned
    await sb.close()
    assert await none_remain(mark) == []


async def test_daemons_without_the_marker_die_at_pool_close() -> None:
    mark = token()
    pool = SandboxPool(LocalSandbox, max_size=2)
    async with pool.session() as sb:
        await sb.run(f"(env -u LABKIT_SANDBOX setsid sleep {mark} &)")
        await appear(mark, 1)
    # The session's reset already killed it; start another and close the pool under it.
    async with pool.session() as sb:
        await sb.run(f"(env -u LABKIT_SANDBOX setsid sleep {mark} &)")
        await appear(mark, 1)
        await pool.close()
    assert await none_remain(mark) == []


async def test_reset_kills_daemons_that_left_the_tree() -> None:
    mark = token()
    async with LocalSandbox() as sb:
        await sb.run(escapes(mark))
        await appear(mark, 4)
        await sb.reset()
        assert remaining(mark) == []  # reset returns once they are dead
        assert (await sb.run("echo again")).stdout == "again\n"


async def test_command_that_kills_its_reaper_still_loses_its_children() -> None:
    mark = token()
    async with LocalSandbox() as sb:
        # $PPID of the shell is the command's reaper; killing it re-parents the
        # sleep to the supervisor, which close() still empties.
        result = await sb.run(f"sleep {mark} & kill -9 $PPID; sleep 0.2")
        assert result.exit_code == 137  # reported as killed, not left hanging
        await appear(mark, 1)
    assert await none_remain(mark) == []


CHILD = """
import asyncio, json, sys
from labkit.sandbox import LocalSandbox, SandboxPool

MARK = sys.argv[1]
ESCAPES = sys.argv[2]

async def main():
    boxes = [LocalSandbox(), LocalSandbox()]
    pool = SandboxPool(LocalSandbox, max_size=2, prewarm=2)
    await pool.prewarm(2)
    for sb in boxes:
        await sb.run(ESCAPES)
    async with pool.session() as pooled:
        await pooled.run(ESCAPES)
        paths = [str(sb.path) for sb in boxes] + [str(pooled.path)]
        print(json.dumps(paths), flush=True)
        await asyncio.sleep(600)

asyncio.run(main())
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL, signal.SIGINT])
async def test_death_of_the_labkit_process_leaves_nothing(
    signum: signal.Signals, tmp_path: Path
) -> None:
    mark = token()
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        mark,
        escapes(mark),
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert child.stdout is not None
        line = await child.stdout.readline()
        paths = [Path(p) for p in json.loads(line)]
        assert all(p.is_dir() for p in paths)
        await appear(mark, 12)  # 4 escaping sleeps in each of 3 sandboxes
        kids = psutil.Process(child.pid).children()
        supervisors = [p for p in kids if "_supervisor.py" in " ".join(p.cmdline())]
        assert len(supervisors) == 4  # 2 sandboxes + 2 pooled
        child.send_signal(signum)
        async with asyncio.timeout(30):
            await child.wait()
        assert await none_remain(mark) == []
        for _ in range(250):
            if not any(p.exists() for p in paths) and not any(s.is_running() for s in supervisors):
                break
            await asyncio.sleep(0.02)
        assert [p for p in paths if p.exists()] == []
        assert [s for s in supervisors if s.is_running() and s.status() != "zombie"] == []
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_leftover_directories_of_dead_owners_are_removed_at_start(tmp_path: Path) -> None:
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()
    stale = tmp_path / f"labkit-local-0123abcd-p{dead.pid}-x1"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "f").write_text("left behind")
    live = tmp_path / f"labkit-local-4567cdef-p{os.getpid()}-x2"
    live.mkdir()
    unrelated = tmp_path / "labkit-notes"
    unrelated.mkdir()
    async with LocalSandbox(parent_dir=tmp_path) as sb:
        assert sb.path is not None and sb.path.parent.name == tmp_path.name
        assert not stale.exists()
        assert live.exists() and unrelated.exists()
        assert f"-p{os.getpid()}-" in sb.path.name  # its own dir carries its owner's pid
    sweep_leftovers(str(tmp_path))
    assert live.exists()  # its owner (this process) is alive


async def test_without_seqpacket_sockets_start_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # As on macOS, whose AF_UNIX sockets have no SOCK_SEQPACKET.
    def refuse(*_args: object) -> None:
        raise OSError(93, "Protocol not supported")

    monkeypatch.setattr("labkit.sandbox.supervision.socket.socketpair", refuse)
    sb = LocalSandbox(parent_dir=tmp_path, boundary="supervisor")
    with pytest.raises(SandboxStartError, match=r"needs Linux.*SOCK_SEQPACKET"):
        await sb.start()
    assert sb.path is None and os.listdir(tmp_path) == []  # nothing left behind
    await sb.close()
