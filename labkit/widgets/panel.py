"""The experiment panel: pick, configure, start, watch, stop.

:class:`ExperimentPanel` is a view over :func:`labkit.experiment.run_experiment`:
its controls become that call's arguments, its progress bars and live chart follow
the run's events, and the result's summary is shown at the end. Start runs the
experiment as a task on the kernel's own event loop, so the notebook stays
responsive; Stop cancels that task, and ``run_experiment`` gives GPUs and
sandboxes back as it unwinds.
"""

from __future__ import annotations

import asyncio
import html
import importlib
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import ipywidgets as w

from labkit.clock import SYSTEM_CLOCK
from labkit.errors import ConfigError
from labkit.events import Watcher
from labkit.experiment import Experiment, run_experiment
from labkit.live import LiveSnapshot
from labkit.plots import SPREAD_HEADING
from labkit.progress import InstanceProgress, reads_duration
from labkit.results import ExperimentResult
from labkit.widgets.bars import ProgressView
from labkit.widgets.live import LiveTimeline
from labkit.widgets.slider import InstanceSlider, default_max_instances

__all__ = ("FALLBACK_CLASS", "ExperimentPanel", "cell_id", "static_figure_html")

FALLBACK_CLASS = "labkit-static-fallback"
"""The class of the static copy a panel leaves in its output (hidden while widgets are live)."""

INTENSITIES = ("low", "medium", "high")

ExperimentSource = Experiment | Callable[[], Experiment]
RunFunction = Callable[..., Awaitable[ExperimentResult]]


class ExperimentPanel(w.VBox):  # type: ignore[misc]
    """Controls, progress and a live chart for running one of a few experiments.

    The controls: the experiment (when several are given), duration (when the
    experiment's function reads ``ctx.duration``), intensity (when the
    experiment has an ``intensity`` parameter), parallel instances, and GPUs per
    instance (when ``gpu_pool`` has GPUs). Start shows each instance's progress
    (a bar and what is known per instance, or a compact grid above
    :data:`~labkit.widgets.bars.MAX_ROWS` instances) and a fresh live chart; at
    the end the averaged summary appears in a table. Errors show in the panel,
    never as a traceback. The progress is drawn from a
    :class:`labkit.progress.InstanceProgress` model, as the command line's bars are.

    Shown in a notebook, the panel also leaves a static copy of its last state
    (the chart as a plotly figure and the summary table) in the output, for
    whoever reads the notebook without a live kernel (``nbconvert --to html``);
    while the widgets are live that copy is hidden. Running the panel's cell
    again stops the run the previous panel of that cell had going, and both
    panels say so.

    Args:
        experiments: An ``Experiment``, a mapping of names to experiments, or to
            functions returning one (such as ``labkit.scenarios.SCENARIOS``).
        gpu_pool: Where GPUs come from (``GPUPool``).
        sandbox_pool: Where sandboxes come from (``SandboxPool``).
        max_instances: The instance slider's maximum; default:
            :func:`~labkit.widgets.slider.default_max_instances` (the sandbox
            pool's size, else 4 per CPU core, 8 to 64).
        duration: The initial duration, in seconds.
        max_duration: The duration slider's maximum, in seconds.
        duration_control: Show the duration slider (and pass ``duration`` to the
            run); default: only when the experiment's function reads
            ``ctx.duration`` or ``ctx.remaining`` (see :func:`reads_duration`).
        run: The coroutine function that runs an experiment (default
            :func:`labkit.experiment.run_experiment`; tests may pass their own).
        **run_options: More keyword arguments for ``run`` (``executor="process"``,
            ``seed``, ``timeout``, ``store``,
            ``sample_every``, ``clock``...).

    Raises:
        ConfigError: If ``experiments`` is empty or holds something else.
    """

    def __init__(
        self,
        experiments: ExperimentSource | Mapping[str, ExperimentSource],
        *,
        gpu_pool: Any = None,
        sandbox_pool: Any = None,
        max_instances: int | None = None,
        duration: float = 5.0,
        max_duration: float = 60.0,
        duration_control: bool | None = None,
        run: RunFunction = run_experiment,
        **run_options: Any,
    ) -> None:
        # Set first: ipywidgets closes even a half-built widget when collected.
        self._task: asyncio.Task[ExperimentResult | None] | None = None
        self._experiments = _by_name(experiments)
        self.gpu_pool = gpu_pool
        self.sandbox_pool = sandbox_pool
        self._run = run
        self._run_options = run_options
        self._clock = run_options.get("clock", SYSTEM_CLOCK)
        self._duration_control = duration_control
        self.model = InstanceProgress(clock=self._clock)
        """The progress of the running (or last) run, as the bars show it."""
        self._fallback: Any = None  # the display of the static copy, once shown
        self._stop_reason = "Stopped."
        self._message = ""  # the message's text, for the static copy
        self._detached = False  # the cell was run again: this panel's output is gone
        self.result: ExperimentResult | None = None
        """The last finished run's result."""

        self._make_inputs(
            max_instances or default_max_instances(sandbox_pool), duration, max_duration
        )
        self.message = w.HTML()
        self.progress = ProgressView()
        # The chart's frames are timed on the run's clock (a test's FakeClock too).
        self.chart = LiveTimeline(clock=self._clock, on_frame=self._show_progress)
        self.summary = w.HTML()
        # Drawn only by live widgets: hides the static copy meant for readers without them.
        self._live_style = w.HTML(f"<style>.{FALLBACK_CLASS}{{display:none}}</style>")
        self.experiment.observe(self._show_controls, names="value")
        self._show_controls()
        super().__init__(
            [
                w.HBox([self.experiment, self.intensity]),
                w.HBox([self.duration, self.gpus]),
                self.instances,
                w.HBox([self.start_button, self.stop_button]),
                self.message,
                self.progress,
                self.chart.figure,
                self.summary,
                self._live_style,
            ]
        )
        self.add_class("labkit-experiment-panel")
        self._cell = cell_id()
        self._replace_previous()

    def _make_inputs(self, max_instances: int, duration: float, max_duration: float) -> None:
        """The controls that become the run's arguments, and Start and Stop."""
        names = list(self._experiments)
        self.experiment = w.Dropdown(options=names, value=names[0], description="Experiment")
        self.experiment.layout.display = "" if len(names) > 1 else "none"
        self.duration = w.FloatSlider(
            value=duration,
            min=0.5,
            max=max(max_duration, duration),
            step=0.5,
            description="Duration (s), as ctx.duration",
            style={"description_width": "initial"},
        )
        self.intensity = w.ToggleButtons(
            options=INTENSITIES, value="medium", description="Intensity"
        )
        self.instances = InstanceSlider(max=max_instances)
        self.gpus = w.IntSlider(
            value=0,
            min=0,
            max=max(_gpu_count(self.gpu_pool), 1),
            description="GPUs per instance",
            style={"description_width": "initial"},
        )
        # No GPU to hand out: no GPU control at all (a disabled one only puzzles).
        self.gpus.layout.display = "" if _gpu_count(self.gpu_pool) else "none"
        self.start_button = w.Button(description="Start", button_style="success", icon="play")
        self.stop_button = w.Button(
            description="Stop", button_style="danger", icon="stop", disabled=True
        )
        self.start_button.on_click(lambda _button: self.start())
        self.stop_button.on_click(lambda _button: self.stop())

    @property
    def running(self) -> bool:
        """Whether an experiment is running now."""
        return self._task is not None and not self._task.done()

    @property
    def task(self) -> asyncio.Task[ExperimentResult | None] | None:
        """The running (or last) experiment's task; ``await panel.task`` waits for it."""
        return self._task

    @property
    def duration_shown(self) -> bool:
        """Whether the chosen experiment gets the duration slider's value as ``ctx.duration``."""
        if self._duration_control is not None:
            return self._duration_control
        return reads_duration(_resolve(self._experiments[self.experiment.value]).fn)

    def start(self) -> asyncio.Task[ExperimentResult | None]:
        """Start the chosen experiment as a task on the running loop (the Start button).

        Returns:
            The task; it resolves to the result, or ``None`` if the run failed
            (the error is then shown in the panel).

        Raises:
            RuntimeError: If no event loop is running (outside a notebook, start
                from a coroutine).
        """
        if self._task is not None and not self._task.done():
            return self._task
        loop = asyncio.get_running_loop()
        experiment = self._chosen()
        instances = self.instances.value
        duration = float(self.duration.value) if self.duration_shown else None
        self.result = None
        self._stop_reason = "Stopped."
        self.summary.value = ""
        self._show_message(f"Running {html.escape(experiment.name)} x{instances}...")
        self.model = InstanceProgress(instances, expected_s=duration, clock=self._clock)
        self.progress.reset(instances)
        self.progress.show(self.model.snapshot())
        self.chart.reset()
        self._set_running(True)
        self._show_fallback()
        self._task = loop.create_task(
            self._run_and_show(experiment, instances, duration),
            name=f"labkit-panel-{experiment.name}",
        )
        return self._task

    def stop(self, reason: str = "Stopped.") -> None:
        """Stop the running experiment (the Stop button); its resources are given back.

        Every instance not ended reads "stopped" from now on, in the bars and the
        chart's legend alike.

        Args:
            reason: The message the panel shows once the run has unwound.
        """
        if self._task is None or self._task.done():
            return
        self._stop_reason = reason
        self.model.stop()
        if not self._detached:
            self.chart.mark_stopped(
                s.index for s in self.model.snapshot().instances if s.state == "stopped"
            )
        self.progress.show(self.model.snapshot())
        self._task.cancel()

    def close(self) -> None:
        """Stop any run and close the panel's widgets."""
        self.stop()
        if hasattr(self, "chart"):  # absent when construction failed
            self.chart.close()
        super().close()

    def _chosen(self) -> Experiment:
        experiment = _resolve(self._experiments[self.experiment.value])
        if "intensity" in (experiment.params or {}):
            experiment = experiment.with_params(intensity=self.intensity.value)
        return experiment

    async def _run_and_show(
        self, experiment: Experiment, instances: int, duration: float | None
    ) -> ExperimentResult | None:
        try:
            result = await self._run(
                experiment,
                instances=instances,
                duration=duration,
                gpus_per_instance=int(self.gpus.value),
                gpu_pool=self.gpu_pool,
                sandbox_pool=self.sandbox_pool,
                on_event=_Watcher(self),
                **self._run_options,
            )
        except asyncio.CancelledError:
            if not self.model.stopped:  # cancelled from elsewhere: it stopped all the same
                self.model.stop()
            self._show_message(self._stop_reason, error=True)
            if not self._detached:
                self.chart.flush()
            self.progress.show(self.model.snapshot())
            self._show_fallback()
            raise
        except Exception as exc:  # shown in the panel: a notebook user reads it there
            self._show_message(f"{type(exc).__name__}: {exc}", error=True)
            return None
        finally:
            self._set_running(False)
        self.result = result
        self.chart.show_result(result)
        self.progress.show(self.model.snapshot())
        total = len(result.instances)
        failed = sum(not instance.ok for instance in result.instances)
        self._show_message(
            f"Done: {total - failed} of {total} instances succeeded.", error=bool(failed)
        )
        self.summary.value = _summary_html(result)
        self._show_fallback()
        return result

    def _on_event(self, event: Any) -> None:
        """One event of the run: the chart and the progress model take it."""
        if not self._detached:
            self.chart.handle(event)
        if self.model.handle(event):
            self.progress.show(self.model.snapshot())

    def _show_progress(self, _snapshot: LiveSnapshot) -> None:
        """The bars move with the chart's frames (the samples are read then), not per sample."""
        self.progress.show(self.model.snapshot())

    def _set_running(self, running: bool) -> None:
        self.start_button.disabled = running
        self.stop_button.disabled = not running
        for control in (self.experiment, self.duration, self.intensity, self.instances.slider):
            control.disabled = running
        self.gpus.disabled = running

    def _show_message(self, text: str, *, error: bool = False) -> None:
        color = "#c0392b" if error else "inherit"
        self._message = text
        self.message.value = (
            f'<span class="labkit-panel-message" style="color:{color}">{text}</span>'
        )

    def _show_controls(self, _change: object = None) -> None:
        params = _resolve(self._experiments[self.experiment.value]).params or {}
        has = "intensity" in params
        self.intensity.layout.display = "" if has else "none"
        if has and params["intensity"] in INTENSITIES:
            self.intensity.value = params["intensity"]
        self.duration.layout.display = "" if self.duration_shown else "none"

    # Notebook output: the static copy, and a cell run again ----------------------------

    def detach(self) -> None:
        """The panel's output is gone (its cell was run again): stop its run, close its chart.

        A browser whose chart view is gone fails on every update sent to it, so the
        chart is closed at once rather than redrawn for a run nobody sees.
        """
        self._detached = True
        self.chart.close()
        self.stop("Stopped: this cell was run again.")

    def _ipython_display_(self) -> None:
        """Show the widget, then a static copy of its last state for readers without widgets."""
        display = _ipython("IPython.display").display
        # What plotly does when a figure widget is displayed on its own: its views start
        # from the figure as it is now (the chart's placeholder), not as it was created.
        self.chart.figure._repr_mimebundle_()
        display(self._repr_mimebundle_(), raw=True)
        self._fallback = display(self._fallback_bundle(), raw=True, display_id=True)

    def static_html(self) -> str:
        """The panel's last state as static HTML: message, chart and summary table.

        Hidden while the widgets are live (the panel draws a style that hides it).
        """
        figure = ""
        if not self.chart.model.snapshot().empty:
            figure = static_figure_html(self.chart.figure)
        return (
            f'<div class="{FALLBACK_CLASS}"><p>{self._message}</p>'
            f"<p>{html.escape(self.progress.summary_text)}</p>{figure}{self.summary.value}</div>"
        )

    def _show_fallback(self) -> None:
        if self._fallback is not None:
            self._fallback.update(self._fallback_bundle(), raw=True)

    def _fallback_bundle(self) -> dict[str, str]:
        return {"text/html": self.static_html(), "text/plain": self.progress.summary_text}

    def _replace_previous(self) -> None:
        """Stop the run of the panel this cell showed before, and say so in both panels."""
        if self._cell is None:
            return
        previous = _BY_CELL.get(self._cell)
        _BY_CELL[self._cell] = self
        if previous is not None and previous is not self and previous.running:
            name = html.escape(str(previous.experiment.value))
            previous.detach()
            self._show_message(f"The previous run of this cell ({name}) was stopped.")


class _Watcher(Watcher):
    """What a run tells the panel: the chart and the progress model read the events
    (the instances' state changes and logs, retries and cancellations; no task
    event otherwise, and no per-sample event)."""

    def __init__(self, panel: ExperimentPanel) -> None:
        self._panel = panel

    def _take(self, event: Any) -> None:
        self._panel._on_event(event)

    on_instance_started = on_samples = on_instance_finished = on_instance_failed = _take
    on_task_retry = on_task_cancelled = _take


_BY_CELL: weakref.WeakValueDictionary[str, ExperimentPanel] = weakref.WeakValueDictionary()
"""The panel each notebook cell showed last (by the cell's id)."""


def cell_id() -> str | None:
    """The id of the notebook cell running now (JupyterLab and Notebook 7 send it), or ``None``."""
    try:
        shell = _ipython("IPython").get_ipython()
    except ImportError:
        return None
    get_parent = getattr(shell, "get_parent", None)
    parent = get_parent() if callable(get_parent) else getattr(shell, "parent_header", None)
    metadata = (parent or {}).get("metadata") or {}
    value = metadata.get("cellId")
    return str(value) if value else None


def static_figure_html(figure: Any) -> str:
    """A plotly figure as an HTML fragment that draws itself where it is visible.

    The fragment holds the figure's JSON and a script that loads plotly.js from
    its CDN and draws it, unless plotly.js is there already, and only when the
    fragment is displayed: a notebook with live widgets hides the static copy,
    so it loads nothing there (an offline kernel logs no failed download).
    """
    import plotly.io as pio
    from plotly.offline import get_plotlyjs_version

    source = f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"  # as plotly's "cdn"

    key = f"labkit-figure-{uuid.uuid4().hex}"
    spec = pio.to_json(figure, validate=False).replace("</", "<\\/")
    return (
        f'<div id="{key}" class="plotly-graph-div" style="height:{_height(figure)}px"></div>'
        f'<script type="application/json" id="{key}-spec">{spec}</script>'
        "<script>(function () {"
        f'var el = document.getElementById("{key}");'
        "if (!el || el.offsetParent === null) { return; }"
        f'var spec = JSON.parse(document.getElementById("{key}-spec").textContent);'
        "function draw() { window.Plotly.newPlot(el, spec.data, spec.layout); }"
        "if (window.Plotly) { draw(); return; }"
        'var tag = document.createElement("script");'
        f'tag.src = "{source}"; tag.onload = draw; document.head.appendChild(tag);'
        "})();</script>"
    )


def _height(figure: Any) -> int:
    height = figure.layout.height
    return int(height) if height else 450


def _ipython(module: str) -> Any:
    """An IPython module (untyped, and imported only when a notebook shows a panel)."""
    return importlib.import_module(module)


def _gpu_count(gpu_pool: Any) -> int:
    return len(gpu_pool.stats().gpus) if gpu_pool is not None else 0


def _resolve(source: ExperimentSource) -> Experiment:
    return source if isinstance(source, Experiment) else source()


def _by_name(experiments: Any) -> dict[str, ExperimentSource]:
    if isinstance(experiments, Experiment):
        return {experiments.name: experiments}
    if isinstance(experiments, Mapping) and experiments:
        for name, source in experiments.items():
            if not (isinstance(source, Experiment) or callable(source)):
                raise ConfigError(
                    "experiments", {name: source}, "Experiments or functions returning one"
                )
        return {str(name): source for name, source in experiments.items()}
    raise ConfigError(
        "experiments", experiments, "an Experiment or a non-empty mapping of names to experiments"
    )


def _summary_html(result: ExperimentResult) -> str:
    """The averaged summary's numbers as a two-column table; failures listed below."""
    spread = result.summary_texts()  # a figure as mean ± ci95 (min … max)
    rows = "".join(
        f"<tr><td>{html.escape(str(key))}</td>"
        f'<td style="text-align:right">'
        f"{html.escape(spread[key]) if key in spread else _number(value)}</td></tr>"
        for key, value in result.summary.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    )
    errors = result.summary.get("errors") or {}
    failures = "".join(
        f"<li>instance {index}: {html.escape(str(text))}</li>" for index, text in errors.items()
    )
    return (
        f'<div class="labkit-summary"><b>Averaged summary: {html.escape(result.name)}</b>'
        f'<table style="font-size:12px"><tr><th>figure</th><th>{SPREAD_HEADING}</th></tr>'
        f"{rows}</table>" + (f"<b>Failed</b><ul>{failures}</ul>" if failures else "") + "</div>"
    )


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.4g}"
