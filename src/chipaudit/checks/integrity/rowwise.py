"""Operators over the last axis of rows: softmax, layer norm and RMS norm (integrity.ops.normalization),
and sum, mean and max (integrity.ops.reduction). See operators.py for the threat, method and limits
they share with the other operator checks, and oracle/operators.py for their error bounds.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from chipaudit.checks.integrity.opcheck import Builder, OpCase, OperatorCheck, upload
from chipaudit.oracle import ieee
from chipaudit.oracle import operators as ref
from chipaudit.oracle.formats import NumberFormat
from chipaudit.report.model import Level

# Rows x length of normalisation and reduction cases, per level.
ROWS = {Level.quick: ((32, 1000), (8, 4096)), Level.standard: ((64, 1000), (16, 4096), (4, 32768)),
        Level.deep: ((64, 1000), (16, 4096), (4, 32768), (2, 262144))}
LAYER_NORM_EPS = 1e-5
RMS_NORM_EPS = 1e-6  # Llama's


# ----- softmax and normalisation -----

def rows_with_corners(rng: np.random.Generator, fmt: NumberFormat, rows: int, k: int) -> np.ndarray:
    """Random rows, then corner rows: constant, zero, a NaN, an +Inf, a -Inf, huge, tiny (and room for
    more: at least 12 rows)."""
    x = rng.standard_normal((max(rows, 12), k))
    x[0] = 0.75
    x[1] = 0.0
    x[2, rng.integers(k)] = np.nan
    x[3, rng.integers(k)] = np.inf
    x[4, rng.integers(k)] = -np.inf
    x[5] *= 2.0 ** (math.frexp(fmt.max_finite)[1] // 4)
    x[6] *= ieee.smallest_normal(fmt) * 2**12
    return fmt.quantize(x)


class NormalizationCheck(OperatorCheck):
    id = "integrity.ops.normalization"

    def cases(self, level: Level, fmt: NumberFormat) -> list[Builder]:
        builders: list[Builder] = []
        for rows, k in ROWS[level]:
            builders += [self._softmax(rows, k, corner) for corner in (False, True)]
            builders += [self._layer_norm(rows, k, corner) for corner in (False, True)]
            builders += [self._rms_norm(rows, k, corner) for corner in (False, True)]
        return builders

    @staticmethod
    def _softmax(rows: int, k: int, corner: bool) -> Builder:
        def build(rng: np.random.Generator, fmt: NumberFormat) -> OpCase:
            if corner:
                x = rows_with_corners(rng, fmt, rows, k)
                x[7, rng.random(k) < 0.5] = -np.inf  # attention-style masking
                x[8] = -np.inf  # a fully masked row
                x[9] = fmt.quantize(rng.standard_normal(k) * min(1e4, fmt.max_finite / 8))  # one-hot-like
            else:
                x = fmt.quantize(rng.standard_normal((rows, k)) * 3.0)
            return OpCase("softmax", f"softmax {x.shape[0]}x{k}{' corners' if corner else ''}",
                          lambda device: torch.softmax(upload(x, fmt, device), dim=-1),
                          ref.softmax_expectation(x, fmt, structured=corner), evidence={"shape": [rows, k]})
        return build

    @staticmethod
    def _layer_norm(rows: int, k: int, corner: bool) -> Builder:
        def build(rng: np.random.Generator, fmt: NumberFormat) -> OpCase:
            w, b = fmt.quantize(1.0 + 0.1 * rng.standard_normal(k)), fmt.quantize(0.1 * rng.standard_normal(k))
            if corner:
                x = rows_with_corners(rng, fmt, rows, k)
                x[7] = fmt.quantize(100.0 + rng.standard_normal(k))  # a large mean: one-pass variance cancels
                w[rng.integers(k)] = np.nan
            else:
                x = fmt.quantize(rng.standard_normal((rows, k)))
            return OpCase("layer_norm", f"layer norm {x.shape[0]}x{k}{' corners' if corner else ''}",
                          lambda device: F.layer_norm(upload(x, fmt, device), (k,), upload(w, fmt, device),
                                                      upload(b, fmt, device), LAYER_NORM_EPS),
                          ref.layer_norm_expectation(x, w, b, LAYER_NORM_EPS, fmt, structured=corner),
                          evidence={"shape": [rows, k]})
        return build

    @staticmethod
    def _rms_norm(rows: int, k: int, corner: bool) -> Builder:
        def build(rng: np.random.Generator, fmt: NumberFormat) -> OpCase:
            w = fmt.quantize(1.0 + 0.1 * rng.standard_normal(k))
            x = rows_with_corners(rng, fmt, rows, k) if corner else fmt.quantize(rng.standard_normal((rows, k)))
            if corner:  # keep sum(x^2) inside float32: RMS norm squares before it divides
                x[5] = fmt.quantize(rng.standard_normal(k) * min(2.0**40, fmt.max_finite) / math.sqrt(k) / 8)
            return OpCase("rms_norm", f"RMS norm {x.shape[0]}x{k}{' corners' if corner else ''}",
                          lambda device: F.rms_norm(upload(x, fmt, device), (k,), upload(w, fmt, device),
                                                    RMS_NORM_EPS),
                          ref.rms_norm_expectation(x, w, RMS_NORM_EPS, fmt, structured=corner),
                          evidence={"shape": [rows, k]})
        return build


# ----- reductions -----

class ReductionCheck(OperatorCheck):
    id = "integrity.ops.reduction"

    def cases(self, level: Level, fmt: NumberFormat) -> list[Builder]:
        builders: list[Builder] = []
        for rows, k in ROWS[level]:
            builders += [self._sum(rows, k, kind, mean) for kind in ("random", "integers", "corners")
                         for mean in (False, True)]
            builders += [self._max(rows, k)]
        return builders

    @staticmethod
    def _sum(rows: int, k: int, kind: str, mean: bool) -> Builder:
        name = "mean" if mean else "sum"

        def build(rng: np.random.Generator, fmt: NumberFormat) -> OpCase:
            if kind == "random":
                # iid with a mean, as activations have: a sum accumulated in the narrow format, one
                # rounding per term, drifts or stagnates far beyond the staged bound. The mean keeps the
                # sum (over all elements, below) near 2^13, inside fp16's range.
                mean_value = min(0.5, 2.0**13 / (rows * k))
                x, bound = fmt.quantize(rng.standard_normal((rows, k)) + mean_value), "random"
            elif kind == "integers":
                # Known answers: small integers, 0..k-1 (k(k-1)/2), alternating signs (0), a constant,
                # in at least three rows (deep's longest rows come two at a time).
                x = rng.integers(-3, 4, (max(rows, 3), k)).astype(np.float64)
                x[0], x[1], x[2] = np.arange(k) % 2048, np.where(np.arange(k) % 2, -1.0, 1.0), 1.0
                x = fmt.quantize(x)
                exact = (np.abs(x).sum(axis=-1).max() <= fmt.exact_int_limits()[1]
                         and np.abs(x).max() <= fmt.exact_int_limits()[0])
                bound = "exact" if exact and not mean else "worst"
            else:
                x, bound = rows_with_corners(rng, fmt, rows, k), "worst"
                x[7, :2] = (np.inf, -np.inf)  # Inf - Inf
                x[8] = fmt.max_finite / 2  # sums beyond the format's range
            whole = kind == "random" and rows > 1

            def run(device: str) -> torch.Tensor:
                t = upload(x, fmt, device)
                if whole:  # a reduction over every element, as a one-element result
                    return (t.mean() if mean else t.sum()).reshape(1)
                return t.mean(dim=-1) if mean else t.sum(dim=-1)

            host = x.reshape(1, -1) if whole else x
            return OpCase(name, f"{name} over {'all of ' if whole else 'rows of '}{x.shape[0]}x{k} ({kind})", run,
                          ref.sum_expectation(host, fmt, bound, mean=mean), evidence={"shape": [rows, k]})
        return build

    @staticmethod
    def _max(rows: int, k: int) -> Builder:
        def build(rng: np.random.Generator, fmt: NumberFormat) -> OpCase:
            x = rows_with_corners(rng, fmt, rows, k)
            x[7] = -0.0
            x[8] = -np.inf
            return OpCase("max", f"max over rows of {x.shape[0]}x{k}",
                          lambda device: torch.amax(upload(x, fmt, device), -1), ref.max_expectation(x),
                          evidence={"shape": [rows, k]})
        return build
