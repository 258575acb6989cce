"""LocalSandbox's write_file/read_file cannot be led out of the sandbox directory."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from labkit.errors import SandboxPathError
from labkit.sandbox import LocalSandbox, safefs

pytestmark = pytest.mark.asyncio


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each test with the kernel's openat2 and with the component-by-component walk."""
    if request.param == "openat2":
        if not safefs.openat2_available():
            pytest.skip("this kernel has no openat2")
    else:
        monkeypatch.setattr(safefs, "openat2_available", lambda: False)
    return str(request.param)


async def test_openat2_is_used_on_this_kernel() -> None:
    # Linux 6.18 here: the fast path must not silently degrade to the walk.
    assert safefs.openat2_available() == (os.uname().sysname == "Linux")


async def test_write_replaces_a_hard_link_instead_of_writing_through(
    tmp_path: Path, resolver: str
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    async with LocalSandbox(parent_dir=tmp_path) as sb:
        assert (await sb.run(f"ln {outside} hl && mkdir d && ln {outside} d/hl")).ok
        await sb.write_file("hl", "X")
        await sb.write_file("d/hl", b"Y")
        assert outside.read_text() == "precious"
        assert await sb.read_file("hl") == b"X"
        assert await sb.read_file("d/hl") == b"Y"
        assert os.stat(outside).st_nlink == 1  # both links were replaced by new files


async def test_existing_file_keeps_its_mode(resolver: str) -> None:
    async with LocalSandbox() as sb:
        await sb.run("echo '#!/bin/sh' > run.sh && chmod 755 run.sh")
        await sb.write_file("run.sh", "#!/bin/sh\necho rewritten\n")
        assert (await sb.run("./run.sh")).stdout == "rewritten\n"


async def test_symlinks_are_refused_at_every_component(tmp_path: Path, resolver: str) -> None:
    outside = tmp_path / "out"
    outside.mkdir()
    (outside / "f").write_text("secret")
    async with LocalSandbox() as sb:
        await sb.run(f"mkdir -p a/b && ln -s {outside} a/b/link && ln -s a inner")
        for path in ("a/b/link/f", "a/b/link/new", "inner/b/x"):
            with pytest.raises(SandboxPathError, match="symbolic link"):
                await sb.write_file(path, "x")
            with pytest.raises(SandboxPathError, match="symbolic link"):
                await sb.read_file(path)
        assert sorted(os.listdir(outside)) == ["f"]
        await sb.write_file("a/b/ok.txt", "fine")
        assert await sb.read_file("a/b/ok.txt") == b"fine"


async def test_a_fifo_is_refused_rather_than_read_forever(resolver: str) -> None:
    async with LocalSandbox() as sb:
        await sb.run("mkfifo pipe")
        with pytest.raises(SandboxPathError, match="regular file"):
            await asyncio.wait_for(sb.read_file("pipe"), 5)


async def test_a_directory_swapped_for_a_symlink_never_leads_out(
    tmp_path: Path, resolver: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    async with LocalSandbox() as sb:
        # Inside the sandbox, swap directory d for a link to `outside` over and over
        # (the link stays a few ms each time, so that calls meet it), for 3 s, while
        # write_file("d/x.txt") is called over and over: for 1 s at least, and until
        # it has met both states (2.5 s at most).
        swap = (
            f"mkdir d; end=$(($(date +%s) + 4)); while [ $(date +%s) -lt $end ]; do "
            f"mv d d.real; ln -s {outside} d; sleep 0.005; rm d; mv d.real d; done"
        )
        loop = asyncio.create_task(sb.run(swap, timeout=5))
        written = refused = 0
        now = asyncio.get_running_loop().time
        began = now()
        while now() < began + 1.0 or (not (written and refused) and now() < began + 2.5):
            try:
                await sb.write_file("d/x.txt", "data")
                written += 1
            except (SandboxPathError, OSError):
                refused += 1
        await loop
        assert os.listdir(outside) == []
        assert written > 0 and refused > 0  # both states of the swap were met
