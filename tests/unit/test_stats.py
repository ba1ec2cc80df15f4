"""advreid.stats against hand computations and textbook values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from advreid import stats


def test_over_seeds_is_the_t_interval_computed_by_hand():
    summary = stats.over_seeds([1.0, 2.0, 3.0])
    # mean 2, sample std 1, t(0.975, df=2) = 4.302653 -> half width 4.302653 / sqrt(3)
    half = 4.302653 / math.sqrt(3)
    assert summary.mean == pytest.approx(2.0)
    assert summary.std == pytest.approx(1.0)
    assert summary.interval.low == pytest.approx(2.0 - half, abs=1e-5)
    assert summary.interval.high == pytest.approx(2.0 + half, abs=1e-5)
    assert summary.as_dict()["values"] == [1.0, 2.0, 3.0]


def test_one_seed_has_no_interval_and_judges_nothing():
    summary = stats.over_seeds([0.7])
    assert math.isnan(summary.interval.low) and math.isnan(summary.std)
    assert stats.verdict(summary.interval) == "inconclusive"


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (0, 10, 0.0, 1 - 0.025 ** (1 / 10)),  # closed forms at the boundary
        (10, 10, 0.025 ** (1 / 10), 1.0),
        (5, 10, 0.187086, 0.812914),  # the classic table value
    ],
)
def test_clopper_pearson_matches_known_values(k, n, low, high):
    interval = stats.clopper_pearson(k, n)
    assert interval.estimate == pytest.approx(k / n)
    assert interval.low == pytest.approx(low, abs=1e-6)
    assert interval.high == pytest.approx(high, abs=1e-6)


def test_mcnemar_is_the_exact_binomial_on_discordant_pairs():
    a = np.array([True] * 8 + [False] * 2 + [True] * 5)
    b = np.array([False] * 8 + [True] * 2 + [True] * 5)  # 8 only-A, 2 only-B, 5 both
    result = stats.mcnemar_exact(a, b)
    assert (result.only_a, result.only_b) == (8, 2)
    assert result.pvalue == pytest.approx(2 * (1 + 10 + 45) / 1024)  # 2 P(X <= 2), X ~ Bin(10, 1/2)
    assert stats.mcnemar_exact(a, a).pvalue == 1.0


def test_bootstrap_mean_agrees_with_the_normal_interval_on_a_large_bernoulli_sample():
    x = np.r_[np.ones(200), np.zeros(200)]
    interval = stats.bootstrap_mean(x, resamples=4000, seed=1)
    assert interval.estimate == 0.5
    assert interval.low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.006)
    assert interval.high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.006)
    assert stats.bootstrap_mean(x, resamples=500, seed=3) == stats.bootstrap_mean(x, resamples=500, seed=3)


def test_paired_difference_of_a_constant_shift_is_that_shift():
    a = np.linspace(0, 1, 50)
    interval = stats.paired_bootstrap_difference(a + 0.1, a)
    assert interval.estimate == pytest.approx(0.1)
    assert interval.low == pytest.approx(0.1) and interval.high == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same length"):
        stats.paired_bootstrap_difference(a, a[:-1])


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.01, 0.2, "reproduced"),
        (-0.3, -0.01, "not reproduced"),
        (-0.1, 0.2, "inconclusive"),
        (-0.2, 0.0, "not reproduced"),
    ],
)
def test_verdict_on_hand_made_intervals(low, high, expected):
    assert stats.verdict(stats.Interval(0.0, low, high, 3)) == expected


def test_verdict_against_a_margin():
    interval = stats.Interval(0.5, 0.1, 0.9, 3)
    assert stats.verdict(interval, at_least=0.0) == "reproduced"
    assert stats.verdict(interval, at_least=0.5) == "inconclusive"


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="NaN"):
        stats.over_seeds([1.0, float("nan")])
    with pytest.raises(ValueError, match="successes"):
        stats.clopper_pearson(11, 10)
    with pytest.raises(ValueError, match="level"):
        stats.bootstrap_mean([1.0, 2.0], level=95)


def test_the_interval_from_a_stored_summary_is_the_one_over_the_values():
    values = [0.2, 0.35, 0.1, 0.3, 0.25]
    summary = stats.over_seeds(values)
    stored = stats.over_seeds_from_summary(summary.mean, summary.std, len(values))
    assert (stored.low, stored.high) == pytest.approx((summary.interval.low, summary.interval.high))
    assert math.isnan(stats.over_seeds_from_summary(0.4, 0.0, 1).low)


def test_difference_bounds_by_hand_and_its_bonferroni_level():
    assert stats.bonferroni_level(0.95) == pytest.approx(0.975)
    a = stats.Interval(0.5, 0.4, 0.6, 10, 0.975)
    b = stats.Interval(0.1, 0.05, 0.2, 12, 0.975)
    d = stats.difference_bounds(a, b, scale=3.0)
    # a - 3b: estimate 0.5 - 0.3, low 0.4 - 3 * 0.2, high 0.6 - 3 * 0.05
    assert (d.estimate, d.low, d.high) == pytest.approx((0.2, -0.2, 0.45))
    assert d.level == pytest.approx(0.95) and d.n == 10
    assert stats.verdict(d) == "inconclusive"
    assert stats.verdict(stats.difference_bounds(a, b)) == "reproduced"  # 0.4 - 0.2 > 0
    assert stats.verdict(stats.difference_bounds(b, a)) == "not reproduced"  # 0.2 - 0.4 <= 0
    with pytest.raises(ValueError, match="scale"):
        stats.difference_bounds(a, b, scale=-1.0)
