"""``--objective NAME``: a summary figure or a recorded metric, checked as soon as
the names that exist are known.

An experiment's function declares no metrics: what exists is known once a trial's
instances have run. A name that can never be an objective (an axis) is refused
before anything runs; a name that the first finished trial has neither as a
summary figure nor as a metric stops the sweep there, with the names it has.
The sweep's own objective extraction (``labkit.sweep.objective_value``) and its
list of what a result recorded (``recorded_names``) are used here.
"""

from __future__ import annotations

from collections.abc import Callable

from labkit.cli.usage import UsageError
from labkit.errors import ConfigError, error_text
from labkit.results import ExperimentResult
from labkit.sweep import objective_value, recorded_names

__all__ = ("CheckedObjective", "refuse_before_run")

_AXES = ("t", "step")
_NOT_FIGURES = frozenset({"errors", "recovery_times", "ok", "error", "index"})


def refuse_before_run(name: str) -> None:
    """Refuse an objective that no experiment can have.

    Raises:
        UsageError: ``name`` is empty, an axis (``t``, ``step``) or a summary entry
            that is not a figure (``errors``, ``recovery_times``).
    """
    if not name.strip():
        raise UsageError("--objective: give a summary figure or a metric name, got ''")
    if name in _AXES:
        raise UsageError(
            f"--objective {name}: {name!r} is an axis of the timeline, not a metric; give a "
            "summary figure (loss_last) or a recorded metric (loss)"
        )
    if name in _NOT_FIGURES:
        raise UsageError(
            f"--objective {name}: the summary's {name!r} is not a figure; give a summary "
            "figure (loss_last) or a recorded metric (loss)"
        )


class CheckedObjective:
    """The objective ``name`` as a function of a trial's result, for ``sweep``.

    The first result with a successful instance that has no figure or metric
    ``name`` sets :attr:`problem` and calls ``on_unknown`` (which stops the
    sweep); every other failure to compute the objective is kept in
    :attr:`last_error`, for the trial line that follows.

    Args:
        name: The ``--objective`` value.
        experiment: The experiment's name, for the message.

    Attributes:
        on_unknown: Called once when ``name`` is known to name nothing (set it to
            what stops the sweep).
    """

    def __init__(self, name: str, experiment: str) -> None:
        self.name = name
        self.__name__ = name  # how a sweep names a function objective in its headings
        self.experiment = experiment
        self.on_unknown: Callable[[], object] = lambda: None
        self.problem: str | None = None
        self.last_error: str | None = None

    def __call__(self, result: ExperimentResult) -> float:
        """The objective of ``result``.

        Raises:
            ConfigError: ``result`` has no figure or metric ``name``.
            ValueError: Its value is not a finite number.
        """
        try:
            value = objective_value(result, self.name)
        except ConfigError as exc:  # names neither a figure nor a metric of the result
            self.last_error = error_text(exc)
            self._unknown(result)
            raise
        except ValueError as exc:
            self.last_error = error_text(exc)
            raise
        self.last_error = None
        return value

    def _unknown(self, result: ExperimentResult) -> None:
        if self.problem is not None or not any(instance.ok for instance in result.instances):
            return  # said already, or nothing succeeded: nothing is known yet
        figures, metrics = recorded_names(result)
        self.problem = (
            f"--objective {self.name}: {self.experiment} has no summary figure or metric of "
            f"that name; its summary figures: {', '.join(figures) or 'none'}; "
            f"its metrics: {', '.join(metrics) or 'none'}"
        )
        self.on_unknown()
