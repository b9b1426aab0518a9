"""Each operator's host oracle on seeded inputs: its reference agrees with float64 torch, honest CPU
results pass, corrupted ones fail, and the special-value rules hold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chipaudit.checks.base import CheckContext
from chipaudit.checks.integrity import operators as checks
from chipaudit.oracle import ieee
from chipaudit.oracle import operators as ref
from chipaudit.oracle.formats import FORMATS
from chipaudit.oracle.ieee import Rule
from chipaudit.report.model import Level, Severity

FP32, FP16, BF16 = FORMATS["fp32"], FORMATS["fp16"], FORMATS["bf16"]
_TORCH = {"exp": torch.exp, "log": torch.log, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": F.gelu,
          "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


def device_result(fn, fmt, *arrays: np.ndarray) -> np.ndarray:
    tensors = [fmt.host_buffer(x).to(fmt.torch_dtype) for x in arrays]
    return fn(*tensors).to(torch.float64).numpy()


def corrupt(x: np.ndarray, relative: float = 1e-2) -> np.ndarray:
    y = x.copy()
    flat = y.reshape(-1)
    i = int(np.flatnonzero(np.isfinite(flat) & (np.abs(flat) > 1e-3))[0])
    flat[i] *= 1 + relative
    return y


@pytest.mark.parametrize("name", list(ref.ELEMENTWISE))
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_elementwise_reference_honest_and_corrupted(name: str, dtype: str) -> None:
    fmt = FORMATS[dtype]
    rng = np.random.default_rng(3)
    x = fmt.quantize(rng.standard_normal(4096) * 3 + (4.0 if name == "log" else 0.0))
    x = np.abs(x) + 0.01 if name == "log" else x
    x = fmt.quantize(x)
    exp = ref.elementwise_expectation(ref.ELEMENTWISE[name], x, fmt)
    truth = _TORCH[name](torch.from_numpy(x)).numpy()
    # float64 torch forms 1 + erf(x/sqrt 2), which cancels for x << 0: allow it 1e-15*|x| there.
    assert np.all(np.abs(exp.value - truth) <= 1e-12 * np.abs(truth) + 1e-15 * np.abs(x))
    observed = device_result(_TORCH[name], fmt, x)
    assert ieee.judge(observed, exp, name).ok
    assert not ieee.judge(corrupt(observed), exp, name).ok


def test_elementwise_special_values() -> None:
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1.0, -1.0, 100.0])
    e = ref.elementwise_expectation(ref.ELEMENTWISE["exp"], x, FP32)
    assert [Rule(int(r)).name for r in e.rule] == ["pos_inf", "finite", "nan", "finite", "finite", "finite",
                                                    "finite", "pos_inf"]
    assert e.value[1] == 0.0 and e.bound[1] == 0.0 and e.value[3] == 1.0 and e.bound[3] == 0.0
    e = ref.elementwise_expectation(ref.ELEMENTWISE["log"], x, FP32)
    assert [Rule(int(r)).name for r in e.rule][:7] == ["pos_inf", "nan", "nan", "neg_inf", "neg_inf", "finite", "nan"]
    e = ref.elementwise_expectation(ref.ELEMENTWISE["tanh"], x, FP32)
    assert Rule(int(e.rule[4])) is Rule.exact_signed
    assert not ieee.judge(np.array([1, -1, np.nan, 0.0, 0.0, math.tanh(1), -math.tanh(1), 1.0]), e, "t").ok
    assert ieee.judge(np.array([1, -1, np.nan, 0.0, -0.0, math.tanh(1), -math.tanh(1), 1.0]), e, "t").ok
    e = ref.elementwise_expectation(ref.ELEMENTWISE["gelu"], x, FP32)
    assert Rule(int(e.rule[0])) is Rule.nonfinite and Rule(int(e.rule[1])) is Rule.either


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_softmax_layer_norm_rms_norm_reference(dtype: str) -> None:
    fmt = FORMATS[dtype]
    rng = np.random.default_rng(5)
    x = fmt.quantize(rng.standard_normal((16, 500)) * 2)
    w, b = fmt.quantize(1 + 0.1 * rng.standard_normal(500)), fmt.quantize(0.1 * rng.standard_normal(500))
    cases = [
        (ref.softmax_expectation(x, fmt, False), lambda t: torch.softmax(t, -1), (x,)),
        (ref.layer_norm_expectation(x, w, b, 1e-5, fmt, False),
         lambda t, tw, tb: F.layer_norm(t, (500,), tw, tb, 1e-5), (x, w, b)),
        (ref.rms_norm_expectation(x, w, 1e-6, fmt, False), lambda t, tw: F.rms_norm(t, (500,), tw, 1e-6), (x, w)),
    ]
    for exp, fn, arrays in cases:
        truth = fn(*(torch.from_numpy(a) for a in arrays)).numpy()
        assert np.allclose(exp.value, truth, rtol=1e-10, atol=1e-12)
        observed = device_result(fn, fmt, *arrays)
        assert ieee.judge(observed, exp, "t").ok
        assert not ieee.judge(corrupt(observed, 0.05), exp, "t").ok


def test_softmax_and_norm_special_rows() -> None:
    x = np.array([[1.0, 2.0, 3.0], [1.0, np.nan, 3.0], [1.0, -np.inf, 3.0], [-np.inf] * 3, [np.inf, 0.0, 1.0]])
    e = ref.softmax_expectation(x, FP32, True)
    assert (e.rule[1] == Rule.nan).all()
    assert e.rule[2, 1] == Rule.finite and e.value[2, 1] == 0.0 and e.bound[2, 1] == 0.0
    assert (e.rule[3] == Rule.either).all() and (e.rule[4] == Rule.either).all()
    assert ieee.judge(torch.softmax(torch.from_numpy(x).float(), -1).double().numpy(), e, "t").ok
    e = ref.layer_norm_expectation(np.array([[0.75] * 8, [1.0] * 7 + [np.inf]]), np.ones(8), np.zeros(8), 1e-5,
                                   FP32, True)
    assert e.value[0].tolist() == [0.0] * 8 and (e.rule[1] == Rule.nonfinite).all()


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_reductions_known_answers(dtype: str) -> None:
    fmt = FORMATS[dtype]
    x = fmt.quantize(np.stack([np.arange(200) % 16, np.where(np.arange(200) % 2, -1.0, 1.0), np.full(200, 0.5)]))
    # 1468 has 9 significant bits: exact in fp32 and fp16, rounded in bf16.
    exp = ref.sum_expectation(x, fmt, "worst" if dtype == "bf16" else "exact")
    assert exp.value.tolist() == [float((np.arange(200) % 16).sum()), 0.0, 100.0]
    assert ieee.judge(device_result(lambda t: t.sum(-1), fmt, x), exp, "t").ok
    # bf16's worst case allows a pairwise tree of 8 bf16 roundings (3% of sum|x|): 5% is wrong everywhere.
    assert not ieee.judge(device_result(lambda t: t.sum(-1), fmt, x) + np.array([0, 0, 5]), exp, "t").ok
    mean = ref.sum_expectation(x, fmt, "worst", mean=True)
    assert ieee.judge(device_result(lambda t: t.mean(-1), fmt, x), mean, "t").ok
    specials = np.array([[np.inf, -np.inf, 1.0], [np.nan, 1.0, 2.0], [np.inf, 1.0, 2.0], [-0.0, -0.0, -0.0]])
    s = ref.sum_expectation(specials, fmt, "worst")
    assert [Rule(int(r)).name for r in s.rule] == ["nan", "nan", "pos_inf", "finite"]
    m = ref.max_expectation(specials)
    assert [Rule(int(r)).name for r in m.rule] == ["pos_inf", "nan", "pos_inf", "finite"]
    assert ieee.judge(device_result(lambda t: torch.amax(t, -1), fmt, specials), m, "t").ok


@pytest.mark.parametrize("case", checks.CONV_CASES, ids=lambda c: c.label)
def test_conv2d_im2col_matches_float64_convolution(case: checks.ConvCase) -> None:
    rng = np.random.default_rng(11)
    conv = case.conv
    x = rng.standard_normal((case.n, case.c, case.hw, case.hw))
    w = rng.standard_normal((case.o, case.c // conv.groups, case.kernel, case.kernel))
    bias = rng.standard_normal(case.o) if case.bias else None
    cols, weights = ref.im2col(x, w, bias, conv)
    y = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), None if bias is None else torch.from_numpy(bias),
                 stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups).numpy()
    assert np.allclose(cols @ weights, ref.conv_output_as_product(y, conv.groups), rtol=1e-10, atol=1e-10)


def test_conv2d_nan_pixel_reaches_its_receptive_field() -> None:
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 2, 2] = np.nan
    w = np.ones((1, 1, 3, 3))
    cols, weights = ref.im2col(x, w, None, ref.Conv(padding=1))
    exp = ref.conv_expectation(cols, weights, FP32, "worst")
    nan = (exp.rule == Rule.nan).reshape(5, 5)
    assert nan[1:4, 1:4].all() and nan.sum() == 9


@pytest.mark.parametrize("fmt", [FP16, BF16], ids=lambda f: f.name)
def test_half_precision_conv2d_may_round_its_partial_results(fmt) -> None:
    """cuDNN on an H200 rounds the convolution to the output format before adding the bias in a second
    kernel: honest, and accepted. A result off by a few percent of the products' spread is not."""
    case = checks.CONV_CASES[0]
    rng = np.random.default_rng(5)
    x = fmt.quantize(rng.standard_normal((case.n, case.c, case.hw, case.hw)))
    w = fmt.quantize(rng.standard_normal((case.o, case.c, case.kernel, case.kernel)) / case.kernel)
    bias = fmt.quantize(rng.standard_normal(case.o))
    cols, weights = ref.im2col(x, w, bias, case.conv)
    exp = ref.conv_expectation(cols, weights, fmt, "random")
    staged = fmt.quantize(fmt.quantize(cols[..., :-1] @ weights[:, :-1]) + weights[:, -1:])
    assert ieee.judge(staged, exp, "t").ok
    assert not ieee.judge(staged + 0.05 * np.sqrt((cols * cols) @ (weights * weights)), exp, "t").ok
    fp32 = ref.conv_expectation(cols, weights, FP32, "random")
    assert not ieee.judge(FP32.quantize(staged), fp32, "t").ok  # fp32 accumulates in fp32: no staging


def test_attention_rows_with_no_visible_key_accept_any_implementations_fill() -> None:
    """0/0: NaN, zero, the mean of the values or the unmasked attention (an H200's answer) are honest;
    a value outside the values' range is not."""
    rng = np.random.default_rng(3)
    q, k, v = (FP16.quantize(rng.standard_normal((1, 1, 4, 8))) for _ in range(3))
    bias = np.zeros((4, 4))
    bias[0] = -np.inf
    exp = ref.attention_expectation(q, k, v, bias, 1 / math.sqrt(8), FP16)
    unmasked = _sdpa64(q, k, v, np.zeros((4, 4)))
    for fill in (np.full(8, np.nan), np.zeros(8), v[0, 0].mean(axis=0), unmasked[0, 0, 0]):
        observed = exp.value.copy()
        observed[0, 0, 0] = fill
        assert ieee.judge(observed, exp, "t").ok
    observed[0, 0, 0, 3] = np.abs(v).max() + 1.0
    assert not ieee.judge(observed, exp, "t").ok


def _sdpa64(q, k, v, bias) -> np.ndarray:
    mask = torch.from_numpy(bias)
    return F.scaled_dot_product_attention(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v),
                                          attn_mask=mask).numpy()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_attention_reference_and_rules(dtype: str) -> None:
    fmt = FORMATS[dtype]
    rng = np.random.default_rng(2)
    q, k, v = (fmt.quantize(rng.standard_normal((1, 2, 16, 32))) for _ in range(3))
    bias = np.zeros((16, 16))
    bias[np.triu(np.ones((16, 16), dtype=bool), 1)] = -np.inf
    exp = ref.attention_expectation(q, k, v, bias, 1 / math.sqrt(32), fmt)
    assert np.allclose(exp.value, _sdpa64(q, k, v, bias), rtol=1e-10, atol=1e-12)
    observed = device_result(lambda *t: F.scaled_dot_product_attention(*t, is_causal=True), fmt, q, k, v)
    assert ieee.judge(observed, exp, "t").ok
    assert not ieee.judge(corrupt(observed, 0.05), exp, "t").ok
    q2 = q.copy()
    q2[0, 0, 3, 0] = np.nan
    v2 = v.copy()
    v2[0, 1, 0, 5] = np.nan  # key 0 is visible to every query under the causal mask
    exp = ref.attention_expectation(q2, k, v2, bias, 1 / math.sqrt(32), fmt)
    assert (exp.rule[0, 0, 3] == Rule.nan).all() and (exp.rule[0, 1, :, 5] == Rule.nan).all()
    assert (exp.rule[0, 0, 2] == Rule.finite).all()


def test_conversion_oracle_is_exact_round_to_nearest_even() -> None:
    check = checks.ConvertCheck()
    rng = np.random.default_rng(0)
    for src, dst in check.PAIRS:
        case = check._builder(src, dst)(rng, FP32)
        observed = case.run("cpu").to(torch.float64).numpy()
        assert ieee.judge_flushing(observed, case.expectation, case.ftz, case.op)[0].ok, (src, dst)
    # Truncating instead of rounding to nearest even is caught.
    x = np.float32(1.0) + np.float32(2.0**-8) * np.arange(1, 256, dtype=np.float32)
    expected = checks._exact(BF16.quantize(x.astype(np.float64)))
    truncated = (x.view(np.uint32) & 0xFFFF0000).view(np.float32).astype(np.float64)
    assert not ieee.judge(truncated, expected, "t").ok
    assert ieee.judge(torch.from_numpy(x).to(torch.bfloat16).double().numpy(), expected, "t").ok


@pytest.mark.parametrize("check", checks.CHECKS, ids=lambda c: c.id)
def test_every_operator_check_passes_the_honest_cpu(check: checks.OperatorCheck) -> None:
    out = check.run(CheckContext(device="cpu", level=Level.quick, seed=99))
    assert not [f for f in out.findings if f.severity.rank >= Severity.medium.rank], out.findings
    assert out.coverage["cases"] > 0 and out.coverage["elements_checked"] > 0


def test_a_wrong_softmax_fails_its_check(monkeypatch: pytest.MonkeyPatch) -> None:
    honest = torch.softmax

    def wrong(x: torch.Tensor, dim: int) -> torch.Tensor:
        y = honest(x, dim)
        return torch.where(x == -torch.inf, torch.full_like(y, 1e-3), y)  # masked entries leak weight

    monkeypatch.setattr(torch, "softmax", wrong)
    out = checks.NormalizationCheck().run(CheckContext(device="cpu", level=Level.quick, seed=1))
    failed = [f for f in out.findings if f.severity is Severity.high]
    assert failed and all(f.evidence["op"] == "softmax" for f in failed)
    assert failed[0].evidence["reproduced"] == "3/3"


def test_attention_covers_the_calls_models_make_and_a_wrong_one_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hugging Face's 4-D mask, a decode step with an explicit scale, grouped-query attention: each is
    judged, and an SDPA that errs only when called one of these ways is caught there and nowhere else."""
    honest = F.scaled_dot_product_attention
    labels = {c.label: c for c in checks.ATTENTION_CASES}
    assert {"padding", "causal", "bool", "additive"} <= {c.mask for c in labels.values()}
    assert any(c.q_len == 1 and c.scale for c in labels.values())
    assert any(c.kv_heads for c in labels.values()) == checks._GQA

    def wrong(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: object) -> torch.Tensor:
        out = honest(q, k, v, **kwargs)
        mask = kwargs.get("attn_mask")
        if "scale" in kwargs or kwargs.get("enable_gqa") or (isinstance(mask, torch.Tensor) and mask.dim() == 4):
            out = out.clone()
            out[-1, -1, -1, 0] += 0.05 * out[-1, -1, -1, 0].abs() + 0.05
        return out

    monkeypatch.setattr(F, "scaled_dot_product_attention", wrong)
    out = checks.AttentionCheck().run(CheckContext(device="cpu", level=Level.quick, seed=4))
    failed = {f.evidence["case"] for f in out.findings if f.severity is Severity.high}
    special = {c for c, case in labels.items() if case.mask == "padding" or case.scale or case.kv_heads}
    assert failed == {f"attention {c} ({corner})" for c in special for corner in ("random", "corners")}
