"""Where a sweep's trials come from: a grid, a list, or an ask/tell strategy.

- a dict of lists: the grid, every combination (``{"lr": [0.1, 0.01], "bs": [32, 64]}``
  is 4 trials, in ``itertools.product`` order);
- a list of parameter dicts, run as given;
- an ask/tell :class:`Strategy`: ``ask()`` gives the next parameters (``None`` when
  done), ``tell(params, value)`` hears back the objective (``None`` for a failed
  trial). An ``optuna.Study`` becomes one through :class:`StudyStrategy`.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from labkit._checks import check
from labkit.errors import ConfigError

__all__ = ("Strategy", "StudyStrategy", "trial_source")


@runtime_checkable
class Strategy(Protocol):
    """An ask/tell search: it proposes parameters and learns from their objective."""

    def ask(self) -> Mapping[str, Any] | None:
        """The next trial's parameters, or ``None`` when the search is over."""
        ...

    def tell(self, params: Mapping[str, Any], value: float | None) -> None:
        """The objective of a trial ``ask`` proposed; ``None`` when it failed."""
        ...


class StudyStrategy:
    """An ``optuna.Study`` (or anything with its ask/tell API) as a :class:`Strategy`.

    optuna is not a labkit dependency: the study is used through ``ask`` and
    ``tell`` only. :func:`labkit.sweep` refuses a ``direction`` that contradicts the
    study's own (:attr:`direction`).

    Args:
        study: The study: ``ask(fixed_distributions=None)`` returns a trial with
            a ``params`` dict; ``tell(trial, value)`` or ``tell(trial,
            state=FAIL)`` finishes it.
        space: The search space, either ``{name: distribution}`` (optuna's
            ``FloatDistribution`` and the like, passed to ``study.ask``) or a
            function ``space(trial) -> params`` calling ``trial.suggest_*``
            (define-by-run). ``None`` takes whatever ``trial.params`` holds.

    Example:
        >>> study = optuna.create_study(direction="minimize")
        >>> space = lambda trial: {"lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True)}
        >>> await lk.sweep(exp, StudyStrategy(study, space), n_trials=20, objective="loss")
    """

    def __init__(
        self,
        study: Any,
        space: Mapping[str, Any] | Callable[[Any], Mapping[str, Any]] | None = None,
    ) -> None:
        check(
            callable(getattr(study, "ask", None)) and callable(getattr(study, "tell", None)),
            "study",
            study,
            "an object with ask() and tell() (an optuna.Study)",
        )
        self.study = study
        self.space = space
        self._asked: list[tuple[dict[str, Any], Any]] = []

    @property
    def direction(self) -> Literal["min", "max"] | None:
        """The study's direction as :func:`labkit.sweep` spells it; ``None`` when it has none.

        Reads ``study.direction`` (optuna's ``StudyDirection.MINIMIZE`` or
        ``MAXIMIZE``, or their names); a multi-objective study, whose
        ``direction`` raises, has none.
        """
        try:
            raw = getattr(self.study, "direction", None)
        except Exception:
            return None
        name = str(getattr(raw, "name", raw) or "").upper()
        if name == "MINIMIZE":
            return "min"
        if name == "MAXIMIZE":
            return "max"
        return None

    def ask(self) -> dict[str, Any]:
        """Ask the study for a trial and return its parameters.

        Raises:
            ConfigError: The trial has no parameters: the study needs a ``space``.
        """
        if isinstance(self.space, Mapping):
            trial = self.study.ask(dict(self.space))
            params = dict(trial.params)
        elif callable(self.space):
            trial = self.study.ask()
            params = dict(self.space(trial))
        else:
            trial = self.study.ask()
            params = dict(getattr(trial, "params", None) or {})
        if not params:
            raise ConfigError(
                "space",
                self.space,
                "a search space: {name: distribution} or a function trial -> params",
            )
        self._asked.append((params, trial))
        return params

    def tell(self, params: Mapping[str, Any], value: float | None) -> None:
        """Finish the study's trial for ``params`` with ``value`` (``None``: failed)."""
        # The very dict ask() returned identifies its trial even when two parallel
        # trials have equal params; equality is the fallback for a copy.
        position = next((i for i, (asked, _) in enumerate(self._asked) if asked is params), None)
        if position is None:
            wanted = dict(params)
            position = next(
                (i for i, (asked, _) in enumerate(self._asked) if asked == wanted), None
            )
        if position is None:
            return
        _, trial = self._asked.pop(position)
        if value is None:
            self.study.tell(trial, state=_failed_state())
        else:
            self.study.tell(trial, value)


def _failed_state() -> Any:
    try:
        trial_module = importlib.import_module("optuna.trial")
    except ImportError:
        # A study that only looks like optuna's gets the state by name.
        return "FAIL"
    return trial_module.TrialState.FAIL


def trial_source(
    space: Any, n_trials: int | None
) -> tuple[Iterator[Mapping[str, Any]], Strategy | None]:
    """The parameter sets of ``space``, lazily (a strategy is asked only when needed).

    Returns:
        The parameter sets, at most ``n_trials``, and the strategy to tell the
        objectives to (``None`` for a grid or a list).

    Raises:
        ConfigError: ``space`` is none of the above, or a study has no ``n_trials``.
    """
    if isinstance(space, Mapping):
        for name, values in space.items():
            check(
                isinstance(values, Sequence | np.ndarray) and not isinstance(values, str | bytes),
                f"space[{name!r}]",
                values,
                "a list of values",
            )
        names = list(space)
        grid: Iterator[Mapping[str, Any]] = (
            dict(zip(names, combo, strict=True))
            for combo in itertools.product(*(list(space[name]) for name in names))
        )
        return itertools.islice(grid, n_trials), None
    if isinstance(space, Sequence) and not isinstance(space, str | bytes):
        for item in space:
            check(isinstance(item, Mapping), "space", item, "a dict of params in the list")
        return itertools.islice(iter(space), n_trials), None
    if _is_study(space):
        space = StudyStrategy(space)
    if isinstance(space, Strategy):
        check(
            n_trials is not None or not isinstance(space, StudyStrategy),
            "n_trials",
            n_trials,
            "a number of trials: a study never runs out of them",
        )
        return itertools.islice(_asking(space), n_trials), space
    raise ConfigError(
        "space",
        space,
        "a dict of lists (grid), a list of param dicts, or an ask/tell strategy",
    )


def _is_study(space: Any) -> bool:
    """An optuna study given as is (its ask() returns a trial, not params)."""
    return type(space).__module__.split(".")[0] == "optuna" and hasattr(space, "ask")


def _asking(strategy: Strategy) -> Iterator[Mapping[str, Any]]:
    while (params := strategy.ask()) is not None:
        check(isinstance(params, Mapping), "ask()", params, "a dict of params or None")
        yield params
