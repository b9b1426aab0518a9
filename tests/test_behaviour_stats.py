"""The speed rules on synthetic timings: a 2x change is caught through heavy noise, noise alone is
never flagged, and too few pairs never decide."""

from __future__ import annotations

import numpy as np
import pytest

from chipaudit.checks.behaviour import stats
from chipaudit.checks.behaviour.session import REQUESTS_PER_ARM


def noisy_pairs(rng: np.random.Generator, n: int, effect: float, tenants: float) -> list[float]:
    """Paired ratios measured as the harness does (the faster of two requests per side and round)
    on a busy machine: a small jitter on every request, and another tenant that takes the core in a
    share `tenants` of requests, stalling them 1.5x to 4x."""

    def side(scale: float) -> np.ndarray:
        shape = (n, REQUESTS_PER_ARM)
        stall = np.where(rng.random(shape) < tenants, rng.uniform(1.5, 4, shape), 1.0)
        return (0.03 * scale * rng.lognormal(0, 0.05, shape) * stall).min(axis=1)

    return list(side(effect) / side(1.0))


@pytest.mark.parametrize("seed", range(200))
def test_noise_alone_is_never_flagged(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for n in (8, 12, 16, 24):
        v = stats.paired(noisy_pairs(rng, n, 1.0, tenants=0.3))
        assert not v.flagged, (n, v)


@pytest.mark.parametrize("seed", range(50))
def test_a_twofold_slowdown_is_caught_through_the_noise(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    v = stats.paired(noisy_pairs(rng, 24, 2.0, tenants=0.3))
    assert v.flagged and v.ratio >= 1.5, v


def test_a_speed_up_is_flagged_only_two_sided() -> None:
    ratios = [0.5] * 10
    assert stats.paired(ratios).flagged
    assert not stats.paired(ratios, two_sided=False).flagged


def test_too_few_pairs_never_decide_but_ask_for_more() -> None:
    v = stats.paired([3.0] * (stats.MIN_PAIRS - 1))
    assert not v.flagged and v.undecided
    assert stats.paired([3.0] * stats.MIN_PAIRS).flagged


def test_a_small_real_difference_is_not_flagged() -> None:
    v = stats.paired([1.3] * 30)
    assert not v.flagged and v.undecided  # large enough to look at more closely, too small to flag


def test_unpaired_trend_needs_size_significance_and_enough_points() -> None:
    rng = np.random.default_rng(5)
    early = list(0.03 * rng.lognormal(0, 0.05, 12))
    assert stats.unpaired(early, [t * 2.5 for t in early], 1).flagged
    assert not stats.unpaired(early, early[::-1], 1).flagged
    assert not stats.unpaired(early[:3], [t * 3 for t in early[:3]], 1).flagged
