"""Host references for the operators AI workloads run besides matrix products, in float64 NumPy, with
the error each may honestly have and the IEEE 754 rules for special values (oracle/ieee.py).

Units. `u_out` is the unit roundoff of the result's format (one rounding of the stored result);
`u_int` is that of the precision the operator is computed in: float32 for fp32, fp16 and bf16 (PyTorch
computes half-precision elementwise and normalisation operators in float32, "opmath", and so do the
vendor libraries we know of). g(k) is the growth of a k-term sum: LAMBDA*sqrt(k) for iid random inputs
(tolerance.py), k for structured inputs (the deterministic bound).

Tolerances, per operator (|y| the exact result, x the input):

- exp, tanh, sigmoid: (2*u_out + 16*u_int)*|y|. Vendor maths libraries promise 1-2 ulp in float32 (CUDA
  C Programming Guide, "Mathematical Functions": expf 2 ulp, tanhf 2 ulp; SLEEF u10: 1 ulp); 16 leaves
  room for the looser libraries of newer accelerators, and stays far below a flipped high bit. Two
  output roundings allow a device that computes half precision natively in half precision.
- log: the same, plus 16*u_int absolute: logarithms built from log2 lose relative accuracy near 1.
- gelu (erf and tanh forms): the same, plus 16*u_int*|x| absolute: 0.5*x*(1 + erf(x/sqrt 2)) cancels
  for x << 0, where the result is tiny and its relative error large in every implementation.
- softmax: y_i*(2*u_out + (16 + |x_i - max| + g(k))*u_int): exp's error, the rounding of x_i - max (an
  absolute error in the exponent), and the sum of k terms in the denominator.
- layer norm: |w|*rstd*(e_mean + |x - mean|*e_rstd) + 2*u_out*|y| + 2*u_int*|b|, with e_mean the error
  of the mean (g(k)*u_int*mean|x|) and e_rstd = (16 + g(k)*(var + mean^2)/(var + eps))*u_int: the
  one-pass variance E[x^2] - E[x]^2 some devices use loses u*E[x^2] absolutely.
- RMS norm: |y|*(2*u_out + (16 + g(k))*u_int).
- sum and mean: the matrix-product bound with a vector of ones (ieee.dot_expectation), plus, for
  formats narrower than their accumulator, the staged roundings of partial sums kept in the result's
  format (see `reduction_staging`); max: exact.
- conv2d: the matrix-product bound of its im2col product, times CONV_ALGORITHM_FACTOR, plus, for
  formats narrower than their accumulator, STAGED_ROUNDINGS*u_out times the spread of the products
  (sum|a*b| for structured inputs, LAMBDA*(|y| + s2) for random ones): see `conv_expectation`.
- scaled-dot-product attention: see `attention_expectation`.
- dtype conversions: exact (round to nearest even; float to integer truncates toward zero).

Every result may also be off by the smallest normal number of its format: devices that flush
subnormal results to zero (FTZ) are common, and only matrix products are checked for gradual underflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from chipaudit.oracle import ieee, tolerance
from chipaudit.oracle.formats import NumberFormat
from chipaudit.oracle.ieee import Expectation, Rule

FUNCTION_ULPS = 16.0  # internal error of a maths-library function, in u_int (see above)
OUTPUT_ROUNDINGS = 2.0  # roundings of the result allowed, in u_out
# Winograd and FFT convolutions transform their operands, which amplifies rounding errors by a
# constant factor of the tile size: about 4x to 10x for F(2x2,3x3) and F(4x4,3x3) (Lavin & Gray, "Fast
# Algorithms for Convolutional Neural Networks", CVPR 2016; Barabasz et al., "Error analysis and
# improving the accuracy of Winograd convolution", ACM TOMS 2020). cuDNN and oneDNN choose them freely.
CONV_ALGORITHM_FACTOR = 16.0
# Half-precision convolutions keep partial results in the operation's own format: the convolution
# before its bias (added by a second kernel), Winograd's transformed tiles. Seen on an NVIDIA H200
# with cuDNN 9.19 (docs/validation/nvidia-h200-2026-11-27): fp16 and bf16 errors of up to 2 units of
# u_out in absolute terms on outputs that cancel to near zero, 10^3 to 10^4 times what fp32
# accumulation alone allows. Two such roundings are allowed, each of up to u_out times the largest
# partial result.
STAGED_ROUNDINGS = 2.0
# Reductions of fp16 and bf16 may store partial sums in the result's format. torch's CPU sum splits a
# large reduction among its threads, rounds each thread's float32 sum to fp16/bf16 and adds those
# (aten TensorIteratorReduce.cpp, two_pass_reduction): two roundings, each up to u_out times a partial
# sum. A GPU kernel may combine warp or block partials pairwise in the narrow format: a tree, in which
# each element passes through ceil(log2 k) roundings. The model allows that tree, the deepest honest
# staging: with D = ceil(log2 k) levels, each level's rounding errors sum, for iid inputs, to about
# u_out*(|y| + s2) (the partial sums of a level have a root-sum-square of at most |y| + s2), and the D
# levels are independent, so
#     random:     STAGED_SUM_MARGIN * u_out * sqrt(D) * (|y| + s2)
#     structured: gamma_D(u_out) * sum|x|          (Higham 2002, section 4.2, pairwise summation)
# Measured on the check's whole-tensor sums (32000 to 131072 iid terms with a mean; the simulations are
# in tests/test_integrity_reduction.py): torch's CPU sum, on 1 to 16 threads, reaches at most 0.11 of
# this bound; a pairwise tree in the narrow format 0.14 (0.32 for zero-mean terms, up to k = 262144);
# fp32 blocks of 1024 combined one by one in the narrow format 0.38. A sum accumulated sequentially in
# the narrow format, one rounding per term, is a "tree" of depth k: its error grows like u_out*k, and
# once the running sum's half-ulp exceeds the terms it stagnates; it exceeds this bound 12x (bf16) to
# 25x (fp16) on every seed tried.
STAGED_SUM_MARGIN = tolerance.LAMBDA  # the margin of the random model above, tolerance.py's calibration


def growth(k: int, structured: bool) -> float:
    return float(k) if structured else tolerance.LAMBDA * math.sqrt(k)


def _ftz_floor(fmt: NumberFormat) -> float:
    return ieee.smallest_normal(fmt)


def _finish(exp: Expectation, fmt: NumberFormat) -> Expectation:
    exp.classify()
    ieee.apply_overflow(exp, fmt)
    return exp


# ----- elementwise functions -----

def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


_erfc = np.frompyfunc(math.erfc, 1, 1)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * _erfc(-x / math.sqrt(2.0)).astype(np.float64)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    """0.5*x*(1 + tanh(z)) written as x*sigmoid(2z), which does not cancel for x << 0."""
    z = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
    return x * _sigmoid(2.0 * z)


def _exp_special(x: np.ndarray, exp: Expectation, fmt: NumberFormat) -> None:
    exp.set(x == 0, Rule.finite, 1.0)
    exp.set(x == -np.inf, Rule.finite, 0.0)


def _log_special(x: np.ndarray, exp: Expectation, fmt: NumberFormat) -> None:
    exp.set(x == 1, Rule.finite, 0.0)


def _tanh_special(x: np.ndarray, exp: Expectation, fmt: NumberFormat) -> None:
    exp.set(x == 0, Rule.exact_signed, x)  # tanh is odd: tanh(-0) = -0 (IEEE 754-2019, 9.2)


def _gelu_special(x: np.ndarray, exp: Expectation, fmt: NumberFormat) -> None:
    # GELU is no IEEE 754 operation: at +Inf any non-finite result is honest (x*Phi(x) = Inf, but the
    # erf form 0.5*x*(1+erf) gives Inf*1 or, vectorised, NaN); at -Inf its limit is 0, its formula NaN.
    # Within a quarter of the largest finite value, x*(1+erf) overflows before the halving.
    with np.errstate(invalid="ignore"):
        big = np.isfinite(x) & (np.abs(x) > fmt.max_finite / 4)
    exp.rule[big & (exp.rule == Rule.finite)] = Rule.either
    exp.set(x == np.inf, Rule.nonfinite)
    exp.set(x == -np.inf, Rule.either, 0.0)


@dataclass(frozen=True)
class Elementwise:
    name: str
    reference: Callable[[np.ndarray], np.ndarray]
    absolute: Callable[[np.ndarray], np.ndarray] | None = None  # scale of the absolute term (see above)
    special: Callable[[np.ndarray, Expectation, NumberFormat], None] | None = None


ELEMENTWISE: dict[str, Elementwise] = {
    e.name: e for e in (
        Elementwise("exp", np.exp, special=_exp_special),
        Elementwise("log", np.log, absolute=lambda x: np.ones_like(x), special=_log_special),
        Elementwise("tanh", np.tanh, special=_tanh_special),
        Elementwise("sigmoid", _sigmoid),
        Elementwise("gelu", _gelu, absolute=np.abs, special=_gelu_special),
        Elementwise("gelu_tanh", _gelu_tanh, absolute=np.abs, special=_gelu_special),
    )
}


def elementwise_expectation(op: Elementwise, x: np.ndarray, fmt: NumberFormat) -> Expectation:
    u_int = fmt.u_acc
    with np.errstate(all="ignore"):
        y = op.reference(x)
        bound = (OUTPUT_ROUNDINGS * fmt.u_out + FUNCTION_ULPS * u_int) * np.abs(y) + _ftz_floor(fmt)
        if op.absolute is not None:
            bound = bound + FUNCTION_ULPS * u_int * op.absolute(x)
    exp = _finish(Expectation.finite(y, np.where(np.isfinite(bound), bound, 0.0)), fmt)
    if op.special is not None:
        op.special(x, exp, fmt)
    return exp


# ----- softmax and normalisation, over the last axis -----

def _row_specials(x: np.ndarray, exp: Expectation) -> None:
    """NaN anywhere in a row makes the whole row NaN."""
    exp.set(np.broadcast_to(np.isnan(x).any(axis=-1, keepdims=True), x.shape), Rule.nan)


def softmax_expectation(x: np.ndarray, fmt: NumberFormat, structured: bool) -> Expectation:
    k = x.shape[-1]
    u_int = fmt.u_acc
    finite_row = np.where(np.isfinite(x), x, -np.inf)
    top = finite_row.max(axis=-1, keepdims=True)
    with np.errstate(all="ignore"):
        shifted = finite_row - top
        e = np.exp(shifted)
        y = e / e.sum(axis=-1, keepdims=True)
        rel = OUTPUT_ROUNDINGS * fmt.u_out + (FUNCTION_ULPS + np.abs(shifted) + growth(k, structured)) * u_int
        bound = np.where(np.isfinite(rel), rel * y, 0.0) + _ftz_floor(fmt)
    exp = Expectation.finite(np.nan_to_num(y, nan=0.0), bound)
    exp.set(x == -np.inf, Rule.finite, 0.0)  # a masked entry has probability exactly 0
    # A row holding +Inf: its formula gives NaN (Inf - Inf), its limit puts all weight on the +Inf
    # entries. A row of only -Inf (fully masked): NaN by the formula, 0 in masking implementations.
    has_inf = np.broadcast_to((x == np.inf).any(axis=-1, keepdims=True), x.shape)
    limit = (x == np.inf) / np.maximum((x == np.inf).sum(axis=-1, keepdims=True), 1)
    exp.set(has_inf, Rule.either, limit)
    exp.set(np.broadcast_to((x == -np.inf).all(axis=-1, keepdims=True), x.shape), Rule.either, 0.0)
    _row_specials(x, exp)
    return exp


def layer_norm_expectation(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float, fmt: NumberFormat, structured: bool
) -> Expectation:
    k = x.shape[-1]
    u_int = fmt.u_acc
    g = growth(k, structured)
    with np.errstate(all="ignore"):
        mean = x.mean(axis=-1, keepdims=True)
        centred = x - mean
        var = (centred * centred).mean(axis=-1, keepdims=True)
        rstd = 1.0 / np.sqrt(var + eps)
        y = centred * rstd * w + b
        e_mean = g * u_int * np.abs(x).mean(axis=-1, keepdims=True)
        e_rstd = (FUNCTION_ULPS + g * (var + mean * mean) / (var + eps)) * u_int
        bound = (np.abs(w) * rstd * (e_mean + np.abs(centred) * e_rstd)
                 + OUTPUT_ROUNDINGS * fmt.u_out * np.abs(y) + 2 * u_int * np.abs(b) + _ftz_floor(fmt))
    exp = _finish(Expectation.finite(y, bound), fmt)
    # An infinite entry makes the mean infinite and x - mean NaN or infinite: the row is not finite.
    row_inf = np.broadcast_to(np.isinf(x).any(axis=-1, keepdims=True), x.shape)
    exp.set(row_inf, Rule.nonfinite)
    _row_specials(x, exp)
    exp.set(np.broadcast_to(np.isnan(w) | np.isnan(b), x.shape), Rule.nan)
    return exp


def rms_norm_expectation(x: np.ndarray, w: np.ndarray, eps: float, fmt: NumberFormat, structured: bool) -> Expectation:
    k = x.shape[-1]
    u_int = fmt.u_acc
    with np.errstate(all="ignore"):
        rstd = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
        y = x * rstd * w
        rel = OUTPUT_ROUNDINGS * fmt.u_out + (FUNCTION_ULPS + growth(k, structured)) * u_int
        bound = rel * np.abs(y) + _ftz_floor(fmt)
    exp = _finish(Expectation.finite(y, np.where(np.isfinite(bound), bound, 0.0)), fmt)
    # An infinite entry makes the root-mean-square infinite: the finite entries scale to 0 (or NaN,
    # depending on whether x/rms or x*rsqrt is formed), the infinite ones to NaN.
    row_inf = np.broadcast_to(np.isinf(x).any(axis=-1, keepdims=True), x.shape)
    exp.set(row_inf, Rule.either, 0.0)
    exp.set(np.isinf(x), Rule.nonfinite)
    _row_specials(x, exp)
    exp.set(np.broadcast_to(np.isnan(w), x.shape), Rule.nan)
    return exp


# ----- reductions over the last axis -----

def staging_depth(k: int) -> int:
    """Levels of a pairwise tree over k terms: the most roundings an element passes through in an
    honest reduction that keeps partial sums in the result's format."""
    return max(1, math.ceil(math.log2(k))) if k > 1 else 0


def reduction_staging(x: np.ndarray, fmt: NumberFormat, bound: str) -> np.ndarray:
    """The error the staged roundings of partial sums may add to a sum over the last axis of x (finite
    entries; zero for formats whose result is as wide as their accumulator, and for exact sums)."""
    if fmt.u_out <= fmt.u_acc or bound == "exact":
        return np.zeros(x.shape[:-1])
    depth = staging_depth(x.shape[-1])
    fx = np.where(np.isfinite(x), x, 0.0)
    if bound == "worst":
        return tolerance.gamma(depth, fmt.u_out) * np.abs(fx).sum(axis=-1)
    spread = np.abs(fx.sum(axis=-1)) + np.sqrt((fx * fx).sum(axis=-1))
    return STAGED_SUM_MARGIN * fmt.u_out * math.sqrt(depth) * spread


def sum_expectation(x: np.ndarray, fmt: NumberFormat, bound: str, mean: bool = False) -> Expectation:
    """sum (or mean) as a product with a vector of ones, so that the same IEEE rules and error bounds
    hold, plus the staged roundings of narrow partial sums (`reduction_staging`)."""
    k = x.shape[-1]
    rows = x.reshape(1, -1, k)
    scale = 1.0 / k if mean else 1.0
    exp = ieee.dot_expectation(rows, np.ones((1, k, 1)), fmt, bound, scale=scale)
    staged = reduction_staging(rows, fmt, bound).reshape(exp.bound.shape) * scale
    finite = (exp.rule == Rule.finite) | (exp.rule == Rule.either)
    exp.bound[finite] += staged[finite]
    if mean:  # one more rounding, of the division
        exp.bound += fmt.u_out * np.abs(exp.value)
    ieee.apply_overflow(exp, fmt)  # a wider bound may reach the overflow threshold: either is honest there
    return Expectation(*(a.reshape(x.shape[:-1]) for a in (exp.value, exp.bound, exp.rule)))


def max_expectation(x: np.ndarray) -> Expectation:
    """max is exact: the answer is one of the inputs. NaN propagates (torch.amax, like np.max)."""
    with np.errstate(invalid="ignore"):
        exp = Expectation.finite(np.max(x, axis=-1), 0.0)
    exp.classify()
    return exp


# ----- 2-D convolution as an im2col product -----

@dataclass(frozen=True)
class Conv:
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1


def im2col(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, conv: Conv) -> tuple[np.ndarray, np.ndarray]:
    """conv2d(x, w) as a batched product A @ B, one batch per group: A (groups, N*Ho*Wo, C/g*kh*kw [+1]),
    B (groups, C/g*kh*kw [+1], O/g). A bias is one more inner term against a column of ones."""
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    g = conv.groups
    p = conv.padding
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    span_h, span_w = conv.dilation * (kh - 1) + 1, conv.dilation * (kw - 1) + 1
    windows = np.lib.stride_tricks.sliding_window_view(padded, (span_h, span_w), axis=(2, 3))
    windows = windows[:, :, ::conv.stride, ::conv.stride, ::conv.dilation, ::conv.dilation]
    ho, wo = windows.shape[2], windows.shape[3]
    # (N, C, Ho, Wo, kh, kw) -> (g, N*Ho*Wo, C/g*kh*kw)
    cols = windows.reshape(n, g, cg, ho, wo, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6).reshape(g, n * ho * wo, -1)
    weights = w.reshape(g, o // g, cg * kh * kw).transpose(0, 2, 1)
    if bias is not None:
        cols = np.concatenate([cols, np.ones((*cols.shape[:2], 1))], axis=2)
        weights = np.concatenate([weights, bias.reshape(g, 1, o // g)], axis=1)
    return cols, weights


def conv_output_as_product(y: np.ndarray, groups: int) -> np.ndarray:
    """Device output (N, O, Ho, Wo) in the layout of `im2col`'s product: (g, N*Ho*Wo, O/g)."""
    n, o, ho, wo = y.shape
    return y.transpose(0, 2, 3, 1).reshape(n * ho * wo, groups, o // groups).transpose(1, 0, 2)


def conv_expectation(cols: np.ndarray, weights: np.ndarray, fmt: NumberFormat, bound: str) -> Expectation:
    """The im2col product's bound, widened by the fast algorithms' amplification, plus the staged
    roundings of formats narrower than their accumulator. A partial result is at most the sum of its
    products' magnitudes, and for random inputs about |y| + s2 (the random walk of tolerance.py)."""
    exp = ieee.dot_expectation(cols, weights, fmt, bound)
    exp.bound *= CONV_ALGORITHM_FACTOR
    if fmt.u_out > fmt.u_acc:
        fa, fb = (np.where(np.isfinite(m), m, 0.0) for m in (cols, weights))
        spread = (np.abs(fa) @ np.abs(fb) if bound == "worst"
                  else tolerance.LAMBDA * (np.abs(exp.value) + np.sqrt((fa * fa) @ (fb * fb))))
        exp.bound += STAGED_ROUNDINGS * fmt.u_out * spread
    return exp


# ----- scaled-dot-product attention -----

def attention_expectation(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray, scale: float, fmt: NumberFormat
) -> Expectation:
    """softmax(q k^T * scale + bias) v, for q (..., L, d), k (..., S, d), v (..., S, dv) and an additive
    mask `bias`, broadcastable to the scores (..., L, S), whose -Inf entries hide keys (a boolean mask is
    a bias of 0 and -Inf).

    Bound on o_ij = sum_l p_il v_lj: each weight p_il carries a relative error E_i made of twice the
    largest error of a score in its row (a score error shifts p_il and, through the normaliser, every
    weight), the rounding of the weights to the input format (flash attention feeds P to the second
    product in fp16/bf16), and the softmax's own error; then the second product's accumulation and
    the output rounding:
        |o~ - o| <= E_i * sum_l p_il|v_lj| + g(S)*u_int*(|o| + s2_pv) + 2*u_out*|o| + floor,
        E_i = 2*max_l err(s_il) + u_in + (16 + g(S))*u_int,
        err(s_il) = (u_in + g(d)*u_int) * (|s_il| + scale*s2_qk,il)
    where u_in is the input format's unit roundoff (scores may be rounded to it) and s2 the root-sum-
    squares of the products.

    A row with no visible key is 0/0 by the formula, and each implementation fills it its own way:
    NaN (the formula), 0 (flash attention skips it), the mean of all values (a mask made finite, e.g.
    the most negative float, swamps every score equally), or the unmasked attention (a finite mask
    added to the scores shifts them all alike). Every such answer is a weighted mean of the value rows,
    or zero: any value between min(0, min_l v_lj) and max(0, max_l v_lj), or NaN, is accepted there.
    Seen on an NVIDIA H200 (torch 2.11, cuDNN 9.19): the unmasked attention, not 0.
    """
    u_int, u_in = fmt.u_acc, fmt.u_out
    d, s_len = q.shape[-1], k.shape[-2]
    kt = np.swapaxes(k, -1, -2)
    visible = bias != -np.inf
    with np.errstate(all="ignore"):
        scores = (q @ kt) * scale + np.where(visible, bias, 0.0)
        s2_qk = np.sqrt((q * q) @ (kt * kt)) * scale
        err_s = (u_in + growth(d, False) * u_int) * (np.abs(scores) + s2_qk)
        masked = np.where(visible, scores, -np.inf)
        top = masked.max(axis=-1, keepdims=True)
        e = np.where(visible, np.exp(masked - top), 0.0)
        p = e / e.sum(axis=-1, keepdims=True)
        o = p @ v
        pv_abs = p @ np.abs(v)
        s2_pv = np.sqrt((p * p) @ (v * v))
        worst_s = np.where(visible, err_s, 0.0).max(axis=-1, keepdims=True)
        e_row = 2 * worst_s + u_in + (FUNCTION_ULPS + growth(s_len, False)) * u_int
        g_s = growth(s_len, False)
        bound = (e_row * pv_abs + g_s * u_int * (np.abs(o) + s2_pv) + OUTPUT_ROUNDINGS * fmt.u_out * np.abs(o)
                 + _ftz_floor(fmt))
    exp = Expectation.finite(np.nan_to_num(o, nan=0.0), np.nan_to_num(bound, nan=0.0))
    none_visible = np.broadcast_to(~visible.any(axis=-1)[..., None], o.shape)
    low = np.broadcast_to(np.nanmin(v, axis=-2, keepdims=True, initial=0.0), o.shape)
    high = np.broadcast_to(np.nanmax(v, axis=-2, keepdims=True, initial=0.0), o.shape)
    bounded = np.isfinite(low) & np.isfinite(high)
    middle = np.where(bounded, (low + high) / 2, 0.0)
    half = np.where(bounded, (high - low) / 2 + OUTPUT_ROUNDINGS * fmt.u_out * np.abs(middle) + _ftz_floor(fmt),
                    np.inf)
    exp.set(none_visible, Rule.either, middle, half)

    def reaches(mask: np.ndarray, nan: np.ndarray) -> np.ndarray:
        return (mask.astype(np.float64) @ nan.astype(np.float64)) > 0

    # NaN in a query row, or in a visible key, poisons the row; NaN in a visible value, its column. NaN
    # behind the mask reaches the result in implementations that add the mask after the product, and
    # not in those that skip masked blocks: either is honest.
    key_nan = np.isnan(k).any(axis=-1)[..., None]
    hidden = reaches(~visible, key_nan) | reaches(~visible, np.isnan(v))
    exp.set(np.broadcast_to(hidden, o.shape), Rule.either)
    row_nan = np.isnan(q).any(axis=-1)[..., None] | reaches(visible, key_nan)
    exp.set(np.broadcast_to(row_nan, o.shape) | reaches(visible, np.isnan(v)), Rule.nan)
    return exp
