"""Opening a store to read it, as ``labkit history`` and ``labkit monitor`` do."""

from __future__ import annotations

from typing import TYPE_CHECKING

from labkit.errors import StoreError

if TYPE_CHECKING:
    from labkit.store import Store

__all__ = ("open_to_read",)


def open_to_read(db: str) -> Store:
    """The store at ``db``, to read: read-only first, so that a read-only file,
    directory or filesystem works and nothing is written; else opened normally,
    which upgrades a store of an older labkit.

    Raises:
        StoreError: Neither works; the read-only attempt's reason is given.
    """
    from labkit.store import Store

    try:
        return Store(db, read_only=True)
    except StoreError as read_only_error:
        try:
            return Store(db)
        except StoreError:
            raise read_only_error from None
