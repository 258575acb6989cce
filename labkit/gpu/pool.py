"""A fair, memory-aware GPU pool: it picks GPUs by free memory and load, and holds them.

Requests are served strictly first come, first served: a waiting request is never
overtaken by a later one, even one that would fit now, so a 4-GPU request is not
starved by a stream of 1-GPU requests. Among the GPUs that are not held and have at
least ``min_memory_mb`` free right now, the pool takes the highest scoring::

    score = 0.6 * memory_free_mb / memory_total_mb + 0.4 * (1 - utilization)

A GPU whose utilization is unknown (MIG instances) counts as idle, so MIG slices
compete on memory alone; one whose memory is unknown scores 0 on memory and never
meets a ``min_memory_mb`` above 0.

The pool belongs to one event loop at a time and is not thread-safe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections.abc import Generator, Hashable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from labkit._checks import check, is_int, is_real
from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import GPUError, GPUPoolClosed, GPUTimeout, GPUUnavailable, MissingDependency
from labkit.gpu.inventory import GPU, Inventory, StaticInventory
from labkit.waitqueue import WaitQueue

__all__ = (
    "GPUAllocation",
    "GPUPool",
    "GPUPoolStats",
    "GPURequest",
    "GPUStats",
    "score",
)

log = logging.getLogger("labkit.gpu")

# Past these a request is a typo: no machine has 65,536 GPUs, and a poll interval
# over a day would leave waiters unserved for days.
_MAX_GPUS = 65_536
_GPUS_ALLOWED = f"an integer from 0 to {_MAX_GPUS}"
_MAX_SECONDS = 86_400.0

# Process-wide, so an allocation from another pool can never pass for one of ours.
_allocation_ids = itertools.count(1)


def score(gpu: GPU) -> float:
    """How good a choice ``gpu`` is right now: 0.0 (full and busy) to 1.0 (empty and idle).

    ``0.6 * free memory fraction + 0.4 * (1 - utilization)``; unknown utilization
    counts as idle, unknown memory as none free.
    """
    total, free = gpu.memory_total_mb, gpu.memory_free_mb
    free_fraction = free / total if total and free is not None else 0.0
    utilization = gpu.utilization or 0.0
    return 0.6 * free_fraction + 0.4 * (1.0 - utilization)


def _rank(gpu: GPU) -> tuple[float, int]:
    """Best score first; the lower index breaks ties, so choices are reproducible."""
    return -score(gpu), gpu.index


def _has_memory(gpu: GPU, min_memory_mb: int) -> bool:
    if min_memory_mb <= 0:
        return True
    return gpu.memory_free_mb is not None and gpu.memory_free_mb >= min_memory_mb


@dataclass(frozen=True, slots=True, kw_only=True)
class GPUAllocation:
    """GPUs held by one holder until released.

    Equality and hashing go by ``id`` alone: every allocation is distinct, even
    two of the same GPU to the same owner at different times.

    Attributes:
        id: Unique within the process.
        indices: The devices' indices, best scoring first.
        uuids: Their UUIDs, in the same order.
        owner: Whatever the requester passed as ``owner`` (an instance index, a name).
        devices: The devices as they were read when they were chosen.
        wait_s: Seconds the request waited in the queue.
    """

    id: int
    indices: tuple[int, ...]
    uuids: tuple[str, ...]
    owner: Hashable | None = field(default=None, compare=False)
    devices: tuple[GPU, ...] = field(default=(), compare=False, repr=False)
    wait_s: float = field(default=0.0, compare=False)

    @property
    def env(self) -> dict[str, str]:
        """Environment for a process that should see exactly these GPUs.

        ``{"CUDA_VISIBLE_DEVICES": "<uuid>,<uuid>"}``: UUIDs rather than indices, so
        the assignment survives any renumbering (``CUDA_DEVICE_ORDER``, containers).
        An allocation of no GPUs gives ``""``, which CUDA reads as "no GPU"; leaving
        the variable unset would mean "every GPU". A fresh dict each time, safe to
        update.
        """
        return {"CUDA_VISIBLE_DEVICES": ",".join(self.uuids)}

    def __len__(self) -> int:
        return len(self.uuids)


@dataclass(frozen=True, slots=True, kw_only=True)
class GPUStats:
    """One GPU as the pool sees it at a moment.

    Attributes:
        index: The device's index.
        uuid: Its UUID.
        name: Its model name.
        memory_total_mb: Total memory (MB), ``None`` when unknown.
        memory_free_mb: Free memory (MB), ``None`` when unknown.
        memory_used_mb: Used memory (MB), ``None`` when unknown.
        utilization: 0.0 to 1.0, ``None`` when unsupported.
        score: The pool's score for it (0.0 to 1.0; higher is chosen first).
        owner: The current holder's ``owner``, ``None`` when free or not given.
        allocation_id: The id of the allocation holding it, ``None`` when free.
    """

    index: int
    uuid: str
    name: str
    memory_total_mb: int | None
    memory_free_mb: int | None
    memory_used_mb: int | None
    utilization: float | None
    score: float
    owner: Hashable | None
    allocation_id: int | None

    @property
    def allocated(self) -> bool:
        """Whether some holder has this GPU."""
        return self.allocation_id is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class GPUPoolStats:
    """The whole pool at a moment; what the live monitor shows.

    Attributes:
        gpus: Every device, ordered by index.
        gpus_allocated: How many devices are held.
        active: Allocations held now (including ones of 0 GPUs).
        max_parallel: The cap on ``active``, ``None`` for none.
        queue_length: Requests waiting.
        allocations: Allocations granted since the pool was made.
        timeouts: Requests that gave up after their ``timeout``.
        cancelled: Requests cancelled while waiting.
        mean_wait_s: Mean queue wait over granted allocations (s).
        max_wait_s: Longest queue wait of a granted allocation (s).
        abandoned: Allocations still held by code that its caller gave up on (a
            sync instance past its timeout, still running in its thread): they
            go back when that code really ends (:meth:`GPUPool.mark_abandoned`).
    """

    gpus: tuple[GPUStats, ...]
    gpus_allocated: int
    active: int
    max_parallel: int | None
    queue_length: int
    allocations: int
    timeouts: int
    cancelled: int
    mean_wait_s: float
    max_wait_s: float
    abandoned: int = 0


@dataclass(frozen=True, slots=True)
class _Request:
    """What a parked request waits for."""

    gpus: int
    min_memory_mb: int
    owner: Hashable | None
    since: float


class GPURequest:
    """What :meth:`GPUPool.acquire` returns: await it, or use it with ``async with``.

    ``await request`` gives a :class:`GPUAllocation` to release yourself with
    :meth:`GPUPool.release`; ``async with request as alloc`` releases it when the
    block exits, raises or is cancelled. A request is used once.
    """

    __slots__ = ("_allocation", "_args", "_pool", "_used")

    def __init__(
        self,
        pool: GPUPool,
        gpus: int,
        min_memory_mb: int,
        owner: Hashable | None,
        timeout: float | None,
    ) -> None:
        self._pool = pool
        self._args = (gpus, min_memory_mb, owner, timeout)
        self._allocation: GPUAllocation | None = None
        self._used = False

    def _start(self) -> Generator[Any, None, GPUAllocation]:
        if self._used:
            raise RuntimeError("this GPU request was already awaited; call pool.acquire() again")
        self._used = True
        return self._pool._acquire(*self._args).__await__()

    def __await__(self) -> Generator[Any, None, GPUAllocation]:
        return self._start()

    async def __aenter__(self) -> GPUAllocation:
        self._allocation = await self
        return self._allocation

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._allocation is not None:
            self._pool.release(self._allocation)
            self._allocation = None


class GPUPool:
    """Hands out GPUs exclusively, fairly, and by free memory and load.

    Args:
        inventory: Where the fleet is read. ``None``: this machine's GPUs through
            NVML when a driver and ``nvidia-ml-py`` are present, else an empty fleet
            (requests for 0 GPUs still work, others fail at once).
        max_parallel: At most this many allocations held at once (0-GPU ones
            included); ``None`` for no cap beyond the GPUs themselves.
        clock: For timeouts, waits and polling; tests pass a ``FakeClock``.
        poll_interval: While requests wait, re-read the inventory this often (s):
            memory freed by a finished process, or by another user, shows up there
            only, not as a release.

    Raises:
        ConfigError: ``inventory`` has no ``devices()``, ``max_parallel`` is not an
            integer >= 1, or ``poll_interval`` is not a finite number of seconds > 0.

    ``async with GPUPool(...) as pool:`` closes the pool when the block ends
    (:meth:`close`): waiting requests fail with :class:`~labkit.errors.GPUPoolClosed`.

    Example:
        >>> pool = GPUPool(static_fleet(2))
        >>> async with pool.acquire(gpus=1, min_memory_mb=20_000) as alloc:  # doctest: +SKIP
        ...     subprocess.run(cmd, env={**os.environ, **alloc.env})
    """

    def __init__(
        self,
        inventory: Inventory | None = None,
        max_parallel: int | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        poll_interval: float = 1.0,
    ) -> None:
        check(
            inventory is None
            or (not isinstance(inventory, type) and callable(getattr(inventory, "devices", None))),
            "inventory",
            inventory,
            "None or an inventory object with a devices() method (a labkit.StaticInventory, "
            "a labkit.NVMLInventory)",
        )
        check(
            max_parallel is None or (is_int(max_parallel) and max_parallel >= 1),
            "max_parallel",
            max_parallel,
            "None or an integer >= 1",
        )
        check(
            is_real(poll_interval) and 0 < poll_interval <= _MAX_SECONDS,
            "poll_interval",
            poll_interval,
            f"a finite number of seconds > 0 and <= {_MAX_SECONDS:,.0f}",
        )
        check(
            isinstance(clock, Clock) and not isinstance(clock, type),
            "clock",
            clock,
            "a labkit.Clock instance",
        )
        self._inventory = inventory if inventory is not None else _default_inventory()
        self._max_parallel = max_parallel
        self._clock = clock
        self._poll_interval = poll_interval
        # An allocation granted as its waiter gave up goes back; a waiter that leaves
        # may have held up the head of the queue.
        self._waiters: WaitQueue[_Request, GPUAllocation] = WaitQueue(
            returned=self.release, left=self._dispatch
        )
        self._active: dict[int, GPUAllocation] = {}
        self._abandoned: set[int] = set()
        self._holder: dict[str, GPUAllocation] = {}  # uuid -> allocation holding it
        self._last_devices: tuple[GPU, ...] = ()
        self._ranked_from: Sequence[GPU] | None = None
        self._ranked: list[GPU] = []
        self._poller: asyncio.Task[None] | None = None
        self._granted = 0
        self._wait_total = 0.0
        self._wait_max = 0.0
        self._timeouts = 0
        self._cancelled = 0
        self._closed = False

    async def __aenter__(self) -> GPUPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Refuse new requests and fail every waiting one with :class:`GPUPoolClosed`.

        Allocations already held stay valid: :meth:`release` keeps working, so an
        ``async with pool.acquire()`` block that outlives the pool ends cleanly.
        Safe to call twice. ``async with GPUPool(...) as pool:`` calls it on exit.
        """
        if self._closed:
            return
        self._closed = True
        while (waiter := self._waiters.first()) is not None:
            request = waiter.payload
            self._waiters.fail_first(
                GPUPoolClosed(
                    f"the GPU pool was closed while a request for {request.gpus} GPU(s) "
                    f"(owner {request.owner!r}) waited"
                )
            )
        if self._poller is not None:
            poller, self._poller = self._poller, None
            if not poller.get_loop().is_closed():
                poller.cancel()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (new requests are refused)."""
        return self._closed

    @property
    def inventory(self) -> Inventory:
        """Where this pool reads the fleet."""
        return self._inventory

    @property
    def max_parallel(self) -> int | None:
        """The cap on allocations held at once, ``None`` for none."""
        return self._max_parallel

    def acquire(
        self,
        gpus: int = 1,
        min_memory_mb: int = 0,
        owner: Hashable | None = None,
        timeout: float | None = None,
    ) -> GPURequest:
        """Ask for ``gpus`` GPUs with at least ``min_memory_mb`` free each.

        Use ``async with pool.acquire(...) as alloc:`` (released when the block
        ends, whatever happens), or ``alloc = await pool.acquire(...)`` followed by
        ``pool.release(alloc)``. Pass ``alloc.env`` to the process that uses them.

        Args:
            gpus: How many GPUs; 0 gives an allocation with none (still counted by
                ``max_parallel``).
            min_memory_mb: Free memory each chosen GPU must have right now (MB).
            owner: Shown in ``stats()`` as the holder (an instance index, a name).
            timeout: Give up after waiting this long (s); ``None`` waits for ever,
                0 only takes what is free now.

        Returns:
            A :class:`GPURequest`, to await or to enter.

        Raises:
            ConfigError: ``gpus``, ``min_memory_mb`` or ``timeout`` is negative, not a
                finite number (a bool is refused), or ``gpus`` is not an integer.
            GPUUnavailable: (when awaited) no state of this fleet could meet the
                request: more GPUs than exist, or ``min_memory_mb`` above the total
                memory of too many of them.
            GPUTimeout: (when awaited) ``timeout`` passed first; a ``TimeoutError``.
            GPUPoolClosed: (when awaited) the pool is closed, or was closed while
                the request waited.
        """
        check(is_int(gpus) and 0 <= gpus <= _MAX_GPUS, "gpus", gpus, _GPUS_ALLOWED)
        check(
            is_real(min_memory_mb) and min_memory_mb >= 0,
            "min_memory_mb",
            min_memory_mb,
            "a finite number of MB >= 0",
        )
        check(
            timeout is None or (is_real(timeout) and timeout >= 0),
            "timeout",
            timeout,
            "None (wait for ever) or a finite number of seconds >= 0",
        )
        return GPURequest(self, gpus, min_memory_mb, owner, timeout)

    def release(self, allocation: GPUAllocation) -> None:
        """Give the allocation's GPUs back and serve whoever waits next.

        Releasing an allocation that is no longer held (released twice, or never
        from this pool) does nothing, so an explicit release inside an
        ``async with`` block is harmless.
        """
        if self._active.get(allocation.id) is not allocation:
            return
        del self._active[allocation.id]
        self._abandoned.discard(allocation.id)
        for uuid in allocation.uuids:
            self._holder.pop(uuid, None)
        self._dispatch()

    def mark_abandoned(self, allocation: GPUAllocation) -> None:
        """Count ``allocation`` as held by code its caller gave up on, until released.

        The allocation stays held (no one else gets its GPUs) while that code can
        still run; :meth:`stats` counts it in ``abandoned``.
        """
        if self._active.get(allocation.id) is allocation:
            self._abandoned.add(allocation.id)

    def refresh(self) -> None:
        """Re-read the inventory now and serve waiting requests that fit.

        The pool also does this on every release and every ``poll_interval``
        while requests wait; call it after changing a :class:`StaticInventory`
        to see the effect without waiting for the next poll.
        """
        self._dispatch()

    def stats(self) -> GPUPoolStats:
        """A frozen snapshot of every GPU and the pool's counters.

        Reads the inventory; if that fails, shows the last values read rather
        than raising (monitoring must not break the work it watches).
        """
        try:
            devices = self._read()
        except GPUError as exc:
            log.warning("GPU inventory unreadable, showing last known values: %s", exc)
            devices = self._last_devices
        rows = []
        for gpu in devices:
            holder = self._holder.get(gpu.uuid)
            rows.append(
                GPUStats(
                    index=gpu.index,
                    uuid=gpu.uuid,
                    name=gpu.name,
                    memory_total_mb=gpu.memory_total_mb,
                    memory_free_mb=gpu.memory_free_mb,
                    memory_used_mb=gpu.memory_used_mb,
                    utilization=gpu.utilization,
                    score=score(gpu),
                    owner=None if holder is None else holder.owner,
                    allocation_id=None if holder is None else holder.id,
                )
            )
        return GPUPoolStats(
            gpus=tuple(rows),
            gpus_allocated=len(self._holder),
            active=len(self._active),
            max_parallel=self._max_parallel,
            queue_length=len(self._waiters),
            allocations=self._granted,
            timeouts=self._timeouts,
            cancelled=self._cancelled,
            mean_wait_s=self._wait_total / self._granted if self._granted else 0.0,
            max_wait_s=self._wait_max,
            abandoned=len(self._abandoned),
        )

    def snapshot(self) -> list[dict[str, Any]]:
        """The per-GPU rows of :meth:`stats` as plain dicts, one per GPU.

        Ready for ``pandas.DataFrame(pool.snapshot())`` or JSON; pool-wide
        counters are in :meth:`stats` only.
        """
        return [
            {**dataclasses.asdict(row), "allocated": row.allocated} for row in self.stats().gpus
        ]

    async def _acquire(
        self, gpus: int, min_memory_mb: int, owner: Hashable | None, max_wait: float | None
    ) -> GPUAllocation:
        if self._closed:
            raise GPUPoolClosed(f"the GPU pool is closed: no new requests ({gpus} GPU(s) asked)")
        devices: tuple[GPU, ...] = ()
        if gpus:
            devices = self._read()
            self._check_possible(devices, gpus, min_memory_mb)
        if not self._waiters.prune() and self._has_room():
            chosen = self._choose(devices, gpus, min_memory_mb) if gpus else ()
            if chosen is not None:
                return self._grant(chosen, owner, wait_s=0.0)
        if max_wait == 0:
            self._timeouts += 1
            raise GPUTimeout(
                f"gpus={gpus} with min_memory_mb={min_memory_mb} cannot be served now "
                f"({len(self._holder)} GPUs held, {len(self._active)} allocations, "
                f"{len(self._waiters)} queued) and timeout=0 allows no waiting"
            )
        request = _Request(gpus, min_memory_mb, owner, self._clock.now())
        self._start_polling()
        try:
            async with self._clock.timeout(max_wait):
                return await self._waiters.wait(request)
        except BaseException as exc:
            if isinstance(exc, TimeoutError):
                self._timeouts += 1
                raise GPUTimeout(
                    f"waited timeout={max_wait} s for {gpus} GPU(s) with "
                    f"min_memory_mb={min_memory_mb}; {len(self._holder)} of "
                    f"{len(self._last_devices)} GPUs held, {len(self._waiters)} requests queued"
                ) from exc
            if isinstance(exc, asyncio.CancelledError):
                self._cancelled += 1
            raise

    def _check_possible(self, devices: Sequence[GPU], gpus: int, min_memory_mb: int) -> None:
        if gpus > len(devices):
            raise GPUUnavailable(
                f"gpus={gpus} can never be met: this fleet has {len(devices)} GPU(s)"
                + ("" if devices else " (no NVIDIA GPU or driver found; ask for gpus=0)")
            )
        if min_memory_mb > 0:
            big = [
                gpu.memory_total_mb
                for gpu in devices
                if gpu.memory_total_mb is not None and gpu.memory_total_mb >= min_memory_mb
            ]
            if len(big) < gpus:
                largest = max((g.memory_total_mb or 0 for g in devices), default=0)
                raise GPUUnavailable(
                    f"min_memory_mb={min_memory_mb} with gpus={gpus} can never be met: "
                    f"only {len(big)} GPU(s) have that much memory in total "
                    f"(largest: {largest} MB)"
                )

    def _has_room(self) -> bool:
        return self._max_parallel is None or len(self._active) < self._max_parallel

    def _choose(
        self, devices: Sequence[GPU], gpus: int, min_memory_mb: int
    ) -> tuple[GPU, ...] | None:
        """The ``gpus`` best free devices with enough memory, or ``None`` if too few."""
        if devices is not self._ranked_from:
            # An inventory that has not changed returns the same tuple: rank it once.
            self._ranked = sorted(devices, key=_rank)
            self._ranked_from = devices
        holder = self._holder
        chosen = []
        for gpu in self._ranked:
            if gpu.uuid not in holder and _has_memory(gpu, min_memory_mb):
                chosen.append(gpu)
                if len(chosen) == gpus:
                    return tuple(chosen)
        return None

    def _grant(
        self, chosen: tuple[GPU, ...], owner: Hashable | None, wait_s: float
    ) -> GPUAllocation:
        allocation = GPUAllocation(
            id=next(_allocation_ids),
            indices=tuple([g.index for g in chosen]),
            uuids=tuple([g.uuid for g in chosen]),
            owner=owner,
            devices=chosen,
            wait_s=wait_s,
        )
        self._active[allocation.id] = allocation
        for uuid in allocation.uuids:
            self._holder[uuid] = allocation
        self._granted += 1
        self._wait_total += wait_s
        self._wait_max = max(self._wait_max, wait_s)
        return allocation

    def _dispatch(self) -> None:
        """Serve waiters from the head of the queue until one does not fit."""
        devices: tuple[GPU, ...] | None = None
        waiters = self._waiters
        while (waiter := waiters.first()) is not None and self._has_room():
            request = waiter.payload
            chosen: tuple[GPU, ...] = ()
            if request.gpus:
                if devices is None:
                    try:
                        devices = self._read()
                    except GPUError as exc:
                        # Leave the queue as it is; the next poll or release retries.
                        log.warning("GPU inventory unreadable, requests keep waiting: %s", exc)
                        return
                found = self._choose(devices, request.gpus, request.min_memory_mb)
                if found is None:
                    break  # strict FIFO: nobody behind the head may go first
                chosen = found
            waiters.hand_first(
                self._grant(chosen, request.owner, wait_s=self._clock.now() - request.since)
            )
        if not waiters and self._poller is not None:
            poller, self._poller = self._poller, None
            if not poller.get_loop().is_closed():
                poller.cancel()

    def _start_polling(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while self._waiters:
            await self._clock.sleep(self._poll_interval)
            self._dispatch()

    def _read(self) -> tuple[GPU, ...]:
        devices = tuple(self._inventory.devices())
        self._last_devices = devices
        return devices

    def __repr__(self) -> str:
        return (
            f"GPUPool({len(self._last_devices)} GPUs, {len(self._holder)} held, "
            f"{len(self._waiters)} waiting, max_parallel={self._max_parallel})"
        )


def _default_inventory() -> Inventory:
    """NVML when it works here, else an empty fleet."""
    from labkit.gpu.nvml import NVMLInventory

    try:
        return NVMLInventory()
    except (MissingDependency, GPUUnavailable) as exc:
        log.info("no GPUs available, the pool holds an empty fleet: %s", exc)
        return StaticInventory([])
