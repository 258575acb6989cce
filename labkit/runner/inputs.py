"""A run's input: the order items start in, and an iterable that may break part-way."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence, Sized
from typing import Any

from labkit.errors import check, is_real
from labkit.runner.options import Priority

__all__ = ("Input", "ordered_input")


class Input:
    """The items of one run, in the order they start.

    Attributes:
        pairs: ``(index, item)`` pairs, pulled lazily by the workers.
        size: How many items, when known up front (``len`` or a priority pass).
        items: The items by index when they can be looked up later (a sequence),
            so that never-started items keep their item on their result.
        error: The exception the user's iterable raised, if it did: the run then
            stops pulling and ends with what it pulled.
    """

    __slots__ = ("error", "items", "pairs", "size")

    def __init__(self, items: Iterable[Any], size: int | None, lookup: Sequence[Any] | None):
        self.error: Exception | None = None
        self.size = size
        self.items = lookup
        # Builtin sequences cannot raise part-way: only other iterables are guarded.
        safe = type(items) in (list, tuple, range)
        self.pairs: Iterator[tuple[int, Any]] = enumerate(items if safe else self._guarded(items))

    def _guarded(self, items: Iterable[Any]) -> Iterator[Any]:
        try:
            yield from items  # delegated in C: no cost per item
        except Exception as error:  # the user's iterable broke: keep what was pulled
            self.error = error

    def item(self, index: int) -> Any:
        """The item at ``index`` if it can be looked up, else None."""
        return self.items[index] if self.items is not None else None


def ordered_input(items: Iterable[Any], priority: Priority | None) -> Input:
    """The run's :class:`Input`: input order, or by ``priority`` (highest first, stable).

    Raises:
        ConfigError: ``priority`` holds a value per item but not one for every item,
            or a value that is not a finite number.
    """
    if priority is None:
        size = len(items) if isinstance(items, Sized) else None
        lookup = items if isinstance(items, Sequence) else None
        return Input(items, size, lookup)
    materialized = list(items)
    if callable(priority):
        keys = [priority(item) for item in materialized]
    else:
        check(
            len(priority) == len(materialized),
            "priority",
            f"{len(priority)} values",
            f"one value per item ({len(materialized)})",
        )
        keys = list(priority)
    for key in keys:
        check(
            is_real(key),
            "priority",
            key,
            "a finite number per item",
        )
    order = sorted(range(len(keys)), key=lambda i: -keys[i])
    run = Input((), len(materialized), materialized)
    run.pairs = ((i, materialized[i]) for i in order)
    return run
