"""The parallel runner: many calls at once, under control.

A run pulls items from its input with at most ``max_concurrency`` worker coroutines,
started as items arrive (no task per pending item). Memory grows with the
concurrency and the stored results, not with the input still to come; a stored
result holds its item, so over large payloads pass ``keep_items=False`` (or
``"failed"``) and the run holds only the results. Every task goes through one pipeline
(:mod:`labkit.runner.pipeline`): admit, rate-limit, attempt with ``timeout``,
decide on a retry, record. A failing item is a result, never an exception of the
run; a broken ``items`` iterable raises :class:`labkit.errors.ItemsFailed` carrying
the report of what it had yielded.

Cancelling the task that awaits a run cancels every in-flight attempt and waits for
their ``finally`` blocks; the partial report stays readable as
``Runner.last_report``. From sync code, Ctrl-C during :func:`run_parallel_sync`
does the same and raises :class:`labkit.errors.RunInterrupted` with the report.

Modules: :mod:`~labkit.runner.options` (the options), :mod:`~labkit.runner.records`
(results, reports, stats), :mod:`~labkit.runner.pipeline` (one task's steps),
:mod:`~labkit.runner.core` (the Runner), :mod:`~labkit.runner.api` (the functions).
"""

from labkit.runner.api import parallel_map, run_parallel, run_parallel_sync
from labkit.runner.core import Runner, TaskHandle
from labkit.runner.options import Priority, RunOptions
from labkit.runner.records import RunnerStats, RunReport, RunStats, TaskResult

__all__ = (
    "Priority",
    "RunOptions",
    "RunReport",
    "RunStats",
    "Runner",
    "RunnerStats",
    "TaskHandle",
    "TaskResult",
    "parallel_map",
    "run_parallel",
    "run_parallel_sync",
)
