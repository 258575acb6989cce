"""The one fair FIFO wait queue under the runner's slots and both pools."""

from __future__ import annotations

import asyncio

import pytest

from labkit.waitqueue import WaitQueue


async def test_values_go_to_waiters_in_arrival_order() -> None:
    queue: WaitQueue[str, int] = WaitQueue()
    got: list[tuple[str, int]] = []

    async def wait(name: str) -> None:
        got.append((name, await queue.wait(name)))

    tasks = [asyncio.create_task(wait(name)) for name in "abc"]
    await asyncio.sleep(0)
    assert queue.payloads() == ["a", "b", "c"]
    for value in (1, 2, 3):
        assert queue.hand_first(value)
    await asyncio.gather(*tasks)
    assert got == [("a", 1), ("b", 2), ("c", 3)] and not queue
    assert not queue.hand_first(4)  # nobody waits


async def test_a_value_handed_as_its_waiter_is_cancelled_goes_back() -> None:
    returned: list[int] = []
    queue: WaitQueue[None, int] = WaitQueue(returned=returned.append)
    task = asyncio.create_task(queue.wait(None))
    await asyncio.sleep(0)
    queue.hand_first(7)  # served ...
    task.cancel()  # ... and cancelled before it could resume
    with pytest.raises(asyncio.CancelledError):
        await task
    assert returned == [7]


async def test_a_waiter_that_leaves_unserved_leaves_the_queue_and_says_so() -> None:
    left: list[bool] = []
    queue: WaitQueue[str, int] = WaitQueue(left=lambda: left.append(True))
    first = asyncio.create_task(queue.wait("first"))
    second = asyncio.create_task(queue.wait("second"))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert left == [True] and queue.payloads() == ["second"]
    queue.hand_first(1)
    assert await second == 1


async def test_front_keeps_a_turn_and_fail_all_fails_everyone() -> None:
    queue: WaitQueue[str, int] = WaitQueue()
    back = asyncio.create_task(queue.wait("back"))
    await asyncio.sleep(0)
    front = asyncio.create_task(queue.wait("front", front=True))
    await asyncio.sleep(0)
    assert queue.payloads() == ["front", "back"]
    assert queue.fail_all(lambda: RuntimeError("closed")) == 2
    for task in (front, back):
        with pytest.raises(RuntimeError, match="closed"):
            await task
