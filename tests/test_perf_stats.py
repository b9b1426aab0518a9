"""When a change between two runs is a regression rather than noise, and how figures and timings are
made (the statistics themselves: tests/test_stats.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

from chipaudit.perf import stats, timing
from chipaudit.perf.metrics import figure_key
from chipaudit.perf.timing import Figure, Timing


def test_a_real_slowdown_is_a_regression_and_a_speedup_an_improvement() -> None:
    rng = np.random.default_rng(4)
    before = list(rng.normal(100, 1, 15))
    after = list(rng.normal(80, 1, 15))
    change = stats.compare(before, after, higher_is_better=True)
    assert change.verdict == "regression" and change.significant
    assert change.ratio == pytest.approx(0.8, rel=0.02)
    assert stats.compare(after, before).verdict == "improvement"
    # For latencies lower is better: the same numbers read the other way round.
    assert stats.compare(before, after, higher_is_better=False).verdict == "improvement"


def test_small_changes_and_noisy_runs_are_within_noise() -> None:
    rng = np.random.default_rng(5)
    before = list(rng.normal(100, 0.5, 30))
    # 3 % slower, highly significant by the rank test, but below the minimum effect: run-to-run drift.
    assert stats.compare(before, list(rng.normal(97, 0.5, 30))).verdict == "within noise"
    # 20 % slower but with 15 % spread on each side: the bar rises to 2 x hypot(0.15, 0.15) = 42 %.
    noisy_a = list(rng.normal(100, 15, 30))
    noisy_b = list(rng.normal(80, 12, 30))
    change = stats.compare(noisy_a, noisy_b)
    assert change.threshold > 0.3
    assert change.verdict == "within noise"


def test_no_false_alarms_between_runs_of_one_noisy_device() -> None:
    """A busy shared machine: heavy-tailed timings (lognormal, 10 % spread, occasional 3x stalls).
    Two runs of the same device must practically never be called a regression."""
    rng = np.random.default_rng(6)

    def run() -> list[float]:
        x = rng.lognormal(0, 0.1, 15)
        x[rng.random(15) < 0.1] *= 3
        return list(1 / x)  # throughputs

    alarms = sum(stats.compare(run(), run()).verdict == "regression" for _ in range(500))
    assert alarms <= 2


def test_compare_summaries_uses_the_recorded_noise() -> None:
    assert stats.compare_summaries(100, 0.01, 70, 0.01).verdict == "regression"
    assert stats.compare_summaries(100, 0.2, 70, 0.2).verdict == "within noise"
    assert stats.compare_summaries(10, 0.01, 5, 0.01, higher_is_better=False).verdict == "improvement"


def test_figures_carry_median_noise_and_samples() -> None:
    measured = Timing(seconds=[0.5, 0.25, 0.5, 1.0, 0.5], inner=1, warmup=2, clock="host clock")
    fig = Figure.throughput("gemm.fp32.tflops", "TFLOP/s", 2.0, measured, details={"shape": [8, 8, 8]})
    assert fig.value == 4.0
    assert sorted(fig.samples) == [2.0, 4.0, 4.0, 4.0, 8.0]
    assert fig.ci95[0] <= fig.value <= fig.ci95[1]
    assert fig.noise == pytest.approx(0.0)  # MAD of [2,4,4,4,8] around 4 is 0
    fig.rate_against(8.0, "a datasheet")
    data = fig.to_dict()
    assert data["efficiency"] == 0.5 and data["rated"] == 8.0 and data["repeats"] == 5
    assert data["details"]["clock"] == "host clock"
    latency = Figure.latency("launch.latency_us", 1e6, "us", measured)
    assert latency.value == 500000.0 and latency.better == "lower"


def test_figure_keys_identify_what_was_measured() -> None:
    assert figure_key({"metric": "gemm.bf16.tflops"}) == "gemm.bf16.tflops"
    key = figure_key({"metric": "llm_decode.tokens_per_s", "params": {"model": "m", "batch": 8}})
    assert key == "llm_decode.tokens_per_s[batch=8,model=m]"


def test_rotation_covers_large_caches_within_bounds() -> None:
    assert timing.rotation(1, "cuda:0") == timing.MAX_ROTATION
    assert timing.rotation(2**30, "cuda:0") == timing.MIN_ROTATION
    assert timing.rotation(64 * 2**20, "cuda:0") == 8  # 512 MiB: twice MI300X's 256 MB Infinity Cache
    # On a CPU, twice its own last-level cache: every rotation holds more than the cache.
    count = timing.rotation(2**20, "cpu")
    assert count * 2**20 >= min(timing.cpu_rotation_bytes(), timing.MAX_ROTATION * 2**20)
    assert timing.cpu_rotation_bytes() >= 2 * 2**20


def test_measure_warms_up_repeats_and_rotates() -> None:
    seen: list[int] = []
    measured = timing.measure(lambda i: seen.append(i), "cpu", budget_s=0.05, min_repeats=5, max_repeats=8)
    assert 5 <= len(measured.seconds) <= 8
    assert measured.warmup >= timing.WARMUP_CALLS
    assert seen == list(range(len(seen)))  # every call gets the next index, for rotating inputs
    assert len(seen) == measured.warmup + measured.inner * len(measured.seconds)
    assert all(s > 0 for s in measured.seconds)
    assert measured.clock == "host clock"


def test_fastest_warms_up_then_keeps_the_fastest_call() -> None:
    delays = iter([0.05, 0.02, 0.005, 0.03])  # the first call warms up and is not counted
    calls = []

    def op() -> None:
        calls.append(1)
        time.sleep(next(delays))

    seconds = timing.fastest(op, "cpu", tries=3)
    assert len(calls) == 4
    assert 0.005 <= seconds < 0.02


def cubic(seconds_at_1024: float) -> Callable[[int], float]:
    return lambda n: seconds_at_1024 * (n / 1024) ** 3


def test_the_ladder_stops_before_a_size_predicted_over_the_cap() -> None:
    ladder = timing.Ladder(sizes=(256, 512, 1024, 2048, 4096), cap_s=0.5)
    climb = ladder.climb(cubic(0.1))
    assert (climb.size, climb.notes, climb.error) == (1024, [], None)  # 2048 would take 0.8 s
    # With slack the next size is tried, and its measured time decides when over-cap sizes are refused.
    assert timing.Ladder((256, 512, 1024, 2048), 0.5, slack=2.0).climb(cubic(0.1)).size == 2048
    assert timing.Ladder((256, 512, 1024, 2048), 0.5, slack=2.0, keep_over_cap=False).climb(cubic(0.1)).size == 1024


def test_below_cubic_from_the_ladder_grows_while_the_last_product_is_affordable() -> None:
    # Overhead-dominated small sizes: 10 ms whatever the size. Predicted cubically, 256 would take
    # 80 ms and be refused at a 50 ms cap; measured, every size up to 1024 is affordable.
    flat = lambda n: 0.01 if n < 1024 else cubic(0.03)(n)  # noqa: E731
    assert timing.Ladder((128, 256, 512, 1024, 2048), 0.05).climb(flat).size == 128
    assert timing.Ladder((128, 256, 512, 1024, 2048), 0.05, cubic_from=1024).climb(flat).size == 1024


def test_the_ladder_stops_on_memory_and_on_expected_errors_and_says_why() -> None:
    ladder = timing.Ladder((256, 512, 1024), cap_s=10.0)
    climb = ladder.climb(cubic(0.01), fits=lambda n: "too large" if n > 256 else None)
    assert (climb.size, climb.notes) == (256, ["n=512: too large"])

    def refuses(n: int) -> float:
        if n > 256:
            raise RuntimeError("no kernel")
        return 0.001

    climb = ladder.climb(refuses, errors=(RuntimeError,), describe=lambda e: f"refused: {e}")
    assert (climb.size, climb.notes) == (256, ["n=512: refused: no kernel"])
    assert isinstance(climb.error, RuntimeError)
    with pytest.raises(ValueError):
        ladder.climb(lambda n: (_ for _ in ()).throw(ValueError("unexpected")), errors=(RuntimeError,))


def test_measure_spreads_its_blocks_over_the_whole_budget() -> None:
    """Fast calls fill the budget with longer repeats rather than ending early, and every block
    gets repeats: the blocks span the figure's whole budget, not its first moments."""
    t0 = time.perf_counter()
    measured = timing.measure(lambda i: time.sleep(1e-4), "cpu", budget_s=0.6)
    elapsed = time.perf_counter() - t0
    assert 0.5 <= elapsed < 1.5
    assert len(measured.seconds) <= timing.MAX_REPEATS and measured.inner > 1
    assert measured.blocks == sorted(measured.blocks) and set(measured.blocks) == set(range(timing.BLOCKS))


def test_a_preempted_warm_up_call_does_not_size_the_repeats() -> None:
    slow = {3}  # one warm-up call stalls 50 ms; the rest take about 0.2 ms

    def op(i: int) -> None:
        time.sleep(0.05 if i in slow else 2e-4)

    measured = timing.measure(op, "cpu", budget_s=0.2, min_repeat_s=5e-3)
    # Sized from the median warm call (5 ms of 0.2 ms calls: about 20 per repeat), not from the
    # stall (which would make it one).
    assert measured.inner >= 10


def test_figures_record_the_drift_between_blocks_beside_the_repeats_spread() -> None:
    # Five blocks of six repeats: tight within each block, the blocks apart by up to 10 %.
    levels = [100.0, 110.0, 95.0, 105.0, 90.0]
    values = [level * (1 + 0.001 * k) for level in levels for k in range(6)]
    blocks = [b for b in range(5) for _ in range(6)]
    fig = Figure.from_values("gemm.fp32.tflops", "TFLOP/s", values, blocks=blocks)
    assert fig.block_values == pytest.approx([100.25, 110.275, 95.2375, 105.2625, 90.225], rel=1e-4)
    assert fig.block_noise == pytest.approx(0.07, abs=0.01)
    assert fig.noise == max(fig.block_noise, fig.repeat_noise)
    data = fig.to_dict()
    assert data["block_values"] == fig.block_values and data["repeat_noise"] == fig.repeat_noise
    # One block: nothing to tell blocks apart by; the noise is the repeats'.
    single = Figure.from_values("gemm.fp32.tflops", "TFLOP/s", values)
    assert single.block_noise is None and single.noise == single.repeat_noise and "block_values" not in single.to_dict()


def test_the_rank_test_counts_blocks_not_the_repeats_inside_them() -> None:
    """Thirty repeats a side that differ by 6 % are 'significant' by rank, but the five blocks of
    each run overlap: the drift between blocks, not a change of the device."""
    a_blocks, b_blocks = [100.0, 108.0, 96.0, 104.0, 99.0], [94.0, 101.0, 90.0, 97.0, 93.0]
    a = [x + 0.01 * k for x in a_blocks for k in range(6)]
    b = [x + 0.01 * k for x in b_blocks for k in range(6)]
    assert stats.compare(a, b, noises=(0.01, 0.01)).verdict == "regression"  # the repeats alone
    blocks = stats.compare(a_blocks, b_blocks, noises=(0.01, 0.01))
    assert blocks.ratio == pytest.approx(0.94) and blocks.p_value is not None and blocks.p_value > stats.ALPHA
    assert blocks.verdict == "within noise"


def test_a_figure_measured_in_passes_carries_the_spread_between_the_passes() -> None:
    """Issue 14: each pass's blocks agree within 1 %, the passes (separate processes) do not; the merged
    figure's value comes from every repeat, its noise is at least the range of the passes' values."""
    blocks = [b for b in range(5) for _ in range(4)]
    passes = [Figure.from_values("launch.latency_us", "us", [level * (1 + 0.002 * (k % 5)) for k in range(20)],
                                 "lower", blocks=blocks).to_dict() for level in (2.6, 4.5, 2.7)]
    merged = Figure.from_passes(passes)
    assert merged.pass_values == pytest.approx([2.6 * 1.004, 4.5 * 1.004, 2.7 * 1.004], rel=1e-4)
    assert merged.pass_noise == pytest.approx((4.5 - 2.6) / 2.7, rel=1e-3)
    assert max(merged.repeat_noise, merged.block_noise or 0) < merged.pass_noise == merged.noise
    assert len(merged.samples) == 60 and len(merged.block_values) == 3 * timing.BLOCKS
    assert merged.value == pytest.approx(2.705, rel=1e-2) and merged.better == "lower"
    data = merged.to_dict()
    assert data["pass_values"] == merged.pass_values and data["pass_noise"] == merged.pass_noise
    assert "pass_noise" not in Figure.from_values("launch.latency_us", "us", [1.0, 1.1]).to_dict()
