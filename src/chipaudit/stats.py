"""Robust statistics shared by every comparison chipaudit makes: performance figures and their changes
(perf/), speed differences between worlds (checks/behaviour/) and outliers among a fleet's peers (fleet/).

Timings and throughputs on shared machines have heavy right tails (a preempted repeat, a page fault, a
clock step), and a fleet's slow devices are the very values under suspicion, so everything here is
median- and rank-based: the median for the centre, the median absolute deviation (MAD) for the spread,
order statistics for the confidence interval of the median, the Mann-Whitney rank test for a shift,
and a percentile bootstrap where no closed form exists. No distribution is assumed.

Hand-written rather than taken from SciPy: they are a few dozen lines, the runtime would otherwise
pull in SciPy (tens of MB) for them alone, and a reference implementation is still at hand — the
tests compare each with its SciPy counterpart (tests/test_perf_stats.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

# MAD x 1.4826 estimates the standard deviation of normally distributed data (Rousseeuw & Croux,
# "Alternatives to the median absolute deviation", JASA 1993). It is 1 / 0.6745 below, rounded the
# way that paper rounds it; both roundings are kept so that recorded figures and z-scores reproduce.
MAD_TO_SIGMA = 1.4826
# The modified z-score 0.6745 (x - median) / MAD (Iglewicz & Hoaglin, "How to Detect and Handle
# Outliers", 1993); 0.6745 is the 0.75 quantile of the standard normal.
MODIFIED_Z_SCALE = 0.6745
# When more than half the values are equal (MAD = 0), the mean absolute deviation stands in, scaled by
# sqrt(pi/2) to estimate the standard deviation (IBM SPSS / Iglewicz-Hoaglin practice).
MEAN_AD_TO_SIGMA = 1.253314
# Values needed inside the band of `modified_z` before their spread is trusted alone: with fewer, one
# of them sets the scale by itself.
MIN_CORE = 3


def median(xs: Iterable[float]) -> float:
    s = sorted(xs)
    if not s:
        raise ValueError("median of an empty sequence")
    n = len(s)
    mid = n // 2
    return float(s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2.0)


def mad(xs: Sequence[float], center: float | None = None) -> float:
    """Median absolute deviation from `center` (the median when None), unscaled, as
    scipy.stats.median_abs_deviation(scale=1.0)."""
    m = median(xs) if center is None else center
    return median([abs(x - m) for x in xs])


def relative_spread(xs: Sequence[float]) -> float:
    """Robust coefficient of variation: 1.4826 * MAD / |median|; 0 for fewer than two values.

    A figure's noise: the typical relative distance of one repeat from the median.
    """
    if len(xs) < 2:
        return 0.0
    m = median(xs)
    return MAD_TO_SIGMA * mad(xs, m) / abs(m) if m else math.inf


def relative_range(xs: Sequence[float]) -> float:
    """(largest - smallest) / |median|; 0 for fewer than two values.

    The spread of a handful of values, each from a separate run: with three, the MAD is the smaller
    of the two distances from the median and ignores the third value, however far it lies.
    """
    if len(xs) < 2:
        return 0.0
    m = median(xs)
    return (max(xs) - min(xs)) / abs(m) if m else math.inf


def robust_sigma(values: Sequence[float], center: float) -> float:
    """A standard deviation estimate around `center`: MAD / 0.6745, or the scaled mean absolute
    deviation when more than half the values sit on the centre (MAD = 0); 0 when all do."""
    deviations = [abs(v - center) for v in values]
    spread = median(deviations)
    return spread / MODIFIED_Z_SCALE if spread > 0 else MEAN_AD_TO_SIGMA * (math.fsum(deviations) / len(deviations))


def modified_z(values: Sequence[float], band: float | None = None, min_core: int = MIN_CORE) -> list[float]:
    """(value - median) / robust_sigma for each value: Iglewicz and Hoaglin's modified z-score.

    With `band`, the spread is measured among the values within that factor of the median only (when
    at least `min_core` are): the values under suspicion would otherwise widen the very spread they
    are judged against. With a third of a small fleet throttled, the MAD of all devices doubles and
    hides them (tests/test_fleet_ray.py); the MAD's breakdown point protects the median, not its
    efficiency. All zeros when every value sits on the median.
    """
    centre = median(values)
    low, high = sorted((centre / band, centre * band)) if band else (-math.inf, math.inf)
    core = [v for v in values if low <= v <= high]
    for group in ([core, values] if len(core) >= min_core else [values]):
        scale = robust_sigma(group, centre)
        if scale > 0:
            return [(v - centre) / scale for v in values]
    return [0.0 for _ in values]


def _binom_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n


def median_ci(xs: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median from order statistics (the sign test's).

    The interval [x_(j), x_(n-j+1)] covers the true median with probability 1 - 2 P(B <= j-1),
    B ~ Binomial(n, 1/2); j is the largest rank that keeps that probability >= `confidence`. With
    too few values for the requested confidence the interval is the whole range (where
    scipy.stats.quantile_test's interval is NaN; elsewhere the two agree).
    """
    if not xs:
        raise ValueError("confidence interval of an empty sequence")
    s = sorted(xs)
    n = len(s)
    j = 0
    while j + 1 <= n // 2 and 1 - 2 * _binom_cdf(j, n) >= confidence:
        j += 1
    if j == 0:
        return float(s[0]), float(s[-1])
    return float(s[j - 1]), float(s[n - j])


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test that a and b come from one distribution.

    Normal approximation with tie and continuity corrections (Lehmann, Nonparametrics, 1975, ch. 1),
    as scipy.stats.mannwhitneyu(method="asymptotic"); adequate from about five values per side.
    1.0 when either side is empty or every value is tied.
    """
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = sorted([(x, 0) for x in a] + [(x, 1) for x in b])
    ranks = [0.0] * len(pooled)
    ties = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        rank = (i + j) / 2.0 + 1.0
        for k in range(i, j + 1):
            ranks[k] = rank
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    r1 = sum(r for r, (_, side) in zip(ranks, pooled, strict=True) if side == 0)
    u1 = r1 - n1 * (n1 + 1) / 2.0
    n = n1 + n2
    variance = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:
        return 1.0
    z = (abs(u1 - n1 * n2 / 2.0) - 0.5) / math.sqrt(variance)
    return min(1.0, 2.0 * _normal_sf(max(z, 0.0)))


def bootstrap_median_ratio(
    numerator: Sequence[float], denominator: Sequence[float], confidence: float, resamples: int, seed: int,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of median(numerator) / median(denominator), the two samples
    resampled independently, from a seeded generator so that a report can be reproduced.

    The ratio of medians has no closed-form interval; the percentile bootstrap is what
    scipy.stats.bootstrap(method="percentile") computes, and agrees with it up to resampling noise.
    """
    rng = np.random.default_rng(seed)
    num, den = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    boot = (np.median(rng.choice(num, (resamples, num.size)), axis=1)
            / np.median(rng.choice(den, (resamples, den.size)), axis=1))
    tail = (1 - confidence) / 2
    low, high = (float(x) for x in np.quantile(boot, [tail, 1 - tail]))
    return low, high
