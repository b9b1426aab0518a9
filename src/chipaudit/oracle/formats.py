"""Number formats as the host oracle sees them: unit roundoff, accumulation precision, and how to put
a host value exactly on the format's grid.

Operands are drawn on the host and rounded here, in NumPy, to values the device format represents
exactly. Moving them to the device is then exact for any honest device, so the oracle knows to the
bit what the device was given without ever asking the device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

import numpy as np
import torch

# Unit roundoffs u = 2**-(p) for a p+1 bit significand (IEEE 754-2008 / vendor format specs).
U_FP64 = 2.0**-53
U_FP32 = 2.0**-24
U_TF32 = 2.0**-11  # 10 explicit mantissa bits (NVIDIA A100 whitepaper, "TF32")
U_FP16 = 2.0**-11
U_BF16 = 2.0**-8
U_E4M3 = 2.0**-4
# fp8 products on accelerators: the tensor cores' "fp32" accumulator keeps fewer bits. NVIDIA Hopper's
# fp8 MMA keeps about 14 bits (DeepSeek-V3 technical report, 2024, section 3.3.2), a 22-bit float with
# 13 mantissa bits whose additions truncate (Zhang et al., "SageAttention2", arXiv:2411.10958, 2024):
# each truncation loses up to one unit in the 13th bit. A truncation happens once per matrix
# instruction, which adds a block of products at once; the smallest fp8 block we know is 16 (AMD
# CDNA3's V_MFMA_F32_32X32X16_FP8; NVIDIA's fp8 mma and wgmma take 32). Honest hardware must not fail
# for that. Measured on an NVIDIA H200 (docs/validation/nvidia-h200-2026-11-27/quick.json: max error
# to bound 0.0156 under the earlier model, one truncation of 2**-14 per product), the worst element
# reaches about 0.12 of this model's bound: within the 20x of the honest error, with 8x margin.
# benchmarks/bound_tightness.py on the same card (docs/validation/README.md, 2026-11-30) gives a worst
# error/bound of 0.32 at k = 16, 0.09 at k = 256, 0.02 at k = 1024 and 0.006 at k = 4096: within 20x
# up to k = 256, and looser beyond, because this card's truncations seldom lose a whole unit, while a
# bound that must hold on every honest accelerator has to allow each of them to (linear in k).
U_FP22_TRUNCATED = 2.0**-13
FP8_MMA_BLOCK = 16


@dataclass(frozen=True)
class NumberFormat:
    name: str
    torch_dtype: torch.dtype
    u_out: float  # rounding of each stored output element
    u_acc: float  # rounding of each accumulation step
    u_in: float = 0.0  # rounding the device applies to inputs before multiplying (TF32)
    # 0: the accumulator rounds to nearest (unbiased errors). n > 0: it truncates once per block of n
    # products, each time by up to u_acc relative (biased errors, which add up linearly).
    truncation_block: int = 0
    u_operand: float = 0.0  # grid of the stored operands; 0 means the same as the output's
    max_finite: float = float(np.finfo(np.float32).max)
    integer: bool = False

    def exact_int_limits(self) -> tuple[int, int]:
        """(largest operand, largest result) for which integer arithmetic is exact in this format.

        A format with unit roundoff u represents every integer up to 1/u exactly; a result must also
        stay exact in the accumulator.
        """
        if self.integer:
            return 127, 2**31 - 1
        operand_u = max(self.u_operand or self.u_out, self.u_in)
        return int(1 / operand_u), int(min(1 / self.u_out, 1 / self.u_acc))

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Round host float64 values to the nearest value of this format; returns float64 (or int64)."""
        if self.integer:
            return np.clip(np.rint(x), -128, 127).astype(np.int64)
        if self.name == "fp64":
            return x.astype(np.float64)
        if self.name in ("fp32", "tf32"):
            return x.astype(np.float32).astype(np.float64)
        if self.name == "fp16":
            return x.astype(np.float16).astype(np.float64)
        if self.name == "bf16":
            return _round_bf16(x.astype(np.float32)).astype(np.float64)
        if self.name == "fp8_e4m3":
            grid = _e4m3_grid()
            idx = np.clip(np.searchsorted(grid, x), 1, len(grid) - 1)
            lo, hi = grid[idx - 1], grid[idx]
            return np.where(np.abs(x - lo) <= np.abs(hi - x), lo, hi)
        raise ValueError(self.name)

    def host_buffer(self, values: np.ndarray) -> torch.Tensor:
        """A CPU tensor holding exactly `values` (already quantized) in a type torch can widen from."""
        if self.integer:
            return torch.from_numpy(values.astype(np.int8))
        if self.name == "fp64":
            return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
        if self.name == "fp16":
            return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float16))
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def _round_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even from float32 to bfloat16, returned as float32. NaN stays NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    out = rounded.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(x), x, out)


@cache
def _e4m3_grid() -> np.ndarray:
    """Every finite float8 e4m3fn value, sorted (OCP 8-bit floating point specification, 2023)."""
    values = []
    for byte in range(256):
        sign = -1.0 if byte & 0x80 else 1.0
        exp, man = (byte >> 3) & 0xF, byte & 0x7
        if exp == 0xF and man == 0x7:
            continue  # NaN
        mag = man / 8 * 2.0**-6 if exp == 0 else (1 + man / 8) * 2.0 ** (exp - 7)
        values.append(sign * mag)
    return np.unique(np.array(values))


FORMATS: dict[str, NumberFormat] = {
    "fp64": NumberFormat("fp64", torch.float64, U_FP64, U_FP64, max_finite=float(np.finfo(np.float64).max)),
    "fp32": NumberFormat("fp32", torch.float32, U_FP32, U_FP32),
    "tf32": NumberFormat("tf32", torch.float32, U_FP32, U_FP32, u_in=U_TF32),
    "fp16": NumberFormat("fp16", torch.float16, U_FP16, U_FP32, max_finite=65504.0),
    "bf16": NumberFormat("bf16", torch.bfloat16, U_BF16, U_FP32,
                         max_finite=float(torch.finfo(torch.bfloat16).max)),
    # fp8 products are requested with fp32 output: operands on the e4m3 grid, results in fp32. This is
    # the accelerators' model; `as_computed_on` gives the CPU's.
    "fp8_e4m3": NumberFormat("fp8_e4m3", torch.float8_e4m3fn, U_FP32, U_FP22_TRUNCATED, u_operand=U_E4M3,
                             max_finite=448.0, truncation_block=FP8_MMA_BLOCK),
    "int8": NumberFormat("int8", torch.int8, 0.0, 0.0, integer=True),
}


def as_computed_on(fmt: NumberFormat, device: str) -> NumberFormat:
    """The format as `device` accumulates it. Only the CPU is known to sum fp8 products in full fp32:
    torch widens the e4m3 operands and multiplies them as fp32 (torch._scaled_mm on the CPU returns the
    bits of torch.mm of the widened operands, tests/test_core_oracle.py), so its bound is fp32's. Its
    honest error stays far below even that (benchmarks/bound_tightness.py: exact up to k = 64, about
    1 % of the bound from k = 256 to 4096): e4m3 operands have 4 significant bits, so every product
    and most partial sums are exact in fp32. The fp32 model holds for any operands and summation
    order; a tighter one would rest on the operands' grid and the order of the sum. Every accelerator
    keeps the reduced-accumulator model above until it is measured to do better: a bound tighter than
    an honest device's error is a false alarm on every audit of it."""
    if fmt.truncation_block and torch.device(device).type == "cpu":
        return replace(fmt, u_acc=U_FP32, truncation_block=0)
    return fmt
