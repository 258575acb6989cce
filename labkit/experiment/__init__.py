"""Experiments: one function run as N parallel instances, measured and averaged.

An :class:`Experiment` names a function ``fn(ctx)``; :func:`run_experiment` runs it
as ``instances`` parallel instances through the runner (so its retry, timeout,
rate limit and events apply). Each instance holds its GPU allocation and sandbox
session for its whole life and gives them back whatever happens, cancellation
included. What an instance measures (``ctx.record``, plus the sandbox's cpu and
memory from the sampler) becomes its timeline; the instances that succeeded are
averaged into one :class:`~labkit.results.ExperimentResult`, and the failures are
kept beside them.

Instance-level events (:class:`~labkit.events.InstanceEvent`) go to ``on_event``
together with the runner's :class:`~labkit.events.TaskEvent`, so a progress bar or
a widget can follow every instance live. Each attempt records into a
:class:`~labkit.samplelog.SampleLog`, announced by a
:class:`~labkit.events.TimelineEvent` right after its ``started`` event: a watcher
may read the samples from there in bulk and decline the per-sample events.

The package, by concern:

- :mod:`~labkit.experiment.spec`: :class:`Experiment` and how a metric becomes a
  summary figure (``summarize=``);
- :mod:`~labkit.experiment.context`: :class:`InstanceContext`, what ``fn`` sees;
- :mod:`~labkit.experiment.options`: :class:`ExperimentOptions`, checked once;
- :mod:`~labkit.experiment.attempt`: the bookkeeping every attempt shares and the
  local attempt (an async context manager holding GPUs, sandbox and sampler);
- :mod:`~labkit.experiment.dask`: the attempt as a task on a Dask worker;
- :mod:`~labkit.experiment.auto`: ``instances="auto"``;
- :mod:`~labkit.experiment.run`: :func:`run_experiment`.
"""

from __future__ import annotations

from labkit.events import InstanceEvent, InstanceEventKind
from labkit.experiment.context import InstanceContext
from labkit.experiment.options import ExperimentOptions
from labkit.experiment.run import run_experiment
from labkit.experiment.spec import MAX_DURATION, MAX_INSTANCES, Experiment, SummaryKind
from labkit.sandbox.cost import E2B_PRICE_PER_GIB_SECOND, E2B_PRICE_PER_VCPU_SECOND, estimate_cost

__all__ = (
    "E2B_PRICE_PER_GIB_SECOND",
    "E2B_PRICE_PER_VCPU_SECOND",
    "MAX_DURATION",
    "MAX_INSTANCES",
    "Experiment",
    "ExperimentOptions",
    "InstanceContext",
    "InstanceEvent",
    "InstanceEventKind",
    "SummaryKind",
    "estimate_cost",
    "run_experiment",
)
