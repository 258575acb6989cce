"""File access below a directory file descriptor that cannot be led out of it.

A sandbox's commands control every name in its directory and can swap a directory
for a symbolic link at any moment, so a path is never resolved first and opened
later. Every lookup starts at the sandbox's directory *file descriptor* and
refuses symbolic links at every component:

- with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` where the kernel has it
  (Linux 5.6+), one system call for the whole path;
- elsewhere (older kernels, seccomp filters, macOS) by a walk that opens one
  component at a time with ``O_NOFOLLOW | O_DIRECTORY`` relative to the previous
  component's descriptor.

A write goes to a new temporary file in the target's directory (opened through the
same descriptor) and is renamed over the target, so a hard link to a file outside
is replaced, never written through, and a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import platform
import secrets
import stat
import sys
from pathlib import PurePosixPath

from labkit.errors import SandboxPathError

__all__ = ("openat2_available", "read_below", "write_below")

_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
_SYS_OPENAT2 = 437  # the same number on every architecture that has the unified table
_ARCHES = frozenset({"x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x"})
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _openat2(dir_fd: int, path: str, flags: int) -> int:
    how = _OpenHow(flags, 0, _RESOLVE)
    fd = int(
        _libc().syscall(
            _SYS_OPENAT2, dir_fd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how)
        )
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return fd


@functools.cache
def openat2_available() -> bool:
    """Whether this kernel (and any seccomp filter) lets ``openat2`` through."""
    if not sys.platform.startswith("linux") or platform.machine() not in _ARCHES:
        return False
    root = os.open("/", _DIR_FLAGS)
    try:
        os.close(_openat2(root, ".", _DIR_FLAGS))
    except OSError:
        return False
    finally:
        os.close(root)
    return True


def _refused(path: PurePosixPath, exc: OSError) -> Exception:
    """labkit's error for a lookup the kernel refused, or ``exc`` itself."""
    if exc.errno == errno.ELOOP:
        return SandboxPathError(
            f"path {str(path)!r} goes through a symbolic link, which sandbox file "
            "access never follows"
        )
    if exc.errno == errno.EXDEV:
        return SandboxPathError(f"path {str(path)!r} leads out of the sandbox")
    return exc


def _open_component(dir_fd: int, name: str, path: PurePosixPath) -> int:
    try:
        return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
    except NotADirectoryError:
        # O_DIRECTORY|O_NOFOLLOW reports a symlink as "not a directory" on some systems.
        if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise _refused(path, OSError(errno.ELOOP, "symbolic link")) from None
        raise


def _open_dir(root_fd: int, parts: tuple[str, ...], path: PurePosixPath, *, create: bool) -> int:
    """A descriptor of the directory ``parts`` below ``root_fd``, made if ``create``."""
    if not parts:
        return os.dup(root_fd)
    if openat2_available():
        try:
            return _openat2(root_fd, "/".join(parts), _DIR_FLAGS)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as exc:
            raise _refused(path, exc) from None
    fd = os.dup(root_fd)
    try:
        for name in parts:
            try:
                child = _open_component(fd, name, path)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=fd)
                child = _open_component(fd, name, path)
            except OSError as exc:
                raise _refused(path, exc) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_below(root_fd: int, path: PurePosixPath, payload: bytes) -> None:
    """Write ``payload`` to ``path`` below ``root_fd``, creating parent directories.

    The file is written under a temporary name in the same directory, then renamed
    over ``path``: a hard link at ``path`` is replaced, not written through. An
    existing file keeps its permission bits.

    Raises:
        SandboxPathError: A component of ``path`` is a symbolic link.
        IsADirectoryError: ``path`` is a directory.
        OSError: The file cannot be written.
    """
    parent = _open_dir(root_fd, path.parts[:-1], path, create=True)
    try:
        name = path.name
        mode = 0o644
        try:
            existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISLNK(existing.st_mode):
                raise _refused(path, OSError(errno.ELOOP, "symbolic link"))
            if stat.S_ISDIR(existing.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
            mode = stat.S_IMODE(existing.st_mode)
        temp = f".labkit-{secrets.token_hex(6)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
        fd = os.open(temp, flags, 0o600, dir_fd=parent)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(payload)
                os.fchmod(file.fileno(), mode)
            os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=parent)
            raise
    finally:
        os.close(parent)


def read_below(root_fd: int, path: PurePosixPath) -> bytes:
    """The content of the regular file ``path`` below ``root_fd``.

    Raises:
        SandboxPathError: A component of ``path`` is a symbolic link, or ``path`` is
            not a regular file (a FIFO or device would block or never end).
        FileNotFoundError: There is no such file.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC
    if openat2_available():
        try:
            fd = _openat2(root_fd, str(path), flags)
        except OSError as exc:
            raise _refused(path, exc) from None
    else:
        parent = _open_dir(root_fd, path.parts[:-1], path, create=False)
        try:
            fd = os.open(path.name, flags | os.O_NOFOLLOW, dir_fd=parent)
        except OSError as exc:
            raise _refused(path, exc) from None
        finally:
            os.close(parent)
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
            raise SandboxPathError(f"path {str(path)!r} is not a regular file")
        return file.read()
