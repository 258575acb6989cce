"""Racing's decisions, checked by seeded simulation of thousands of races.

A simulated trial's instance *i* scores its mean, plus noise, plus (for a sweep
whose instances share seeds) an effect of seed *i* common to every trial. Each
check counts how often the race's printed statement is wrong, or how often its
leader is the true best, against a fixed number of instances per trial on the
same kind of sweep.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pytest

import labkit as lk
from labkit.sweep import RaceDecision, judge, race


@dataclass(frozen=True)
class Outcome:
    decision: RaceDecision
    counts: dict[int, int]

    @property
    def used(self) -> int:
        return sum(self.counts.values())


def simulate(
    means: Sequence[float],
    options: lk.Race,
    races: int,
    seed: int,
    *,
    sd: float = 1.0,
    seed_sd: float = 0.0,
    direction: str = "min",
) -> list[Outcome]:
    """Run ``races`` races of trials with these means (normal noise ``sd``)."""
    rng = np.random.default_rng(seed)

    async def one() -> Outcome:
        seed_effects = rng.normal(0.0, seed_sd, 100_000) if seed_sd else None
        values: dict[int, list[float]] = {trial: [] for trial in range(len(means))}

        async def run(batches: Sequence[tuple[int, int]]) -> Mapping[int, Sequence[float]]:
            for trial, size in batches:
                start = len(values[trial])
                draws = rng.normal(means[trial], sd, size)
                if seed_effects is not None:
                    draws = draws + seed_effects[start : start + size]
                values[trial].extend(draws.tolist())
            return values

        decision, counts = await race(
            range(len(means)),
            run,
            options,
            direction=direction,  # type: ignore[arg-type]
        )
        return Outcome(decision, counts)

    async def all_races() -> list[Outcome]:
        return [await one() for _ in range(races)]

    return asyncio.run(all_races())


def wrong(outcome: Outcome, means: Sequence[float], min_effect: float) -> bool:
    """Whether any statement the race made is false (lower is better)."""
    decision = outcome.decision
    # Every ruled-out trial is worse than the trial that beat it.
    if any(means[trial] <= means[by] for trial, by in decision.beaten.items()):
        return True
    if not decision.decided or decision.leader is None:
        return False
    leader = decision.leader
    if decision.within:
        # "the best or within min_effect of it", and at most min_effect worse than each.
        return means[leader] > min(means) + min_effect or any(
            means[leader] - means[trial] > min_effect for trial in decision.within
        )
    return any(means[leader] >= means[trial] for trial in range(len(means)) if trial != leader)


def rate(hits: int, total: int) -> tuple[float, float]:
    value = hits / total
    return value, math.sqrt(max(value * (1 - value), 1e-4) / total)


def test_the_confidence_sequence_covers_at_every_look_at_its_level() -> None:
    """One pair, many looks: the sequence misses the true difference at most alpha."""
    rng = np.random.default_rng(3)
    misses = 0
    runs = 500
    for _ in range(runs):
        a = rng.normal(0.0, 1.0, 40)
        b = rng.normal(0.0, 1.0, 40)
        for n in range(2, 41):
            decision = judge({0: a[:n], 1: b[:n]}, direction="min", confidence=0.8)
            if decision.beaten:
                misses += 1
                break
    value, se = rate(misses, runs)
    # Two trials: one pair at level 0.2; the sequence is conservative but not idle.
    assert value <= 0.2 + 2 * se
    assert value > 0.01


def test_equal_trials_claim_a_winner_at_most_one_minus_confidence_of_the_time() -> None:
    means = [0.0] * 8
    outcomes = simulate(means, lk.Race(max_instances=20), races=600, seed=1)
    claims = sum(outcome.decision.decided for outcome in outcomes)
    value, se = rate(claims, len(outcomes))
    assert value <= 0.05 + 2 * se
    # Stronger: any trial ruled out is a false statement among equals, and every
    # statement holds together at the race's confidence.
    rulings, se = rate(sum(bool(o.decision.beaten) for o in outcomes), len(outcomes))
    assert rulings <= 0.05 + 2 * se
    undecided = [outcome.decision for outcome in outcomes if not outcome.decision.decided]
    assert all(decision.ending == "max_instances" for decision in undecided)
    assert undecided[0].statement({t: 20 for t in range(8)}).startswith("trials ")


def test_where_a_plain_t_test_at_every_look_errs_the_race_keeps_to_its_level() -> None:
    """Two equal trials looked at after every instance from 5 to 40."""
    rng = np.random.default_rng(2)
    runs = 200
    plain = ours = 0
    for _ in range(runs):
        values = rng.normal(0.0, 1.0, (2, 40))
        plain += any(lk.compare(values[0, :n], values[1, :n]).better for n in range(5, 41))
        ours += any(
            judge({0: values[0, :n], 1: values[1, :n]}, direction="min").beaten
            for n in range(5, 41)
        )
    assert plain / runs > 0.15  # Welch's 5 % per look, 36 looks
    assert ours / runs <= 0.05


def test_with_min_effect_the_claim_is_the_indifference_zone_one_and_it_holds() -> None:
    means = [0.0, 0.2, 0.4, 0.9, 1.0, 1.2, 1.5, 2.0]
    delta = 0.5
    outcomes = simulate(
        means, lk.Race(max_instances=100, min_effect=delta), races=300, seed=4, sd=0.25
    )
    false = sum(wrong(outcome, means, delta) for outcome in outcomes)
    value, se = rate(false, len(outcomes))
    assert value <= 0.05 + 2 * se
    decided = [outcome for outcome in outcomes if outcome.decision.decided]
    assert len(decided) >= 0.95 * len(outcomes)
    within = [outcome for outcome in decided if outcome.decision.within]
    assert within  # the race did stop on "within min_effect", not only on "beats"
    sample = within[0]
    statement = sample.decision.statement(sample.counts)
    assert statement.startswith("trial 0 is the best or within 0.5 of it at 95 %; "), statement
    assert "is more than 0.5 better than trial 0" in statement or (
        "is at most 0.5 better than trial 0" in statement
    )


def test_the_best_ahead_by_min_effect_is_found_at_least_confidence_of_the_time() -> None:
    means = [0.0, 0.5, 0.5, 0.5, 1.0, 1.0, 1.5, 2.0]
    outcomes = simulate(
        means, lk.Race(max_instances=100, min_effect=0.5), races=300, seed=5, sd=0.5
    )
    found = sum(outcome.decision.leader == 0 for outcome in outcomes)
    value, se = rate(found, len(outcomes))
    assert value >= 0.95 - 2 * se
    assert all(outcome.decision.decided for outcome in outcomes)


def test_paired_instances_decide_with_far_fewer_instances() -> None:
    """Trials sharing seeds are raced on paired differences: the seed's effect cancels."""
    means = [0.0, 0.5, 1.0, 1.0]
    options = lk.Race(max_instances=40)
    paired = simulate(means, options, races=100, seed=6, sd=0.2, seed_sd=3.0)
    unpaired = simulate(means, options, races=100, seed=6, sd=math.sqrt(0.2**2 + 3.0**2))
    assert sum(outcome.decision.leader == 0 for outcome in paired) >= 95
    assert all(outcome.decision.decided for outcome in paired)
    mean_paired = np.mean([outcome.used for outcome in paired])
    mean_unpaired = np.mean([outcome.used for outcome in unpaired])
    assert mean_paired < 0.25 * mean_unpaired
    assert not any(wrong(outcome, means, 0.0) for outcome in paired)


@pytest.mark.slow
@pytest.mark.parametrize("spacing", [0.25, 0.5, 1.0])
def test_at_half_the_budget_the_leader_is_the_best_about_as_often_as_fixed(
    spacing: float,
) -> None:
    """One trial half a standard deviation ahead, the rest spaced behind it."""
    means = [0.0] + [0.5 + spacing * j for j in range(7)]
    fixed_n = 20
    rng = np.random.default_rng(7)
    draws = rng.normal(np.asarray(means)[:, None, None], 1.0, (8, 4000, fixed_n))
    fixed = float(np.mean(np.argmin(draws.mean(axis=2), axis=0) == 0))
    options = lk.Race(max_instances=fixed_n, budget=8 * fixed_n // 2)
    outcomes = simulate(means, options, races=600, seed=8)
    found, se = rate(sum(outcome.decision.leader == 0 for outcome in outcomes), len(outcomes))
    assert found >= fixed - 0.05 - 2 * se
    assert all(outcome.used <= 8 * fixed_n // 2 for outcome in outcomes)
    false = sum(wrong(outcome, means, 0.0) for outcome in outcomes)
    assert false / len(outcomes) <= 0.05


def test_judge_keeps_earlier_rulings_and_leaves_failed_instances_out() -> None:
    values = {0: [1.0, 1.1, 0.9, 1.0, 1.05], 1: [5.0, 5.1, 4.9, 5.0, 5.2], 2: [math.nan] * 5}
    first = judge(values, direction="min")
    assert first.beaten == {1: 0} and first.out == (2,) and first.leader == 0
    assert first.decided
    assert first.statement({0: 5, 1: 5, 2: 5}) == "trial 0 beats 1 other at 95 %; trial 2 failed"
    # A ruling stays, whatever the values say later.
    later = judge({0: [1.0] * 3, 1: [0.0] * 3}, direction="min", beaten={1: 0})
    assert later.beaten == {1: 0} and later.leader == 0
    # Direction max: the larger values beat.
    upward = judge({0: [1.0, 1.1, 0.9, 1.0, 1.05], 1: [5.0, 5.1, 4.9, 5.0, 5.2]}, direction="max")
    assert upward.beaten == {0: 1} and upward.leader == 1
    # A NaN on one side leaves that pair out: 4 pairs are left, and they still decide.
    holed = judge(
        {0: [1.0, 1.1, 0.9, math.nan, 1.05], 1: [5.0, 5.1, 4.9, 5.0, 5.2]}, direction="min"
    )
    assert holed.beaten == {1: 0}
