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

# A change smaller than this is never called a regression, however quiet both runs were: the floor
# under the measured noise. Run-to-run drift of clocks, thermals and other tenants is of this order
# even on a quiet accelerator, and a figure's noise, estimated from a few blocks of one run, can
# come out near zero by chance.
MIN_EFFECT = 0.05
# ... and it must also exceed this many combined noises. A figure's noise (perf/timing.py) is the
# larger of the spread between blocks of repeats spread over its budget (the drift from one part of
# a run to another, which stands in for the drift from one run to the next) and the spread of the
# repeats. Two runs' noises are independent and add in quadrature; 2 is the two-sided 95 % point of
# the normal distribution (1.96) rounded up, so a figure that moved by less than twice its
# combined noise has not shown that it moved at all.
NOISE_MULTIPLE = 2.0
# Significance level of the rank test, on the block medians where both runs have them (the blocks,
# not the repeats inside one block, are the independent observations), else on the repeats. The
# two effect-size conditions above carry most of the protection against false alarms; the test adds
# that the blocks, not one or two outliers, moved. At 0.05 five blocks a side can reach it, even
# with one block out of place (perf/timing.py BLOCKS).
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
    noises: tuple[float, float] | None = None,
    centres: tuple[float, float] | None = None,
    min_effect: float = MIN_EFFECT,
    alpha: float = ALPHA,
) -> Change:
    """Is `candidate` worse (a regression) or better than `baseline`, beyond noise?

    The values are each run's block medians (or its repeats, for a report made without blocks);
    `noises` are the two figures' recorded noises, else the values' own relative spreads; `centres`
    the two figures' recorded values (the median of all repeats, which with bimodal repeats can lie
    far from the median of the block medians), else the values' medians.
    Three conditions, all required: the medians differ by more than `min_effect`; by more than
    NOISE_MULTIPLE combined noises; and, when both sides have at least two values, the rank test
    rejects "same distribution" at `alpha`. A single value per side (a summary without its repeats)
    is judged on the first two alone (`compare_summaries`).
    """
    base, cand = centres if centres is not None else (median(baseline), median(candidate))
    ratio = cand / base
    spread_a, spread_b = noises if noises is not None else (relative_spread(baseline), relative_spread(candidate))
    threshold = noise_threshold(spread_a, spread_b, min_effect)
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
