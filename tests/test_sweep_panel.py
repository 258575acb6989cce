"""The sweep's board (the core model) and the SweepPanel and text leaderboard drawing it."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import pandas as pd
import pytest

import labkit as lk
from labkit import stats
from labkit.errors import ConfigError
from labkit.events import InstanceEvent, TaskEvent, TimelineEvent, TrialEvent
from labkit.experiment import Experiment, InstanceContext
from labkit.samplelog import SampleLog
from labkit.sweep import SweepBoard, SweepEvent, SweepStats, TrialStats, leaderboard, sweep
from labkit.testing import FakeClock
from labkit.widgets import SweepPanel


def _rows(panel: SweepPanel) -> list[str]:
    return panel.board.value.split('<tr class="labkit-trial"')[1:]


def _ranked_trials(panel: SweepPanel) -> list[int]:
    """The trial numbers in the panel's rows, top to bottom."""
    return [int(row.split("</td><td>")[1].split("<")[0].rstrip(" ★")) for row in _rows(panel)]


def _running(target: Any, trial: int, instance: int, values: Sequence[float]) -> SampleLog:
    """An instance of ``trial`` starts and records ``values`` of ``loss`` in its log."""
    log = SampleLog()
    target.handle(TrialEvent(trial, InstanceEvent("started", instance, 0.0)))
    target.handle(TrialEvent(trial, TimelineEvent(instance, 0.0, log)))
    for step, value in enumerate(values):
        log.append(step * 0.5, {"loss": value})
        event = InstanceEvent("sample", instance, step * 0.5, step * 0.5, metrics={"loss": value})
        target.handle(TrialEvent(trial, event))
    return log


# -- the board, without a view ------------------------------------------------------------


def test_a_running_trials_estimate_is_the_stats_mean_of_its_instances_so_far() -> None:
    board = SweepBoard(objective="loss_last")
    for instance, values in enumerate(([3.0, 2.0], [3.0, 2.5], [3.0, 1.5, 2.25])):
        _running(board, 0, instance, values)
    (trial,) = board.stats().leaderboard
    expected = stats.mean([2.0, 2.5, 2.25])
    assert (trial.state, trial.n, trial.instances) == ("running", 3, 3)
    assert trial.mean == pytest.approx(expected.estimate)
    assert trial.ci95 == pytest.approx(expected.half_width)
    # A min figure is the min of the samples so far, as the instance's summary will be.
    board.objective = "loss_min"
    assert board.stats().leaderboard[0].mean == pytest.approx((2.0 + 2.5 + 1.5) / 3)
    # An attempt that failed no longer counts; one the function returns is unknown live.
    board.handle(TrialEvent(0, InstanceEvent("failed", 2, 1.0, 1.0, message="boom")))
    board.objective = "loss"
    trial = board.stats().leaderboard[0]
    assert (trial.n, trial.failed_instances) == (2, 1)
    board.objective = "accuracy_last"
    assert board.stats().leaderboard[0].n == 0


def test_a_live_value_is_the_figure_of_the_samples_so_far_however_far_back() -> None:
    from labkit.sweep import live_value

    log = SampleLog()
    log.append(0.0, {"loss": 4.0, "errors": 1.0})
    for row in range(1, 200):  # a later metric only: the loss is far back in the log
        log.append(float(row), {"accuracy": row / 200})
    assert live_value(log, "loss") == live_value(log, "loss_last") == 4.0
    assert live_value(log, "accuracy_max") == pytest.approx(199 / 200)
    assert live_value(log, "error_count") == 1.0
    assert math.isnan(live_value(log, "loss_median")) and math.isnan(live_value(log, "nothing"))
    log.append(200.0, {"loss": math.inf})
    assert math.isnan(live_value(log, "loss"))  # not a finite objective yet
    assert math.isnan(live_value(SampleLog(), "loss"))


def test_one_ranking_ended_trials_then_running_by_estimate_then_the_rest() -> None:
    trials = [
        TrialStats(trial=0, state="running", mean=1.0, n=2),
        TrialStats(trial=1, state="ok", objective=2.0, finished_order=1),
        TrialStats(trial=2, state="failed", finished_order=0),
        TrialStats(trial=3, state="ok", objective=2.0, finished_order=0),
        TrialStats(trial=4, state="running"),
        TrialStats(trial=5, state="running", mean=0.5, n=1),
    ]
    ranked = SweepStats.of(trials, "min").leaderboard
    assert [t.trial for t in ranked] == [3, 1, 5, 0, 2, 4]
    maximising = SweepStats.of(trials, "max")
    assert [t.trial for t in maximising.leaderboard] == [3, 1, 0, 5, 2, 4]
    assert maximising.best_trial == 3 and maximising.failed == 1 and maximising.running == 3
    # The text draws the same order.
    lines = leaderboard(SweepStats.of(trials, "min")).splitlines()
    assert [int(line.split()[2]) for line in lines] == [3, 1, 5, 0, 4]


# -- the panel ------------------------------------------------------------------------------


def test_sweep_panel_ranks_running_trials_by_mean_and_ci95() -> None:
    clock = FakeClock()
    panel = SweepPanel(objective="loss", refresh_every=0.0, clock=clock)
    assert "No trial has started yet" in panel.board.value
    for trial, base in ((0, 2.0), (1, 1.0)):
        for instance in range(3):
            _running(panel, trial, instance, [base + 0.1 * instance + 1 - step for step in (0, 1)])
    panel.handle(TaskEvent("started", 0, 0.0))  # not a sweep's event: ignored

    rows = _rows(panel)
    assert len(rows) == 2
    # Trial 1 leads (lower loss): mean 1.1 ± t(0.975, 2) * 0.1 / sqrt(3) = 0.25.
    assert "<td>1</td><td>1</td>" in rows[0] and "1.1 ± 0.25 (n=3)" in rows[0]
    assert "running" in rows[0] and "<td>3</td>" in rows[0]
    assert "2.1 ± 0.25 (n=3)" in rows[1]
    assert panel.shown_trial == 1  # the chart follows the leader
    snapshot = panel.chart.model.snapshot()
    assert snapshot.instances == (0, 1, 2) and snapshot.samples == 6
    panel.close()


def test_sweep_panel_follows_the_sweeps_best_and_marks_failures() -> None:
    def stats(*trials: TrialStats) -> SweepStats:
        return SweepStats.of(trials, "max", objective="loss")

    panel = SweepPanel(direction="min", refresh_every=0.0)
    running = [TrialStats(trial=n, state="running") for n in (0, 1)]
    for trial in (0, 1):
        panel.handle(SweepEvent("trial_started", 0.0, trial, None, math.nan, stats(*running)))
        _running(panel, trial, 0, [float(trial)])
    panel.handle(TrialEvent(0, InstanceEvent("failed", 0, 1.0, 1.0, message="boom")))
    one = TrialStats(
        trial=1, state="ok", objective=5.0, mean=5.0, n=1, instances=1, values=(5.0,),
        finished_order=0,
    )  # fmt: skip
    panel.handle(SweepEvent("trial_finished", 1.0, 1, "ok", 5.0, stats(one, running[0])))
    zero = TrialStats(trial=0, state="failed", instances=1, failed_instances=1, finished_order=1)
    panel.handle(SweepEvent("trial_finished", 2.0, 0, "failed", math.nan, stats(one, zero)))

    assert panel.direction == "max" and panel.objective == "loss"  # the sweep said so
    assert panel.shown_trial == 1
    rows = _rows(panel)
    assert "font-weight:bold" in rows[0] and "1 ★" in rows[0] and "5 (n=1)" in rows[0]
    assert ">ok<" in rows[0]
    assert ">failed<" in rows[1] and "1 failed" in rows[1]
    assert "2 trials, 2 ended, 1 failed" in panel.heading.value
    panel.close()


@pytest.mark.asyncio
async def test_sweep_panel_watches_a_real_sweep() -> None:
    async def descend(ctx: InstanceContext) -> None:
        for step in range(5):
            ctx.record(loss=ctx.params["x"] / (step + 1) + 0.01 * ctx.index)
            await ctx.sleep(0.1)

    clock = FakeClock(autojump=True)
    panel = SweepPanel(objective="loss", clock=clock)
    frame = await sweep(
        Experiment("descend", descend), {"x": [3.0, 1.0, 2.0]}, instances=3,
        objective="loss", max_parallel=3, on_event=panel.handle, clock=clock,
    )  # fmt: skip
    best = int(frame.loc[frame["best"], "trial"].iloc[0])
    assert panel.shown_trial == best == 1
    rows = _rows(panel)
    assert len(rows) == 3 and all(">ok<" in row and "(n=3)" in row for row in rows)
    expected = frame.loc[frame["trial"] == best].iloc[0]
    assert f"{expected['objective']:.4g} ± {expected['objective_ci95']:.2g} (n=3)" in rows[0]
    assert "★" in rows[0]
    assert _ranked_trials(panel) == [1, 2, 0]
    panel.chart.flush()
    names = [trace.name for trace in panel.chart.figure.data]
    assert {"instance 0", "instance 1", "instance 2", "average"} <= set(names)
    # The best trial's chart read its instances' logs, each sample once.
    assert panel.chart.model.snapshot().samples == 3 * 5
    panel.close()


def test_sweep_panel_options_checked() -> None:
    with pytest.raises(ConfigError, match="direction"):
        SweepPanel(direction="up")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="top"):
        SweepPanel(top=0)
    with pytest.raises(ConfigError, match="refresh_every"):
        SweepPanel(refresh_every=-1)
    with pytest.raises(ConfigError, match="objective"):
        SweepPanel(objective=3)  # type: ignore[arg-type]


# -- a racing sweep's board -----------------------------------------------------------------


def seeded(means: Sequence[float], seed_sd: float, noise: float) -> Experiment:
    """Trial ``k`` records a falling ``loss`` ending at ``means[k]`` plus seeded noise."""

    async def fn(ctx: InstanceContext) -> None:
        k = ctx.params["k"]
        shared = random.Random(ctx.seed).gauss(0.0, seed_sd)
        own = random.Random(ctx.seed * 31 + k).gauss(0.0, noise)
        for step in (2.0, 1.0, 0.0):
            ctx.record(loss=means[k] + shared + own + step)

    return Experiment("raced", fn)


async def _raced(objective: str) -> tuple[pd.DataFrame, SweepPanel, list[SweepStats]]:
    """A race watched by a panel; the frame, the panel and each round's snapshot."""
    panel = SweepPanel(objective=objective, refresh_every=0.0)
    sent: list[SweepStats] = []

    def watch(event: Any) -> None:
        panel.handle(event)
        if isinstance(event, SweepEvent) and event.kind == "decided":
            sent.append(event.stats)

    frame = await sweep(
        seeded([0.0, 0.05, 3.0], seed_sd=1.0, noise=0.5), {"k": [0, 1, 2]},
        instances=lk.Race(max_instances=8), objective=objective, on_event=watch,
    )  # fmt: skip
    return frame, panel, sent


@pytest.mark.parametrize("objective", ["loss_last", "loss"])
async def test_a_racing_sweeps_board_shows_what_racing_gave_each_trial(objective: str) -> None:
    frame, panel, sent = await _raced(objective)
    assert frame["instances"].tolist() == [8, 8, 5]  # racing gave some trials 8
    board = {trial.trial: trial for trial in panel.model.stats().leaderboard}
    for row in frame.itertuples():
        trial = board[row.trial]
        # The board's instances and n are the frame's, its estimate over all instances.
        assert (
            (trial.instances, trial.n) == (row.instances, row.objective_n) == (row.instances,) * 2
        )
        assert trial.objective == row.objective and math.isfinite(trial.ci95)
        assert trial.ci95 == pytest.approx(row.objective_ci95)
    # The interval is that of every instance's final loss, not of the first round's.
    best = board[int(frame.loc[frame["best"], "trial"].iloc[0])]
    assert best.ci95 == pytest.approx(stats.mean(best.values).half_width)
    assert len(best.values) == 8
    # What the panel draws: the instances racing gave, a finite interval, the frame's order.
    rows = _rows(panel)
    assert "<td>8</td>" in rows[0] and "(n=8)" in rows[0] and " ± " in rows[0]
    assert _ranked_trials(panel) == [
        int(line.split()[2]) for line in leaderboard(frame).splitlines()[:3]
    ]
    # While it raced, each round's snapshot had the counts of the rounds so far.
    counts = [max(t.instances for t in snapshot.leaderboard) for snapshot in sent]
    assert counts == list(range(5, 9))
    assert [t.n for t in sent[0].leaderboard] == [5, 5, 5]
    panel.close()


def test_the_text_leaderboard_shows_the_estimate_of_a_frame() -> None:
    frame = pd.DataFrame(
        {
            "trial": [0, 1],
            "status": ["ok", "ok"],
            "objective": [2.0, 1.0],
            "objective_ci95": [0.5, math.nan],
            "objective_n": [4, 1],
            "instances": [4, 1],
            "finished_order": [0, 1],
        }
    )
    frame.attrs.update(direction="min", params=[])
    lines = leaderboard(frame).splitlines()
    assert lines[0].startswith("  1. trial 1") and "objective 1  (1 instances)" in lines[0]
    assert "objective 2 ± 0.5 ci95 (n=4)  (4 instances)" in lines[1]
