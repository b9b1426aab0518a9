"""The shared robust statistics (chipaudit/stats.py): their properties, and agreement with SciPy's
implementations of the same estimators, which serve as the reference (SciPy is a test dependency only)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as reference

from chipaudit import stats


def test_median_odd_even_and_empty() -> None:
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert stats.median(x for x in (2.0, 1.0, 3.0)) == 2.0  # any iterable, as statistics.median
    with pytest.raises(ValueError):
        stats.median([])


def test_spread_is_robust_to_one_wild_repeat() -> None:
    calm = [1.0, 1.01, 0.99, 1.02, 0.98, 1.0, 1.01]
    assert stats.relative_spread(calm) == pytest.approx(1.4826 * 0.01, rel=1e-6)
    # A preempted repeat ten times slower leaves the median and the spread nearly where they were.
    assert stats.median([*calm, 10.0]) == pytest.approx(1.0, abs=0.01)
    assert stats.relative_spread([*calm, 10.0]) < 0.03
    assert stats.relative_spread([5.0]) == 0.0


def test_spread_estimates_sigma_of_normal_data() -> None:
    rng = np.random.default_rng(1)
    x = 100 + 5 * rng.standard_normal(4000)
    assert stats.relative_spread(list(x)) == pytest.approx(0.05, rel=0.08)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 15, 64])
def test_mad_and_spread_agree_with_scipy(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.lognormal(0, 0.3, n)
    assert stats.mad(list(x)) == pytest.approx(reference.median_abs_deviation(x), rel=1e-12, abs=0)
    if n >= 2:
        # 1.4826 is SciPy's 1 / Phi^-1(3/4) = 1.482602... rounded; they differ by 1.5e-6 relative.
        expected = reference.median_abs_deviation(x, scale="normal") / abs(np.median(x))
        assert stats.relative_spread(list(x)) == pytest.approx(expected, rel=2e-6)


def test_robust_sigma_is_the_normal_scaled_mad_or_the_mean_deviation() -> None:
    rng = np.random.default_rng(7)
    x = list(rng.normal(10, 2, 31))
    centre = stats.median(x)
    assert stats.robust_sigma(x, centre) == pytest.approx(
        reference.median_abs_deviation(x, scale="normal"), rel=2e-5)
    # More than half on the centre: MAD = 0, and the scaled mean absolute deviation stands in.
    agreeing = [5.0, 5.0, 5.0, 5.0, 1.0]
    assert stats.robust_sigma(agreeing, 5.0) == pytest.approx(1.253314 * 4 / 5)
    assert stats.robust_sigma([2.0, 2.0], 2.0) == 0.0


def test_modified_z_is_iglewicz_and_hoaglins() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(0, 1, 25)
    expected = 0.6745 * (x - np.median(x)) / reference.median_abs_deviation(x)
    assert stats.modified_z(list(x)) == pytest.approx(list(expected), rel=1e-12)


def test_modified_z_with_a_band_takes_the_spread_of_the_agreeing_values_only() -> None:
    values = [0.88, 0.95, 1.05, 1.12, 0.30, 0.32]
    plain, banded = stats.modified_z(values), stats.modified_z(values, 1.5)
    assert plain[4] > -3.5 > banded[4]  # the two slow values inflate the plain spread and hide
    centre = stats.median(values)
    core = values[:4]
    assert banded[4] == pytest.approx((values[4] - centre) / stats.robust_sigma(core, centre))
    # Too few values within the band: the spread of all of them is used.
    assert stats.modified_z(values, 1.5, min_core=5) == plain
    assert stats.modified_z([2.0, 2.0, 2.0]) == [0.0, 0.0, 0.0]


def test_median_ci_covers_the_median_at_its_stated_rate() -> None:
    rng = np.random.default_rng(2)
    true_median = math.log(2)  # of the unit exponential
    covered = 0
    trials = 400
    for _ in range(trials):
        lo, hi = stats.median_ci(list(rng.exponential(size=15)), 0.95)
        covered += lo <= true_median <= hi
    assert covered / trials >= 0.93


def test_median_ci_small_samples_give_the_whole_range() -> None:
    assert stats.median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)
    lo, hi = stats.median_ci(list(range(1, 31)))
    assert 1 < lo < 15.5 < hi < 30


@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_median_ci_is_scipys_quantile_test_interval(confidence: float) -> None:
    rng = np.random.default_rng(9)
    for n in range(2, 61):
        x = rng.normal(size=n)
        ci = reference.quantile_test(x, q=float(np.median(x)), p=0.5).confidence_interval(confidence)
        if np.isnan(ci.low) or np.isnan(ci.high):
            # SciPy declines; here the whole range stands in (the widest interval the data give).
            assert stats.median_ci(list(x), confidence) == (x.min(), x.max()), n
        else:
            assert stats.median_ci(list(x), confidence) == (ci.low, ci.high), n


def test_mann_whitney_separates_shifted_samples_only() -> None:
    rng = np.random.default_rng(3)
    a = list(rng.normal(1.0, 0.05, 20))
    same = list(rng.normal(1.0, 0.05, 20))
    shifted = list(rng.normal(0.8, 0.05, 20))
    assert stats.mann_whitney(a, shifted) < 1e-4
    assert stats.mann_whitney(a, same) > 0.01
    assert stats.mann_whitney(a, shifted) == pytest.approx(stats.mann_whitney(shifted, a))
    assert stats.mann_whitney([1.0] * 5, [1.0] * 5) == 1.0
    assert stats.mann_whitney([], [1.0]) == 1.0


@pytest.mark.parametrize(("n1", "n2", "shift"), [(5, 5, 0.0), (8, 12, 0.5), (20, 20, 0.2), (3, 7, 1.0), (30, 9, 0.0)])
def test_mann_whitney_is_scipys_asymptotic_test_with_ties(n1: int, n2: int, shift: float) -> None:
    rng = np.random.default_rng(n1 * 100 + n2)
    # Rounded to one decimal: many ties, so the tie correction is exercised too.
    a, b = np.round(rng.normal(0, 1, n1), 1), np.round(rng.normal(shift, 1, n2), 1)
    expected = reference.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic", use_continuity=True)
    assert stats.mann_whitney(list(a), list(b)) == pytest.approx(expected.pvalue, rel=1e-9)


def test_bootstrap_median_ratio_is_reproducible_and_agrees_with_scipy() -> None:
    rng = np.random.default_rng(10)
    late, early = rng.lognormal(0.5, 0.2, 80), rng.lognormal(0.0, 0.2, 60)
    low, high = stats.bootstrap_median_ratio(late, early, 0.95, 20000, seed=1)
    assert (low, high) == stats.bootstrap_median_ratio(late, early, 0.95, 20000, seed=1)
    assert low < np.median(late) / np.median(early) < high

    def ratio(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
        return np.median(x, axis=axis) / np.median(y, axis=axis)

    ci = reference.bootstrap((late, early), ratio, method="percentile", confidence_level=0.95,
                             n_resamples=20000, random_state=np.random.default_rng(2)).confidence_interval
    # Different resamples: agreement up to resampling noise, far below the interval's width.
    assert low == pytest.approx(ci.low, abs=0.05 * (high - low))
    assert high == pytest.approx(ci.high, abs=0.05 * (high - low))
