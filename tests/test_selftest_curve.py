"""The per-bit detection curve of the matrix-product checker."""

from __future__ import annotations

import pytest

from chipaudit.selftest import curve


def test_fp32_uniform_operands_meet_the_acceptance_figure() -> None:
    c = curve.measure("fp32", "uniform_positive", k=1024, side=128, seed=3)
    assert c.products == 16384 >= 10_000 and c.false_positives == 0
    assert c.meets_requirement()
    assert c.rate("sign", 0) == 1.0 and all(c.rate("exponent", i) == 1.0 for i in range(8))
    assert all(c.rate("mantissa", i) == 1.0 for i in range(23 - 12, 23))
    assert c.rate("mantissa", 0) == 0.0  # a last-bit flip is rounding noise: no honest bound can see it
    assert len(c.bits) == 32 and {b.field for b in c.bits} == {"sign", "exponent", "mantissa"}


def test_normal_operands_hide_low_order_flips_near_zero() -> None:
    c = curve.measure("fp32", "normal", k=1024, side=64, seed=3)
    assert c.false_positives == 0 and c.rate("sign", 0) > 0.99
    assert c.rate("mantissa", 8) < 1.0 and c.rate("mantissa", 22) > 0.99
    assert not c.meets_requirement()


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_curves(dtype: str) -> None:
    c = curve.measure(dtype, "uniform_positive", k=1024, side=64, seed=3)
    _, exponent, mantissa = curve.LAYOUT[dtype]
    assert len(c.bits) == 16 and c.false_positives == 0
    assert c.rate("sign", 0) == 1.0 and all(c.rate("exponent", i) == 1.0 for i in range(exponent))
    assert c.rate("mantissa", mantissa - 1) == 1.0
    assert c.as_dict()["bits"][15]["field"] == "sign"
