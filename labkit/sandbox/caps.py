"""Resource caps for LocalSandbox: cgroup v1 memory and CPU controllers, or RLIMIT_AS.

What is used, detected when a sandbox with caps starts (never assumed):

- ``memory_mb``: a child group of this process's own group in the cgroup v1
  ``memory`` hierarchy, with ``memory.limit_in_bytes`` (and the swap limit where
  there is one). Its OOM killer kills a command past the cap, and the group's
  ``oom_kill`` counter tells labkit that it did. Where no such group can be
  created (cgroup v2 only, no write access, macOS) ``RLIMIT_AS`` caps each
  command's address space instead: an allocation past the cap fails inside the
  command (Python raises ``MemoryError``) rather than the command being killed, so
  ``killed_reason`` then stays ``None``.
- ``cpus``: a child group in the cgroup v1 ``cpu`` hierarchy with
  ``cpu.cfs_quota_us = cpus * cpu.cfs_period_us``. There is no fallback: without a
  writable ``cpu`` controller the sandbox refuses to start with a
  :class:`~labkit.errors.SandboxError` naming what is missing.

Groups are named ``labkit-<sandbox id>-p<owner pid>``; the sandbox's supervisor
removes them when it exits, and :func:`sweep_cgroups` removes those of owners that
died without it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from labkit._checks import is_real
from labkit.errors import ConfigError, SandboxError

__all__ = (
    "CgroupSet",
    "check_caps",
    "create_cgroups",
    "pid_alive",
    "remove_cgroups",
    "sweep_cgroups",
)

_OWNED = re.compile(r"^labkit-local-[0-9a-f]{8}-p(\d+)$")


@dataclass(frozen=True, slots=True)
class CgroupSet:
    """The cgroups made for one sandbox.

    Attributes:
        paths: Every group directory; a command's shell joins each.
        oom_file: The memory group's ``memory.oom_control`` (``None`` without one).
        rlimit_as: Bytes for ``RLIMIT_AS`` when memory is capped without a cgroup.
    """

    paths: tuple[str, ...] = ()
    oom_file: str | None = None
    rlimit_as: int | None = None


def check_caps(memory_mb: float | None, cpus: float | None) -> None:
    """Refuse caps that are not finite positive numbers of a possible size.

    Raises:
        ConfigError: ``memory_mb`` or ``cpus`` is not ``None`` or a finite number
            from its floor to its ceiling (1 MB to 16 TiB; 0.01 to 4,096 CPUs).
    """
    for option, value, floor, ceiling in (
        ("memory_mb", memory_mb, 1, 16 * 1024 * 1024),
        ("cpus", cpus, 0.01, 4096),
    ):
        ok = value is None or (is_real(value) and floor <= value <= ceiling)
        if not ok:
            raise ConfigError(
                option, value, f"None (no cap) or a finite number from {floor} to {ceiling:,}"
            )


@functools.cache
def _hierarchies() -> dict[str, Path]:
    """cgroup v1 controller name -> this process's group directory in its hierarchy."""
    mounts: dict[str, Path] = {}
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "cgroup":
            for option in fields[3].split(","):
                mounts.setdefault(option, Path(fields[1]))
    found: dict[str, Path] = {}
    for line in own:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            if controller in mounts:
                base = mounts[controller] / path.lstrip("/")
                found[controller] = base if base.is_dir() else mounts[controller]
    return found


def _make_group(controller: str, name: str) -> Path:
    """Create ``name`` under this process's group of ``controller``.

    Raises:
        SandboxError: The controller is not mounted as cgroup v1, or not writable.
    """
    base = _hierarchies().get(controller)
    if base is None:
        raise SandboxError(
            f"no cgroup v1 '{controller}' controller is mounted (checked /proc/self/mounts"
            "; cgroup v2 is not supported)"
        )
    group = base / name
    try:
        group.mkdir()
    except OSError as exc:
        raise SandboxError(f"cannot create the cgroup {group}: {exc}") from exc
    return group


def create_cgroups(name: str, memory_mb: float | None, cpus: float | None) -> CgroupSet:
    """Make the groups that enforce ``memory_mb`` and ``cpus`` for one sandbox.

    Args:
        name: The groups' directory name (``labkit-<id>-p<pid>``).
        memory_mb: Memory cap in MB (2**20 bytes), or ``None``.
        cpus: CPU cap in cores (0.5 is half a core), or ``None``.

    Raises:
        SandboxError: ``cpus`` is set and no writable cgroup ``cpu`` controller exists;
            the message names what is missing.
    """
    paths: list[Path] = []
    oom_file = None
    rlimit_as = None
    try:
        if cpus is not None:
            try:
                group = _make_group("cpu", name)
            except SandboxError as exc:
                raise SandboxError(
                    f"cpus={cpus} needs a writable cgroup v1 'cpu' controller "
                    f"(cpu.cfs_quota_us), and there is none: {exc}"
                ) from exc
            paths.append(group)
            period = int((group / "cpu.cfs_period_us").read_text())
            (group / "cpu.cfs_quota_us").write_text(str(max(1000, int(cpus * period))))
        if memory_mb is not None:
            limit = int(memory_mb * 2**20)
            try:
                group = _make_group("memory", name)
            except SandboxError:
                rlimit_as = limit
            else:
                paths.append(group)
                (group / "memory.limit_in_bytes").write_text(str(limit))
                swap = group / "memory.memsw.limit_in_bytes"
                if swap.exists():
                    with contextlib.suppress(OSError):
                        swap.write_text(str(limit))
                oom_file = str(group / "memory.oom_control")
    except OSError as exc:
        remove_cgroups(tuple(map(str, paths)))
        raise SandboxError(f"cannot set up the cgroups {name}: {exc}") from exc
    except BaseException:
        remove_cgroups(tuple(map(str, paths)))
        raise
    return CgroupSet(tuple(map(str, paths)), oom_file, rlimit_as)


def remove_cgroups(paths: tuple[str, ...]) -> None:
    """Kill what is left in each group and remove it (best effort)."""
    for path in paths:
        with contextlib.suppress(OSError):
            for line in Path(path, "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    os.kill(int(line), signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.rmdir(path)


def sweep_cgroups() -> None:
    """Remove labkit groups whose owner process has died (a killed run's leftovers)."""
    for base in {_hierarchies().get(c) for c in ("cpu", "memory")}:
        if base is None:
            continue
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            match = _OWNED.match(name)
            if match and not pid_alive(int(match[1])):
                remove_cgroups((str(base / name),))


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return True  # no /proc (macOS): the signal test is all there is
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"
