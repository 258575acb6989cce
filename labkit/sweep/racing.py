"""Racing: spend instances only on the trials a sweep has not yet ruled out.

A racing sweep (``sweep(..., instances=lk.Race(...))``, or ``"race"`` for the
defaults) runs every trial's first ``initial`` instances, then adds instances
round by round to the trials still in the race (:func:`next_round`: one each for
the leader and the trials that may beat it, else for every undecided trial), and
after each round rules out each trial that another trial still in the race is
shown to beat. It ends when one trial is left (or, with ``min_effect``, when the
leader is shown to be at most ``min_effect`` worse than each trial left), when
the undecided trials reach ``max_instances``, or when the ``budget`` is spent.

The guarantee
-------------

Each pair of trials is judged on the differences of their objective instance
by instance: instance *i* of one trial against instance *i* of the other (the
same ``ctx.seed`` in a seeded sweep, so a sweep whose instances share seeds is
raced on paired differences; pairs with a failed side are left out). For each
pair the race keeps an anytime-valid confidence sequence for the mean
difference: the scale-invariant t test martingale of Lai (1976) with a
Gaussian mixture over the standardised effect, as in Wang and Ramdas (2023),
"Anytime-valid t-tests and confidence sequences for Gaussian means with
unknown variance", section 3. The sequence holds at every round at once
(Ville's inequality), so looking after every instance costs nothing, and the
level ``1 - confidence`` is split evenly over the ``k (k - 1) / 2`` pairs of
``k`` trials (Bonferroni). Hence, when

- the differences of a pair, instance by instance, are independent and
  normally distributed with a common mean and variance (which holds when each
  trial's instances are independent and normal, whether two trials' instances
  are independent or paired by seed), and
- whether an instance fails does not depend on its value,

then with probability at least ``confidence`` every statement the race makes
is true, all at once and whenever it stops: each trial it rules out is worse
than the trial that beat it, "trial 3 beats the other 7" is wrong at most
``1 - confidence`` of the time (also when all trials are equal), and with
``min_effect = δ > 0`` "trial 3 is the best or within δ of it" holds at least
``confidence`` of the time. On skewed or heavy-tailed objectives it is an
approximation (the sequence is a t statistic's).

What was weighed against it: Kim and Nelson's fully sequential procedure KN
(2001) splits ``1 - confidence`` over the ``k - 1`` comparisons with the best
only and stops far sooner, but needs an indifference zone ``δ > 0`` and
guarantees a correct selection only when the best is ahead by ``δ`` or more:
among equal trials it always names one. irace's F-race (first test after 5
instances, then Friedman's test at 0.05 after every instance) corrects for
neither the looks nor the trials. The first round's 5 instances (``initial``)
follow both; the sequence itself needs no first stage (it is valid from the
first pair), so ``initial`` only sets how many instances run before the first
look.

Measured (``benchmarks/bench_racing.py``, 1,000 simulated races of 8 trials per
figure): among equal trials the race ruled out some trial 1.3 to 2.8 % of the
time and never named a winner, where a plain race testing Welch's interval
after every instance (no correction) ruled one out 76 to 94 % of the time; with
half a fixed sweep's instances its leader was the best about as often as the
fixed sweep's (93.0 against 94.3 % at 20 per trial, trials 0.5 sd apart), less
often when many trials sit close to the best.

The decision is a pure function (:func:`~labkit.sweep.decision.judge`) of the values seen and of the
trials already ruled out, and the allocation (:func:`next_round`) of the
decision and the counts, so both are tested by simulating thousands of races.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from labkit._checks import check, is_int, is_real
from labkit.errors import ConfigError
from labkit.experiment.spec import MAX_INSTANCES
from labkit.stats import t_quantile
from labkit.sweep.decision import Direction, Ending, RaceDecision, costs_of, judge, moments

__all__ = ("Race", "next_round", "race")


@dataclass(frozen=True, slots=True, kw_only=True)
class Race:
    """The racing policy: how a sweep spends its instances on trials not yet ruled out.

    Given as ``sweep(..., instances=lk.Race(confidence=0.95, max_instances=10))``;
    the string ``"race"`` is shorthand for ``lk.Race()``. Every trial runs
    ``initial`` instances; then, round after round, one more goes to the leader
    and every trial that may still beat it, and a trial is ruled out once another
    is shown better than it (:func:`race`). The race stops when one trial is left
    (or, with ``min_effect``, the leader is shown within it of every trial left),
    when the trials left reach ``max_instances``, or when ``budget`` instances ran.

    Attributes:
        confidence: The probability that every statement the race makes is
            true (see :mod:`labkit.sweep.racing` for the assumptions).
        max_instances: The most instances one trial gets.
        budget: The most instances the whole race runs; ``None``: trials times
            ``max_instances``. At least one per trial.
        min_effect: The indifference zone ``δ`` in the objective's units: with
            ``δ > 0`` the race may end on "the leader is the best or within δ
            of it" instead of waiting to rule out trials closer than ``δ``.
        initial: Instances every trial runs before the first look (5, as
            irace's F-race and Kim and Nelson's first stage); fewer when the
            budget or ``max_instances`` leaves less.

    Raises:
        ConfigError: A field is out of range.
    """

    confidence: float = 0.95
    max_instances: int = 10
    budget: int | None = None
    min_effect: float = 0.0
    initial: int = 5

    def __post_init__(self) -> None:
        check(
            is_real(self.confidence) and 0 < self.confidence < 1,
            "confidence",
            self.confidence,
            "a level between 0 and 1 (0.95)",
        )
        check(
            is_int(self.max_instances) and 2 <= self.max_instances <= MAX_INSTANCES,
            "max_instances",
            self.max_instances,
            f"an int from 2 to {MAX_INSTANCES}",
        )
        check(
            self.budget is None or (is_int(self.budget) and self.budget >= 1),
            "budget",
            self.budget,
            "an int >= 1 (instances over the whole race), or None",
        )
        check(
            is_real(self.min_effect) and self.min_effect >= 0,
            "min_effect",
            self.min_effect,
            "a finite difference >= 0 in the objective's units",
        )
        check(
            is_int(self.initial) and 1 <= self.initial <= MAX_INSTANCES,
            "initial",
            self.initial,
            f"an int from 1 to {MAX_INSTANCES}",
        )


def next_round(
    decision: RaceDecision,
    values: Mapping[int, Sequence[float]],
    counts: Mapping[int, int],
    options: Race,
    left: int,
    *,
    direction: Direction,
) -> list[tuple[int, int]]:
    """The next round: one instance each for the leader and the trials that may beat it.

    Which trials get instances changes no guarantee (each pair's confidence
    sequence holds over every prefix of its instances, whatever decided their
    number), so the allocation aims at finding the best within the budget: one
    instance each for the leader and every contender whose plain per-round t
    interval against the leader (at ``confidence``, uncorrected, as F-race
    tests) still allows it to be better. When no contender is plausible by
    that test, or those are at ``max_instances``, every contender gets one (the
    race then confirms what the plain test suggests), so no instance is left
    unspent while a trial is undecided. Trials within ``min_effect`` of the
    leader are decided and get none. When the budget cannot give every chosen
    trial one, the better means go first.

    Args:
        decision: The race so far.
        values: Per trial, the objective of each instance (NaN when failed).
        counts: Instances run per trial.
        options: The race's limits.
        left: Instances the budget still allows.
        direction: ``"min"`` or ``"max"``.

    Returns:
        ``(trial, instances)`` batches; empty when the race is over.
    """
    if decision.decided or decision.leader is None or left <= 0:
        return []
    racing = decision.racing
    mean, var, n = moments(costs_of([values[trial] for trial in racing], direction))
    by_mean = sorted(range(len(racing)), key=lambda slot: mean[slot])  # stable: ties keep order
    plausible = _plausible(mean, var, n, options.confidence)
    contending = set(decision.contenders)
    open_ = [
        slot
        for slot in by_mean
        if counts[racing[slot]] < options.max_instances
        and (slot == 0 or racing[slot] in contending)
    ]
    # Without a plausible challenger, every contender grows with the leader: a pair's
    # sequence only narrows over instances both sides have.
    focus = [slot for slot in open_ if slot != 0 and plausible[slot]]
    chosen = [slot for slot in open_ if slot == 0 or not focus or slot in focus]
    if chosen == [0] and counts[decision.leader] >= max(counts[t] for t in decision.contenders):
        return []  # the leader alone: its instances would pair with nothing
    return [(racing[slot], 1) for slot in chosen[:left]]


def _plausible(mean: np.ndarray, var: np.ndarray, n: np.ndarray, confidence: float) -> np.ndarray:
    """Which trials may beat the leader (slot 0) by a plain per-round t interval.

    A trial may beat it while its interval of the difference (at ``confidence``,
    uncorrected) reaches below the leader's mean; below 2 values either side,
    every trial may.
    """
    quantiles = np.array(
        [t_quantile(0.5 + confidence / 2, max(min(int(k), int(n[0])) - 1, 1)) for k in n]
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        reach = mean - quantiles * np.sqrt(var / n + var[0] / n[0])
    plausible: np.ndarray = (n < 2) | (n[0] < 2) | ~(reach >= mean[0])
    return plausible


async def race(
    trials: Sequence[int],
    run: Callable[[Sequence[tuple[int, int]]], Awaitable[Mapping[int, Sequence[float]]]],
    options: Race,
    *,
    direction: Direction,
    on_round: Callable[[RaceDecision, Mapping[int, int]], object] | None = None,
    counts: Mapping[int, int] | None = None,
) -> tuple[RaceDecision, dict[int, int]]:
    """Race ``trials`` until one is decided or the instances run out.

    Args:
        trials: The trials' numbers, in tie-breaking order.
        run: Runs ``(trial, instances)`` batches (concurrently as it likes) and
            returns every value each trial has so far, in instance order (NaN
            for a failed instance).
        options: Sizes, budget, confidence and ``min_effect``.
        direction: ``"min"`` or ``"max"``.
        on_round: Called after each round with the decision and the counts.
        counts: Instances each trial already ran (a race resumed from a
            store); the first round only tops trials up to ``initial``.

    Returns:
        The final decision (its ``ending`` set) and the instances run per trial.

    Raises:
        ConfigError: The budget is smaller than the number of trials.
    """
    budget = options.budget if options.budget is not None else len(trials) * options.max_instances
    if budget < len(trials):
        raise ConfigError("budget", budget, f"at least one instance per trial ({len(trials)})")
    ran = {trial: 0 for trial in trials}
    ran.update({trial: n for trial, n in (counts or {}).items() if trial in ran})
    first = min(options.initial, options.max_instances, budget // len(trials))
    batches = [(trial, first - ran[trial]) for trial in trials if ran[trial] < first]
    decision = RaceDecision(None, (), {}, (), (), options.confidence, options.min_effect)
    while True:
        for trial, size in batches:
            ran[trial] += size
        found = await run(batches)
        values = {trial: found.get(trial, ()) for trial in trials}
        decision = judge(
            values,
            direction=direction,
            confidence=options.confidence,
            min_effect=options.min_effect,
            beaten=decision.beaten,
        )
        left = budget - sum(ran.values())
        batches = next_round(decision, values, ran, options, left, direction=direction)
        if not batches:
            decision = replace(decision, ending=_ending(decision, ran, options))
        if on_round is not None:
            on_round(decision, ran)
        if not batches:
            return decision, ran


def _ending(decision: RaceDecision, counts: Mapping[int, int], options: Race) -> Ending:
    if decision.decided or decision.leader is None:
        return "decided"
    undecided = (decision.leader, *decision.contenders)
    if all(counts[trial] >= options.max_instances for trial in undecided):
        return "max_instances"
    return "budget"
