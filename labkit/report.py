"""A standalone HTML report of one experiment: it opens offline, in any browser.

:func:`write_html` puts on one page the chart of every instance against the
average with its spread band (:func:`labkit.plots.timeline_figure`, with plotly's
JavaScript inlined, so the file needs no network), the averaged summary (each
figure as ``mean ± ci95 (min … max)``, said so on the page), each instance's
status, attempts and error, and the outliers. Metrics carry the units and
display names the run's config keeps (``Experiment(units=, display_names=)``).
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from labkit.plots import SPREAD_HEADING, MetricLabels, metric_names, timeline_figure
from labkit.results import ExperimentResult

__all__ = ("SPREAD_NOTE", "render_html", "write_html")

SPREAD_NOTE = (
    '<p class="note">Each figure: its mean over the instances that succeeded '
    "± ci95, the half-width of the mean's 95 % confidence interval (Student's t), "
    "then the smallest and largest instance's value. The chart's band is the same "
    "interval around the averaged timeline.</p>"
)
"""The sentence under the summary's heading that says what "±" is."""

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1100px; color: #1f1f1f; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ok { color: #2e7d32; font-weight: 600; } .failed { color: #c62828; font-weight: 600; }
.banner { padding: 0.7rem 1rem; border-radius: 4px; margin: 1rem 0; }
.banner.warn { background: #fff4e5; border: 1px solid #f0b86e; }
.banner.bad { background: #fdecea; border: 1px solid #e57373; }
.banner.good { background: #edf7ed; border: 1px solid #81c784; }
.scroll { overflow: auto; max-width: 100%; max-height: 80vh; }
td.error { min-width: 16rem; max-width: 32rem; overflow-wrap: anywhere; }
.note { color: #555; font-size: 0.9rem; margin: 0.3rem 0; }
code, .error { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: 0.85rem; }
"""


def write_html(result: ExperimentResult, path: str | os.PathLike[str]) -> Path:
    """Write ``result`` as a standalone HTML page (plotly inlined: about 5 MB).

    The file is replaced atomically, so a reader never sees half a report.

    Args:
        result: The experiment's result.
        path: Where to write the page; parent directories must exist.

    Returns:
        The path written.

    Raises:
        OSError: The file cannot be written.
    """
    target = Path(path)
    page = render_html(result)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(page, encoding="utf-8")
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target


def render_html(result: ExperimentResult) -> str:
    """The report page as a string (see :func:`write_html`)."""
    labels = MetricLabels.of(result.config)
    summary = result.summary
    total = len(result.instances)
    failed = len(result.failed)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>labkit: {_e(result.name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{_e(result.name)}</h1>",
        f'<p class="meta">{total} instance{"s" if total != 1 else ""}'
        + (
            f" &middot; experiment <code>{_e(result.experiment_id)}</code>"
            if result.experiment_id
            else ""
        )
        + (f" &middot; params <code>{_e(_compact(result.params))}</code>" if result.params else "")
        + "</p>",
        _banner(total, failed),
        "<h2>Timelines</h2>",
        _chart(result),
        "<h2>Averaged summary</h2>",
        SPREAD_NOTE,
        _summary_table(summary, result.summary_texts(), labels),
        "<h2>Instances</h2>",
        _instances_table(result, labels),
        "<h2>Outliers</h2>",
        _outliers(result),
        "<h2>Configuration</h2>",
        _key_values(result.config),
        "</body></html>",
    ]
    return "\n".join(parts)


def _banner(total: int, failed: int) -> str:
    if total and failed == total:
        return (
            '<div class="banner bad"><strong>Every instance failed</strong>: there is no '
            "average. The errors are listed under Instances.</div>"
        )
    if failed:
        return (
            f'<div class="banner warn"><strong>{failed} of {total} instances failed</strong>: '
            f"the average is over the {total - failed} that succeeded.</div>"
        )
    return f'<div class="banner good">All {total} instances succeeded.</div>'


def _chart(result: ExperimentResult) -> str:
    # The chart's traces come from the builders the live chart uses too.
    if result.averaged.empty or not metric_names(result.averaged):
        return "<p>No timeline to draw: no instance that succeeded recorded any sample.</p>"

    figure = timeline_figure(result, title="")  # the page's own heading names the run
    # The whole plotly.js goes into the page so that it opens without a network;
    # the chart takes the column's width and follows it when the window resizes.
    chart: str = figure.to_html(
        full_html=False, include_plotlyjs=True, default_width="100%", config={"responsive": True}
    )
    return chart


def _summary_table(
    summary: Mapping[str, Any], spread: Mapping[str, str], labels: MetricLabels
) -> str:
    rows = [
        (key, value)
        for key, value in summary.items()
        if key not in ("errors",) and not isinstance(value, Mapping)
    ]
    # A figure reads mean ± ci95 (min … max); counts and flags as they are.
    cells = [
        [
            _e(key),
            _e(labels.figure_unit(key)),
            _e(spread[key]) if key in spread else _num(value),
        ]
        for key, value in rows
    ]
    return _table(["figure", "unit", SPREAD_HEADING], cells, numeric_columns={2})


def _instances_table(result: ExperimentResult, labels: MetricLabels) -> str:
    peaks = sorted(
        {key for instance in result.instances for key in instance.summary if key.endswith("_peak")}
    )
    extra = sorted(
        {
            key
            for instance in result.instances
            for key, value in instance.summary.items()
            if not key.endswith("_peak") and not isinstance(value, Mapping | list)
        }
    )
    figures = [
        f"{key} ({labels.figure_unit(key)})" if labels.figure_unit(key) else key
        for key in (*peaks, *extra)
    ]
    header = ["instance", "status", "attempts", "duration (s)", "GPUs", "sandbox", *figures]
    header.append("error")
    rows = []
    for instance in result.instances:
        status = (
            '<span class="ok">ok</span>' if instance.ok else '<span class="failed">failed</span>'
        )
        rows.append(
            [
                str(instance.index),
                status,
                str(instance.attempts),
                _num(instance.duration),
                _e(", ".join(instance.gpu_uuids) or "-"),
                _e(instance.sandbox_id or "-"),
                *(_num(instance.summary.get(key)) for key in (*peaks, *extra)),
                _e(instance.error) if instance.error else "",
            ]
        )
    numeric = {0, 2, 3, *range(6, 6 + len(figures))}
    return _table(header, rows, numeric_columns=numeric, error_column=len(header) - 1)


def _outliers(result: ExperimentResult) -> str:
    if not result.outliers:
        return "<p>None: no instance stands apart from the others.</p>"
    items = "".join(
        f"<li><code>{_e(metric)}</code>: instance{'s' if len(indices) > 1 else ''} "
        f"{_e(', '.join(str(index) for index in indices))}</li>"
        for metric, indices in result.outliers.items()
    )
    return f"<ul>{items}</ul>"


def _key_values(values: Mapping[str, Any]) -> str:
    return _table(["option", "value"], [[_e(key), _num(value)] for key, value in values.items()])


def _table(
    header: list[str],
    rows: list[list[str]],
    *,
    numeric_columns: Collection[int] = (),
    error_column: int | None = None,
) -> str:
    """An HTML table that scrolls within the page's column. Cells are HTML already.

    Numbers are right-aligned, whole columns at a time (``numeric_columns``),
    and any other cell that reads as a number; an error column wraps its text.
    """

    def cell(position: int, text: str) -> str:
        if position == error_column and text:
            return f'<td class="error">{text}</td>'
        if position in numeric_columns or _numeric(text):
            return f'<td class="num">{text}</td>'
        return f"<td>{text}</td>"

    head = "".join(
        f'<th class="num">{_e(name)}</th>'
        if position in numeric_columns
        else f"<th>{_e(name)}</th>"
        for position, name in enumerate(header)
    )
    body = "".join(
        "<tr>" + "".join(cell(position, text) for position, text in enumerate(row)) + "</tr>"
        for row in rows
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _numeric(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _num(value: Any) -> str:
    """A cell's text, HTML-escaped: floats to 4 significant digits, ``-`` for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_num(item) for item in value) or "-"
    if isinstance(value, Mapping):
        return _e(_compact(value))
    return _e(str(value))


def _compact(value: Any) -> str:
    return json.dumps(value, default=str, separators=(", ", ": "))


def _e(text: object) -> str:
    return html.escape(str(text))
