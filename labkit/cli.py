"""The ``labkit`` command line: ``demo``, ``run``, ``sweep``, ``history`` and ``monitor``.

Exit status: 0 when every instance succeeded, 1 when some failed (the report is
still written) or an ``--export`` failed (the result is still printed and
recorded), 2 on bad usage, with a message that says what to fix.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, get_args

from labkit.errors import ConfigError, LabkitError, StoreError, error_text
from labkit.events import EventBus, TaskEvent
from labkit.experiment import (
    MAX_INSTANCES,
    Experiment,
    InstanceEvent,
    SummaryKind,
    estimate_cost,
    run_experiment,
)
from labkit.results import ExperimentResult

if TYPE_CHECKING:
    from labkit.export import PrometheusExporter
    from labkit.store import Store

__all__ = ("main",)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_DEMO_SCENARIO = "error_burst"


class UsageError(Exception):
    """A bad command line; the message says what to fix (exit status 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``labkit`` command; returns its exit status.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` by default.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning(args.command)
            return handler(args)
    except (UsageError, ConfigError) as exc:
        print(f"labkit {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LabkitError as exc:
        print(f"labkit {args.command}: {error_text(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"labkit {args.command}: interrupted", file=sys.stderr)
        return 130


def _show_warning(command: str) -> Callable[..., None]:
    """A warning as one line on stderr (``labkit run: warning: ...``), not a source line."""

    def show(message: Warning | str, *_: Any, **__: Any) -> None:
        print(f"labkit {command}: warning: {message}", file=sys.stderr)

    return show


# -- argument parsing -------------------------------------------------------------------


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default, unless its help already says it in words."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or action.required or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labkit",
        description="Run an experiment as N parallel instances, watch them, average them.",
        formatter_class=_HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        formatter_class=_HelpFormatter,
        help="run a built-in scenario with 3 local instances and write a report",
        description="Run a built-in scenario (real subprocesses, about 20 s), print the "
        "averaged summary, write a standalone HTML report and record the run.",
    )
    from labkit.scenarios import INTENSITIES, SCENARIOS

    demo.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        default=_DEMO_SCENARIO,
        help="the built-in workload to run",
    )
    demo.add_argument(
        "--intensity", choices=INTENSITIES, default="medium", help="how hard the workload works"
    )
    demo.add_argument(
        "-n",
        "--instances",
        type=_instances_int,
        default=3,
        metavar="N",
        help=f"parallel instances, 1 to {MAX_INSTANCES}",
    )
    demo.add_argument(
        "--duration",
        type=_seconds,
        default=20.0,
        metavar="SECONDS",
        help="how long each instance runs",
    )
    demo.add_argument(
        "--report",
        default="labkit-demo.html",
        metavar="PATH",
        help="write the standalone HTML report here (a file, not a directory)",
    )
    _common_outputs(demo)
    demo.set_defaults(handler=_demo)

    run = commands.add_parser(
        "run",
        formatter_class=_HelpFormatter,
        help="run MODULE:FUNCTION as parallel instances",
        description="Run MODULE:FUNCTION as parallel instances. FUNCTION is an Experiment, "
        "a function taking the instance context (async or not), or a function with no "
        "required arguments that returns an Experiment (labkit.scenarios:cpu_stress).",
    )
    run.add_argument(
        "target",
        metavar="MODULE:FUNCTION",
        help="what to run, importable from the current directory (mypkg.exp:train)",
    )
    run.add_argument(
        "-n",
        "--instances",
        type=_instances,
        default=1,
        metavar="N",
        help=f"instances, 1 to {MAX_INSTANCES}, or 'auto' (as many as the summary needs)",
    )
    run.add_argument(
        "--duration",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="how long each instance is meant to run (default: until its function returns)",
    )
    run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter for ctx.params (VALUE is read as JSON when it parses; NaN and "
        "Infinity are refused); repeatable (default: none)",
    )
    run.add_argument(
        "--gpus-per-instance",
        type=_non_negative_int,
        default=0,
        metavar="G",
        help="GPUs each instance holds (CUDA_VISIBLE_DEVICES is set for it)",
    )
    run.add_argument(
        "--sandbox",
        choices=("auto", "none", "local", "e2b"),
        default="auto",
        help="where instances run: 'auto' gives local sandboxes to experiments that need "
        "one; 'e2b' uses E2B cloud sandboxes (E2B_API_KEY) and shows their cost first",
    )
    run.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="fail an instance attempt that runs longer (default: no limit)",
    )
    run.add_argument(
        "--retries",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="retry a failed instance up to N times",
    )
    run.add_argument(
        "--sample-every",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="seconds between resource samples of an instance's sandbox",
    )
    run.add_argument(
        "--report",
        default=None,
        metavar="PATH",
        help="write a standalone HTML report here, a file (default: no report)",
    )
    _summarize_option(run)
    _instance_options(run)
    _common_outputs(run)
    run.set_defaults(handler=_run)

    sweep = commands.add_parser(
        "sweep",
        formatter_class=_HelpFormatter,
        help="run MODULE:FUNCTION over a grid of parameters and print the leaderboard",
        description="Run MODULE:FUNCTION once per combination of --grid values (each trial "
        "with its instances), print each trial as it ends and the leaderboard at the end. "
        "With -n race, trials are raced (labkit.Race): instances go only to trials not yet "
        "ruled out, and the decision printed is wrong at most 5 % of the time.",
    )
    sweep.add_argument(
        "target",
        metavar="MODULE:FUNCTION",
        help="what to run, as for `labkit run`",
    )
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        required=True,
        metavar="KEY=V1,V2,...",
        help="values of one parameter (each read as JSON when it parses; NaN and Infinity "
        "are refused); repeatable, required",
    )
    sweep.add_argument(
        "--objective",
        required=True,
        metavar="NAME",
        help="a summary figure (score, loss_last) or a recorded metric; required",
    )
    sweep.add_argument(
        "--direction",
        choices=("min", "max"),
        default="min",
        help="whether the lowest or the highest objective is best",
    )
    sweep.add_argument(
        "-n",
        "--instances",
        type=_sweep_instances,
        default=1,
        metavar="N",
        help="instances per trial, 'auto', or 'race'",
    )
    sweep.add_argument(
        "--max-parallel",
        type=_instances_int,
        default=1,
        metavar="P",
        help="trials running at once",
    )
    sweep.add_argument(
        "--max-instances",
        type=_instances_int,
        default=None,
        metavar="N",
        help="the most instances one trial gets with -n auto or race (default: 32 for auto, "
        "10 for race)",
    )
    sweep.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter every trial gets, as for `labkit run`; repeatable (default: none)",
    )
    _summarize_option(sweep)
    sweep.add_argument("--db", default="labkit.db", metavar="PATH", help="record the trials here")
    sweep.add_argument("--no-db", action="store_true", help="do not record the trials")
    sweep.add_argument("--json", action="store_true", help="print the trials as JSON on stdout")
    _instance_options(sweep)
    sweep.set_defaults(handler=_sweep)

    history = commands.add_parser(
        "history",
        help="list the experiments recorded in a store",
        description="List the experiments recorded in a store, newest last. The store is "
        "only read: a read-only file or directory works.",
        formatter_class=_HelpFormatter,
    )
    history.add_argument("--db", default="labkit.db", metavar="PATH", help="the store to read")
    history.add_argument(
        "--limit", type=_positive_int, default=20, metavar="N", help="show the last N experiments"
    )
    history.add_argument("--json", action="store_true", help="print JSON instead of a table")
    history.set_defaults(handler=_history)

    monitor = commands.add_parser(
        "monitor",
        help="show the GPU fleet, the machine and running experiments",
        description="Show the machine, the GPU fleet and the experiments running in a store. "
        "With --interval, redraw in place in a terminal; piped, print one block per refresh.",
        formatter_class=_HelpFormatter,
    )
    monitor.add_argument(
        "--db", default="labkit.db", metavar="PATH", help="the store whose running runs to show"
    )
    monitor.add_argument(
        "--interval",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="refresh every SECONDS until Ctrl-C (default: show once)",
    )
    monitor.set_defaults(handler=_monitor)
    return parser


SUMMARY_KINDS: tuple[str, ...] = get_args(SummaryKind)


def _summarize_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--summarize",
        action="append",
        type=_summary_kinds,
        default=[],
        metavar="METRIC=KIND,...",
        help=f"how a recorded metric becomes each instance's summary figure, KIND one of "
        f"{', '.join(SUMMARY_KINDS)} (loss=last,acc=max gives loss_last and acc_max); "
        "repeatable (default: the last value, the peak for cpu and memory)",
    )


def _summary_kinds(text: str) -> dict[str, list[str]]:
    """``"loss=last,acc=max"`` as ``{"loss": ["last"], "acc": ["max"]}`` (a metric named
    twice gets both kinds)."""
    chosen: dict[str, list[str]] = {}
    for pair in text.split(","):
        metric, sep, kind = (part.strip() for part in pair.partition("="))
        if not sep or not metric or metric in ("t", "step"):
            raise argparse.ArgumentTypeError(
                f"expected METRIC=KIND pairs separated by commas, got {pair!r}"
            )
        if kind not in SUMMARY_KINDS:
            raise argparse.ArgumentTypeError(
                f"{metric}: expected a kind among {', '.join(SUMMARY_KINDS)}, got {kind!r}"
            )
        chosen.setdefault(metric, []).append(kind)
    return chosen


def _summarized(experiment: Experiment, chosen: Sequence[Mapping[str, list[str]]]) -> Experiment:
    """``experiment`` with the figures of ``--summarize`` over its own ``summarize``."""
    if not chosen:
        return experiment
    summarize: dict[str, Any] = dict(experiment.summarize or {})
    for given in chosen:
        summarize.update(given)
    return replace(experiment, summarize=summarize)


def _common_outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default="labkit.db", metavar="PATH", help="record the run here")
    parser.add_argument("--no-db", action="store_true", help="do not record the run")
    parser.add_argument(
        "--json", action="store_true", help="print the result as JSON on stdout (no table)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--export",
        action="append",
        type=_export_target,
        default=[],
        metavar="TARGET[=WHERE]",
        help="also send the run to mlflow[=TRACKING_URI] (default: MLflow's own), "
        "tensorboard[=LOGDIR] (default: runs/NAME-TIME) or prometheus[=[HOST:]PORT] "
        f"(live while it runs; default: 127.0.0.1:{_PROMETHEUS_PORT}); repeatable "
        "(default: none)",
    )


_EXPORT_EXTRAS = {
    "mlflow": ("mlflow", "mlflow"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "prometheus": ("prometheus_client", "prometheus"),
}
_PROMETHEUS_PORT = 9464


def _export_target(text: str) -> tuple[str, str | None]:
    target, sep, where = text.partition("=")
    if target not in _EXPORT_EXTRAS:
        raise argparse.ArgumentTypeError(
            f"expected mlflow, tensorboard or prometheus (optionally =WHERE), got {text!r}"
        )
    if sep and not where:
        raise argparse.ArgumentTypeError(f"{target}= needs a value after '=', got {text!r}")
    return target, where or None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _instance_options(command: argparse.ArgumentParser) -> None:
    """``--executor`` and ``--seed``: where instances run and how they are seeded."""
    command.add_argument(
        "--executor",
        choices=("thread", "process"),
        default="thread",
        help="where each instance's function runs: 'thread' (this process: async on the "
        "event loop, sync in a thread) or 'process' (a worker process each: CPU-bound "
        "Python runs on all cores, a timeout kills the instance's whole process tree)",
    )
    command.add_argument(
        "--seed",
        type=_seed,
        default=0,
        metavar="N",
        help="base seed: instance i gets ctx.seed derived from N and i (the same i, the "
        "same seed in every trial of a sweep)",
    )


def _seed(text: str) -> int:
    from labkit.seeds import MAX_SEED

    value = _int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {MAX_SEED}, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


_MAX_SECONDS = 86_400.0  # a day: the longest duration, timeout or interval accepted


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= _MAX_SECONDS):
        raise argparse.ArgumentTypeError(
            f"expected seconds > 0 and <= {_MAX_SECONDS:,.0f}, got {text!r}"
        )
    return value


def _instances_int(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= MAX_INSTANCES:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_INSTANCES}, got {text!r}")
    return value


def _instances(text: str) -> int | str:
    if text == "auto":
        return text
    value = _int(text)
    if not 1 <= value <= MAX_INSTANCES:
        raise argparse.ArgumentTypeError(
            f"expected 1 to {MAX_INSTANCES} (the cap) or 'auto', got {text!r}"
        )
    return value


def _sweep_instances(text: str) -> int | str:
    return text if text == "race" else _instances(text)


def parse_grid(pairs: Sequence[str]) -> dict[str, list[Any]]:
    """``["lr=0.1,0.01", "opt=adam"]`` as ``{"lr": [0.1, 0.01], "opt": ["adam"]}``.

    Raises:
        UsageError: A pair has no ``=``, an empty key or no values.
    """
    grid: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip() or not text:
            raise UsageError(f"--grid expects KEY=V1,V2,..., got {pair!r}")
        grid[key.strip()] = [_value("--grid", key, value) for value in text.split(",")]
    return grid


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` as ``{"a": 1, "b": "x"}``: values are JSON when they parse.

    Raises:
        UsageError: A pair has no ``=`` or an empty key, or a value is JSON's
            ``NaN``, ``Infinity`` or ``-Infinity`` (or holds one).
    """
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param expects KEY=VALUE, got {pair!r}")
        params[key.strip()] = _value("--param", key.strip(), text)
    return params


def _value(option: str, key: str, text: str) -> Any:
    """``text`` as JSON when it parses, else as the string; NaN and infinities refused."""

    def refuse(constant: str) -> Any:
        raise UsageError(
            f"{option} {key}={text}: {constant} is not a usable parameter value; give a "
            f"finite number, or '\"{constant}\"' (JSON-quoted) for the string"
        )

    try:
        value = json.loads(text, parse_constant=refuse)
    except json.JSONDecodeError:
        return text
    if _has_nonfinite(value):  # 1e999 parses as inf without parse_constant
        refuse(text)
    return value


def _has_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_has_nonfinite(item) for item in value)
    if isinstance(value, dict):
        return any(_has_nonfinite(item) for item in value.values())
    return False


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


# -- commands ---------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from labkit.scenarios import scenario

    experiment = scenario(args.scenario, args.intensity)
    return _execute(
        args,
        experiment,
        instances=args.instances,
        duration=args.duration,
        report=args.report,
        options={"sample_every": 1.0 if args.duration >= 5 else 0.25},
    )


def _run(args: argparse.Namespace) -> int:
    experiment = _summarized(load_target(args.target), args.summarize)
    params = parse_params(args.param)
    if params:
        experiment = experiment.with_params(**params)
    options: dict[str, Any] = {
        "gpus_per_instance": args.gpus_per_instance,
        "sample_every": args.sample_every,
    }
    if args.timeout is not None:
        options["timeout"] = args.timeout
    if args.retries:
        from labkit.policies import Retry

        options["retry"] = Retry(attempts=args.retries + 1)
    if args.sandbox == "none" and experiment.needs_sandbox:
        raise UsageError(f"{experiment.name} runs in a sandbox: use --sandbox local or e2b")
    if args.executor == "process" and (
        args.sandbox in ("local", "e2b") or (args.sandbox == "auto" and experiment.needs_sandbox)
    ):
        raise UsageError(
            f"--executor process runs each instance in a worker process; {experiment.name} "
            "runs in a sandbox (a process already): leave --executor at 'thread'"
        )
    options["sandbox"] = args.sandbox
    options["seed"] = args.seed
    if args.executor == "process":
        options["executor"] = "process"
    return _execute(
        args,
        experiment,
        instances=args.instances,
        duration=args.duration,
        report=args.report,
        options=options,
    )


def _execute(
    args: argparse.Namespace,
    experiment: Experiment,
    *,
    instances: int | str,
    duration: float | None,
    report: str | None,
    options: dict[str, Any],
) -> int:
    human = sys.stderr if args.json else sys.stdout
    if report is not None:
        _check_report_path(report)
    exporter = _start_exports(args.export, experiment.name, human)
    result = asyncio.run(
        _run_with_progress(
            experiment,
            instances=instances,
            duration=duration,
            db=None if args.no_db else args.db,
            progress=not args.no_progress,
            out=human,
            options=options,
            exporter=exporter,
        )
    )
    if args.json:
        print(result.to_json(), file=sys.stdout)
    else:
        print(format_summary(result), file=human)
    if report is not None:
        from labkit.report import write_html

        written = write_html(result, report)
        print(f"report: {written}", file=human)
    if result.experiment_id is not None:
        print(f"recorded in {args.db} as {result.experiment_id}", file=human)
    exported = _export_result(args.export, result, human)
    return EXIT_OK if result.ok and exported else EXIT_FAILED


def _start_exports(
    targets: Sequence[tuple[str, str | None]], name: str, out: TextIO
) -> PrometheusExporter | None:
    """Check that every ``--export`` target's extra is installed, before anything runs, and
    start serving Prometheus when asked; returns the Prometheus exporter or ``None``.

    Raises:
        UsageError: An extra is missing, or the Prometheus address is bad or taken.
    """
    from labkit.errors import MissingDependency
    from labkit.export.base import require

    for target, _ in targets:
        try:
            require(*_EXPORT_EXTRAS[target], f"--export {target}")
        except MissingDependency as exc:
            raise UsageError(str(exc)) from exc
    served = [where for target, where in targets if target == "prometheus"]
    if not served:
        return None
    from labkit.export import prometheus

    host, _, port = (served[-1] or str(_PROMETHEUS_PORT)).rpartition(":")
    try:
        exporter = prometheus(port=int(port), addr=host or "127.0.0.1", experiment=name)
    except (ValueError, OSError) as exc:
        raise UsageError(f"--export prometheus={served[-1]}: cannot serve there: {exc}") from exc
    print(f"prometheus: serving {exporter.url} while the run lasts", file=out, flush=True)
    return exporter


def _export_result(
    targets: Sequence[tuple[str, str | None]], result: ExperimentResult, out: TextIO
) -> bool:
    """Send ``result`` to each ``--export`` target; a failure is printed, never raised.

    Returns:
        Whether every export succeeded.
    """
    from labkit import export

    ok = True
    for target, where in targets:
        if target == "mlflow":
            report = export.mlflow(result, tracking_uri=where)
        elif target == "tensorboard":
            logdir = where or f"runs/{result.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            report = export.tensorboard(result, logdir)
        else:
            continue  # prometheus served the run while it lasted
        print(report, file=out if report.ok else sys.stderr)
        ok = ok and report.ok
    return ok


def _check_report_path(report: str) -> None:
    """Refuse, before the run, a report path that could not be written after it.

    Raises:
        UsageError: ``report`` is a directory, or its directory is missing or not
            writable.
    """
    path = Path(report)
    if path.is_dir():
        raise UsageError(f"--report {report}: is a directory; give a file name like report.html")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise UsageError(f"--report {report}: the directory {path.parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"--report {report}: not writable here")


async def _run_with_progress(
    experiment: Experiment,
    *,
    instances: int | str,
    duration: float | None,
    db: str | None,
    progress: bool,
    out: TextIO,
    options: dict[str, Any],
    exporter: PrometheusExporter | None = None,
) -> ExperimentResult:
    sandbox_kind = options.pop("sandbox", "auto")
    planned = instances if isinstance(instances, int) else options.get("max_instances", 32)
    sandbox_pool = None
    if sandbox_kind == "local":
        from labkit.sandbox.local import LocalSandbox
        from labkit.sandbox.pool import SandboxPool

        sandbox_pool = SandboxPool(LocalSandbox, max_size=planned)
    elif sandbox_kind == "e2b":
        from labkit.sandbox.e2b import E2BSandbox
        from labkit.sandbox.pool import SandboxPool

        cost = estimate_cost(instances=planned, duration=duration or 300.0)
        print(
            f"E2B: {planned} sandboxes x {duration or 300.0:g} s: about ${cost:.4f} "
            "at E2B's published rates (2 vCPU, 512 MiB each)",
            file=out,
        )
        sandbox_pool = SandboxPool(E2BSandbox, max_size=planned)
    bars = _ProgressBars(duration, enabled=progress)
    on_event: Any = bars
    if exporter is not None:  # serves the run to Prometheus while it lasts
        on_event = EventBus()
        on_event.subscribe(bars)
        on_event.subscribe(exporter)
    store = None
    if db is not None:
        from labkit.store import Store

        store = Store(db)
    try:
        return await run_experiment(
            experiment,
            instances=instances,  # type: ignore[arg-type]
            duration=duration,
            sandbox_pool=sandbox_pool,
            store=store,
            on_event=on_event,
            **options,
        )
    finally:
        bars.close()
        if exporter is not None:
            exporter.close()
        if sandbox_pool is not None:
            await sandbox_pool.close()
        if store is not None:
            store.close()


class _ProgressBars:
    """One tqdm bar per instance, advanced by its samples (seconds of ``duration``)."""

    def __init__(self, duration: float | None, *, enabled: bool) -> None:
        self._duration = duration
        # tqdm draws only in a terminal; a pipe or a file gets no bars.
        self._enabled = enabled and sys.stderr.isatty()
        self._bars: dict[int, Any] = {}

    def __call__(self, event: InstanceEvent | TaskEvent) -> None:
        if not self._enabled:
            return
        if isinstance(event, TaskEvent):
            if event.kind == "retrying" and event.index in self._bars:
                self._bars[event.index].set_postfix_str(f"retry in {event.delay:.1f} s")
            return
        bar = self._bars.get(event.instance)
        if event.kind == "started":
            if bar is None:
                from tqdm import tqdm  # type: ignore[import-untyped]

                bar = self._bars[event.instance] = tqdm(
                    total=self._duration,
                    desc=f"instance {event.instance}",
                    position=event.instance,
                    unit="s",
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s {postfix}"
                    if self._duration
                    else "{desc}: {n:.0f} s {postfix}",
                    leave=True,
                    file=sys.stderr,
                )
            bar.reset(total=self._duration)
            bar.set_postfix_str("running")
        elif bar is None:
            return
        elif event.kind == "sample":
            bar.n = min(event.offset, self._duration or event.offset)
            bar.refresh()
        elif event.kind == "finished":
            bar.n = self._duration or event.offset
            bar.set_postfix_str("ok")
        elif event.kind == "failed":
            bar.set_postfix_str(f"failed: {(event.message or '')[:60]}")

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


def format_summary(result: ExperimentResult) -> str:
    """The averaged summary as a two-column text table, then the failures."""
    summary = result.summary
    lines = [f"{result.name}: {len(result.instances)} instances"]
    if result.all_failed:
        lines.append("ALL INSTANCES FAILED: there is no average.")
    elif result.failed:
        lines.append(
            f"{len(result.failed)} of {len(result.instances)} instances failed; "
            f"averaged over the {len(result.instances) - len(result.failed)} that succeeded."
        )
    spread = result.summary_texts()  # a figure as mean ± ci95 (min … max)
    rows = [
        (key, spread.get(key) or _cell(value))
        for key, value in summary.items()
        if key not in ("errors", "all_failed") and not isinstance(value, Mapping)
    ]
    if rows:
        width = max(len(key) for key, _ in rows)
        lines.append("")
        lines += [f"  {key.ljust(width)}  {value}" for key, value in rows]
    for instance in result.failed:
        lines.append(f"  instance {instance.index} failed: {instance.error}")
    if result.outliers:
        marks = ", ".join(
            f"{metric}: {', '.join(map(str, indices))}"
            for metric, indices in result.outliers.items()
        )
        lines.append(f"  outliers: {marks}")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_cell(item) for item in value) + "]"
    if value is None:
        return "-"
    return str(value)


def _sweep(args: argparse.Namespace) -> int:
    from labkit.sweep import Race, SweepEvent, leaderboard, sweep

    experiment = _summarized(load_target(args.target), args.summarize)
    params = parse_params(args.param)
    if params:
        experiment = experiment.with_params(**params)
    grid = parse_grid(args.grid)
    human = sys.stderr if args.json else sys.stdout

    def report(event: object) -> None:
        if isinstance(event, SweepEvent) and event.kind == "trial_finished":
            stats = event.stats
            print(
                f"trial {event.trial} {event.status}: objective {event.objective:.6g} "
                f"(best so far: trial {stats.best_trial}, {stats.best_objective:.6g})",
                file=human,
                flush=True,
            )

    run_options: dict[str, Any] = {"executor": "process"} if args.executor == "process" else {}
    instances: Any = args.instances
    if args.max_instances is not None and instances == "race":
        instances = Race(max_instances=args.max_instances)
    elif args.max_instances is not None:
        run_options["max_instances"] = args.max_instances  # the cap of -n auto

    async def go() -> Any:
        from labkit.store import Store

        store = None if args.no_db else Store(args.db)
        try:
            return await sweep(
                experiment,
                grid,
                instances=instances,
                objective=args.objective,
                direction=args.direction,
                max_parallel=args.max_parallel,
                store=store,
                on_event=report,
                seed=args.seed,
                **run_options,
            )
        finally:
            if store is not None:
                store.close()

    frame = asyncio.run(go())
    if args.json:
        print(frame.to_json(orient="records", default_handler=str))
    print("leaderboard:", file=human)
    print(leaderboard(frame), file=human)
    return EXIT_OK if (frame["status"] == "ok").any() else EXIT_FAILED


def _history(args: argparse.Namespace) -> int:
    if not Path(args.db).exists():
        print(f"no experiments recorded yet: {args.db} does not exist", file=sys.stderr)
        return EXIT_OK
    with _open_store(args.db) as store:
        frame = store.experiments()
    frame = frame.tail(args.limit)
    if args.json:
        print(frame.to_json(orient="records", date_format="iso", default_handler=str))
        return EXIT_OK
    if frame.empty:
        print(f"no experiments recorded in {args.db}")
        return EXIT_OK
    columns = ["id", "name", "status", "instances", "succeeded", "failed", "created"]
    shown = frame[[column for column in columns if column in frame]].copy()
    if "created" in shown:
        shown["created"] = shown["created"].dt.strftime("%Y-%m-%d %H:%M:%S")
    labels = list(frame["labels"]) if "labels" in frame else []
    if any("sweep" in label for label in labels):
        # Which sweep, and which of its trials, each run was.
        shown["sweep"] = [label.get("sweep", "-") for label in labels]
        shown["trial"] = [label.get("trial", "-") for label in labels]
    if "params" in frame:
        # A sweep's trials share a name: their parameters tell them apart.
        shown["params"] = [_params_text(params) for params in frame["params"]]
    print(shown.to_string(index=False))
    return EXIT_OK


def _params_text(params: Any) -> str:
    """``lr=0.1 batch=32`` (``-`` without parameters), as the sweep's leaderboard writes them."""
    if not isinstance(params, dict) or not params:
        return "-"
    return " ".join(f"{name}={value!r}" for name, value in params.items())


def _open_store(db: str) -> Store:
    """The store at ``db``, to read: read-only first, so that a read-only file,
    directory or filesystem works and nothing is written; else opened normally,
    which upgrades a store of an older labkit.

    Raises:
        StoreError: Neither works; the read-only attempt's reason is given.
    """
    from labkit.store import Store

    try:
        return Store(db, read_only=True)
    except StoreError as read_only_error:
        try:
            return Store(db)
        except StoreError:
            raise read_only_error from None


def _monitor(args: argparse.Namespace) -> int:
    # Screen-clearing codes only in a terminal: a pipe or a file gets plain blocks,
    # one per refresh, separated by a blank line.
    redraw = sys.stdout.isatty()
    first = True
    while True:
        text = _monitor_text(args.db)
        if args.interval is None:
            print(text)
            return EXIT_OK
        if redraw:
            print("\033[2J\033[H" + text, flush=True)  # clear and redraw, like `watch`
        else:
            print(text if first else "\n" + text, flush=True)
        first = False
        time.sleep(args.interval)


def _monitor_text(db: str) -> str:
    import psutil

    from labkit.gpu import GPUPool

    lines = [
        f"machine: cpu {psutil.cpu_percent(interval=0.1):.0f}% of {psutil.cpu_count()} cores, "
        f"memory {psutil.virtual_memory().percent:.0f}% used"
    ]
    gpus = GPUPool().stats().gpus
    if not gpus:
        lines.append("GPUs: none found (no NVIDIA driver, or nvidia-ml-py not installed)")
    for gpu in gpus:
        used = "N/A" if gpu.memory_used_mb is None else f"{gpu.memory_used_mb}"
        total = "N/A" if gpu.memory_total_mb is None else f"{gpu.memory_total_mb}"
        load = "N/A" if gpu.utilization is None else f"{gpu.utilization:.0%}"
        lines.append(f"GPU {gpu.index} {gpu.name}: memory {used}/{total} MB, load {load}")
    if Path(db).exists():
        with _open_store(db) as store:
            frame = store.experiments()
        for status, heading in (
            ("running", "running"),
            ("interrupted", "interrupted (their process died; resume=True picks them up)"),
        ):
            rows = frame[frame["status"] == status] if not frame.empty else frame
            if status == "interrupted" and rows.empty:
                continue
            lines.append(f"experiments {heading} in {db}: {len(rows)}")
            for row in rows.to_dict("records"):
                done = int(row["succeeded"]) + int(row["failed"])
                lines.append(
                    f"  {row['id']} {row['name']}: {done}/{row['instances']} instances done"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
