"""How far an honest device's matrix product may be from the exact one.

The model, for an output element c = sum_l a_l * b_l over an inner dimension k, computed by a device
that rounds each stored output with unit roundoff u_out and each accumulation step with u_acc:

    |c_device - c_exact| <= u_out*|c| + LAMBDA*u_acc*g(k)*(|c| + s2) + 2*LAMBDA*u_in*s2 + floor

- `s2` = sqrt(sum_l (a_l*b_l)**2), the root-sum-square of the products. The error of a summation is
  a sum of rounding errors, each proportional to a partial sum. For independent random operands the
  partial sums are bounded by the final |c| (same-sign data) plus a random-walk excursion of size s2
  (mixed-sign data), whatever order the hardware sums in.
- g(k) = sqrt(k): rounding errors of round-to-nearest accumulation are unbiased and grow like a random
  walk (Higham & Mary, "A new approach to probabilistic rounding error analysis", SISC 2019). Formats
  whose accumulators truncate (fp8 on accelerators, formats.py) are biased, so for them g(k) is the
  number of truncations: one per block of products, ceil(k / truncation_block).
- u_in covers devices that round fp32 inputs before multiplying (TF32): each product carries two
  input roundings, whose errors are again independent across the sum.
- floor: half the smallest subnormal of the output format, for results that underflow.

LAMBDA was calibrated on this CPU's MKL and on strictly sequential fp32 summation (the least accurate
order any honest device uses): over 10^5 elements per case and k from 8 to 8192, the largest observed
error / (u_acc*sqrt(k)*(|c|+s2)) was 1.17 (normal operands, k = 64). LAMBDA = 4 leaves a 3x margin over
the worst element seen, and sits at roughly 5-20x the typical worst error of honest hardware at k>=512.

This bound holds for operands drawn independently at random. Structured operands (sorted, constant,
cancelling) must use the deterministic worst-case bound instead.
"""

from __future__ import annotations

import math

import numpy as np

from chipaudit.oracle.formats import NumberFormat

LAMBDA = 4.0
# Projection checks compare a sum of n signed errors with its bound. With Rademacher signs drawn after
# the result exists, Hoeffding gives P(|sum e_j r_j| > t) <= 2 exp(-t^2 / (2 sum e_j^2)); at t = 6 times
# the root-sum-square bound, a false alarm per row is below 3e-8, before the margin LAMBDA already adds.
LAMBDA_PROJECTION = 6.0
# A product finished by a scale or an added input (baddbmm's alpha and beta*input, a linear layer's
# bias) may be rounded to the output format before it is finished: torch's own decompositions of addmm
# and baddbmm (torch/_decomp/decompositions.py), which compilers and out-of-tree backends use, compute
# mm or bmm, multiply by alpha and add beta*input in kernels of their own, each rounding its result;
# cuDNN does the same with a convolution's bias (oracle/operators.py). Two roundings of the bare
# product (the product, then its scaling) are allowed, each of up to u_out times its magnitude.
STAGED_ROUNDINGS = 2.0


def growth(fmt: NumberFormat, k: int) -> float:
    if fmt.truncation_block:
        return float(math.ceil(k / fmt.truncation_block))
    return math.sqrt(k)


def floor(fmt: NumberFormat) -> float:
    if fmt.integer:
        return 0.0
    out = np.float16 if fmt.name == "fp16" else np.float64 if fmt.name == "fp64" else np.float32
    return float(np.finfo(out).smallest_subnormal) / 2


def coefficients(fmt: NumberFormat, k: int) -> tuple[float, float]:
    """(alpha, beta) such that the bound is alpha*|c| + beta*s2 + floor."""
    g = growth(fmt, k)
    alpha = fmt.u_out + LAMBDA * fmt.u_acc * g
    beta = LAMBDA * fmt.u_acc * g + 2 * LAMBDA * fmt.u_in
    return alpha, beta


def element_bound(fmt: NumberFormat, k: int, c_abs: np.ndarray, s2: np.ndarray) -> np.ndarray:
    alpha, beta = coefficients(fmt, k)
    return alpha * c_abs + beta * s2 + floor(fmt)


def gamma(k: int, u: float) -> float:
    """gamma_k = k*u / (1 - k*u): the worst-case relative error of k rounded operations (Higham,
    "Accuracy and Stability of Numerical Algorithms", 2nd ed., 2002, Lemma 3.1)."""
    return k * u / (1.0 - k * u) if k * u < 1.0 else math.inf


def worst_case_bound(fmt: NumberFormat, k: int, c_abs: np.ndarray, abs_sum: np.ndarray) -> np.ndarray:
    """The deterministic bound for structured operands (constant, sorted, cancelling, special values),
    where the probabilistic model above does not apply:

        |c_device - c_exact| <= u_out*|c| + (gamma_k(u_acc)*(1 + u_out) + 2*u_in) * sum_l|a_l*b_l|
                                + k*floor_acc + floor

    (Higham 2002, eq. 3.5, for any summation order), plus one rounding of the stored output, the input
    rounding of TF32-like modes, and one underflow floor per accumulation step (in the accumulator's
    format: float64 for fp64, float32 otherwise) and for the output. A truncating accumulator's u_acc
    is already its whole unit in the last place, and any of its k additions may truncate.
    """
    coefficient = gamma(k, fmt.u_acc) * (1.0 + fmt.u_out) + 2.0 * fmt.u_in
    accumulator = np.float64 if fmt.name == "fp64" else np.float32
    floor_acc = float(np.finfo(accumulator).smallest_subnormal) / 2
    return fmt.u_out * c_abs + coefficient * abs_sum + k * floor_acc + floor(fmt)
