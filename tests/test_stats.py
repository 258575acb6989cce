"""Statistics for decisions (labkit.stats): exact values, then behaviour by simulation.

The simulations draw thousands of seeded experiments at once with numpy and check
what the intervals and the comparison promise: the false-positive rate of
``compare(...).better`` when A and B are the same, the power at
``instances_per_side``, and the coverage of the mean, median and IQM intervals,
for normal and lognormal data at N from 3 to 30.
"""

from __future__ import annotations

import itertools
import math
import re
from fractions import Fraction
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from labkit import stats
from labkit.errors import ConfigError
from labkit.results import ExperimentResult, InstanceResult

SIZES = (3, 5, 10, 30)
RUNS = 3000  # simulated experiments per case: the rates' standard error is 0.4 points


def draw(rng: np.random.Generator, dist: str, shape: tuple[int, int]) -> np.ndarray:
    if dist == "normal":
        return rng.normal(0.0, 1.0, shape)
    return rng.lognormal(0.0, 1.0, shape)


def population_iqm(dist: str) -> float:
    """E[X | Q1 < X < Q3]: 0 for the standard normal; closed form for lognormal(0, 1)."""
    if dist == "normal":
        return 0.0
    normal = NormalDist()
    q1, q3 = normal.inv_cdf(0.25), normal.inv_cdf(0.75)
    return math.exp(0.5) * (normal.cdf(q3 - 1.0) - normal.cdf(q1 - 1.0)) / 0.5


TRUTH = {  # mean, median, IQM
    "normal": (0.0, 0.0, 0.0),
    "lognormal": (math.exp(0.5), 1.0, population_iqm("lognormal")),
}


# --------------------------------------------------------------------------------------
# Exact values
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [(0.975, 1, 12.706204736174694), (0.975, 2, 4.302652729749462), (0.95, 10, 1.8124611228)],
)
def test_t_quantile_integer_table_values(p: float, df: int, expected: float) -> None:
    assert stats.t_quantile(p, df) == pytest.approx(expected, rel=1e-9)


def test_t_quantile_and_welch_agree_with_scipy_for_fractional_df() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for df, p in zip(rng.uniform(1.0, 400.0, 300), rng.uniform(0.5, 1 - 1e-9, 300), strict=True):
        assert stats.t_quantile(float(p), float(df)) == pytest.approx(
            scipy_stats.t.ppf(p, df), rel=1e-9
        )
        assert stats.t_quantile(1 - float(p), float(df)) == pytest.approx(
            scipy_stats.t.ppf(1 - p, df), rel=1e-9
        )
    for _ in range(50):
        a, b = rng.normal(10, 1, rng.integers(2, 12)), rng.normal(10, 3, rng.integers(2, 12))
        ours = stats.compare(a, b)
        theirs = scipy_stats.ttest_ind(b, a, equal_var=False)
        assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9)
        interval = theirs.confidence_interval(0.95)
        assert (ours.low, ours.high) == pytest.approx((interval.low, interval.high), rel=1e-9)


def test_t_quantile_is_monotone_between_integer_degrees_of_freedom() -> None:
    values = [stats.t_quantile(0.975, df) for df in np.linspace(2.0, 3.0, 21)]
    assert values[0] == stats.t_quantile(0.975, 2)
    assert values[-1] == stats.t_quantile(0.975, 3)
    assert all(x > y for x, y in itertools.pairwise(values))


@pytest.mark.parametrize(
    ("args", "option"),
    [
        ((0.0, 3), "p"),
        ((1.0, 3), "p"),
        ((0.9, 0.5), "df"),
        ((0.9, math.inf), "df"),
        ((0.9, "3"), "df"),
    ],
)
def test_t_quantile_errors_name_the_option(args: tuple, option: str) -> None:
    with pytest.raises(ConfigError) as caught:
        stats.t_quantile(*args)
    assert caught.value.option == option


def test_one_t_half_width_gives_every_ci95() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(10.0, 2.0, 7)
    spread = float(np.std(values, ddof=1))
    half = stats.t_half_width(spread, 7)
    assert half == pytest.approx(stats.t_quantile(0.975, 6) * spread / math.sqrt(7), rel=1e-15)
    assert stats.t_half_width(spread, 7, 0.9) < half
    assert math.isnan(stats.t_half_width(spread, 1))
    assert stats.mean(values).half_width == pytest.approx(half, rel=1e-12)
    instances = [
        InstanceResult(
            index=i,
            ok=True,
            error=None,
            summary={"x_last": float(v)},
            timeline=pd.DataFrame({"t": [0.0, 1.0], "x": [float(v), float(v)]}),
        )
        for i, v in enumerate(values)
    ]
    result = ExperimentResult.build("x", {}, instances, {})
    assert result.summary_table().loc["x_last", "ci95"] == pytest.approx(half, rel=1e-12)
    assert result.averaged["x_ci95"].to_numpy() == pytest.approx([half, half], rel=1e-12)


def test_median_interval_uses_binomial_order_statistics() -> None:
    values = [7.0, 1.0, 9.0, 3.0, 5.0, 2.0, 8.0, 4.0, 6.0, 10.0]
    result = stats.median(values)
    # n = 10: the 2nd smallest to the 2nd largest covers the median with 97.85 %.
    assert (result.estimate, result.low, result.high) == (5.5, 2.0, 9.0)
    assert result.confidence == pytest.approx(1 - 2 * 11 / 1024)
    small = stats.median([3.0, 1.0, 2.0])
    assert (small.low, small.high, small.confidence) == (1.0, 3.0, 0.75)  # the range is all


def test_iqm_is_the_quarter_trimmed_mean_with_yuens_interval() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 100.0])
    result = stats.iqm(values)
    assert result.estimate == 4.5  # 3, 4, 5, 6
    winsorised = np.array([3.0, 3.0, 3.0, 4.0, 5.0, 6.0, 6.0, 6.0])
    se = math.sqrt(7 * np.var(winsorised, ddof=1) / (4 * 3))
    assert result.half_width == pytest.approx(stats.t_quantile(0.975, 3) * se)
    # Fewer than 4 values trim nothing: the mean's interval.
    small, plain = stats.iqm([1.0, 2.0, 4.0]), stats.mean([1.0, 2.0, 4.0])
    assert (small.estimate, small.low, small.high) == pytest.approx(
        (plain.estimate, plain.low, plain.high)
    )


def test_estimates_leave_non_finite_values_out() -> None:
    result = stats.mean([1.0, 3.0, math.nan, math.inf])
    assert (result.estimate, result.n) == (2.0, 2)
    with pytest.raises(ConfigError) as caught:
        stats.median([math.nan])
    assert caught.value.option == "values"


def test_probability_of_improvement_counts_pairs_and_ties() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 5, 9).astype(float), rng.integers(0, 5, 7).astype(float)
    pairs = [(x, y) for x in a for y in b]
    lower = sum((y < x) + 0.5 * (y == x) for x, y in pairs) / len(pairs)
    assert stats.probability_of_improvement(a, b) == pytest.approx(lower)
    assert stats.probability_of_improvement(a, b, direction="max") == pytest.approx(1 - lower)


# --------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------


def test_compare_reports_a_clear_difference_in_either_direction() -> None:
    a = [10.1, 10.3, 9.9, 10.2]
    b = [9.1, 9.0, 9.3, 9.2]

    lower = stats.compare(a, b)
    higher = stats.compare(a, b, direction="max")

    assert lower.better == "b"
    assert higher.better == "a"
    assert lower.difference == pytest.approx(-0.975)
    assert lower.relative == pytest.approx(-0.975 / 10.125)
    assert lower.low < lower.difference < lower.high < 0
    assert lower.probability_of_improvement == 1.0
    assert higher.probability_of_improvement == 0.0
    assert (lower.n_a, lower.n_b) == (4, 4)


def test_compare_repr_reads_as_a_sentence() -> None:
    text = repr(stats.compare([10.1, 10.3, 9.9, 10.2], [9.1, 9.0, 9.3, 9.2]))
    assert re.fullmatch(
        r"b is 9\.6 % lower than a \(95 % CI \d+\.\d % to \d+\.\d %, p = [\d.e-]+, "
        r"4 vs 4 instances, Welch\)",
        text,
    ), text
    undecided = repr(stats.compare([1.0, 2.0, 3.0], [1.5, 2.5, 2.2], metric="loss_last"))
    assert undecided.startswith("loss_last: b is ")
    assert "cannot tell them apart (about " in undecided


def test_min_effect_keeps_a_small_sure_difference_from_deciding() -> None:
    a = [10.00, 10.01, 9.99, 10.00, 10.01, 9.99]
    b = [9.90, 9.91, 9.89, 9.90, 9.91, 9.89]
    assert stats.compare(a, b).better == "b"
    held = stats.compare(a, b, min_effect=0.5)
    assert held.better is None
    assert held.instances_needed == 2  # a 0.5 difference with spread 0.01 needs little


def test_equivalent_when_the_interval_lies_within_min_effect() -> None:
    a = [10.00, 10.01, 9.99, 10.00, 10.01, 9.99]
    b = [10.01, 10.00, 10.00, 9.99, 10.01, 10.00]
    assert stats.compare(a, b, min_effect=0.1).equivalent
    assert not stats.compare(a, b, min_effect=0.001).equivalent  # the interval is wider
    assert not stats.compare(a, b).equivalent  # no min_effect, no equivalence


def test_instances_needed_grows_as_the_difference_shrinks() -> None:
    a = [10.0, 11.0, 9.0, 10.5, 9.5]
    close = stats.compare(a, [9.8, 10.7, 8.9, 10.4, 9.2])
    far = stats.compare(a, [9.0, 10.0, 8.0, 9.5, 8.5])
    assert close.instances_needed is not None and far.instances_needed is not None
    assert close.instances_needed > far.instances_needed >= 2
    assert stats.compare(a, a).instances_needed is None
    assert repr(stats.compare(a, a)).startswith("b equals a")


def test_compare_reads_experiment_results_summary_figure() -> None:
    def result(values: list[float]) -> ExperimentResult:
        instances = [
            InstanceResult(index=i, ok=True, error=None, summary={"loss_last": v})
            for i, v in enumerate(values)
        ]
        failed = InstanceResult(index=len(values), ok=False, error="boom", summary={})
        return ExperimentResult.build("x", {}, [*instances, failed], {})

    a, b = result([1.0, 1.1, 0.9, 1.0]), result([0.5, 0.6, 0.4, 0.5])
    comparison = stats.compare(a, b, metric="loss_last")
    assert comparison.better == "b"
    assert comparison.n_a == 4  # the failed instance is not a figure
    with pytest.raises(ConfigError) as caught:
        stats.compare(a, b, metric="accuracy_max")
    assert caught.value.option == "metric"
    assert "loss_last" in str(caught.value)
    with pytest.raises(ConfigError) as missing:
        stats.compare(a, b)
    assert missing.value.option == "metric"


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"direction": "up"}, "direction"),
        ({"confidence": 1.0}, "confidence"),
        ({"min_effect": -1.0}, "min_effect"),
        ({"b": [1.0]}, "b"),
        ({"a": "abc"}, "a"),
    ],
)
def test_compare_errors_name_the_option(options: dict, option: str) -> None:
    arguments = {"a": [1.0, 2.0], "b": [2.0, 3.0], **options}
    a, b = arguments.pop("a"), arguments.pop("b")
    with pytest.raises(ConfigError) as caught:
        stats.compare(a, b, **arguments)
    assert caught.value.option == option


def seeded_pairs(
    rng: np.random.Generator, runs: int, n: int, shift: float
) -> tuple[np.ndarray, np.ndarray]:
    """A and B measured on the same seeds: a large shared effect per seed, small noise."""
    seed_effect = rng.normal(0.0, 3.0, (runs, n))
    a = 10.0 + seed_effect + rng.normal(0.0, 0.5, (runs, n))
    b = 10.0 + shift + seed_effect + rng.normal(0.0, 0.5, (runs, n))
    return a, b


def test_the_paired_interval_equals_scipy_ttest_rel() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(41)
    for n in (2, 3, 8, 30):
        a, b = seeded_pairs(rng, 1, n, 0.4)
        ours = stats.compare(a[0], b[0], paired=True, confidence=0.9)
        theirs = scipy_stats.ttest_rel(b[0], a[0])
        interval = theirs.confidence_interval(0.9)
        assert ours.paired and ours.pairing == "position"
        assert ours.low == pytest.approx(interval.low, rel=1e-12, abs=1e-12)
        assert ours.high == pytest.approx(interval.high, rel=1e-12, abs=1e-12)
        assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9)
        assert ours.df == n - 1
        assert ours.std_difference == pytest.approx(np.std(b[0] - a[0], ddof=1))


def test_paired_false_positive_rate_is_five_percent_and_pairing_finds_what_welch_misses() -> None:
    rng = np.random.default_rng(42)
    runs = 4000
    a, b = seeded_pairs(rng, runs, 10, 0.0)
    rate = np.mean(
        [stats.compare(x, y, paired=True).better is not None for x, y in zip(a, b, strict=True)]
    )
    assert abs(rate - 0.05) <= 0.01, rate
    a, b = seeded_pairs(rng, 1000, 10, -1.0)
    paired = np.mean(
        [stats.compare(x, y, paired=True).better == "b" for x, y in zip(a, b, strict=True)]
    )
    welch = np.mean([stats.compare(x, y).better == "b" for x, y in zip(a, b, strict=True)])
    assert paired > 0.9 and welch < 0.15, (paired, welch)


def test_paired_repr_and_instances_needed_use_the_spread_of_the_differences() -> None:
    rng = np.random.default_rng(43)
    a, b = seeded_pairs(rng, 1, 8, -0.3)
    paired = stats.compare(a[0], b[0], paired=True)
    welch = stats.compare(a[0], b[0])
    assert ", 8 pairs, paired t)" in repr(paired)
    assert ", 8 vs 8 instances, Welch)" in repr(welch)
    assert not welch.paired and math.isnan(welch.std_difference)
    assert paired.instances_needed is not None and welch.instances_needed is not None
    assert paired.instances_needed < welch.instances_needed / 10
    expected = stats.instances_per_side(abs(paired.difference), paired.std_difference, 0.0)
    assert paired.instances_needed == expected


def test_paired_option_errors_name_paired() -> None:
    with pytest.raises(ConfigError) as unequal:
        stats.compare([1.0, 2.0, 3.0], [1.0, 2.0], paired=True)
    assert unequal.value.option == "paired" and "equal length" in str(unequal.value)
    with pytest.raises(ConfigError) as wrong_type:
        stats.compare([1.0, 2.0], [1.0, 2.0], paired="yes")
    assert wrong_type.value.option == "paired"
    with pytest.raises(ConfigError) as holes:
        stats.compare([1.0, math.nan, 3.0], [math.nan, 2.0, 3.0], paired=True)
    assert holes.value.option == "paired"
    # Plain sequences are not paired unless asked: Welch by default.
    assert not stats.compare([1.0, 2.0, 3.0], [1.5, 2.5, 2.0]).paired


def test_no_spread_decides_exactly() -> None:
    same = stats.compare([2.0, 2.0], [2.0, 2.0])
    assert (same.better, same.p_value, same.low, same.high) == (None, 1.0, 0.0, 0.0)
    apart = stats.compare([2.0, 2.0], [1.0, 1.0])
    assert (apart.better, apart.p_value) == ("b", 0.0)


# --------------------------------------------------------------------------------------
# Behaviour by simulation
# --------------------------------------------------------------------------------------


def false_positive_rate(rng: np.random.Generator, dist: str, n: int) -> float:
    a, b = draw(rng, dist, (RUNS, n)), draw(rng, dist, (RUNS, n))
    return float(
        np.mean([stats.compare(x, y).better is not None for x, y in zip(a, b, strict=True)])
    )


@pytest.mark.parametrize("dist", ["normal", "lognormal"])
def test_false_positive_rate_never_exceeds_one_minus_confidence(dist: str) -> None:
    rng = np.random.default_rng(16)
    rates = {n: false_positive_rate(rng, dist, n) for n in SIZES}
    # Welch's test is conservative at tiny N and on skewed data (measured with this
    # seed: normal 3.9, 4.0, 4.3, 4.5 %; lognormal 2.2, 1.9, 2.9, 3.9 % at N = 3, 5,
    # 10, 30), so it is never more often wrong than promised.
    assert all(rate <= 0.05 + 0.015 for rate in rates.values()), rates
    if dist == "normal":
        assert all(abs(rates[n] - 0.05) <= 0.015 for n in SIZES if n >= 5), rates
        assert rates[3] >= 0.025, rates
    else:
        assert rates[30] >= 0.03, rates  # it approaches the nominal rate as N grows


@pytest.mark.parametrize(
    ("difference", "std_a", "std_b"),
    [(0.5, 1.0, 1.0), (1.0, 1.0, 1.0), (2.0, 1.0, 1.0), (1.0, 0.5, 1.5)],
)
def test_power_at_instances_per_side_is_the_promised_eighty_percent(
    difference: float, std_a: float, std_b: float
) -> None:
    rng = np.random.default_rng(8)
    n = stats.instances_per_side(difference, std_a, std_b)

    def detected(size: int) -> float:
        a = rng.normal(0.0, std_a, (RUNS, size))
        b = rng.normal(-difference, std_b, (RUNS, size))
        decisions = [stats.compare(x, y).better == "b" for x, y in zip(a, b, strict=True)]
        return float(np.mean(decisions))

    measured = detected(n)
    assert measured >= 0.8 - 0.02, (n, measured)
    assert abs(stats.power(difference, std_a, std_b, n) - measured) <= 0.03
    if n > 2:  # and n is the smallest that does: one fewer falls short
        assert detected(n - 1) < 0.8 + 0.02


def coverage(rng: np.random.Generator, dist: str, n: int) -> dict[str, float]:
    samples = draw(rng, dist, (RUNS, n))
    truth = dict(zip(("mean", "median", "iqm"), TRUTH[dist], strict=True))
    rates = {}
    for name, estimator in (("mean", stats.mean), ("median", stats.median), ("iqm", stats.iqm)):
        intervals = [estimator(row) for row in samples]
        rates[name] = float(np.mean([i.low <= truth[name] <= i.high for i in intervals]))
    return rates


@pytest.mark.parametrize("dist", ["normal", "lognormal"])
def test_interval_coverage_by_n(dist: str) -> None:
    rng = np.random.default_rng(30)
    for n in SIZES:
        rates = coverage(rng, dist, n)
        attained = stats.median(np.arange(n, dtype=float)).confidence
        # The median's order-statistic interval covers at its attained level, any data.
        assert abs(rates["median"] - attained) <= 0.015, (n, rates)
        if dist == "normal":
            assert abs(rates["mean"] - 0.95) <= 0.015, (n, rates)
            assert abs(rates["iqm"] - 0.95) <= 0.02, (n, rates)
        else:
            # Skew: the t interval of the mean under-covers (84 % at N = 3); the
            # trimmed-t interval of the IQM stays close to nominal.
            assert rates["iqm"] >= 0.91, (n, rates)
            assert rates["iqm"] > rates["mean"], (n, rates)


def test_mean_std_is_correctly_rounded_at_any_magnitude() -> None:
    # 2,000 columns of 2 to 8 values (NaN pads), each value from 1e-300 to 1e300.
    rng = np.random.default_rng(27)
    signs = np.where(rng.random((8, 2000)) < 0.5, -1.0, 1.0)
    values = signs * 10.0 ** rng.uniform(-300, 300, (8, 2000))
    counts = rng.integers(2, 9, 2000)
    values[np.arange(8)[:, None] >= counts] = np.nan

    mean, std = stats.mean_std(values)

    worst = 0.0
    for column in range(2000):
        exact = [Fraction(x) for x in values[: counts[column], column]]
        center = sum(exact, Fraction(0)) / len(exact)
        variance = sum(((x - center) ** 2 for x in exact), Fraction(0)) / (len(exact) - 1)
        worst = max(
            worst,
            float(abs(Fraction(mean[column]) - center) / abs(center)),
            float(abs(Fraction(std[column]) ** 2 - variance) / variance) / 2,  # std's error
        )
    assert worst <= 1e-12, worst


def test_decisions_hold_at_the_ends_of_the_float_range() -> None:
    assert stats.mean([1.7e308, -1.7e308]).estimate == 0.0
    interval = stats.mean([1e155, 3e155, 5e155])
    assert interval.high - interval.estimate == pytest.approx(4.302652729749462 * 2e155 / 3**0.5)
    assert math.isfinite(stats.iqm([1e-300, 3e-300, 5e-300, 7e-300]).low)
    assert stats.mean_std([1e-300, 1e-300, 1e-300])[1] == 0.0  # identical: exactly none
    for scale in (1e200, 1.0, 1e-300):  # Welch's df and p-value do not depend on the unit
        comparison = stats.compare(
            [1 * scale, 2 * scale, 3 * scale], [4 * scale, 5 * scale, 6 * scale]
        )
        assert comparison.better == "a"
        assert comparison.df == pytest.approx(4.0)
        assert comparison.p_value == pytest.approx(0.0213116411, rel=1e-8)
    assert stats.instances_needed([0.9e300, 1.0e300, 1.1e300]) == stats.instances_needed(
        [0.9, 1.0, 1.1]
    )


async def test_compare_pairs_two_results_by_seed() -> None:
    from labkit.experiment import Experiment, run_experiment

    async def fn(ctx: object) -> dict[str, float]:
        import random

        shared = random.Random(ctx.seed).gauss(0.0, 5.0)  # type: ignore[attr-defined]
        noise = random.Random(ctx.seed + ctx.params["shift"]).gauss(0.0, 0.1)  # type: ignore[attr-defined]
        return {"loss": 10.0 + ctx.params["shift"] + shared + noise}  # type: ignore[attr-defined]

    a = await run_experiment(Experiment("a", fn, params={"shift": 0.0}), instances=6, seed=3)
    b = await run_experiment(Experiment("b", fn, params={"shift": -0.5}), instances=8, seed=3)
    paired = stats.compare(a, b, metric="loss")
    assert paired.pairing == "seed" and paired.n_a == 6  # the 6 seeds both have
    assert paired.better == "b"
    assert "6 pairs by seed, paired t" in repr(paired)
    welch = stats.compare(a, b, metric="loss", paired=False)
    assert not welch.paired and welch.better is None and (welch.n_a, welch.n_b) == (6, 8)
    other = await run_experiment(Experiment("c", fn, params={"shift": -0.5}), instances=4, seed=9)
    assert not stats.compare(a, other, metric="loss").paired  # no seed in common: Welch
    with pytest.raises(ConfigError) as caught:
        stats.compare(a, other, metric="loss", paired=True)
    assert caught.value.option == "paired" and "0 seed(s) shared" in str(caught.value)
