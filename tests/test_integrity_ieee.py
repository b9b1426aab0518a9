"""IEEE 754 special-value rules of the host oracle, on small hand-built products and on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chipaudit.oracle import ieee, tolerance
from chipaudit.oracle.formats import FORMATS
from chipaudit.oracle.ieee import Expectation, Rule

FP32, FP16, BF16 = FORMATS["fp32"], FORMATS["fp16"], FORMATS["bf16"]
INF, NAN = np.inf, np.nan


def expect(a: list[list[float]], b: list[list[float]], fmt=FP32, bound: str = "worst") -> Expectation:
    return ieee.dot_expectation(np.array(a, dtype=np.float64)[None], np.array(b, dtype=np.float64)[None], fmt, bound)


def rules(exp: Expectation) -> list[str]:
    return [Rule(int(r)).name for r in exp.rule.ravel()]


def test_nan_propagates_from_either_operand_even_against_zero() -> None:
    exp = expect([[NAN, 0.0], [1.0, 2.0]], [[0.0, 1.0], [0.0, NAN]])
    # Row 0 holds NaN: its whole row; column 1 of B holds NaN: its whole column.
    assert rules(exp) == ["nan", "nan", "finite", "nan"]


def test_zero_times_infinity_and_opposite_infinities_are_nan() -> None:
    assert rules(expect([[INF, 1.0]], [[0.0], [1.0]])) == ["nan"]
    assert rules(expect([[INF, -INF]], [[1.0], [1.0]])) == ["nan"]


def test_infinite_operand_gives_the_signed_infinity() -> None:
    assert rules(expect([[INF, 1.0]], [[2.0], [3.0]])) == ["pos_inf"]
    assert rules(expect([[INF, 1.0]], [[-2.0], [3.0]])) == ["neg_inf"]
    assert rules(expect([[-INF, -INF]], [[-1.0], [-5.0]])) == ["pos_inf"]


def test_infinity_with_a_finite_part_that_may_overflow_the_other_way_is_any_nonfinite() -> None:
    big = float(np.finfo(np.float32).max)
    exp = expect([[INF, big, big]], [[1.0], [-1.0], [-1.0]])
    assert rules(exp) == ["nonfinite"]


def test_exact_results_beyond_the_range_must_overflow() -> None:
    big = 2.0**100
    assert rules(expect([[big, big]], [[big], [big]])) == ["pos_inf"]
    assert rules(expect([[-big]], [[big]])) == ["neg_inf"]
    # fp16: 300 * 300 = 90000 > 65520, accumulated in fp32 then rounded to fp16.
    assert rules(expect([[300.0]], [[300.0]], FP16)) == ["pos_inf"]


def test_results_within_rounding_of_the_threshold_may_go_either_way() -> None:
    threshold = ieee.overflow_threshold(FP16)
    assert threshold == 65520.0
    exp = expect([[65504.0, 16.0]], [[1.0], [1.0]], FP16)  # 65520 exactly: the tie rounds to infinity
    assert rules(exp) == ["either"]


def test_intermediate_overflow_in_some_order_allows_nonfinite() -> None:
    big = float(np.finfo(np.float32).max)
    exp = expect([[big, big, -big]], [[1.0], [1.0], [1.0]])  # exact sum is finite, but big + big overflows
    assert rules(exp) == ["either"]
    assert exp.value[0, 0, 0] == pytest.approx(big)


def test_zero_products_give_an_exact_zero() -> None:
    exp = expect([[0.0, -0.0], [1.5, 2.0]], [[3.0], [-0.0]])
    assert exp.bound[0, 0, 0] == 0.0
    v = ieee.judge(np.array([[[-0.0], [4.5]]]), exp, "t")
    assert v.ok  # the sign of a zero sum is free


def test_worst_case_bound_covers_sequential_float32_summation_of_a_constant() -> None:
    a = np.full((1, 1, 4096), np.float32(0.1), dtype=np.float64)
    b = np.ones((1, 4096, 1))
    acc = np.float32(0.0)
    for x in a.ravel():  # the least accurate honest order: one long chain, every error the same sign
        acc = np.float32(acc + np.float32(x))
    exp = ieee.dot_expectation(a, b, FP32, "worst")
    assert abs(float(acc) - exp.value.item()) > 100 * FP32.u_out * exp.value.item()
    assert ieee.judge(np.array([[[float(acc)]]]), exp, "t").ok
    assert exp.bound.item() <= tolerance.gamma(4096, FP32.u_acc) * 1.01 * exp.value.item() + FP32.u_out * 410


def test_judge_applies_each_rule() -> None:
    exp = Expectation.finite(np.zeros(7), 0.5)
    for i, rule in enumerate(Rule):
        exp.rule[i] = rule
    exp.value[6] = -0.0
    good = np.array([0.25, NAN, INF, -INF, NAN, INF, -0.0])
    assert ieee.judge(good, exp, "t").ok
    bad = np.array([0.75, 0.0, 1e30, INF, 1.0, 0.6, 0.0])
    v = ieee.judge(bad, exp, "t")
    assert v.bad == 7


def test_judge_reports_the_worst_element_in_json_safe_form() -> None:
    exp = Expectation.finite(np.array([1.0, 2.0]), 0.1)
    exp.rule[1] = Rule.nan
    v = ieee.judge(np.array([1.05, 7.0]), exp, "t")
    assert not v.ok and v.worst["rule"] == "nan" and v.worst["observed"] == 7.0
    v = ieee.judge(np.array([NAN, NAN]), exp, "t")
    assert v.worst["observed"] == "nan" and v.worst["rule"] == "finite"


def test_flush_to_zero_is_told_apart_from_a_wrong_answer() -> None:
    tiny = ieee.smallest_normal(BF16)
    a = np.full((1, 1, 64), tiny / 4)  # subnormal operands
    b = np.full((1, 64, 1), 2.0**20)
    ieee_exp = ieee.dot_expectation(a, b, BF16)
    flushed = np.zeros((1, 1, 1))
    v, was_flushed = ieee.judge_flushing(flushed, ieee_exp, lambda: ieee.flushed(a, b, BF16), "t")
    assert v.ok and was_flushed
    v, was_flushed = ieee.judge_flushing(np.ones((1, 1, 1)), ieee_exp, lambda: ieee.flushed(a, b, BF16), "t")
    assert not v.ok and not was_flushed


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_the_cpu_follows_the_rules_on_a_mixed_special_product(dtype: str) -> None:
    fmt = FORMATS[dtype]
    rng = np.random.default_rng(7)
    a = fmt.quantize(rng.standard_normal((1, 16, 32)))
    b = fmt.quantize(rng.standard_normal((1, 32, 16)))
    a[0, 0, 3], a[0, 1, 5], a[0, 2, 7] = NAN, INF, -INF
    b[0, 5, 2] = 0.0
    c = torch.mm(fmt.host_buffer(a[0]).to(fmt.torch_dtype), fmt.host_buffer(b[0]).to(fmt.torch_dtype))
    observed = c.to(torch.float64).numpy()[None]
    exp = ieee.dot_expectation(a, b, fmt)
    assert (exp.rule == Rule.nan).sum() >= 16 and (exp.rule == Rule.pos_inf).any()
    v = ieee.judge(observed, exp, "t")
    assert v.ok, v.worst
    # NaN suppressed into a number is caught.
    observed[np.isnan(observed)] = 0.0
    assert not ieee.judge(observed, exp, "t").ok
