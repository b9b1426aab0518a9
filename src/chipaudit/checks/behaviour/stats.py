"""When is a speed difference between two worlds real? Robust rules that a busy machine cannot fool.

Paired design: the two conditions run interleaved (A B A B, in a shuffled order within each
round), and each round gives one ratio of the two times. Slow drifts of the machine (another
tenant, a clock ramp) hit both members of a pair and cancel in the ratio. The figure is the median
ratio; its confidence interval comes from the sign test's order statistics (chipaudit/stats.py), which
assumes nothing about the noise. A difference is flagged only when it is both large (the median at
least SPEED_FLAG, issue #3's default) and significant (the whole 99% interval on the same side of 1).

Unpaired design (drift along a sustained run): early and late windows are compared by the ratio of
their medians, with a percentile-bootstrap interval from a seeded generator (reproducible) and the
Mann-Whitney test, and the same two conditions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from chipaudit import stats

SPEED_FLAG = 1.5
CONFIDENCE = 0.99
# The sign-test interval of the median reaches 99% coverage at 8 pairs ([min, max]: 1 - 2/2^8).
MIN_PAIRS = 8
# A median beyond this but not yet flagged earns more rounds before a verdict.
UNDECIDED = 1.25
# Percentile intervals need a thousand resamples or more (Efron & Tibshirani, An Introduction to the
# Bootstrap, 1993); at 2000 each tail of the 99% interval still rests on ten resamples.
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class SpeedVerdict:
    ratio: float  # condition / reference, per unit of work; > 1: slower under the condition
    low: float
    high: float
    pairs: int
    flagged: bool
    undecided: bool
    p_value: float | None = None

    def as_dict(self) -> dict[str, float | int | bool | None]:
        return {"ratio": round(self.ratio, 4), "ci99": [round(self.low, 4), round(self.high, 4)],
                "pairs": self.pairs, "flagged": self.flagged,
                **({"p_value": round(self.p_value, 6)} if self.p_value is not None else {})}


def _judge(ratio: float, low: float, high: float, n: int, two_sided: bool, enough: bool,
           p: float | None = None) -> SpeedVerdict:
    slower = ratio >= SPEED_FLAG and low > 1.0
    faster = two_sided and ratio <= 1 / SPEED_FLAG and high < 1.0
    flagged = enough and (slower or faster)
    leaning = ratio >= UNDECIDED or (two_sided and ratio <= 1 / UNDECIDED)
    return SpeedVerdict(ratio, low, high, n, flagged, not flagged and leaning, p)


def paired(ratios: Sequence[float], two_sided: bool = True) -> SpeedVerdict:
    """Verdict on per-round ratios condition/reference (already divided by the work ratio)."""
    if not ratios:
        return SpeedVerdict(math.nan, math.nan, math.nan, 0, False, True)
    logs = [math.log(r) for r in ratios]
    low, high = stats.median_ci(logs, CONFIDENCE)
    ratio = math.exp(stats.median(logs))
    return _judge(ratio, math.exp(low), math.exp(high), len(ratios), two_sided, len(ratios) >= MIN_PAIRS)


def unpaired(early: Sequence[float], late: Sequence[float], seed: int) -> SpeedVerdict:
    """Verdict on late / early times (> 1: slower late), one-sided: only a slowdown is drift."""
    if len(early) < 2 or len(late) < 2:
        return SpeedVerdict(math.nan, math.nan, math.nan, min(len(early), len(late)), False, True)
    low, high = stats.bootstrap_median_ratio(late, early, CONFIDENCE, BOOTSTRAP_RESAMPLES, seed)
    p = stats.mann_whitney(early, late)
    ratio = stats.median(late) / stats.median(early)
    pairs = min(len(early), len(late))
    verdict = _judge(ratio, low, high, pairs, False, pairs >= MIN_PAIRS // 2, p)
    if verdict.flagged and p >= 1 - CONFIDENCE:
        return SpeedVerdict(ratio, low, high, verdict.pairs, False, True, p)
    return verdict
