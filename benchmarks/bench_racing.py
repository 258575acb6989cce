"""Racing against fixed-N sweeps, on simulated sweeps: how often each is wrong, and what it costs.

Every figure of the racing checks, side by side with a sweep that runs the same
number of instances for every trial (the baseline, measured in the same run):

1. Equal trials (8 configurations, one mean), ``min_effect=0``: how often the
   race claims "trial t beats the other 7", and how often it rules out any trial
   (every such statement is false), against a fixed sweep that tests its best
   mean against each other trial with Welch's test at 95 %, and a plain race
   that rules out each trial the leader beats so after every instance (F-race's
   scheme with Welch's test, no correction for looks or trials).
2. ``min_effect = δ > 0``: how often the race's claim ("the best or within δ
   of it"; every trial it rules out worse than the one that beat it) is false.
3. The best ahead by ``min_effect``: how often the race finds it, the instances
   it used, and the instances a fixed sweep needs for the same success rate
   (computed exactly, by numerical integration).
4. One trial half a standard deviation or more ahead, the others spaced behind
   it, ``max_instances = M`` and a budget of half a fixed sweep of M per trial:
   how often the race's leader is the best, against that fixed sweep's best mean.
5. Pairs: ``compare(paired=True)``'s false-positive rate on paired data, and
   instances a race uses on trials sharing seeds against independent ones.

Each rate is followed by ± its standard error; the figures of a run at 1,000
races per line are in the README's racing section. Run:
``python benchmarks/bench_racing.py [--races 2000] [--checks 1 2 3 4 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np

import labkit as lk
from labkit.sweep import RaceDecision, race

TRIALS = 8


def simulate(
    means: Sequence[float],
    options: lk.Race,
    races: int,
    rng: np.random.Generator,
    *,
    sd: float = 1.0,
    seed_sd: float = 0.0,
) -> list[tuple[RaceDecision, int]]:
    """``races`` races over trials with these means (lower is better): (decision, instances)."""

    async def one() -> tuple[RaceDecision, int]:
        shared = rng.normal(0.0, seed_sd, 10_000) if seed_sd else np.zeros(10_000)
        values: dict[int, list[float]] = {trial: [] for trial in range(len(means))}

        async def run(batches: Sequence[tuple[int, int]]) -> Mapping[int, Sequence[float]]:
            for trial, size in batches:
                start = len(values[trial])
                draws = rng.normal(means[trial], sd, size) + shared[start : start + size]
                values[trial].extend(draws.tolist())
            return values

        decision, counts = await race(range(len(means)), run, options, direction="min")
        return decision, sum(counts.values())

    async def every() -> list[tuple[RaceDecision, int]]:
        return [await one() for _ in range(races)]

    return asyncio.run(every())


def false_statement(decision: RaceDecision, means: Sequence[float], min_effect: float) -> bool:
    if any(means[trial] <= means[by] for trial, by in decision.beaten.items()):
        return True
    if not decision.decided or decision.leader is None:
        return False
    leader = decision.leader
    if decision.within:
        return means[leader] > min(means) + min_effect
    return any(means[leader] >= means[t] for t in range(len(means)) if t != leader)


def exact_fixed_rate(means: Sequence[float], n: int, sd: float = 1.0) -> float:
    """P(the best's mean of N is below every other's), by integrating over the best's mean."""
    se = sd / math.sqrt(n)
    x = np.linspace(means[0] - 8 * se, means[0] + 8 * se, 20_001)
    density = np.exp(-0.5 * ((x - means[0]) / se) ** 2) / (se * math.sqrt(2 * math.pi))
    erfc = np.vectorize(math.erfc)
    above = np.prod([0.5 * erfc((x - mean) / (se * math.sqrt(2))) for mean in means[1:]], axis=0)
    return float(np.trapezoid(density * above, x))


def text(rate: float, n: int) -> str:
    return f"{rate:6.1%} ± {math.sqrt(max(rate * (1 - rate), 1e-4) / n):.1%}"


def fixed_statements(rng: np.random.Generator, runs: int, n: int) -> tuple[float, float]:
    """Equal trials, N each, Welch at 95 % between the best mean and each other trial:
    how often the best beats every other (a claim), and how often it beats any (a false
    ruling)."""
    claims = rulings = 0
    for _ in range(runs):
        values = rng.normal(0.0, 1.0, (TRIALS, n))
        order = np.argsort(values.mean(axis=1))
        beaten = [lk.compare(values[order[0]], values[j]).better == "a" for j in order[1:]]
        claims += all(beaten)
        rulings += any(beaten)
    return claims / runs, rulings / runs


def plain_race_statements(rng: np.random.Generator, runs: int, n: int) -> tuple[float, float]:
    """Equal trials raced as F-race does with t tests: after every instance from the 5th,
    the leader rules out each trial Welch's test at 95 % says it beats (no correction for
    looks or trials). How often one trial is left (a claim), how often any is ruled out."""
    claims = rulings = 0
    for _ in range(runs):
        values = rng.normal(0.0, 1.0, (TRIALS, n))
        alive = list(range(TRIALS))
        for size in range(5, n + 1):
            leader = min(alive, key=lambda trial: values[trial, :size].mean())
            alive = [
                trial
                for trial in alive
                if trial == leader
                or lk.compare(values[leader, :size], values[trial, :size]).better != "a"
            ]
            if len(alive) == 1:
                break
        claims += len(alive) == 1
        rulings += len(alive) < TRIALS
    return claims / runs, rulings / runs


def equal_trials(races: int) -> None:
    rng = np.random.default_rng(1)
    means = [0.0] * TRIALS
    for m in (10, 20, 40):
        outcomes = simulate(means, lk.Race(max_instances=m), races, rng)
        claims = sum(decision.decided for decision, _ in outcomes) / races
        rulings = sum(bool(decision.beaten) for decision, _ in outcomes) / races
        fixed_claims, fixed_rulings = fixed_statements(rng, races, m)
        plain_claims, plain_rulings = plain_race_statements(rng, races // 4, m)
        print(
            f"  max_instances {m:>2}: race claims {text(claims, races)}, rules out any"
            f" {text(rulings, races)} | fixed N={m}, Welch, best vs each: claims"
            f" {text(fixed_claims, races)}, any {text(fixed_rulings, races)} | plain race"
            f" (F-race with Welch, no correction): claims {text(plain_claims, races // 4)},"
            f" any {text(plain_rulings, races // 4)}"
        )


def indifference_zone(races: int) -> None:
    rng = np.random.default_rng(2)
    means = [0.0, 0.2, 0.4, 0.9, 1.0, 1.2, 1.5, 2.0]
    delta = 0.5
    outcomes = simulate(means, lk.Race(max_instances=100, min_effect=delta), races, rng, sd=0.25)
    false = sum(false_statement(decision, means, delta) for decision, _ in outcomes) / races
    decided = sum(decision.decided for decision, _ in outcomes) / races
    used = np.mean([spent for _, spent in outcomes])
    print(
        f"  means {means}, sd 0.25, min_effect {delta}: a false statement {text(false, races)}"
        f" (decided {decided:.1%}, {used:.1f} instances)"
    )


def best_ahead(races: int) -> None:
    rng = np.random.default_rng(3)
    for delta, sd in ((0.5, 0.5), (0.5, 1.0)):
        means = [0.0, delta, delta, delta, 2 * delta, 2 * delta, 3 * delta, 4 * delta]
        outcomes = simulate(means, lk.Race(max_instances=400, min_effect=delta), races, rng, sd=sd)
        found = sum(decision.leader == 0 for decision, _ in outcomes) / races
        used = float(np.mean([spent for _, spent in outcomes]))
        # The smallest fixed N as successful (a rate of 100 % over R races: 1 - 1/R).
        target = min(found, 1.0 - 1.0 / races)
        n = 2
        while exact_fixed_rate(means, n, sd) < target:
            n += 1
        print(
            f"  best ahead by {delta} (sd {sd}), min_effect {delta}: race finds it"
            f" {text(found, races)} with {used:.1f} instances | fixed N={n} finds it"
            f" {exact_fixed_rate(means, n, sd):.1%} with {TRIALS * n} instances"
            f" ({used / (TRIALS * n):.0%} of fixed)"
        )


def half_budget(races: int) -> None:
    for m in (10, 20, 40):
        for spacing in (0.0, 0.25, 0.5, 1.0):
            rng = np.random.default_rng(int(100 * spacing) + m)
            means = [0.0] + [0.5 + spacing * j for j in range(TRIALS - 1)]
            fixed = exact_fixed_rate(means, m)
            budget = TRIALS * m // 2
            outcomes = simulate(means, lk.Race(max_instances=m, budget=budget), races, rng)
            found = sum(decision.leader == 0 for decision, _ in outcomes) / races
            false = sum(false_statement(decision, means, 0.0) for decision, _ in outcomes) / races
            used = np.mean([spent for _, spent in outcomes])
            print(
                f"  M={m:>2}, others at 0.5 + {spacing:<4} j: fixed N={m} finds the best"
                f" {fixed:6.1%} ({TRIALS * m}) | race, budget {budget}: {text(found, races)}"
                f" ({used:.1f} used), false statements {text(false, races)}"
            )


def pairs(races: int) -> None:
    rng = np.random.default_rng(4)
    runs = 4 * races
    seed_effect = rng.normal(0.0, 3.0, (runs, 10))
    a = seed_effect + rng.normal(0.0, 0.5, (runs, 10))
    b = seed_effect + rng.normal(0.0, 0.5, (runs, 10))
    paired = np.mean(
        [lk.compare(x, y, paired=True).better is not None for x, y in zip(a, b, strict=True)]
    )
    welch = np.mean([lk.compare(x, y).better is not None for x, y in zip(a, b, strict=True)])
    print(
        f"  equal A and B on shared seeds (10 pairs): paired false positives {text(paired, runs)}"
        f" | Welch {text(welch, runs)}"
    )
    shifted = b - 1.0
    found_paired = np.mean(
        [lk.compare(x, y, paired=True).better == "b" for x, y in zip(a, shifted, strict=True)]
    )
    found_welch = np.mean([lk.compare(x, y).better == "b" for x, y in zip(a, shifted, strict=True)])
    print(
        f"  B better by 1 (seed sd 3, noise 0.5): paired finds it {text(found_paired, runs)}"
        f" | Welch {text(found_welch, runs)}"
    )
    means = [0.0, 0.5, 1.0, 1.0]
    options = lk.Race(max_instances=200)
    small = max(races // 10, 20)
    seeded = simulate(means, options, small, rng, sd=0.2, seed_sd=3.0)
    independent = simulate(means, options, small, rng, sd=math.sqrt(0.2**2 + 3.0**2))
    print(
        f"  race of means {means}: shared seeds (seed sd 3, noise 0.2) use"
        f" {np.mean([spent for _, spent in seeded]):.1f} instances, finding the best"
        f" {text(sum(d.leader == 0 for d, _ in seeded) / small, small)} | independent"
        f" instances of the same spread use {np.mean([spent for _, spent in independent]):.1f},"
        f" {text(sum(d.leader == 0 for d, _ in independent) / small, small)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--races", type=int, default=2000, help="simulated races per line")
    parser.add_argument("--checks", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    args = parser.parse_args()
    races = args.races
    for number, (title, check) in enumerate(
        (
            ("1. equal trials, min_effect 0: claims of a winner (all false)", equal_trials),
            ("2. min_effect > 0: the indifference-zone claim", indifference_zone),
            ("3. the best ahead by min_effect: found, and at what cost", best_ahead),
            ("4. half a fixed sweep's budget: the leader is the best", half_budget),
            ("5. pairs by seed", pairs),
        ),
        start=1,
    ):
        if number not in args.checks:
            continue
        started = time.perf_counter()
        print(title)
        check(races)
        print(f"  [{time.perf_counter() - started:.0f} s]")


if __name__ == "__main__":
    main()
