"""When has a performance figure changed between two runs, rather than moved within its noise?

The figures themselves (median, relative spread, confidence interval of the median) and the rank test
come from chipaudit/stats.py, shared with the behaviour probes and the fleet summary; this module
holds only the rules for calling a change a regression or an improvement, which are specific to
benchmark figures: a minimum effect, a noise multiple, and a significance level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from chipaudit.stats import mann_whitney, median, relative_spread

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
    """The two runs' noises are independent, so they add in quadrature."""
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
