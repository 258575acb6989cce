"""A run's input: the order items start in, and an iterable that may break part-way.

Items of a list, tuple or range are taken on the event loop (they cannot block).
Any other iterable, a generator above all, may do real work per item (read a
file, query a database): :class:`Feed` pulls its first item in a thread of the
run's own, and keeps pulling there while pulls are slow (over 5 ms), so a slow
generator stalls the loop (a Jupyter kernel's, with its widgets) at most once
per change from fast items to slow ones, by one item. Items are still pulled
one at a time, when a worker is free, never ahead. Wrap an iterable in
:class:`OnLoop` when it must run on the loop's thread (it touches loop-bound
state, such as a sampler whose ``tell`` runs between two ``ask()`` calls).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from labkit._checks import check, is_real
from labkit.runner.options import Priority

__all__ = ("Feed", "Input", "OnLoop", "ordered_input")

SLOW_PULL_S = 0.005
"""A pull of the user's iterable that takes longer moves the rest of them off the loop."""

_FAST_PULLS_BACK = 8
"""Fast pulls in a row in the thread that bring the pulls back to the loop."""

Pair = tuple[int, Any]


class OnLoop:
    """An iterable whose items must be pulled on the event loop's thread.

    Args:
        items: The iterable; it is pulled as is, on the loop, item by item.
    """

    __slots__ = ("items",)

    def __init__(self, items: Iterable[Any]) -> None:
        self.items = items

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)


class Input:
    """The items of one run, in the order they start.

    Attributes:
        pairs: ``(index, item)`` pairs, pulled lazily by the workers.
        size: How many items, when known up front (``len`` or a priority pass).
        items: The items by index when they can be looked up later (a sequence),
            so that never-started items keep their item on their result.
        error: The exception the user's iterable raised, if it did: the run then
            stops pulling and ends with what it pulled.
        threaded: Whether the items are pulled through a :class:`Feed` (any
            iterable but a list, tuple, range or :class:`OnLoop`).
    """

    __slots__ = ("error", "items", "pairs", "size", "threaded")

    def __init__(self, items: Iterable[Any], size: int | None, lookup: Sequence[Any] | None):
        self.error: Exception | None = None
        self.size = size
        self.items = lookup
        # Builtin sequences cannot raise part-way nor block: only other iterables are
        # guarded, and pulled through a Feed (off the loop when slow).
        safe = type(items) in (list, tuple, range)
        self.threaded = not safe and not isinstance(items, OnLoop)
        self.pairs: Iterator[tuple[int, Any]] = enumerate(items if safe else self._guarded(items))

    def _guarded(self, items: Iterable[Any]) -> Iterator[Any]:
        try:
            yield from items  # delegated in C: no cost per item
        except Exception as error:  # the user's iterable broke: keep what was pulled
            self.error = error

    def item(self, index: int) -> Any:
        """The item at ``index`` if it can be looked up, else None."""
        return self.items[index] if self.items is not None else None


class Feed:
    """Pairs of a user's iterable for the workers, pulled off the loop when slow.

    Every pull goes through :meth:`next` (one item per free worker, none ahead).
    The first runs in a thread; while pulls are fast (< 5 ms) they then run on
    the loop, where they cost nothing extra; after a slow one they run in the
    thread, one at a time, in order, until 8 in a row were fast again.

    Args:
        pairs: ``(index, item)`` pairs of the user's iterable.
        pulled: Called on the loop's thread with each pair pulled (counting).
    """

    __slots__ = ("_executor", "_fast", "_lock", "_pairs", "_pulled", "_threaded")

    def __init__(self, pairs: Iterator[Pair], pulled: Callable[[Pair], object]) -> None:
        self._pairs = pairs
        self._pulled = pulled
        self._fast = _FAST_PULLS_BACK - 1  # the first pull, if fast, brings them back
        self._threaded = True
        self._executor: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()

    async def next(self) -> Pair | None:
        """The next pair, or ``None`` once the iterable is exhausted."""
        if self._threaded or self._lock.locked():  # never two pulls at once
            async with self._lock:  # one pull at a time, in order
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(1, thread_name_prefix="labkit-items")
                loop = asyncio.get_running_loop()
                pair, took = await loop.run_in_executor(self._executor, _timed_next, self._pairs)
            # Back to the loop after a few fast pulls in a row (after the first,
            # if it is fast): a pull that was slow once, by a preemption or a
            # garbage collection, does not make every later one pay a thread hop.
            self._fast = 0 if took > SLOW_PULL_S else self._fast + 1
            self._threaded = self._fast < _FAST_PULLS_BACK
        else:
            pair, took = _timed_next(self._pairs)
            if took > SLOW_PULL_S:
                self._threaded, self._fast = True, 0
        if pair is not None:
            self._pulled(pair)
        return pair

    def close(self) -> None:
        """Let the thread go (a pull in progress finishes there; nothing waits for it)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def _timed_next(pairs: Iterator[Pair]) -> tuple[Pair | None, float]:
    """The next pair and the seconds the iterable took to give it (the pull alone,
    without the hop to a thread)."""
    began = time.perf_counter()
    pair = next(pairs, None)
    return pair, time.perf_counter() - began


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
