"""``instances="auto"``: run a pilot, then add instances until the mean is known well enough."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from labkit._checks import is_real
from labkit.experiment.options import ExperimentOptions
from labkit.results import InstanceResult
from labkit.timeline import instances_needed

__all__ = ("run_instances",)


async def run_instances(
    options: ExperimentOptions,
    results: Mapping[int, InstanceResult],
    run: Callable[[Sequence[int]], Awaitable[None]],
) -> None:
    """Run the instances ``options`` asks for through ``run`` (which fills ``results``).

    A fixed count runs at once. ``"auto"`` runs a pilot of 3 first; then adds
    instances until the 95 % confidence interval of ``auto_metric``'s mean is
    within ``target_rel_half_width`` of the mean (:func:`labkit.instances_needed`)
    or ``max_instances`` have run.
    """
    await run(range(options.pilot))
    if not options.adaptive:
        return
    while len(results) < options.max_instances:
        needed = needed_instances(
            list(results.values()), options.auto_metric, options.target_rel_half_width
        )
        succeeded = sum(result.ok for result in results.values())
        if needed is None or needed <= succeeded:
            return
        more = min(needed - succeeded, options.max_instances - len(results))
        start = len(results)
        await run(range(start, start + more))


def needed_instances(
    results: Sequence[InstanceResult], metric: str | None, rel_half_width: float
) -> int | None:
    """How many successful instances the target needs, or None when it cannot be told."""
    summaries = [result.summary for result in results if result.ok]
    if not summaries:
        return None
    if metric is None:
        candidates = [
            key
            for key, value in summaries[0].items()
            if is_real(value) and key not in {"error_count"}
        ]
        preferred = [key for key in ("cpu_peak", "memory_peak") if key in candidates]
        if not (preferred or candidates):
            return None
        metric = (preferred or candidates)[0]
    values = [float(summary[metric]) for summary in summaries if is_real(summary.get(metric))]
    if len(values) < 2:
        return None
    return int(instances_needed(values, rel_half_width=rel_half_width))
