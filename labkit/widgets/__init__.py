"""Jupyter widgets: views over labkit's events and ``stats()`` snapshots.

- :class:`InstanceSlider`: how many parallel instances ("Nx", results averaged).
- :class:`ExperimentPanel`: choose and configure an experiment, Start and Stop it,
  watch each instance's progress (rows, or a grid when many), a live chart and the
  averaged summary; all drawn from a :class:`labkit.progress.InstanceProgress`.
- :class:`PoolMonitor`: live GPU, sandbox-pool and runner tables, and a run's progress.
- :class:`LiveTimeline`: the live chart alone, as an ``on_event`` callback.
- :class:`SweepPanel`: a sweep's live leaderboard beside the chart of its best trial.

Needs the ``jupyter`` extra (ipywidgets, anywidget, plotly).
"""

from __future__ import annotations

from labkit.widgets.live import LiveTimeline
from labkit.widgets.monitor import PoolMonitor
from labkit.widgets.panel import ExperimentPanel
from labkit.widgets.slider import InstanceSlider
from labkit.widgets.sweep import SweepPanel

__all__ = ("ExperimentPanel", "InstanceSlider", "LiveTimeline", "PoolMonitor", "SweepPanel")
