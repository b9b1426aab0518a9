"""IEEE 754 rules for results whose exact value is not an ordinary number, and the judge that applies
them alongside the error bounds.

Every expected element carries a rule:

- `finite`: a number within `bound` of `value`;
- `nan`: NaN. NaN propagates: any NaN operand of a product or a sum makes its result NaN, and so do the
  invalid operations 0*Inf and Inf-Inf (IEEE 754-2019, 7.2);
- `pos_inf` / `neg_inf`: that infinity. An infinite operand times a non-zero number is infinite, and a
  result whose exact value rounds beyond the largest finite number overflows (7.4);
- `nonfinite`: NaN or either infinity. The exact result is not finite, but which kind comes out depends on
  the order of summation (a finite part that may overflow to the opposite infinity, or a function such as
  GELU that IEEE 754 does not define at infinity);
- `either`: finite within `bound`, or non-finite. The exact result is finite, but an intermediate sum may
  overflow in some honest summation order, or the result lies within rounding of the overflow threshold;
- `exact_signed`: exactly `value`, with the sign of a zero (conversions, odd functions at +-0).

Honest hardware rounds and may sum in any order; only these rules hold for every order. The sign of a
zero *sum* is one thing they leave free: a BLAS kernel starts its accumulator at +0, so a dot product of
-0 products may come back +0.

Flush-to-zero: many accelerators treat subnormal inputs as zero (DAZ) and flush subnormal results
(FTZ). `flushed` builds the expectation of such a device, so that a check can tell the documented,
common non-IEEE mode (reported) from a wrong answer (failed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import torch

from chipaudit.oracle import tolerance
from chipaudit.oracle.formats import FORMATS, NumberFormat
from chipaudit.oracle.matmul import Verification, oracle_factor


class Rule(IntEnum):
    finite = 0
    nan = 1
    pos_inf = 2
    neg_inf = 3
    nonfinite = 4
    either = 5
    exact_signed = 6


@dataclass
class Expectation:
    value: np.ndarray  # float64; meaningful where the rule is finite, either or exact_signed
    bound: np.ndarray
    rule: np.ndarray  # Rule codes (int8)

    @classmethod
    def finite(cls, value: np.ndarray, bound: np.ndarray | float) -> Expectation:
        value = np.asarray(value, dtype=np.float64)
        return cls(value, np.broadcast_to(np.asarray(bound, dtype=np.float64), value.shape).copy(),
                   np.zeros(value.shape, dtype=np.int8))

    def set(self, mask: np.ndarray, rule: Rule, value: float | np.ndarray | None = None,
            bound: float | np.ndarray = 0.0) -> None:
        self.rule[mask] = rule
        if value is not None:
            self.value[mask] = value if np.ndim(value) == 0 else np.asarray(value)[mask]
            self.bound[mask] = bound if np.ndim(bound) == 0 else np.asarray(bound)[mask]

    def classify(self) -> None:
        """Rules for values the float64 reference already holds as NaN or infinite."""
        plain = self.rule == Rule.finite
        self.rule[plain & np.isnan(self.value)] = Rule.nan
        self.rule[plain & (self.value == np.inf)] = Rule.pos_inf
        self.rule[plain & (self.value == -np.inf)] = Rule.neg_inf


def smallest_normal(fmt: NumberFormat) -> float:
    return float(torch.finfo(fmt.torch_dtype).tiny)


def overflow_threshold(fmt: NumberFormat) -> float:
    """Exact results at or above this magnitude round to infinity (round to nearest: the largest finite
    number plus half its unit in the last place). Infinite for float64, whose threshold float64 cannot hold."""
    top = fmt.max_finite
    binade = math.frexp(top)[1] - 1
    with np.errstate(over="ignore"):
        return float(np.float64(top) + np.float64(math.ldexp(fmt.u_out, binade)))


def accumulator_threshold(fmt: NumberFormat) -> float:
    """Where partial sums overflow: float64 accumulators for fp64, float32 for every other format."""
    return math.inf if fmt.name == "fp64" else overflow_threshold(FORMATS["fp32"])


def apply_overflow(exp: Expectation, fmt: NumberFormat) -> None:
    """Finite exact results beyond the format's range must overflow; those within rounding of it may."""
    threshold = overflow_threshold(fmt)
    finite = exp.rule == Rule.finite
    magnitude = np.abs(exp.value)
    with np.errstate(invalid="ignore"):
        over = finite & (magnitude - exp.bound > threshold)
        near = finite & ~over & (magnitude + exp.bound >= threshold)
    exp.rule[over & (exp.value > 0)] = Rule.pos_inf
    exp.rule[over & (exp.value < 0)] = Rule.neg_inf
    exp.rule[near] = Rule.either


def dot_expectation(
    a: np.ndarray, b: np.ndarray, fmt: NumberFormat, bound: str = "worst", scale: float = 1.0
) -> Expectation:
    """What a device must return for scale * (A @ B) with operands that may hold NaN, Inf, zeros,
    subnormals and huge values. A (nb, m, k), B (nb, k, n), float64.

    bound: "exact" (the operands make every partial sum exact: zero tolerance), "worst" (the deterministic
    bound for structured operands) or "random" (the probabilistic bound for iid operands).
    """
    k = a.shape[-1]
    fa, fb = np.where(np.isfinite(a), a, 0.0), np.where(np.isfinite(b), b, 0.0)
    ap, an, bp, bn = np.maximum(fa, 0), np.maximum(-fa, 0), np.maximum(fb, 0), np.maximum(-fb, 0)
    pos, neg = ap @ bp + an @ bn, ap @ bn + an @ bp  # magnitudes of the positive and negative products
    value = fa @ fb
    abs_sum = pos + neg
    if bound == "exact":
        err = np.zeros_like(value)
    elif bound == "worst":
        err = tolerance.worst_case_bound(fmt, k, np.abs(value), abs_sum)
    else:
        err = tolerance.element_bound(fmt, k, np.abs(value), np.sqrt((fa * fa) @ (fb * fb)))
    err = np.where(abs_sum == 0, 0.0, err)  # every product an exact zero: the sum is exactly zero
    exp = Expectation.finite(value * scale, err * abs(scale) * oracle_factor(fmt))

    # Intermediate sums may overflow in some order: then any non-finite result is honest too.
    acc_limit = accumulator_threshold(fmt) / (1.0 + tolerance.gamma(k, fmt.u_acc))
    pos_big, neg_big = pos > acc_limit, neg > acc_limit
    apply_overflow(exp, fmt)
    exp.rule[(exp.rule == Rule.finite) & (pos_big | neg_big)] = Rule.either
    exp.rule[(exp.rule == Rule.pos_inf) & neg_big] = Rule.nonfinite
    exp.rule[(exp.rule == Rule.neg_inf) & pos_big] = Rule.nonfinite
    if np.isfinite(a).all() and np.isfinite(b).all():
        return exp

    def count(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return x.astype(np.float64) @ y.astype(np.float64) > 0

    a_pinf, a_ninf, b_pinf, b_ninf = a == np.inf, a == -np.inf, b == np.inf, b == -np.inf
    a_inf, b_inf = a_pinf | a_ninf, b_pinf | b_ninf
    plus = count(a_pinf, b > 0) | count(a_ninf, b < 0) | count(a > 0, b_pinf) | count(a < 0, b_ninf)
    minus = count(a_pinf, b < 0) | count(a_ninf, b > 0) | count(a > 0, b_ninf) | count(a < 0, b_pinf)
    exp.set(plus & ~minus, Rule.pos_inf)
    exp.set(plus & ~minus & neg_big, Rule.nonfinite)
    exp.set(minus & ~plus, Rule.neg_inf)
    exp.set(minus & ~plus & pos_big, Rule.nonfinite)
    nan = (plus & minus) | count(a_inf, b == 0) | count(a == 0, b_inf)
    nan |= np.isnan(a).any(axis=-1)[..., :, None] | np.isnan(b).any(axis=-2)[..., None, :]
    exp.set(nan, Rule.nan)
    return exp


def flushed(a: np.ndarray, b: np.ndarray, fmt: NumberFormat, bound: str = "worst", scale: float = 1.0) -> Expectation:
    """The expectation for a device that flushes subnormal operands and results to zero (DAZ/FTZ):
    subnormal operands become zero, and every operation may lose up to one smallest normal number."""
    tiny = smallest_normal(fmt)

    def daz(x: np.ndarray) -> np.ndarray:
        return np.where(np.abs(x) < tiny, 0.0, x)

    exp = dot_expectation(daz(a), daz(b), fmt, "worst" if bound == "exact" else bound, scale)
    finite = exp.rule == Rule.finite
    exp.bound[finite] += (a.shape[-1] + 1) * tiny * abs(scale)
    return exp


def judge(observed: np.ndarray, exp: Expectation, method: str) -> Verification:
    """Check every element against its rule; the worst element is kept as evidence."""
    obs = np.asarray(observed, dtype=np.float64)
    rule = exp.rule
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(obs - exp.value)
        within = err <= exp.bound
        nonfinite = ~np.isfinite(obs)
        identical = ((obs == exp.value) & (np.signbit(obs) == np.signbit(exp.value))) | (
            np.isnan(obs) & np.isnan(exp.value))
        ok = np.select(
            [rule == Rule.finite, rule == Rule.nan, rule == Rule.pos_inf, rule == Rule.neg_inf,
             rule == Rule.nonfinite, rule == Rule.either],
            [within, np.isnan(obs), obs == np.inf, obs == -np.inf, nonfinite, within | nonfinite],
            default=identical,
        )
        ratio = np.where(rule == Rule.finite, err / np.maximum(exp.bound, np.finfo(np.float64).tiny), 0.0)
        ratio = np.where(ok, np.where(np.isnan(ratio), 0.0, ratio), np.inf)
    v = Verification(method=method, checked=int(obs.size), bad=int((~ok).sum()))
    if obs.size:
        v.max_ratio = float(ratio.max())
        idx = np.unravel_index(int(np.argmax(ratio)), obs.shape)
        v.worst = {
            "index": [int(i) for i in idx], "rule": Rule(int(rule[idx])).name,
            "observed": number(obs[idx]), "expected": number(exp.value[idx]), "bound": number(exp.bound[idx]),
        }
    return v


def number(x: Any) -> float | str:
    """A JSON-safe number: NaN and the infinities as text, -0.0 kept."""
    x = float(x)
    return x if math.isfinite(x) else str(x)


def judge_flushing(
    observed: np.ndarray, ieee: Expectation, ftz: Callable[[], Expectation] | None, method: str
) -> tuple[Verification, bool]:
    """(verification, flushed): a result that fails IEEE gradual underflow but matches the flush-to-zero
    expectation (built only then) passes, and is reported as flushing."""
    v = judge(observed, ieee, method)
    if v.ok or ftz is None:
        return v, False
    v_ftz = judge(observed, ftz(), method + "+ftz")
    return (v_ftz, True) if v_ftz.ok else (v, False)
