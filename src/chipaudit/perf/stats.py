"""Robust statistics for timings: a figure's central value, its noise, and whether two sets of
repeats differ by more than noise.

Timings on shared machines have heavy right tails (a preempted repeat, a page fault, a clock step),
so everything here is median- and rank-based: the median for the figure, the median absolute
deviation for its spread, order statistics for the confidence interval of the median, and the
Mann-Whitney rank test for a change. No distribution is assumed, and one wild repeat moves nothing.

This module is general: it knows nothing about devices or reports, only sequences of numbers, so
that other timing comparisons (behaviour probes' interleaved speed tests) can use the same rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# MAD x 1.4826 estimates the standard deviation of normally distributed data (Rousseeuw & Croux,
# "Alternatives to the median absolute deviation", JASA 1993).
MAD_TO_SIGMA = 1.4826
# A change smaller than this is never called a regression, however many repeats back it: run-to-run
# drift of clocks, thermals and other tenants is of this order even on a quiet accelerator.
MIN_EFFECT = 0.05
# ... and it must also exceed this many combined repeat-to-repeat spreads. The spread of the repeats
# stands in for run-to-run variation, which one run cannot measure; a noisy machine raises the bar.
NOISE_MULTIPLE = 2.0
# Significance level of the rank test. The two effect-size conditions above carry most of the
# protection against false alarms; the test adds that the repeats, not one or two outliers, moved.
# At 0.05 five repeats a side can reach it (the smallest two-sided p for 5 vs 5 is about 0.012).
ALPHA = 0.05


def median(xs: Sequence[float]) -> float:
    if not xs:
        raise ValueError("median of an empty sequence")
    s = sorted(xs)
    n = len(s)
    mid = n // 2
    return float(s[mid]) if n % 2 else (s[mid - 1] + s[mid]) / 2.0


def mad(xs: Sequence[float]) -> float:
    """Median absolute deviation from the median (unscaled)."""
    m = median(xs)
    return median([abs(x - m) for x in xs])


def relative_spread(xs: Sequence[float]) -> float:
    """Robust coefficient of variation: 1.4826 * MAD / |median|; 0 for fewer than two values.

    This is the figure's noise: the typical relative distance of one repeat from the median.
    """
    if len(xs) < 2:
        return 0.0
    m = median(xs)
    return MAD_TO_SIGMA * mad(xs) / abs(m) if m else math.inf


def _binom_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n


def median_ci(xs: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median from order statistics.

    The interval [x_(j), x_(n-j+1)] covers the true median with probability 1 - 2 P(B <= j-1),
    B ~ Binomial(n, 1/2); j is the largest rank that keeps that probability >= `confidence`. With
    too few repeats for the requested confidence the interval is the whole range.
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

    Normal approximation with tie correction and continuity correction (Lehmann, Nonparametrics,
    1975, ch. 1); adequate from about five values per side. Returns 1.0 when either side is empty or
    every value is tied.
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


@dataclass(frozen=True)
class Change:
    """How a candidate figure compares with a baseline."""

    ratio: float  # candidate median / baseline median
    threshold: float  # relative change needed to leave the noise
    p_value: float | None  # rank test on the repeats; None when repeats were not available
    verdict: str  # "regression", "improvement" or "within noise"

    @property
    def significant(self) -> bool:
        return self.verdict != "within noise"


def noise_threshold(spread_a: float, spread_b: float, min_effect: float = MIN_EFFECT) -> float:
    return max(min_effect, NOISE_MULTIPLE * math.hypot(spread_a, spread_b))


def compare(
    baseline: Sequence[float],
    candidate: Sequence[float],
    higher_is_better: bool = True,
    *,
    min_effect: float = MIN_EFFECT,
    alpha: float = ALPHA,
) -> Change:
    """Is `candidate` worse (a regression) or better than `baseline`, beyond noise?

    Three conditions, all required: the medians differ by more than `min_effect`; by more than
    NOISE_MULTIPLE combined spreads; and, when both sides have at least two repeats, the rank test
    rejects "same distribution" at `alpha`. A single value per side (a summary without its repeats)
    is judged on the first two alone, with the spreads given by `compare_summaries`.
    """
    ratio = median(candidate) / median(baseline)
    threshold = noise_threshold(relative_spread(baseline), relative_spread(candidate), min_effect)
    p = mann_whitney(baseline, candidate) if min(len(baseline), len(candidate)) >= 2 else None
    return _judge(ratio, threshold, p, higher_is_better, alpha)


def compare_summaries(
    baseline: float, baseline_spread: float, candidate: float, candidate_spread: float,
    higher_is_better: bool = True, *, min_effect: float = MIN_EFFECT,
) -> Change:
    """`compare` for figures known only by value and relative spread."""
    return _judge(candidate / baseline, noise_threshold(baseline_spread, candidate_spread, min_effect), None,
                  higher_is_better, ALPHA)


def _judge(ratio: float, threshold: float, p: float | None, higher_is_better: bool, alpha: float) -> Change:
    better = ratio > 1 if higher_is_better else ratio < 1
    # Symmetric in log space: halving and doubling are equally large changes.
    beyond = abs(math.log(ratio)) > math.log1p(threshold) if ratio > 0 else True
    moved = beyond and (p is None or p < alpha)
    verdict = ("improvement" if better else "regression") if moved else "within noise"
    return Change(ratio=ratio, threshold=threshold, p_value=p, verdict=verdict)
