"""The panel's progress: one bar per instance, or a compact grid when there are many.

:class:`ProgressView` draws a :class:`labkit.progress.ProgressSnapshot` and
interprets no event itself. Up to :data:`MAX_ROWS` instances get a row each (a
bar, full only once the instance ended, and what is known as text); more get a
grid of small squares coloured by state, so that the chart below stays in view.
A summary line (counts by state, the slowest instances) is always on top.
"""

from __future__ import annotations

import html

import ipywidgets as w

from labkit.progress import InstanceStatus, ProgressSnapshot

__all__ = ("MAX_ROWS", "STATE_COLORS", "ProgressView", "grid_html", "summary_html")

MAX_ROWS = 16
"""The most instances drawn as rows; more are drawn as a grid."""

STATE_COLORS = {
    "queued": "#b0b0b0",
    "running": "#4c78a8",
    "retrying": "#f58518",
    "done": "#54a24b",
    "failed": "#e45756",
    "stopped": "#f58518",
    "cancelled": "#9d755d",
}
"""Each state's colour, in the grid and in the summary line."""

_BAR_STYLES = {
    "queued": "",
    "running": "info",
    "retrying": "warning",
    "done": "success",
    "failed": "danger",
    "stopped": "warning",
    "cancelled": "warning",
}


class _Row(w.HBox):  # type: ignore[misc]
    """One instance's bar and status text."""

    def __init__(self, index: int) -> None:
        self.bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, layout={"width": "260px"})
        self.status = w.HTML("queued")
        self.status.add_class("labkit-instance-status")
        self.shown: InstanceStatus | None = None
        super().__init__(
            [w.Label(f"instance {index}", layout={"width": "80px"}), self.bar, self.status]
        )

    def show(self, status: InstanceStatus) -> None:
        shown = self.shown
        self.shown = status
        fraction = status.fraction
        # A bar only where the fraction is known: a bar standing still would mislead.
        visibility = "hidden" if fraction is None else "visible"
        if self.bar.layout.visibility != visibility:
            self.bar.layout.visibility = visibility
        if fraction is not None and (shown is None or abs(fraction - self.bar.value) >= 0.01):
            self.bar.value = fraction  # visible steps only (1 %)
        style = _BAR_STYLES[status.state]
        if self.bar.bar_style != style:
            self.bar.bar_style = style
        text = html.escape(status.text())
        if status.state == "failed":
            text = f'<span style="color:{STATE_COLORS["failed"]}">{text}</span>'
        if text != self.status.value:
            self.status.value = text


class ProgressView(w.VBox):  # type: ignore[misc]
    """Every instance's progress: a summary line, then rows or a compact grid."""

    def __init__(self) -> None:
        self.summary = w.HTML()
        self.summary.add_class("labkit-progress-summary")
        self.grid = w.HTML()
        self.grid.add_class("labkit-progress-grid")
        self.rows: dict[int, _Row] = {}
        self.summary_text = ""
        """The summary line last drawn, as plain text."""
        self.rows_box = w.VBox()
        super().__init__([self.summary, self.rows_box, self.grid])
        self.add_class("labkit-progress")

    def reset(self, instances: int) -> None:
        """Make room for ``instances`` instances: rows up to :data:`MAX_ROWS`, else a grid."""
        self.rows = {i: _Row(i) for i in range(instances)} if instances <= MAX_ROWS else {}
        self.rows_box.children = tuple(self.rows.values())
        self.grid.value = ""
        self.summary.value = self.summary_text = ""

    def show(self, snapshot: ProgressSnapshot) -> None:
        """Draw ``snapshot``: rows that changed, or the grid; and the summary line."""
        self.summary_text = snapshot.summary() if snapshot.total else ""
        text = summary_html(snapshot)
        if text != self.summary.value:
            self.summary.value = text
        if snapshot.total > MAX_ROWS:
            text = grid_html(snapshot)
            if text != self.grid.value:
                self.grid.value = text
            return
        for status in snapshot.instances:
            row = self.rows.get(status.index)
            if row is not None and row.shown != status:
                row.show(status)


def summary_html(snapshot: ProgressSnapshot) -> str:
    """The snapshot's summary line (counts by state, the slowest instances) as HTML."""
    return f"<span>{html.escape(snapshot.summary())}</span>" if snapshot.total else ""


def grid_html(snapshot: ProgressSnapshot) -> str:
    """One small square per instance, coloured by state, with its text on hover."""
    cells = "".join(
        f'<span class="labkit-cell labkit-{status.state}" '
        f'title="#{status.index}: {html.escape(status.text())}" '
        f'style="display:inline-block;width:12px;height:12px;margin:1px;'
        f'background:{STATE_COLORS[status.state]}"></span>'
        for status in snapshot.instances
    )
    legend = " ".join(
        f'<span style="color:{STATE_COLORS[state]}">&#9632;</span> {state}'
        for state in snapshot.counts
    )
    return f'<div style="line-height:0">{cells}</div><div style="font-size:11px">{legend}</div>'
