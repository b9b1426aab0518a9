"""Operands with the statistics of real models: each distribution has the statistics it claims, and
honest products of every realistic pair stay within the oracle's bound in every format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chipaudit.checks.integrity.gemm import REALISTIC_CASES, Case, GemmCheck, compute, draw_operands, verify_result
from chipaudit.checks.integrity.operands import (
    FP8_MAX,
    INT8_MAX,
    OUTLIER_FACTOR,
    PAIRS,
    REALISTIC,
    TRAINED_WEIGHT_STD,
    draw_pair,
    encode,
    outlier_channels,
)
from chipaudit.devices import torchdev
from chipaudit.oracle import matmul as oracle
from chipaudit.oracle.formats import FORMATS
from chipaudit.report.model import Level


def values(name: str, shape: tuple[int, ...], seed: int = 0, axis: int = -1) -> np.ndarray:
    return REALISTIC[name].values(np.random.default_rng(seed), shape, axis)


@pytest.mark.parametrize(("name", "std"), [("trained_weights", TRAINED_WEIGHT_STD), ("fan_in_weights", 1 / 32)])
def test_weights_have_zero_mean_and_their_standard_deviation(name: str, std: float) -> None:
    w = values(name, (512, 1024))  # (out, in): fan-in 1024
    assert abs(w.mean()) < 5 * std / np.sqrt(w.size)
    assert w.std() == pytest.approx(std, rel=0.01)


def test_outlier_activations_have_a_few_channels_10_to_100_times_larger() -> None:
    counts, factors = [], []
    for seed in range(40):
        x = values("outlier_activations", (64, 768), seed)
        rms = np.sqrt((x * x).mean(axis=0))
        typical = np.median(rms)
        big = np.flatnonzero(rms > 5 * typical)
        assert 1 <= len(big) <= max(1, 768 // 128), seed  # a handful, a small share of the features
        ratio = rms[big] / typical
        assert ratio.min() > OUTLIER_FACTOR[0] * 0.7 and ratio.max() < OUTLIER_FACTOR[1] * 1.3
        assert np.allclose(np.sqrt((np.delete(x, big, axis=1) ** 2).mean()), 1.0, rtol=0.05)
        counts.append(len(big))
        factors += list(ratio)
    # Magnitudes spread over the decade, so that triggers at 10x, 20x and 50x all meet some.
    assert np.mean(np.array(factors) > 50) > 0.25 and np.mean(np.array(factors) < 20) > 0.15
    assert len(set(counts)) > 1


def test_outlier_channels_are_the_same_in_every_row_and_batch() -> None:
    x = values("outlier_activations", (4, 16, 256))
    rms = np.sqrt((x * x).mean(axis=1))  # per batch, per channel
    tops = [set(np.flatnonzero(r > 5 * np.median(r))) for r in rms]
    assert tops[0] and all(t == tops[0] for t in tops)
    channels, factors = outlier_channels(np.random.default_rng(1), 4096)
    assert 4 <= len(channels) <= 8 and np.all((factors >= 10) & (factors <= 100))


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_probabilities_are_peaked_rows_summing_to_one(causal: bool) -> None:
    name = "causal_softmax_probabilities" if causal else "softmax_probabilities"
    for seed in range(5):
        p = values(name, (64, 128), seed)
        assert (p >= 0).all() and np.allclose(p.sum(axis=-1), 1.0, atol=1e-12)
        assert np.median(p.max(axis=-1)) > 10 / 128  # far from uniform rows
        if causal:  # query i sees keys up to 64 + i: the last query sees all 128
            visible = np.arange(128)[None, :] <= np.arange(64)[:, None] + 64
            assert (p[~visible] == 0).all() and (p[visible] > 0).all()
        else:
            assert (p > 0).all()


def test_normalised_activations_have_rows_of_zero_mean_and_unit_variance() -> None:
    x = values("normalised_activations", (32, 1024))
    assert np.abs(x.mean(axis=-1)).max() < 0.02
    assert np.allclose(x.std(axis=-1), 1.0, atol=0.03)
    assert not np.allclose(x.std(axis=0), x.std(axis=0).mean(), rtol=0.01)  # a gain per feature


@pytest.mark.parametrize(("name", "grid"), [("int8_weights", "int8"), ("fp8_weights", "fp8_e4m3")])
def test_quantised_weights_are_codes_times_a_per_channel_fp16_scale(name: str, grid: str) -> None:
    w = values(name, (64, 512))
    top = INT8_MAX if grid == "int8" else FP8_MAX
    scales = np.abs(w).max(axis=-1, keepdims=True) / top
    assert len(np.unique(scales)) > 32  # one scale per output channel
    codes = encode(w, FORMATS[grid])  # as an int8 / fp8 kernel is given them: the codes
    assert np.abs(codes).max() == top
    assert np.array_equal(FORMATS[grid].quantize(codes), codes)
    # The dequantised values are codes times an fp16 scale, exactly.
    per_row = w / np.where(codes == 0, np.inf, codes)
    for row, c in zip(per_row, codes, strict=True):
        scale = np.unique(row[c != 0])
        assert len(scale) == 1 and FORMATS["fp16"].quantize(scale) == scale
    # The int8 kernel's operands are the integers themselves.
    if grid == "int8":
        assert codes.dtype == np.int64 and np.abs(codes).max() <= 127


def test_every_pair_is_drawn_on_the_formats_grid() -> None:
    for name in PAIRS:
        for fmt_name in ("fp32", "fp16", "bf16", "fp64", "fp8_e4m3", "int8"):
            fmt = FORMATS[fmt_name]
            a, b, bias = draw_pair(np.random.default_rng(3), name, (1, 32, 256), (1, 256, 128), fmt, bias=128)
            assert a.shape == (1, 32, 256) and b.shape == (1, 256, 128) and b.flags.c_contiguous
            for x in (a, b, bias):
                assert np.array_equal(fmt.quantize(x), x), (name, fmt_name)


def test_a_weight_used_as_b_has_its_output_channels_in_columns_and_its_features_down_them() -> None:
    """B = W^T: fan-in and per-channel scales run along B's inner axis, one output channel per column;
    normalised keys (Q K^T) are normalised down each column."""
    fp64 = FORMATS["fp64"]
    _, b, _ = draw_pair(np.random.default_rng(0), "int8_weights", (1, 8, 512), (1, 512, 64), fp64)
    scales = np.abs(b[0]).max(axis=0) / INT8_MAX
    assert np.array_equal(np.rint(b[0] / scales), b[0] / scales) and len(np.unique(scales)) > 32
    _, b, _ = draw_pair(np.random.default_rng(0), "normed_linear", (1, 8, 1024), (1, 1024, 512), fp64)
    assert b.std() == pytest.approx(1 / 32, rel=0.02)
    _, b, _ = draw_pair(np.random.default_rng(0), "attention_scores", (1, 8, 256), (1, 256, 64), fp64)
    assert np.abs(b[0].mean(axis=0)).max() < 0.02 and np.allclose(b[0].std(axis=0), 1.0, atol=0.05)


def test_fp16_operands_are_scaled_into_range() -> None:
    fmt = FORMATS["fp16"]
    a, b, _ = draw_pair(np.random.default_rng(0), "llm_outliers", (1, 16, 16384), (1, 16384, 64), fmt)
    worst = np.abs(a[0]) @ np.abs(b[0])
    assert worst.max() < fmt.max_finite / 8


FORMATS_ON_CPU = ("fp32", "fp64", "fp16", "bf16", "fp8_e4m3", "int8")


@pytest.mark.parametrize("fmt_name", FORMATS_ON_CPU)
def test_honest_products_of_every_pair_stay_within_the_bound(fmt_name: str) -> None:
    """No false alarms on real-model data: the bound scales with |a||b| whatever the statistics."""
    fmt = FORMATS[fmt_name]
    shapes = [("mm", 1, 32, 512, 256), ("mm", 1, 64, 128, 64), ("linear", 2, 16, 768, 768), ("bmm", 8, 64, 64, 64)]
    with torchdev.strict_precision():
        for name in PAIRS:
            for seed, shape in enumerate(shapes):
                if fmt_name in ("int8", "fp8_e4m3") and shape[0] != "mm":
                    continue
                case = Case(*shape, "unit")
                ops = draw_operands(case, fmt, np.random.default_rng([seed, 7]), name, exact=False)
                v = verify_result(ops, compute(fmt, case.op, ops.upload("cpu")), exact=False)
                assert v.ok and v.max_ratio < 1.0, (name, shape, v.worst)


@pytest.mark.parametrize("name", list(PAIRS))
def test_projection_rows_and_sequential_summation_pass_on_every_pair(name: str) -> None:
    fp32 = FORMATS["fp32"]
    for seed in range(3):
        a, b, _ = draw_pair(np.random.default_rng(seed), name, (1, 96, 640), (1, 640, 80), fp32)
        c = (torch.from_numpy(a[0].astype(np.float32)) @ torch.from_numpy(b[0].astype(np.float32))).numpy()
        projection, rows = oracle.verify_sampled(a, b, c[None].astype(np.float64), fp32)
        assert projection.ok and rows.ok, (name, seed)
        products = (a[0][:4, :, None] * b[0][None, :, :]).astype(np.float32)
        sequential = np.cumsum(products, axis=1, dtype=np.float32)[:, -1, :].astype(np.float64)
        assert oracle.verify_full(a[:, :4], b, sequential[None], fp32).ok, (name, seed)


def test_every_format_draws_realistic_pairs_at_quick_with_outliers_in_2d_linear_operands() -> None:
    for fmt_name in ("fp32", "fp64", "fp16", "bf16", "tf32", "fp8_e4m3", "int8"):
        cases = GemmCheck(fmt_name).cases(Level.quick)
        data = {c.data for c in cases if c.data}
        if fmt_name in ("fp8_e4m3", "int8"):  # mm only, aligned
            assert {"int8_weights", "fp8_weights", "causal_attention_values"} <= data, fmt_name
        else:
            assert set(PAIRS) <= data, fmt_name
        outliers = [c for c in cases if c.data in ("llm_outliers", "int8_weights")]
        assert any(c.op in ("mm", "linear") and c.k >= 64 and c.batch * c.m >= 4 for c in outliers), fmt_name
    assert all(c.data in PAIRS for c in REALISTIC_CASES)
