"""``MODULE:FUNCTION``: the experiment a command line names, with the
``--summarize`` figures and ``--param`` values it adds."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from labkit.cli.arguments import parse_params
from labkit.cli.usage import UsageError
from labkit.experiment import Experiment

__all__ = ("command_experiment", "load_target")


def load_target(target: str) -> Experiment:
    """The experiment that ``MODULE:FUNCTION`` names (see ``labkit run --help``).

    The current directory is importable, as with ``python -m``.

    Raises:
        UsageError: The target is malformed, cannot be imported, or is not usable.
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"expected MODULE:FUNCTION (like mypkg.exp:train), got {target!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import module {module_name!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if isinstance(obj, Experiment):
        return obj
    if not callable(obj):
        raise UsageError(f"{target} is a {type(obj).__name__}, not an Experiment or a function")
    if _required_arguments(obj) == 0:
        made = obj()
        if not isinstance(made, Experiment):
            raise UsageError(f"{target}() returned a {type(made).__name__}, not an Experiment")
        return made
    return Experiment(attribute.rsplit(".", 1)[-1], obj)


def command_experiment(
    target: str, summarize: Sequence[Mapping[str, list[str]]], params: Sequence[str]
) -> Experiment:
    """The experiment of ``labkit run`` and ``labkit sweep``: ``target``, with the
    figures of ``--summarize`` over its own ``summarize`` and the ``--param`` values
    over its own parameters.

    Raises:
        UsageError: The target is not usable, or a ``--param`` is malformed.
    """
    experiment = load_target(target)
    if summarize:
        chosen: dict[str, Any] = dict(experiment.summarize or {})
        for given in summarize:
            chosen.update(given)
        experiment = replace(experiment, summarize=chosen)
    parsed = parse_params(params)
    return experiment.with_params(**parsed) if parsed else experiment


def _required_arguments(fn: Callable[..., Any]) -> int:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return 1
    return sum(
        1
        for parameter in signature.parameters.values()
        if parameter.default is inspect.Parameter.empty
        and parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    )
