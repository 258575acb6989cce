"""A live monitor of the GPU pool, the sandbox pool and a runner.

:class:`PoolMonitor` only reads ``stats()`` snapshots (frozen dataclasses) and
renders them as HTML tables; it never touches a pool's internals. It shows only
what it was given (no table for a pool it does not watch), refreshes from an
asyncio task on the running loop every ``interval`` seconds, redraws a section
only when its snapshot changed, shows "N/A" for what the hardware does not report
(no NVML, no utilisation on MIG), and stops on :meth:`PoolMonitor.stop` or when
the widget is closed. Given a run's :class:`labkit.progress.InstanceProgress`
(or a panel holding one), it also shows where the instances stand, drawn as the
panel draws it.
"""

from __future__ import annotations

import asyncio
import html
import logging
from typing import Any

import ipywidgets as w

from labkit.clock import SYSTEM_CLOCK, Clock
from labkit.errors import ConfigError
from labkit.loop import running_loop
from labkit.progress import ProgressSnapshot
from labkit.widgets.bars import grid_html, summary_html

__all__ = ("PoolMonitor", "gpu_table_html", "progress_html", "runner_html", "sandbox_html")

log = logging.getLogger("labkit.widgets")

NA = "N/A"

_TABLE = "border-collapse:collapse;font-size:12px;font-family:var(--jp-code-font-family,monospace)"
_CELL = "padding:2px 8px;text-align:left;border-bottom:1px solid #ddd"


def _row(cells: list[str], header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f'<{tag} style="{_CELL}">{c}</{tag}>' for c in cells) + "</tr>"


def _table(title: str, header: list[str], rows: list[list[str]], css_class: str) -> str:
    body = _row(header, header=True) + "".join(_row(r) for r in rows)
    return (
        f'<div class="{css_class}"><b>{html.escape(title)}</b>'
        f'<table style="{_TABLE}">{body}</table></div>'
    )


def _bar(used: float | None, total: float | None, unit: str = "MB") -> str:
    """A small horizontal bar with ``used / total`` beside it; N/A when unknown."""
    if used is None or total is None or total <= 0:
        return NA
    fraction = min(max(used / total, 0.0), 1.0)
    color = "#e45756" if fraction > 0.9 else "#4c78a8"
    return (
        '<div style="display:inline-block;width:90px;height:9px;background:#eee;'
        f'vertical-align:middle"><div style="width:{fraction * 100:.0f}%;height:100%;'
        f'background:{color}"></div></div> {used:,.0f} / {total:,.0f} {unit}'
    )


def _percent(fraction: float | None) -> str:
    return NA if fraction is None else f"{fraction * 100:.0f}%"


def gpu_table_html(stats: Any) -> str:
    """One row per GPU: memory used/total as a bar, utilisation, owner; N/A where unknown.

    Args:
        stats: A ``GPUPoolStats`` snapshot, or ``None`` when there is no pool.

    Returns:
        An HTML fragment.
    """
    if stats is None:
        return _table("GPUs", ["GPU"], [[f"{NA} (no GPU pool)"]], "labkit-gpus")
    if not stats.gpus:
        return _table(
            "GPUs", ["GPU"], [[f"{NA} (no GPU found: NVML absent or no device)"]], "labkit-gpus"
        )
    rows = [
        [
            str(gpu.index),
            html.escape(gpu.name),
            _bar(gpu.memory_used_mb, gpu.memory_total_mb),
            _percent(gpu.utilization),
            "free" if gpu.owner is None and not gpu.allocated else html.escape(str(gpu.owner)),
        ]
        for gpu in stats.gpus
    ]
    title = (
        f"GPUs: {stats.gpus_allocated}/{len(stats.gpus)} allocated, "
        f"{stats.queue_length} waiting, mean wait {stats.mean_wait_s:.2f} s"
    )
    return _table(title, ["#", "name", "memory", "util", "owner"], rows, "labkit-gpus")


def sandbox_html(stats: Any) -> str:
    """The sandbox pool's size, activity, hits and misses, reuse rate and startup time.

    Args:
        stats: A ``SandboxPoolStats`` snapshot, or ``None`` when there is no pool.

    Returns:
        An HTML fragment.
    """
    header = ["size", "active", "idle", "hits", "misses", "reuse rate", "avg startup"]
    if stats is None:
        return _table("Sandboxes", header, [[NA] * len(header)], "labkit-sandboxes")
    row = [
        str(stats.pool_size),
        str(stats.active),
        str(stats.idle),
        str(stats.hits),
        str(stats.misses),
        _percent(stats.reuse_rate),
        f"{stats.avg_startup_ms:.0f} ms",
    ]
    return _table("Sandboxes", header, [row], "labkit-sandboxes")


def progress_html(snapshot: ProgressSnapshot | None) -> str:
    """Where a run's instances stand: the summary line and one square per instance.

    Args:
        snapshot: A run's progress, or ``None`` when it cannot be read.

    Returns:
        An HTML fragment.
    """
    if snapshot is None:
        return f'<div class="labkit-instances"><b>Instances</b> {NA}</div>'
    return (
        f'<div class="labkit-instances"><b>Instances</b> {summary_html(snapshot)}'
        f"{grid_html(snapshot)}</div>"
    )


def runner_html(stats: Any) -> str:
    """The runner's queue, progress and throughput.

    Args:
        stats: A ``RunnerStats`` snapshot, or ``None`` when there is no runner.

    Returns:
        An HTML fragment.
    """
    header = ["queued", "running", "done", "failed", "retries", "throughput", "limit", "host"]
    if stats is None:
        return _table("Runner", header, [[NA] * len(header)], "labkit-runner")
    held_reason = getattr(stats, "held_reason", None)
    held_back = getattr(stats, "held_back", 0)
    if held_reason is not None:
        host = f"held back by {held_reason}"
    elif held_back:
        host = f"ok ({held_back} starts held, {getattr(stats, 'held_seconds', 0.0):.1f} s)"
    else:
        host = "ok"
    row = [
        str(stats.queued),
        str(stats.running),
        str(stats.done),
        str(stats.failed),
        str(stats.retries),
        f"{stats.throughput:.1f}/s",
        str(getattr(stats, "max_concurrency", NA)),
        html.escape(host),
    ]
    return _table("Runner", header, [row], "labkit-runner")


class PoolMonitor(w.VBox):  # type: ignore[misc]
    """Live tables of GPUs, sandboxes and runner progress, refreshed every ``interval`` s.

    Only what it was given has a section; given nothing, it says so in one line.
    Created inside a running loop (a notebook cell), it starts refreshing at once
    from an asyncio task; elsewhere call :meth:`start` from a coroutine, or
    :meth:`refresh` by hand. Reading a snapshot that fails shows N/A for that
    section and never raises: watching must not break the work watched.

    Args:
        gpu_pool: A ``GPUPool`` (anything with ``stats()`` -> ``GPUPoolStats``).
        sandbox_pool: A ``SandboxPool`` (``stats()`` -> ``SandboxPoolStats``).
        runner: A ``Runner`` (``stats()`` -> ``RunnerStats``).
        progress: A run's :class:`~labkit.progress.InstanceProgress`, or an
            ``ExperimentPanel`` (its current run's progress is shown).
        interval: Seconds between refreshes.
        clock: The clock the refresh task sleeps on (tests pass a ``FakeClock``).
        autostart: Start refreshing at once when a loop is running.

    Raises:
        ConfigError: If ``interval`` is not positive.
    """

    def __init__(
        self,
        gpu_pool: Any = None,
        sandbox_pool: Any = None,
        runner: Any = None,
        interval: float = 1.0,
        *,
        progress: Any = None,
        clock: Clock | None = None,
        autostart: bool = True,
    ) -> None:
        # Set first: ipywidgets closes even a half-built widget when collected.
        self._task: asyncio.Task[None] | None = None
        if not interval > 0:
            raise ConfigError("interval", interval, "a number of seconds > 0")
        self.gpu_pool = gpu_pool
        self.sandbox_pool = sandbox_pool
        self.runner = runner
        self.progress = progress
        self.interval = float(interval)
        self._clock = clock or SYSTEM_CLOCK
        self._last: dict[str, Any] = {}
        self.refreshes = 0
        """How many refreshes have run (each reads every snapshot once)."""
        self.gpus = w.HTML()
        self.sandboxes = w.HTML()
        self.runner_stats = w.HTML()
        self.instances = w.HTML()
        self.status = w.HTML()
        sections = {
            self.gpus: gpu_pool,
            self.sandboxes: sandbox_pool,
            self.runner_stats: runner,
            self.instances: progress,
        }
        for section, source in sections.items():
            section.layout.display = "none" if source is None else ""
        super().__init__([*sections, self.status])
        self.add_class("labkit-pool-monitor")
        self.refresh()
        if autostart and running_loop() is not None:
            self.start()  # without a loop the caller starts it, or refreshes by hand

    @property
    def running(self) -> bool:
        """Whether the refresh task is alive."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Refresh every ``interval`` seconds from a task on the running loop.

        Raises:
            RuntimeError: If no event loop is running in this thread.
        """
        if self.running:
            return
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._refresh_forever(), name="labkit-pool-monitor")
        self.status.value = ""

    def stop(self) -> None:
        """Stop refreshing (the tables keep their last values)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if hasattr(self, "status"):  # absent when construction failed
            self.status.value = "<i>monitor stopped</i>"

    def close(self) -> None:
        """Stop refreshing and close the widget."""
        self.stop()
        super().close()

    def refresh(self) -> None:
        """Read every snapshot once and redraw the sections that changed."""
        self.refreshes += 1
        if not any((self.gpu_pool, self.sandbox_pool, self.runner, self.progress)):
            self.status.value = (
                "<i>Nothing to monitor: give a gpu_pool, sandbox_pool, runner or progress.</i>"
            )
            return
        self._show("gpus", self.gpu_pool, gpu_table_html, self.gpus)
        self._show("sandboxes", self.sandbox_pool, sandbox_html, self.sandboxes)
        self._show("runner", self.runner, runner_html, self.runner_stats)
        progress = getattr(self.progress, "model", self.progress)  # a panel's current run
        self._show("instances", progress, progress_html, self.instances, read="snapshot")

    def _show(
        self, key: str, source: Any, render: Any, target: w.HTML, read: str = "stats"
    ) -> None:
        if source is None:
            return  # not given: its section stays hidden
        try:
            snapshot = getattr(source, read)()
        except Exception as exc:  # monitoring degrades, it never raises
            log.warning("%s stats unavailable: %s", key, exc)
            target.value = render(None)
            self._last.pop(key, None)
            return
        if key in self._last and self._last[key] == snapshot:
            return  # unchanged: spare the browser a redraw
        self._last[key] = snapshot
        target.value = render(snapshot)

    async def _refresh_forever(self) -> None:
        while True:
            await self._clock.sleep(self.interval)
            self.refresh()
