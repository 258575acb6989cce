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

The decision is a pure function (:func:`judge`) of the values seen and of the
trials already ruled out, and the allocation (:func:`next_round`) of the
decision and the counts, so both are tested by simulating thousands of races.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from labkit._checks import check, is_int, is_real
from labkit.errors import ConfigError
from labkit.experiment.spec import MAX_INSTANCES
from labkit.stats import t_quantile

__all__ = ("Race", "RaceDecision", "judge", "next_round", "race")

Direction = Literal["min", "max"]
Ending = Literal["decided", "max_instances", "budget"]

MIXTURE_PRECISION = 0.1
"""The precision ``c`` of the Gaussian mixture over the standardised effect.

It sets where the confidence sequence is tightest: at level 0.05 / 28 (8 trials)
the half-width in standard deviations at 5, 10, 20, 50 and 200 pairs is 6.8,
2.1, 1.18, 0.67 and 0.33 with c = 0.1, against never finite at 5, 2.3, 1.12,
0.63 and 0.31 with c = 1: 0.1 lets a race rule out a far trial from its first
round and costs about 5 % of width at 20 pairs and beyond.
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Race:
    """How a racing sweep spends its instances (``sweep(..., instances=lk.Race())``).

    Attributes:
        confidence: The probability that every statement the race makes is
            true (see :mod:`labkit.race` for the assumptions).
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
            "initial_instances",
            self.initial,
            f"an int from 1 to {MAX_INSTANCES}",
        )


@dataclass(frozen=True, slots=True)
class RaceDecision:
    """Where a race stands.

    Attributes:
        leader: Among the trials still racing, the best mean (the first of
            equal means); ``None`` when no trial has a finite value.
        contenders: Trials still racing that the leader has not yet shown
            itself at least as good as (within ``min_effect``).
        beaten: Trials ruled out, each with the trial shown better than it.
        within: Trials still racing that the leader is shown at most
            ``min_effect`` worse than (only with ``min_effect > 0``).
        out: Trials without any finite value (every instance failed).
        confidence: The race's confidence.
        min_effect: The race's indifference zone.
        ending: Why the race ended: ``"decided"``, ``"max_instances"`` (the
            trials still racing were examined to ``max_instances``) or
            ``"budget"`` (it ran out undecided); ``None`` while it runs.
    """

    leader: int | None
    contenders: tuple[int, ...]
    beaten: Mapping[int, int]
    within: tuple[int, ...]
    out: tuple[int, ...]
    confidence: float
    min_effect: float = 0.0
    ending: Ending | None = None

    @property
    def decided(self) -> bool:
        """Whether nothing is left to decide: no trial still contends with the leader."""
        return self.leader is not None and not self.contenders

    @property
    def racing(self) -> tuple[int, ...]:
        """The trials still in the race, the leader first."""
        if self.leader is None:
            return ()
        return (self.leader, *self.contenders, *self.within)

    def statement(self, counts: Mapping[int, int]) -> str:
        """What was decided, in one sentence.

        Args:
            counts: Instances run per trial.

        Returns:
            e.g. ``"trial 3 beats the other 7 at 95 %"``, ``"trials 3 and 5
            cannot be told apart with 10 instances each at 95 % (trial 3
            leads); 6 others are beaten"`` or ``"no decision: trials 3 and 5
            still race after 7 instances each, the budget is spent (trial 3
            leads); 6 others are beaten at 95 %"``.
        """
        level = f"{self.confidence * 100:g} %"
        if self.leader is None:
            return "no trial has a finite objective"
        leader = self.leader
        parts: list[str] = []
        beaten = tuple(self.beaten)
        if self.decided and not self.within:
            others = len(beaten)
            parts.append(
                f"trial {leader} beats the other {others} at {level}"
                if not self.out
                else f"trial {leader} beats {_count(beaten)} at {level}"
            )
        elif self.decided:
            parts.append(
                f"trial {leader} is the best or within {self.min_effect:g} of it at {level}"
            )
            parts.append(_not_better(self.within, self.min_effect, leader))
            if beaten:
                parts.append(f"{_count(beaten)} beaten")
        else:
            undecided = [leader, *self.contenders]
            each = _each([counts.get(trial, 0) for trial in undecided])
            names = _join([str(trial) for trial in undecided])
            if self.ending == "budget":
                parts.append(
                    f"no decision: trials {names} still race after {each}, the budget is"
                    f" spent (trial {leader} leads)"
                )
            elif self.ending == "max_instances":
                parts.append(
                    f"trials {names} cannot be told apart with {each} at {level}"
                    f" (trial {leader} leads)"
                )
            else:
                parts.append(f"trials {names} still race after {each} (trial {leader} leads)")
            if self.within:
                parts.append(_not_better(self.within, self.min_effect, leader))
            if beaten:
                parts.append(f"{_count(beaten)} beaten at {level}")
        if self.out:
            parts.append(f"{_trials(self.out)} failed")
        return "; ".join(parts)


def judge(
    values: Mapping[int, Sequence[float]],
    *,
    direction: Direction,
    confidence: float = 0.95,
    min_effect: float = 0.0,
    beaten: Mapping[int, int] | None = None,
) -> RaceDecision:
    """Rule out every trial another trial still racing is shown to beat.

    Each pair of trials still racing is judged on its differences instance by
    instance (position *i* of one against position *i* of the other; NaN and
    inf leave that pair out) by an anytime-valid confidence sequence at level
    ``1 - (1 - confidence) / (k (k - 1) / 2)`` for ``k`` trials (see
    :mod:`labkit.race`). A trial is ruled out when the whole sequence for its
    difference with some other trial still racing lies on that trial's good
    side. Rulings made this round are simultaneous: a trial ruled out now
    still rules out others now.

    Args:
        values: Per trial (in the order ties are broken: first is preferred),
            the objective of each of its instances, in instance order (NaN
            for a failed instance, so that positions stay paired).
        direction: ``"min"`` or ``"max"``: which objective is better.
        confidence: The probability that every ruling of the whole race holds.
        min_effect: The indifference zone ``δ`` (objective's units).
        beaten: Trials ruled out in earlier rounds (trial: the trial that beat
            it); they stay out.

    Returns:
        The :class:`RaceDecision` (its ``ending`` is ``None``).
    """
    before = dict(beaten or {})
    trials = list(values)
    everything = _costs([values[trial] for trial in trials], direction)
    seen = np.isfinite(everything).any(axis=1)
    out = tuple(trial for trial, any_ in zip(trials, seen, strict=True) if not any_)
    alive = [slot for slot, trial in enumerate(trials) if trial not in before and seen[slot]]
    if not alive:
        return RaceDecision(None, (), before, (), out, confidence, min_effect)
    costs = everything[alive]
    pairs = len(trials) * (len(trials) - 1) // 2
    difference, half = _pairwise(costs, (1.0 - confidence) / max(pairs, 1))
    # difference[i, j] estimates cost_i - cost_j: i is beaten by j when its whole
    # sequence lies above zero.
    shown_worse = difference - half > 0.0
    now = dict(before)
    for worse in np.flatnonzero(shown_worse.any(axis=1)).tolist():
        by = int(np.flatnonzero(shown_worse[worse])[0])
        now[trials[alive[worse]]] = trials[alive[by]]
    left = [slot for slot in range(len(alive)) if trials[alive[slot]] not in now]
    means = _moments(costs[left])[0]
    lead = left[int(np.argmin(means))]  # argmin: the first of equal means
    within: list[int] = []
    contenders: list[int] = []
    for slot in left:
        if slot == lead:
            continue
        trial = trials[alive[slot]]
        # The leader at most min_effect worse than this trial, at the race's level.
        if min_effect > 0 and difference[lead, slot] + half[lead, slot] <= min_effect:
            within.append(trial)
        else:
            contenders.append(trial)
    return RaceDecision(
        trials[alive[lead]], tuple(contenders), now, tuple(within), out, confidence, min_effect
    )


def _pairwise(costs: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Every pair's mean difference ``cost_i - cost_j`` and its sequence's half-width.

    The half-width comes from the Gaussian-mixture t martingale ``M_n =
    sqrt(c / (n + c)) * (V / (V - S^2 / (n + c)))^(n / 2)`` (``S`` and ``V``
    the sum and the sum of squares of the centred differences): the values
    where ``M_n < 1 / alpha`` are the mean ± ``s * sqrt((r - 1)(n - 1) / (n (1
    - r c / (n + c))))`` with ``r = (sqrt((n + c) / c) / alpha)^(2 / n)``,
    everything when the denominator is not positive. Infinite below 2 pairs.

    The sums over the pairs' common instances are matrix products of the
    finite-value masks, a few calls for all pairs at once (the race's cost is
    this function, every round). Each instance's mean over the trials is taken
    out first: it cancels from every difference, and with it the seed's shared
    effect and the objective's scale, which would otherwise eat the digits of
    the sums of squares.
    """
    finite = np.isfinite(costs)
    mask = finite.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        column = np.where(finite, costs, 0.0).sum(axis=0) / np.maximum(mask.sum(axis=0), 1.0)
        x = np.where(finite, costs - column, 0.0)
        x2 = x * x
        n = mask @ mask.T
        total = x @ mask.T - mask @ x.T  # sum of cost_i - cost_j over common instances
        squares = x2 @ mask.T + mask @ x2.T - 2.0 * (x @ x.T)
        mean = total / n
        spread = np.sqrt(np.maximum(squares - total * mean, 0.0) / (n - 1.0))
        c = MIXTURE_PRECISION
        r = np.exp((np.log((n + c) / c) - 2.0 * math.log(alpha)) / n)
        room = 1.0 - r * c / (n + c)
        half = spread * np.sqrt((r - 1.0) * (n - 1.0) / (n * room))
    half = np.where((n >= 2) & (room > 0), half, np.inf)
    return np.where(n >= 1, mean, 0.0), half


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
    mean, var, n = _moments(_costs([values[trial] for trial in racing], direction))
    by_mean = sorted(range(len(racing)), key=lambda slot: mean[slot])  # stable: ties keep order
    # The leader is slot 0 of ``racing``; a trial may beat it while its plain interval
    # of the difference reaches below the leader's mean.
    quantiles = np.array(
        [t_quantile(0.5 + options.confidence / 2, max(min(int(k), int(n[0])) - 1, 1)) for k in n]
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        reach = mean - quantiles * np.sqrt(var / n + var[0] / n[0])
    plausible = (n < 2) | (n[0] < 2) | ~(reach >= mean[0])
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


def _costs(rows: Sequence[Sequence[float]], direction: Direction) -> np.ndarray:
    """The rows as one array, lower is better, padded with NaN to the longest row."""
    sign = 1.0 if direction == "min" else -1.0
    arrays = [np.asarray(row, dtype=np.float64) for row in rows]
    costs = np.full((len(arrays), max((row.size for row in arrays), default=0)), np.nan)
    for slot, row in enumerate(arrays):
        costs[slot, : row.size] = sign * row
    return costs


def _moments(costs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's mean, variance (ddof=1) and count over its finite values.

    A row without a finite value has an infinite mean; below 2 values the
    variance is infinite.
    """
    finite = np.isfinite(costs)
    n = finite.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, costs, 0.0).sum(axis=1) / n
        centred = np.where(finite, costs - mean[:, None], 0.0)
        var = (centred**2).sum(axis=1) / (n - 1)
    return np.where(n > 0, mean, np.inf), np.where(n > 1, var, np.inf), n


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
        values = await run(batches)
        decision = judge(
            {trial: values.get(trial, ()) for trial in trials},
            direction=direction,
            confidence=options.confidence,
            min_effect=options.min_effect,
            beaten=decision.beaten,
        )
        left = budget - sum(ran.values())
        batches = next_round(
            decision,
            {trial: values.get(trial, ()) for trial in trials},
            ran,
            options,
            left,
            direction=direction,
        )
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


def _each(numbers: Sequence[int]) -> str:
    distinct = sorted(set(numbers))
    if len(distinct) == 1:
        return f"{distinct[0]} instances each"
    return f"{_join([str(n) for n in numbers])} instances"


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _count(trials: Sequence[int]) -> str:
    return f"{len(trials)} other" + ("" if len(trials) == 1 else "s")


def _not_better(trials: Sequence[int], min_effect: float, leader: int) -> str:
    """``"trial 5 is at most 0.1 better than trial 3"``, or ``"none of trials ..."``."""
    than = f"{min_effect:g} better than trial {leader}"
    if len(trials) == 1:
        return f"trial {trials[0]} is at most {than}"
    return f"none of trials {_join([str(t) for t in trials])} is more than {than}"


def _trials(trials: Sequence[int]) -> str:
    label = "trial" if len(trials) == 1 else "trials"
    return f"{label} {_join([str(t) for t in trials])}"
