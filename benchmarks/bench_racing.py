"""Racing against a fixed number of instances per trial, on simulated sweeps.

Eight configurations with known means and equal noise (normal, sd 1): the true
best has mean 1.0, the runner-up 1.5 (half a standard deviation behind), the rest
2.0 to 3.5. Each simulated sweep draws fresh instances; a method succeeds when the
trial it calls best is the true best.

- fixed N: every trial gets N instances, the best mean wins (8 N instances);
- racing: :func:`labkit.race.race` as ``sweep(instances="race")`` runs it, 3
  instances per trial first, then one more for the leader and for its strongest
  challenger each round, with a budget of half the fixed sweep's instances.

The baseline (fixed N) is measured in the same run, on the same number of
simulated sweeps. Racing must find the best at least as often while using at
most half the instances.

Run: ``python benchmarks/bench_racing.py``  (about 20 s)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np

from labkit.race import RaceOptions, race

MEANS = (1.0, 1.5, 2.0, 2.0, 2.5, 3.0, 3.0, 3.5)
SD = 1.0
SWEEPS = 1000
FIXED = (10, 16)


def fixed_sweep(rng: np.random.Generator, n: int) -> bool:
    means = [rng.normal(mean, SD, n).mean() for mean in MEANS]
    return int(np.argmin(means)) == 0


def racing_sweep(rng: np.random.Generator, budget: int) -> tuple[bool, int]:
    values: dict[int, list[float]] = {trial: [] for trial in range(len(MEANS))}

    async def run(batches: Sequence[tuple[int, int]]) -> dict[int, list[float]]:
        for trial, size in batches:
            values[trial].extend(rng.normal(MEANS[trial], SD, size).tolist())
        return values

    options = RaceOptions(max_instances=budget, budget=budget)
    decision, counts = asyncio.run(race(range(len(MEANS)), run, options, direction="min"))
    return decision.leader == 0, sum(counts.values())


def main() -> None:
    print(f"{SWEEPS} simulated sweeps of {len(MEANS)} configurations, means {MEANS}, sd {SD}")
    for n in FIXED:
        rng = np.random.default_rng(n)
        started = time.perf_counter()
        fixed = sum(fixed_sweep(rng, n) for _ in range(SWEEPS)) / SWEEPS
        budget = len(MEANS) * n // 2
        outcomes = [racing_sweep(rng, budget) for _ in range(SWEEPS)]
        raced = sum(found for found, _ in outcomes) / SWEEPS
        used = sum(spent for _, spent in outcomes) / SWEEPS
        elapsed = time.perf_counter() - started
        print(
            f"fixed N={n:>2}: finds the best {fixed:6.1%} with {len(MEANS) * n} instances | "
            f"racing (budget {budget}): {raced:6.1%} with {used:.1f} instances on average "
            f"({used / (len(MEANS) * n):.0%} of fixed)  [{elapsed:.1f} s]"
        )


if __name__ == "__main__":
    main()
