"""The other operators AI workloads run, checked against float64 NumPy on the host.

Threat: a device whose matrix products are right but whose other kernels are not: a transcendental
function with a corrupted table entry, a softmax or normalisation that drops a term, a reduction that
loses a block, a convolution or attention kernel that is wrong on some shapes, a dtype conversion that
rounds the wrong way, or a trojan keyed to any of them (NaN suppression, masked rows, padding).

Method: one check per family. Inputs are drawn on the host from the check's seed and rounded onto
the format's grid (fp32, fp16, bf16), run on the device, and every element of the result is judged
against a float64 NumPy reference with the documented per-operator tolerance and IEEE 754 special-value
rules (oracle/operators.py, oracle/ieee.py). Each family mixes iid random inputs (probabilistic bounds)
with corner inputs (deterministic bounds or exact answers): NaN, both infinities, signed zeros,
subnormals, values at the edges of the format's range, constant and zero rows, masked entries,
identity (delta) kernels, random bit patterns, and exhaustive bit patterns for 16-bit conversions.
A failing case is re-run to tell a reproducible fault from an intermittent one.

- integrity.ops.elementwise: exp, log, tanh, sigmoid, GELU (erf and tanh forms).
- integrity.ops.normalization: softmax, layer norm, RMS norm.
- integrity.ops.reduction: sum, mean and max over rows and over a whole tensor, with known answers.
- integrity.ops.conv2d: 2-D convolution (padding, stride, dilation, groups, depthwise, bias).
- integrity.ops.attention: scaled-dot-product attention as models call it: no mask, causal
  (is_causal), a boolean padding mask, an additive bias with -Inf (ALiBi-like), Hugging Face's 4-D
  per-sequence mask (causal and left padding, masked with the format's most negative value), a
  decode step (one query over a cache, explicit scale), and grouped-query attention (enable_gqa).
- integrity.ops.convert: conversions between fp64, fp32, fp16, bf16, int32 and int8.

Normalisation and reduction live in rowwise.py, the framework they all share in opcheck.py.

Pass: every element within its bound, exact where exact, and by its rule where special.
Fail (high): any element wrong; the device refusing (raising on) inputs of an operator it computes in
that format for other inputs; or refusing an operator in a format outright where the device declares
the format (devices/capability.py).
Fail (medium): an operator refused outright in a format only the torch backend's table implies.
Warning (low): an operator refused outright in a format nothing declares either way.
Not run: an operator or format the device (or its torch release) declares that it lacks is listed,
with that declaration, under "unsupported" in the coverage; the check is skipped only when it lacks
all of them.

Cannot see: errors below the tolerances (looser than a matrix product's: maths libraries differ by a
few units in the last place); operators and shapes not drawn here; gradual underflow of operator
results (flush-to-zero is accepted); a hang in an operator (the watchdog ends the check as an error).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from chipaudit.checks.integrity.corner import random_bits
from chipaudit.checks.integrity.opcheck import Builder, OpCase, OperatorCheck, mixed, special_values, upload
from chipaudit.checks.integrity.rowwise import NormalizationCheck, ReductionCheck
from chipaudit.oracle import ieee
from chipaudit.oracle import operators as ref
from chipaudit.oracle.formats import FORMATS, NumberFormat
from chipaudit.oracle.ieee import Expectation, Rule
from chipaudit.report.model import Level

# Elements per elementwise operator and format, per level.
ELEMENTWISE_SIZE = {Level.quick: 1 << 14, Level.standard: 1 << 17, Level.deep: 1 << 20}


# ----- elementwise -----

def _elementwise_domain(
    name: str, rng: np.random.Generator, fmt: NumberFormat, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(random inputs, inputs at the edges that matter for this function)."""
    log_top = math.log(fmt.max_finite)
    log_tiny = math.log(ieee.smallest_normal(fmt))
    if name == "exp":
        x = rng.uniform(log_tiny, log_top, n // 2)
        edges = [log_top - 0.5, log_top - 0.01, log_top + 0.01, log_top + 1, log_tiny, log_tiny - 2, log_tiny - 20]
        return np.concatenate([x, rng.standard_normal(n - n // 2)]), np.array(edges)
    if name == "log":
        x = np.exp(rng.uniform(log_tiny, log_top, n // 2))
        near_one = 1.0 + rng.standard_normal(n // 4) * 1e-2
        return np.concatenate([x, near_one, -np.abs(rng.standard_normal(n - n // 2 - n // 4))]), np.array([1.0])
    scale = 4.0 if name in ("tanh", "gelu", "gelu_tanh") else 8.0
    return rng.standard_normal(n) * scale, np.array([-20.0, -10.0, 10.0, 20.0, 1e-3, -1e-3])


_ELEMENTWISE_TORCH: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "exp": torch.exp, "log": torch.log, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class ElementwiseCheck(OperatorCheck):
    id = "integrity.ops.elementwise"

    def cases(self, level: Level, fmt: NumberFormat) -> list[Builder]:
        return [self._builder(name, ELEMENTWISE_SIZE[level]) for name in ref.ELEMENTWISE]

    @staticmethod
    def _builder(name: str, n: int) -> Builder:
        def build(rng: np.random.Generator, fmt: NumberFormat) -> OpCase:
            random, edges = _elementwise_domain(name, rng, fmt, n)
            x = mixed(rng, fmt, random, edges)
            fn = _ELEMENTWISE_TORCH[name]
            return OpCase(name, f"{name} on {x.size} values", lambda device: fn(upload(x, fmt, device)),
                          ref.elementwise_expectation(ref.ELEMENTWISE[name], x, fmt), evidence={"n": int(x.size)})
        return build



# ----- 2-D convolution -----

@dataclass(frozen=True)
class ConvCase:
    label: str
    n: int
    c: int
    hw: int
    o: int
    kernel: int
    conv: ref.Conv
    bias: bool = True
    quick: bool = True  # every level; False: standard and deep only


# Each new shape costs a kernel selection (oneDNN, cuDNN): quick keeps four.
CONV_CASES = (
    ConvCase("3x3, padding 1", 2, 16, 14, 32, 3, ref.Conv(padding=1)),
    ConvCase("3x3, stride 2", 2, 16, 15, 32, 3, ref.Conv(stride=2), bias=False),
    ConvCase("3x3, dilation 2", 1, 8, 16, 16, 3, ref.Conv(padding=2, dilation=2), quick=False),
    ConvCase("3x3 depthwise", 2, 32, 12, 32, 3, ref.Conv(padding=1, groups=32)),
    ConvCase("3x3, 4 groups", 1, 16, 12, 32, 3, ref.Conv(padding=1, groups=4), quick=False),
    ConvCase("1x1 pointwise", 2, 64, 8, 48, 1, ref.Conv(), quick=False),
    ConvCase("7x7 stride 2 stem (ResNet)", 1, 3, 32, 16, 7, ref.Conv(stride=2, padding=3)),
)


class Conv2dCheck(OperatorCheck):
    id = "integrity.ops.conv2d"

    def cases(self, level: Level, fmt: NumberFormat) -> list[Builder]:
        quick = level is Level.quick
        corners = ("random", "delta kernel", "specials") + (() if quick else ("constant image",))
        return [self._builder(case, corner) for case in CONV_CASES if case.quick or not quick for corner in corners]

    @staticmethod
    def _builder(case: ConvCase, corner: str) -> Builder:
        def build(rng: np.random.Generator, fmt: NumberFormat) -> OpCase:
            conv = case.conv
            x = rng.standard_normal((case.n, case.c, case.hw, case.hw))
            w = rng.standard_normal((case.o, case.c // conv.groups, case.kernel, case.kernel)) / case.kernel
            bias = rng.standard_normal(case.o) if case.bias else None
            bound = "random"
            if corner == "delta kernel":  # each output channel copies one input channel of its group
                w[:] = 0.0
                w[np.arange(case.o), np.arange(case.o) % (case.c // conv.groups), case.kernel // 2,
                  case.kernel // 2] = 1.0
                bound = "worst"
            elif corner == "specials":
                flat = x.reshape(-1)
                flat[rng.choice(flat.size, 3, replace=False)] = (np.nan, np.inf, -np.inf)
                x[0, :, 0, :] = 0.0  # a zero row of pixels next to the padding
                bound = "worst"
            elif corner == "constant image":
                x[:] = 0.5
                bound = "worst"
            x, w = fmt.quantize(x), fmt.quantize(w)
            bias = None if bias is None else fmt.quantize(bias)
            cols, weights = ref.im2col(x, w, bias, conv)
            exp = ref.conv_expectation(cols, weights, fmt, bound)
            if not np.isfinite(x).all():
                # Winograd and FFT algorithms spread a non-finite input over a whole tile, and blocked
                # kernels multiply it by the zeros that pad their weights (Inf * 0 = NaN): outputs outside
                # its receptive field may be non-finite too, and an infinite one may come out NaN. Inside
                # it, results stay non-finite, and NaN stays NaN.
                exp.rule[exp.rule == Rule.finite] = Rule.either
                exp.rule[(exp.rule == Rule.pos_inf) | (exp.rule == Rule.neg_inf)] = Rule.nonfinite
            shape = (conv.groups, -1, case.o // conv.groups)

            def run(device: str) -> torch.Tensor:
                y = F.conv2d(upload(x, fmt, device), upload(w, fmt, device),
                             None if bias is None else upload(bias, fmt, device),
                             stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
                return y.permute(0, 2, 3, 1).reshape(-1, conv.groups, case.o // conv.groups).transpose(0, 1)

            exp = Expectation(*(a.reshape(shape) for a in (exp.value, exp.bound, exp.rule)))
            return OpCase("conv2d", f"conv2d {case.label} ({corner})", run, exp,
                          evidence={"input": [case.n, case.c, case.hw, case.hw], "kernel": case.kernel,
                                    "stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation,
                                    "groups": conv.groups, "inputs": corner})
        return build


# ----- scaled-dot-product attention -----

@dataclass(frozen=True)
class AttentionCase:
    label: str
    batch: int
    heads: int
    q_len: int
    kv_len: int
    dim: int
    mask: str  # none | causal | bool | additive | padding (a per-sequence 4-D mask)
    scale: float | None = None  # passed explicitly; None: the default 1/sqrt(dim)
    kv_heads: int = 0  # grouped-query attention: fewer key/value heads (enable_gqa); 0: as many as queries


# enable_gqa exists from torch 2.5 on; older versions cannot be asked for it.
_GQA = torch.__version__ >= (2, 5)

ATTENTION_CASES = (
    AttentionCase("self-attention, no mask", 2, 4, 64, 64, 64, "none"),
    AttentionCase("causal", 2, 4, 64, 64, 64, "causal"),
    AttentionCase("boolean padding mask", 1, 4, 48, 80, 64, "bool"),
    AttentionCase("additive bias (ALiBi-like) with -inf", 1, 2, 32, 96, 128, "additive"),
    AttentionCase("Hugging Face 4-D mask: causal, left padding, most negative value", 2, 4, 24, 24, 32, "padding"),
    AttentionCase("decode step: one query over 80 cached keys, scale 1/16", 2, 4, 1, 80, 64, "none", scale=0.0625),
    *((AttentionCase("grouped-query, 8 query heads over 2 KV heads, causal", 1, 8, 32, 32, 64, "causal",
                     kv_heads=2),) if _GQA else ()),
)


class AttentionCheck(OperatorCheck):
    id = "integrity.ops.attention"

    def cases(self, level: Level, fmt: NumberFormat) -> list[Builder]:
        return [self._builder(case, corner) for case in ATTENTION_CASES for corner in ("random", "corners")]

    @staticmethod
    def _builder(case: AttentionCase, corner: str) -> Builder:
        def build(rng: np.random.Generator, fmt: NumberFormat) -> OpCase:
            shape = (case.batch, case.heads)
            kv_shape = (case.batch, case.kv_heads or case.heads, case.kv_len, case.dim)
            q = rng.standard_normal((*shape, case.q_len, case.dim))
            k = rng.standard_normal(kv_shape)
            v = rng.standard_normal(kv_shape)
            bias = np.zeros((case.q_len, case.kv_len))
            if case.mask in ("causal", "padding"):
                bias[np.triu(np.ones_like(bias, dtype=bool), 1)] = -np.inf  # torch aligns it top-left
            if case.mask == "padding":  # sequence i's first 5*i keys are padding: its first rows see none
                pads = 5 * np.arange(case.batch)
                bias = np.where(np.arange(case.kv_len) < pads[:, None, None, None], -np.inf, bias[None, None])
            elif case.mask == "bool":
                bias[:, rng.random(case.kv_len) < 0.3] = -np.inf
                bias[0] = -np.inf  # a query that may see nothing
            elif case.mask == "additive":
                bias = fmt.quantize(-0.25 * np.abs(np.arange(case.q_len)[:, None] - np.arange(case.kv_len)[None]))
                bias[:, -8:] = -np.inf
            if corner == "corners":
                q[..., 0, :] *= 40.0  # scores of hundreds: a nearly one-hot softmax
                if case.q_len > 2:
                    q[..., 1, :] = 0.0  # uniform attention: the mean of the visible values
                    q[0, 0, 2, 0] = np.nan  # one query's row must be NaN
            q, k, v = fmt.quantize(q), fmt.quantize(k), fmt.quantize(v)
            scale = case.scale or 1.0 / math.sqrt(case.dim)
            kwargs: dict[str, object] = {} if case.scale is None else {"scale": case.scale}
            if case.kv_heads:
                kwargs["enable_gqa"] = True

            def run(device: str) -> torch.Tensor:
                args = [upload(t, fmt, device) for t in (q, k, v)]
                if case.mask == "causal":
                    return F.scaled_dot_product_attention(*args, is_causal=True, **kwargs)
                if case.mask == "bool":
                    mask = torch.from_numpy(bias == 0).to(device)
                elif case.mask == "padding":
                    mask = upload(np.where(bias == -np.inf, -fmt.max_finite, bias), fmt, device)
                elif case.mask == "additive":
                    mask = upload(bias, fmt, device)
                else:
                    return F.scaled_dot_product_attention(*args, **kwargs)
                return F.scaled_dot_product_attention(*args, attn_mask=mask, **kwargs)

            groups = case.heads // (case.kv_heads or case.heads)  # each key/value head serves this many queries
            return OpCase("attention", f"attention {case.label} ({corner})", run,
                          ref.attention_expectation(q, np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1),
                                                    bias, scale, fmt),
                          evidence={"shape": [*shape, case.q_len, case.kv_len, case.dim], "mask": case.mask,
                                    "scale": scale, "kv_heads": case.kv_heads or case.heads})
        return build


# ----- dtype conversions -----

_INTEGER_DTYPES = {"int32": (torch.int32, np.int32), "int8": (torch.int8, np.int8)}


def _exact(values: np.ndarray, signed_zero: bool = True) -> Expectation:
    exp = Expectation.finite(values, 0.0)
    exp.classify()
    if signed_zero:
        exp.rule[exp.rule == Rule.finite] = Rule.exact_signed
    return exp


class ConvertCheck(OperatorCheck):
    """Conversions are exact: round to nearest even between float formats (IEEE 754-2019, 4.3.1 and
    5.4.2), truncation toward zero from float to integer (C's conversion, which PyTorch follows), and
    exact widening. 16-bit sources are tested on every one of their 65,536 bit patterns."""

    id = "integrity.ops.convert"
    formats = ("fp32",)  # the pairs below name their own formats

    PAIRS = (("fp32", "fp16"), ("fp32", "bf16"), ("fp16", "fp32"), ("bf16", "fp32"), ("fp64", "fp32"),
             ("fp32", "fp64"), ("fp16", "bf16"), ("bf16", "fp16"), ("fp32", "int32"), ("int32", "fp32"),
             ("int8", "fp16"), ("int8", "bf16"))

    def cases(self, level: Level, fmt: NumberFormat) -> list[Builder]:
        return [self._builder(src, dst) for src, dst in self.PAIRS]

    @staticmethod
    def _source(rng: np.random.Generator, src: str, dst: str) -> np.ndarray:
        if src in ("fp16", "bf16"):
            return random_bits(rng, FORMATS[src], None, None)  # all 65,536 patterns
        if src == "int32":
            return np.concatenate([rng.integers(-2**31, 2**31, 1 << 14), np.arange(-2**24 - 8, -2**24 + 8),
                                   np.arange(2**24 - 8, 2**24 + 8), [2**31 - 1, -2**31, 0]]).astype(np.float64)
        if src == "int8":
            return np.arange(-128, 128).astype(np.float64)
        fmt = FORMATS[src]
        if dst == "int32":  # in range: out-of-range float-to-integer conversion is undefined behaviour
            x = np.clip(rng.uniform(-2.0**31, 2.0**31, 1 << 14), -2.0**31 + 128, 2.0**31 - 128)
            x = x / np.exp2(rng.integers(0, 31, 1 << 14))
            return fmt.quantize(np.concatenate([x, [-0.5, 0.5, -0.0, 1.5, -1.5, 2.5, -2.5, 2.0**31 - 128]]))
        x = np.concatenate([random_bits(rng, fmt, (1 << 14,), None), special_values(fmt)])
        if dst in ("fp16", "bf16"):  # ties between two values of the narrower format: round to even
            target = FORMATS[dst]
            grid = target.quantize(rng.standard_normal(1 << 12))
            ulp = np.abs(np.spacing(grid.astype(np.float16 if dst == "fp16" else np.float32)).astype(np.float64))
            if dst == "bf16":
                ulp = ulp * 2.0**16
            x = np.concatenate([x, fmt.quantize(grid + ulp / 2), fmt.quantize(grid - ulp / 2)])
        return x

    @staticmethod
    def _builder(src: str, dst: str) -> Builder:
        def build(rng: np.random.Generator, fmt: NumberFormat) -> OpCase:
            x = ConvertCheck._source(rng, src, dst)
            if dst == "int32":
                expected = _exact(np.trunc(x), signed_zero=False)
            elif dst in _INTEGER_DTYPES:
                expected = _exact(x, signed_zero=False)
            elif src == "int32":
                expected = _exact(x.astype(np.int64).astype(np.float32).astype(np.float64))
            else:
                with np.errstate(over="ignore", invalid="ignore"):
                    expected = _exact(FORMATS[dst].quantize(x))

            def run(device: str) -> torch.Tensor:
                if src in _INTEGER_DTYPES:
                    t = torch.from_numpy(x.astype(_INTEGER_DTYPES[src][1])).to(device)
                else:
                    t = upload(x, FORMATS[src], device)
                target = _INTEGER_DTYPES[dst][0] if dst in _INTEGER_DTYPES else FORMATS[dst].torch_dtype
                return t.to(target)

            def flushed() -> Expectation:
                """A device that flushes subnormal inputs and results (to a zero of either sign)."""
                tiny_src = ieee.smallest_normal(FORMATS[src]) if src in FORMATS else 0.0
                tiny_dst = ieee.smallest_normal(FORMATS[dst]) if dst in FORMATS else 0.0
                y = np.where(np.abs(x) < tiny_src, 0.0, x)
                with np.errstate(over="ignore", invalid="ignore"):
                    y = FORMATS[dst].quantize(y) if dst in FORMATS else np.trunc(y)
                return _exact(np.where(np.abs(y) < tiny_dst, 0.0, y), signed_zero=False)

            # int8 and int32 are storage here, which every backend holds: the float formats weigh a refusal.
            floats = tuple(f for f in (src, dst) if f in FORMATS and not FORMATS[f].integer)
            return OpCase(f"convert {src}->{dst}", f"{src} -> {dst} on {x.size} values", run, expected,
                          ftz=flushed if dst != "int32" else None, dtype=f"{src}->{dst}",
                          evidence={"from": src, "to": dst}, formats=floats)
        return build


CHECKS = [ElementwiseCheck(), NormalizationCheck(), ReductionCheck(), Conv2dCheck(), AttentionCheck(), ConvertCheck()]
