"""The operands product checks draw: iid random data, and data with the statistics of real models.

Why both: random operands (normal, uniform, sparse, mixed magnitudes) meet value-triggered faults of
every sign and size, and the probabilistic error bound (oracle/tolerance.py) is derived for them. But a
device stack that knows it is audited can recognise random data and misbehave only on what a served
model feeds it: a linear layer's activations with a few outlier feature channels, weights of a trained
model's scale, attention probabilities, normalised activations, quantised weights with per-channel
scales. So the checks also draw operand pairs shaped like a model's own products (A activations, B
weights, as x @ W^T in a linear layer), each distribution named with the source of its statistics.

All of it is data: a distribution is a function of (rng, shape, axis) with the features along `axis`
(an activation's last axis, the inner axis of a weight W^T used as B), so its statistics are what a
unit test can state; a pair names the two distributions and the product of a model it stands for.

How a realistic operand meets a format: floating formats round the model's values onto their grid
(fp16/bf16 models hold exactly that). int8 and fp8 kernels take quantised codes with the scale kept
apart, so for them each row (token, or output channel) is scaled to the format's largest value and
rounded, as per-token / per-channel quantisation (LLM.int8, SmoothQuant, fp8 recipes) does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from chipaudit.oracle.formats import FORMATS, NumberFormat

Shape = tuple[int, ...]

# ----- random (iid) operands -----

# iid draws, so the probabilistic bound holds, with signs, sparsity and magnitudes varied so that
# value-triggered faults meet more than one kind of data.
DISTRIBUTIONS = ("normal", "uniform_positive", "sparse", "mixed_magnitude")
# Largest binary exponent spread for mixed magnitudes that keeps each format far from overflow.
MIXED_EXPONENT = {"fp16": 3, "fp8_e4m3": 1}
DEFAULT_MIXED_EXPONENT = 8


def draw(rng: np.random.Generator, dist: str, shape: Shape, fmt: NumberFormat) -> np.ndarray:
    """One operand of a random distribution, on the format's grid."""
    if fmt.integer:
        return fmt.quantize(rng.integers(-128, 128, shape).astype(np.float64))
    if dist == "normal":
        x = rng.standard_normal(shape)
    elif dist == "uniform_positive":
        x = rng.uniform(0.5, 1.0, shape)
    elif dist == "sparse":
        x = rng.standard_normal(shape) * (rng.random(shape) < 0.5)
    elif dist == "mixed_magnitude":
        spread = MIXED_EXPONENT.get(fmt.name, DEFAULT_MIXED_EXPONENT)
        x = rng.standard_normal(shape) * np.exp2(rng.integers(-spread, spread + 1, shape))
    else:
        raise ValueError(dist)
    return fmt.quantize(x)


# ----- the statistics of real models -----

# GPT-2 (Radford et al. 2019, model.py) and BERT (Devlin et al. 2019, initializer_range) initialise
# linear weights N(0, 0.02^2); trained weights of such models keep about that scale.
TRAINED_WEIGHT_STD = 0.02
# LLM.int8() (Dettmers et al. 2022, section 4): from about 6.7B parameters, a handful of hidden feature
# channels (6 of 4096 in OPT-6.7B) carry values up to 20x and more the others' (magnitudes to 60 where
# the rest stay near 1); "massive activations" (Sun et al. 2024) reach 100x and beyond. An operand gets
# between half of and all of OUTLIER_SHARE of its features as outlier channels (at most
# OUTLIER_CHANNELS_MAX, at least one); their magnitudes spread log-uniformly over OUTLIER_FACTOR times
# the others', one per stratum of that range, so that one operand crosses several factors (10x, 20x, 50x).
OUTLIER_SHARE = 1 / 128
OUTLIER_CHANNELS_MAX = 8
OUTLIER_FACTOR = (10.0, 100.0)
# Attention logits with this spread give peaked rows: one or a few keys take most of the weight,
# as trained heads do (Vig & Belinkov 2019, attention concentrates on few tokens).
SOFTMAX_LOGIT_STD = 3.0
# LayerNorm / RMSNorm gains of trained models stay near 1 (initialised to 1).
NORM_GAIN_STD = 0.1
# Weight-only quantised checkpoints (GPTQ, AWQ, bitsandbytes) store one scale per output channel, in
# fp16: dequantised values are then code * scale, exact in fp32.
INT8_MAX = 127
FP8_MAX = 448.0  # largest finite float8 e4m3fn value (OCP 8-bit floating point specification, 2023)
# fp16 results of realistic operands stay below this share of fp16's range: models in fp16 keep their
# activations in range, and an honest overflow is not a fault.
RANGE_SHARE = 1 / 16


def _trained_weights(rng: np.random.Generator, shape: Shape, axis: int) -> np.ndarray:
    x = rng.standard_normal(shape)
    x *= TRAINED_WEIGHT_STD
    return x


def _fan_in_weights(rng: np.random.Generator, shape: Shape, axis: int) -> np.ndarray:
    """std 1/sqrt(fan_in): LeCun initialisation, which keeps a layer's output variance that of its input
    (PyTorch's nn.Linear default draws a uniform of the same order)."""
    x = rng.standard_normal(shape)
    x /= np.sqrt(shape[axis])
    return x


def outlier_channels(rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(channels, factors): which features are outliers and how many times larger they are."""
    most = int(np.clip(round(k * OUTLIER_SHARE), 1, OUTLIER_CHANNELS_MAX))
    count = int(rng.integers((most + 1) // 2, most + 1))
    channels = np.sort(rng.choice(k, size=count, replace=False))
    low, high = np.log10(OUTLIER_FACTOR[0]), np.log10(OUTLIER_FACTOR[1])
    strata = (np.arange(count) + rng.random(count)) / count
    factors = 10.0 ** (low + (high - low) * rng.permutation(strata))
    return channels, factors


def _outlier_activations(rng: np.random.Generator, shape: Shape, axis: int) -> np.ndarray:
    """Hidden states of an LLM: unit-scale features but for a few channels, the same in every token,
    10 to 100 times larger."""
    x = rng.standard_normal(shape)
    channels, factors = outlier_channels(rng, shape[axis])
    np.moveaxis(x, axis, -1)[..., channels] *= factors
    return x


def _normalised_activations(rng: np.random.Generator, shape: Shape, axis: int) -> np.ndarray:
    """LayerNorm output: each row exactly zero mean and unit variance, times a per-feature gain near 1."""
    x = rng.standard_normal(shape)
    rows = np.moveaxis(x, axis, -1)  # a view: the features last
    rows -= rows.mean(axis=-1, keepdims=True)
    rows /= np.maximum(rows.std(axis=-1, keepdims=True), 1e-12)
    rows *= 1.0 + NORM_GAIN_STD * rng.standard_normal(shape[axis])
    return x


def _softmax_probabilities(rng: np.random.Generator, shape: Shape, axis: int, causal: bool = False) -> np.ndarray:
    """Attention weights: non-negative rows that sum to 1, peaked; causal ones (a decoder's) zero after
    each query's position, the last query seeing every key."""
    logits = np.moveaxis(rng.standard_normal(shape) * SOFTMAX_LOGIT_STD, axis, -1)
    if causal:
        rows, keys = logits.shape[-2], logits.shape[-1]
        visible = np.arange(keys)[None, :] <= np.arange(rows)[:, None] + max(keys - rows, 0)
        logits = np.where(visible, logits, -np.inf)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.moveaxis(e / e.sum(axis=-1, keepdims=True), -1, axis)


def _channel_scales(w: np.ndarray, top: float, axis: int) -> np.ndarray:
    """Per-output-channel scales that map each channel's largest magnitude to `top`, in fp16 as
    checkpoints store them."""
    amax = np.abs(w).max(axis=axis, keepdims=True)
    return np.maximum(FORMATS["fp16"].quantize(amax / top), 2.0**-24)


def _int8_weights(rng: np.random.Generator, shape: Shape, axis: int) -> np.ndarray:
    """Dequantised int8 weights: integer codes in [-127, 127] times a per-channel fp16 scale."""
    w = _trained_weights(rng, shape, axis)
    scale = _channel_scales(w, INT8_MAX, axis)
    return np.clip(np.rint(w / scale), -INT8_MAX, INT8_MAX) * scale


def _fp8_weights(rng: np.random.Generator, shape: Shape, axis: int) -> np.ndarray:
    """Dequantised fp8 weights: e4m3 codes times a per-channel fp16 scale."""
    w = _fan_in_weights(rng, shape, axis)
    scale = _channel_scales(w, FP8_MAX, axis)
    return FORMATS["fp8_e4m3"].quantize(np.clip(w / scale, -FP8_MAX, FP8_MAX)) * scale


@dataclass(frozen=True)
class Realistic:
    """A distribution of a model's tensor and its source: values(rng, shape, axis) with the features
    (an activation's channels, a weight's inputs) along `axis`, one token or output channel per index
    of the other axes, so that a weight W^T is drawn in place as B without a transposed copy."""

    name: str
    values: Callable[[np.random.Generator, Shape, int], np.ndarray]
    source: str


REALISTIC: dict[str, Realistic] = {r.name: r for r in (
    Realistic("trained_weights", _trained_weights, "GPT-2 / BERT weights: N(0, 0.02^2)"),
    Realistic("fan_in_weights", _fan_in_weights, "weights of std 1/sqrt(fan-in) (LeCun; nn.Linear's scale)"),
    Realistic("outlier_activations", _outlier_activations,
              "LLM hidden states with a few outlier feature channels 10-100x larger (LLM.int8, Dettmers 2022)"),
    Realistic("normalised_activations", _normalised_activations,
              "LayerNorm/RMSNorm output: rows of zero mean, unit variance, times a gain near 1"),
    Realistic("softmax_probabilities", _softmax_probabilities,
              "an encoder's attention weights (BERT, ViT): non-negative rows summing to 1, peaked"),
    Realistic("causal_softmax_probabilities", partial(_softmax_probabilities, causal=True),
              "a decoder's attention weights (GPT, Llama): as above, zero after each query's position"),
    Realistic("int8_weights", _int8_weights, "int8 weight-only quantisation with per-channel fp16 scales"),
    Realistic("fp8_weights", _fp8_weights, "fp8 (e4m3) weights with per-channel fp16 scales"),
)}


@dataclass(frozen=True)
class Pair:
    """Two operands as a model multiplies them: A (rows x k) times B (k x n). `b_transposed`: B is W^T
    of a weight or key matrix W (n x k): its features run along B's k axis, one output channel (or key)
    per column."""

    name: str
    a: str
    b: str
    b_transposed: bool
    product: str


PAIRS: dict[str, Pair] = {p.name: p for p in (
    Pair("llm_outliers", "outlier_activations", "trained_weights", True,
         "a transformer's linear layer on the residual stream, outlier channels included"),
    Pair("normed_linear", "normalised_activations", "fan_in_weights", True, "a linear layer after a LayerNorm"),
    Pair("attention_scores", "normalised_activations", "normalised_activations", True, "attention scores Q K^T"),
    Pair("attention_values", "softmax_probabilities", "normalised_activations", False,
         "an encoder's attention probabilities times values, P V"),
    Pair("causal_attention_values", "causal_softmax_probabilities", "normalised_activations", False,
         "a decoder's causal attention probabilities times values"),
    Pair("int8_weights", "outlier_activations", "int8_weights", True, "a weight-only int8 layer"),
    Pair("fp8_weights", "normalised_activations", "fp8_weights", True, "an fp8 weight layer"),
)}
# Every operand kind a case or a task may name.
OPERAND_KINDS = (*DISTRIBUTIONS, *PAIRS)


def encode(x: np.ndarray, fmt: NumberFormat, axis: int = -1) -> np.ndarray:
    """A model's values as the format's kernel takes them: rounded onto the grid, or, for int8 and fp8,
    each token or output channel (its features along `axis`) scaled to the format's largest value first."""
    if fmt.integer or fmt.name == "fp8_e4m3":
        top = INT8_MAX if fmt.integer else FP8_MAX
        amax = np.abs(x).max(axis=axis, keepdims=True)
        x = x * (top / np.where(amax > 0, amax, 1.0))
    return fmt.quantize(x)


def realistic(rng: np.random.Generator, name: str, shape: Shape, fmt: NumberFormat, axis: int = -1) -> np.ndarray:
    return encode(REALISTIC[name].values(rng, shape, axis), fmt, axis)


def in_range(a: np.ndarray, b: np.ndarray, fmt: NumberFormat) -> np.ndarray:
    """A scaled down by a power of two, when needed, so that no fp16 result comes near fp16's largest
    value (Cauchy-Schwarz bounds every |c_ij| by ||a_i|| ||b_:j||). fp16 is the one format whose
    results are stored in a narrow range: fp8 products come out in fp32, bf16 has fp32's range."""
    if fmt.name != "fp16":
        return a
    worst = float(np.sqrt((a * a).sum(axis=-1)).max() * np.sqrt((b * b).sum(axis=-2)).max())
    limit = fmt.max_finite * RANGE_SHARE
    return a if worst <= limit else fmt.quantize(a * 2.0 ** -np.ceil(np.log2(worst / limit)))


def draw_pair(rng: np.random.Generator, kind: str, a_shape: Shape, b_shape: Shape, fmt: NumberFormat,
              bias: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A product's operands (A, B and, when `bias` > 0, a bias of that length) of a random distribution
    or a realistic pair, on the format's grid."""
    if kind in DISTRIBUTIONS:
        a, b = draw(rng, kind, a_shape, fmt), draw(rng, kind, b_shape, fmt)
        return a, b, draw(rng, kind, (bias,), fmt) if bias else None
    pair = PAIRS[kind]
    a = realistic(rng, pair.a, a_shape, fmt)
    b = realistic(rng, pair.b, b_shape, fmt, axis=-2 if pair.b_transposed else -1)
    # A linear layer's bias: of the weights' scale (GPT-2's are initialised to zero and stay small).
    c = realistic(rng, "trained_weights", (1, bias), fmt)[0] if bias else None
    return in_range(a, b, fmt), b, c
