"""A race's decision: which trials are ruled out, and by which anytime-valid bound.

:func:`judge` is a pure function of the values seen and of the trials already
ruled out: each pair of trials still racing is judged on its differences
instance by instance by an anytime-valid confidence sequence (the guarantee and
its assumptions are in :mod:`labkit.sweep.racing`). :class:`RaceDecision` says
where a race stands and, as a sentence, what it decided.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ("Direction", "Ending", "RaceDecision", "costs_of", "judge", "moments")

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
    :mod:`labkit.sweep.racing`). A trial is ruled out when the whole sequence
    for its difference with some other trial still racing lies on that trial's
    good side. Rulings made this round are simultaneous: a trial ruled out now
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
    everything = costs_of([values[trial] for trial in trials], direction)
    seen = np.isfinite(everything).any(axis=1)
    out = tuple(trial for trial, any_ in zip(trials, seen, strict=True) if not any_)
    alive = [slot for slot, trial in enumerate(trials) if trial not in before and seen[slot]]
    if not alive:
        return RaceDecision(None, (), before, (), out, confidence, min_effect)
    costs = everything[alive]
    pairs = len(trials) * (len(trials) - 1) // 2
    difference, half = _pairwise(costs, (1.0 - confidence) / max(pairs, 1))
    names = [trials[slot] for slot in alive]
    now = _rule_out(names, difference, half, before)
    left = [slot for slot, trial in enumerate(names) if trial not in now]
    lead = left[int(np.argmin(moments(costs[left])[0]))]  # argmin: the first of equal means
    # The leader at most min_effect worse than a trial, at the race's level.
    close = (difference[lead] + half[lead] <= min_effect) if min_effect > 0 else None
    within = [names[slot] for slot in left if slot != lead and close is not None and close[slot]]
    contenders = [names[slot] for slot in left if slot != lead and names[slot] not in within]
    return RaceDecision(
        names[lead], tuple(contenders), now, tuple(within), out, confidence, min_effect
    )


def _rule_out(
    names: Sequence[int], difference: np.ndarray, half: np.ndarray, before: Mapping[int, int]
) -> dict[int, int]:
    """The trials ruled out so far: ``before`` and each trial some other is shown to beat.

    ``difference[i, j]`` estimates ``cost_i - cost_j``: trial ``i`` is beaten by
    ``j`` when its whole sequence lies above zero.
    """
    shown_worse = difference - half > 0.0
    now = dict(before)
    for worse in np.flatnonzero(shown_worse.any(axis=1)).tolist():
        by = int(np.flatnonzero(shown_worse[worse])[0])
        now[names[worse]] = names[by]
    return now


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


def costs_of(rows: Sequence[Sequence[float]], direction: Direction) -> np.ndarray:
    """The rows as one array, lower is better, padded with NaN to the longest row."""
    sign = 1.0 if direction == "min" else -1.0
    arrays = [np.asarray(row, dtype=np.float64) for row in rows]
    costs = np.full((len(arrays), max((row.size for row in arrays), default=0)), np.nan)
    for slot, row in enumerate(arrays):
        costs[slot, : row.size] = sign * row
    return costs


def moments(costs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
