"""Which filesystem a path lives on: SQLite's WAL is unsafe on network filesystems."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ("NETWORK_FILESYSTEMS", "network_filesystem")

NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb3",
        "smbfs",
        "9p",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "fuse.sshfs",
        "fuse.glusterfs",
        "fuse.s3fs",
        "fuse.rclone",
        "fuse.gcsfuse",
        "davfs",
    }
)
"""Filesystem types (as in ``/proc/mounts``) on which SQLite's WAL is unsafe."""

_MOUNTS = Path("/proc/mounts")


def network_filesystem(path: str | os.PathLike[str], mounts: Path | None = None) -> str | None:
    """The network filesystem type that ``path`` lives on, or ``None`` if local.

    Args:
        path: A file or directory; its nearest existing ancestor is resolved.
        mounts: A file in ``/proc/mounts`` format (default: ``/proc/mounts``).
            Where it does not exist (macOS, Windows) the answer is ``None``:
            nothing is known, nothing is refused.

    Returns:
        The ``fstype`` of the mount holding ``path`` when it is in
        :data:`NETWORK_FILESYSTEMS`, else ``None``.
    """
    try:
        text = (mounts or _MOUNTS).read_text()
    except OSError:
        return None
    target = Path(path).absolute()
    while not target.exists() and target != target.parent:
        target = target.parent
    resolved = str(target.resolve())
    best, best_type = "", None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        # /proc/mounts escapes spaces and the like as octal (\040).
        mount_point = fields[1].encode().decode("unicode_escape")
        inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fields[2]
    return best_type if best_type in NETWORK_FILESYSTEMS else None
