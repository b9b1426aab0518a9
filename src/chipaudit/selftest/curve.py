"""The per-bit detection curve of the matrix-product checker: the figure the literature on silent data
corruption uses to compare checkers.

For each format, products C = A @ B are computed on the device and checked by the same element-wise
oracle the gemm check uses (oracle/matmul.verify_full). Then every element of C gets one bit flipped, at
one bit position at a time (sign, each exponent bit, each mantissa bit), and the checker judges the
flipped result again; the detection rate of a bit position is the share of elements whose flip it
caught. The unflipped results count the false positives over the same number of products (one product
is one output element: one dot product of length k).

Since the element-wise check judges each element by its own bound, flipping every element at once
and counting the elements found wrong gives exactly the rate of flipping one element at a time.

Two operand distributions: uniform in [0.5, 1), where no cancellation hides an element's size, and
normal, where elements near zero make low-order flips smaller than any tolerance must allow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from chipaudit.checks.integrity.gemm import to_host
from chipaudit.checks.integrity.operands import draw
from chipaudit.oracle.formats import FORMATS
from chipaudit.oracle.matmul import verify_full

# (bits, exponent bits, mantissa bits) per format.
LAYOUT = {"fp32": (32, 8, 23), "bf16": (16, 8, 7), "fp16": (16, 5, 10)}
_UINT = {32: np.uint32, 16: np.uint16}
# The acceptance figure: fp32, k = 1024, uniform [0.5, 1): sign, every exponent bit and the top
# 12 mantissa bits caught every time, and no false positive.
REQUIRED_TOP_MANTISSA = 12


@dataclass
class BitRate:
    bit: int  # position in the word, 0 = least significant
    field: str  # sign | exponent | mantissa
    index: int  # position within its field, 0 = least significant
    detected: int
    trials: int

    @property
    def rate(self) -> float:
        return self.detected / self.trials if self.trials else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"bit": self.bit, "field": self.field, "index": self.index, "detected": self.detected,
                "trials": self.trials, "rate": self.rate}


@dataclass
class Curve:
    dtype: str
    distribution: str
    k: int
    products: int
    false_positives: int
    bits: list[BitRate] = field(default_factory=list)

    def rate(self, field_name: str, index: int) -> float:
        return next(b.rate for b in self.bits if b.field == field_name and b.index == index)

    def meets_requirement(self) -> bool:
        """Sign, every exponent bit and the top REQUIRED_TOP_MANTISSA mantissa bits (all of them in a
        format with fewer) at 100%, and no false positive."""
        _, exponent, mantissa = LAYOUT[self.dtype]
        must = [("sign", 0)] + [("exponent", i) for i in range(exponent)] + [
            ("mantissa", i) for i in range(max(0, mantissa - REQUIRED_TOP_MANTISSA), mantissa)]
        return self.false_positives == 0 and all(self.rate(f, i) == 1.0 for f, i in must)

    def lowest_always_detected_mantissa(self) -> int | None:
        """The lowest mantissa bit from which every higher one is always detected (None: not even the top)."""
        _, _, mantissa = LAYOUT[self.dtype]
        lowest = None
        for i in range(mantissa - 1, -1, -1):
            if self.rate("mantissa", i) < 1.0:
                break
            lowest = i
        return lowest

    def as_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "distribution": self.distribution, "k": self.k, "products": self.products,
                "false_positives": self.false_positives, "bits": [b.as_dict() for b in self.bits],
                "lowest_always_detected_mantissa_bit": self.lowest_always_detected_mantissa()}


def _field(bit: int, width: int, mantissa: int) -> tuple[str, int]:
    if bit == width - 1:
        return "sign", 0
    if bit >= mantissa:
        return "exponent", bit - mantissa
    return "mantissa", bit


def _as_format(values: np.ndarray, dtype: str) -> np.ndarray:
    """The result as an array of its own format's bits (bf16 as the top half of float32)."""
    if dtype == "fp16":
        return values.astype(np.float16)
    if dtype == "bf16":
        return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return values.astype(np.float32)


def _widen(bits: np.ndarray, dtype: str) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # flips that make signalling NaNs
        if dtype == "bf16":
            return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        return bits.astype(np.float64)


def measure(dtype: str, distribution: str, device: str = "cpu", k: int = 1024, side: int = 128,
            seed: int = 0) -> Curve:
    """Detection rate per bit position for side x side products of inner dimension k."""
    fmt = FORMATS[dtype]
    width, _, mantissa = LAYOUT[dtype]
    rng = np.random.default_rng([seed, k, side])
    a, b = draw(rng, distribution, (1, side, k), fmt), draw(rng, distribution, (1, k, side), fmt)
    with torch.no_grad():
        da = fmt.host_buffer(a[0]).to(device).to(fmt.torch_dtype)
        db = fmt.host_buffer(b[0]).to(device).to(fmt.torch_dtype)
        c = to_host(torch.mm(da, db)).astype(np.float64).reshape(1, side, side)
    clean = verify_full(a, b, c, fmt)
    curve = Curve(dtype, distribution, k, c.size, clean.bad)
    stored = _as_format(c, dtype)
    raw = stored.view(_UINT[width])
    for bit in range(width):
        flipped = _widen((raw ^ _UINT[width](1 << bit)).view(stored.dtype), dtype)
        caught = verify_full(a, b, flipped, fmt).bad
        name, index = _field(bit, width, mantissa)
        curve.bits.append(BitRate(bit, name, index, caught, c.size))
    return curve


def measure_all(device: str = "cpu", seed: int = 0) -> list[Curve]:
    return [measure(dtype, distribution, device, seed=seed)
            for dtype in ("fp32", "bf16", "fp16") for distribution in ("uniform_positive", "normal")]
