"""The live chart's frame pacing: a rate cap and a share of the time, on a fake clock."""

from __future__ import annotations

import pytest

from labkit.errors import ConfigError
from labkit.testing import FakeClock
from labkit.widgets.frames import FrameBudget


def test_frame_budget_caps_the_rate_and_the_load() -> None:
    clock = FakeClock()
    budget = FrameBudget(updates_per_s=4.0, max_load=0.05, clock=clock)
    assert budget.delay() == 0.25  # the first frame waits an interval: a burst batches

    def frame(cost: float) -> None:
        started = budget.now
        clock.advance(cost)
        budget.drew(started)

    clock.advance(0.25)
    assert budget.delay() == 0.0
    frame(0.002)  # a cheap frame: the rate cap rules
    assert budget.frames == 1 and budget.last_cost == pytest.approx(0.002)
    assert budget.delay() == pytest.approx(0.25)

    frame(0.5)  # one slow frame (a collection, a busy machine) does not hold the chart back
    assert budget.delay() == pytest.approx(0.25)
    frame(0.030)
    frame(0.030)  # frames that stay slow do: 30 ms may take 5 % of the time, 0.6 s apart
    assert budget.delay() == pytest.approx(0.6)
    clock.advance(0.5)
    assert budget.delay() == pytest.approx(0.1)
    assert budget.max_cost == pytest.approx(0.5)
    assert budget.total_cost == pytest.approx(0.562) and budget.frames == 4

    budget.reset()
    assert budget.delay() == 0.25


def test_frame_budget_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="updates_per_s"):
        FrameBudget(updates_per_s=0)
    with pytest.raises(ConfigError, match="max_load"):
        FrameBudget(max_load=1.5)
