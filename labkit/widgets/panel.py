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
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import ipywidgets as w

from labkit.clock import SYSTEM_CLOCK
from labkit.errors import ConfigError
from labkit.events import TaskEvent
from labkit.experiment import Experiment, InstanceEvent, run_experiment
from labkit.live import LiveSnapshot
from labkit.plots import SPREAD_HEADING
from labkit.results import ExperimentResult
from labkit.widgets.live import LiveTimeline
from labkit.widgets.slider import InstanceSlider

__all__ = ("ExperimentPanel",)

INTENSITIES = ("low", "medium", "high")

ExperimentSource = Experiment | Callable[[], Experiment]
RunFunction = Callable[..., Awaitable[ExperimentResult]]


class _InstanceRow(w.HBox):  # type: ignore[misc]
    """One instance's progress bar and status line."""

    def __init__(self, index: int) -> None:
        self.bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, layout={"width": "260px"})
        self.status = w.HTML("waiting")
        self.shown = 0.0
        super().__init__(
            [w.Label(f"instance {index}", layout={"width": "80px"}), self.bar, self.status]
        )

    def show(
        self, progress: float | None = None, status: str | None = None, style: str | None = None
    ) -> None:
        # Redraw only visible steps (1 %): a fast experiment records far more often.
        if progress is not None and abs(progress - self.shown) >= 0.01:
            self.shown = progress
            self.bar.value = progress
        if status is not None and status != self.status.value:
            self.status.value = status
        if style is not None:
            self.bar.bar_style = style


class ExperimentPanel(w.VBox):  # type: ignore[misc]
    """Controls, progress and a live chart for running one of a few experiments.

    The controls: the experiment (when several are given), duration, intensity
    (when the experiment has an ``intensity`` parameter), parallel instances, and
    GPUs per instance (when ``gpu_pool`` has GPUs). Start creates one progress bar
    and status per instance and a fresh live chart; at the end the averaged
    summary appears in a table. Errors show in the panel, never as a traceback.

    Args:
        experiments: An ``Experiment``, a mapping of names to experiments, or to
            functions returning one (such as ``labkit.scenarios.SCENARIOS``).
        gpu_pool: Where GPUs come from (``GPUPool``).
        sandbox_pool: Where sandboxes come from (``SandboxPool``).
        max_instances: The instance slider's maximum.
        duration: The initial duration, in seconds.
        max_duration: The duration slider's maximum, in seconds.
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
        max_instances: int = 5,
        duration: float = 5.0,
        max_duration: float = 60.0,
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
        self._rows: dict[int, _InstanceRow] = {}
        self._duration_s: float | None = None
        self._stopping = False
        self.result: ExperimentResult | None = None
        """The last finished run's result."""

        names = list(self._experiments)
        self.experiment = w.Dropdown(options=names, value=names[0], description="Experiment")
        self.experiment.layout.display = "" if len(names) > 1 else "none"
        self.duration = w.FloatSlider(
            value=duration,
            min=0.5,
            max=max(max_duration, duration),
            step=0.5,
            description="Duration (s)",
            style={"description_width": "initial"},
        )
        self.intensity = w.ToggleButtons(
            options=INTENSITIES, value="medium", description="Intensity"
        )
        self.instances = InstanceSlider(max=max_instances)
        gpu_count = len(gpu_pool.stats().gpus) if gpu_pool is not None else 0
        self.gpus = w.IntSlider(
            value=0,
            min=0,
            max=max(gpu_count, 1),
            description="GPUs per instance",
            style={"description_width": "initial"},
            disabled=gpu_count == 0,
        )
        self.start_button = w.Button(description="Start", button_style="success", icon="play")
        self.stop_button = w.Button(
            description="Stop", button_style="danger", icon="stop", disabled=True
        )
        self.start_button.on_click(lambda _button: self.start())
        self.stop_button.on_click(lambda _button: self.stop())
        self.message = w.HTML()
        self.progress = w.VBox()
        # The chart's frames are timed on the run's clock (a test's FakeClock too).
        self.chart = LiveTimeline(
            clock=run_options.get("clock", SYSTEM_CLOCK), on_frame=self._show_progress
        )
        self.summary = w.HTML()
        self.experiment.observe(self._show_intensity, names="value")
        self._show_intensity()
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
            ]
        )
        self.add_class("labkit-experiment-panel")

    @property
    def running(self) -> bool:
        """Whether an experiment is running now."""
        return self._task is not None and not self._task.done()

    @property
    def task(self) -> asyncio.Task[ExperimentResult | None] | None:
        """The running (or last) experiment's task; ``await panel.task`` waits for it."""
        return self._task

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
        self._duration_s = float(self.duration.value)
        self._stopping = False
        self.result = None
        self.summary.value = ""
        self._show_message(f"Running {html.escape(experiment.name)} x{instances}...")
        self._rows = {i: _InstanceRow(i) for i in range(instances)}
        self.progress.children = tuple(self._rows.values())
        self.chart.reset()
        self._set_running(True)
        self._task = loop.create_task(
            self._run_and_show(experiment, instances), name=f"labkit-panel-{experiment.name}"
        )
        return self._task

    def stop(self) -> None:
        """Cancel the running experiment (the Stop button); its resources are given back."""
        if self._task is not None and not self._task.done():
            self._stopping = True
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
        self, experiment: Experiment, instances: int
    ) -> ExperimentResult | None:
        try:
            result = await self._run(
                experiment,
                instances=instances,
                duration=self._duration_s,
                gpus_per_instance=int(self.gpus.value),
                gpu_pool=self.gpu_pool,
                sandbox_pool=self.sandbox_pool,
                on_event=self._on_event,
                **self._run_options,
            )
        except asyncio.CancelledError:
            self._show_message("Stopped.", error=True)
            for row in self._rows.values():
                if row.bar.bar_style not in ("success", "danger"):
                    row.show(status="stopped", style="warning")
            raise
        except Exception as exc:  # shown in the panel: a notebook user reads it there
            self._show_message(f"{type(exc).__name__}: {exc}", error=True)
            return None
        finally:
            self._set_running(False)
        self.result = result
        self.chart.show_result(result)
        total = len(result.instances)
        failed = sum(not instance.ok for instance in result.instances)
        self._show_message(
            f"Done: {total - failed} of {total} instances succeeded.", error=bool(failed)
        )
        self.summary.value = _summary_html(result)
        return result

    def _on_event(self, event: Any) -> None:
        self.chart.handle(event)
        if type(event) is InstanceEvent:
            if event.kind == "sample":
                return  # the bars move with the chart's frames (_show_progress), not per sample
            row = self._rows.get(event.instance)
            if row is None:
                return
            if event.kind == "started":
                row.show(status="running", style="info")
            elif event.kind == "finished":
                row.show(progress=1.0, status="done", style="success")
            elif event.kind == "failed" and self._stopping:
                row.show(status="stopped", style="warning")
            elif event.kind == "failed":
                text = html.escape(event.message or "failed")
                row.show(status=f'<span style="color:#c0392b">{text}</span>', style="danger")
        elif isinstance(event, TaskEvent) and event.kind == "retrying":
            row = self._rows.get(event.index)
            if row is not None:
                row.show(status=f"retrying (attempt {event.attempt + 1})", style="warning")

    # The bars move with the chart's frames and the chart reads the attempts' logs:
    # a run spares the panel its per-sample events.
    _on_event.sample_events = False  # type: ignore[attr-defined]

    def _show_progress(self, snapshot: LiveSnapshot) -> None:
        """Each instance's bar at its latest sample's offset over the duration."""
        if not self._duration_s:
            return
        for instance, offset in snapshot.latest.items():
            row = self._rows.get(instance)
            if row is not None and row.bar.bar_style not in ("success", "danger"):
                row.show(progress=min(offset / self._duration_s, 1.0), status="running")

    def _set_running(self, running: bool) -> None:
        self.start_button.disabled = running
        self.stop_button.disabled = not running
        for control in (self.experiment, self.duration, self.intensity, self.instances.slider):
            control.disabled = running
        self.gpus.disabled = running or self.gpu_pool is None or not len(self.gpu_pool.stats().gpus)

    def _show_message(self, text: str, *, error: bool = False) -> None:
        color = "#c0392b" if error else "inherit"
        self.message.value = (
            f'<span class="labkit-panel-message" style="color:{color}">{text}</span>'
        )

    def _show_intensity(self, _change: object = None) -> None:
        params = _resolve(self._experiments[self.experiment.value]).params or {}
        has = "intensity" in params
        self.intensity.layout.display = "" if has else "none"
        if has and params["intensity"] in INTENSITIES:
            self.intensity.value = params["intensity"]


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
