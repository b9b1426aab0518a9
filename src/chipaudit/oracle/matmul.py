"""Host verification of a device's matrix products, in float64 NumPy, never with the device's kernels.

Three methods, by cost:
- `verify_full`: recompute every element on the host and compare it with its own error bound.
- `verify_projection` (Freivalds): compare C @ R with A @ (B @ R) for random sign vectors R, an O(n^2)
  check of an O(n^3) product. R is drawn from a fresh secret seed *after* the device returned C, so a
  device cannot arrange its errors to cancel in the projection. The seed is returned for the record.
- `verify_rows`: recompute a secretly chosen sample of whole rows. Projections see large errors
  anywhere; sampled rows see small ones where they land. Large products get both.

All functions take batched operands: A (b, m, k), B (b, k, n), C (b, m, n), as float64 (or int64).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chipaudit.oracle import tolerance
from chipaudit.oracle.formats import NumberFormat

PROJECTION_VECTORS = 2
SAMPLED_ROWS = 8
# Row blocks keep the float32 -> float64 widening of C inside the cache instead of a full copy.
_ROW_BLOCK = 256


@dataclass
class Verification:
    method: str
    checked: int  # elements compared (full, rows) or row projections compared (projection)
    bad: int = 0
    max_ratio: float = 0.0  # worst |error| / bound over everything checked: the honest headroom
    worst: dict[str, Any] = field(default_factory=dict)
    secret_seed: int | None = None

    @property
    def ok(self) -> bool:
        return self.bad == 0


def _oracle_factor(fmt: NumberFormat) -> float:
    """The float64 oracle rounds too; at fp64 its own error is as large as the device's."""
    return 2.0 if fmt.name == "fp64" else 1.0


def _compare(
    method: str, observed: np.ndarray, expected: np.ndarray, bound: np.ndarray, index_of: Any
) -> Verification:
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(observed - expected)
        # NaN never satisfies <=, so a NaN where a number was due is always bad.
        bad_mask = ~(err <= bound)
        ratio = np.where(bad_mask, np.inf, err / np.maximum(bound, np.finfo(np.float64).tiny))
    v = Verification(method=method, checked=int(err.size), bad=int(bad_mask.sum()))
    v.max_ratio = float(ratio.max()) if ratio.size else 0.0
    if ratio.size:
        flat = int(np.argmax(np.where(bad_mask, np.inf, ratio)))
        idx = np.unravel_index(flat, err.shape)
        v.worst = {
            "index": [int(i) for i in index_of(idx)],
            "observed": float(observed[idx]),
            "expected": float(expected[idx]),
            "abs_error": float(err[idx]),
            "bound": float(bound[idx]),
        }
    return v


def verify_full(a: np.ndarray, b: np.ndarray, c: np.ndarray, fmt: NumberFormat) -> Verification:
    k = a.shape[-1]
    expected = np.matmul(a, b)
    s2 = np.sqrt(np.matmul(a * a, b * b))
    bound = tolerance.element_bound(fmt, k, np.abs(expected), s2) * _oracle_factor(fmt)
    return _compare("full", c, expected, bound, lambda idx: idx)


def verify_exact(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> Verification:
    """Integer-valued operands whose products and sums are exact: the answer has one right bit pattern."""
    expected = np.matmul(a.astype(np.int64), b.astype(np.int64))
    return _compare("exact", c, expected.astype(np.float64), np.zeros(expected.shape), lambda idx: idx)


def verify_rows(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, fmt: NumberFormat, rows: int = SAMPLED_ROWS
) -> Verification:
    seed = secrets.randbits(63)
    rng = np.random.default_rng(seed)
    m = a.shape[1]
    picks = [(bi, np.sort(rng.choice(m, size=min(rows, m), replace=False))) for bi in range(a.shape[0])]
    a_rows = np.stack([a[bi, r] for bi, r in picks])
    c_rows = np.stack([c[bi, r] for bi, r in picks]).astype(np.float64)
    v = verify_full(a_rows, b, c_rows, fmt)
    v.method, v.secret_seed = "rows", seed
    if v.worst:
        bi, ri, col = v.worst["index"]
        v.worst["index"] = [bi, int(picks[bi][1][ri]), col]
    return v


def verify_projection(a: np.ndarray, b: np.ndarray, c: np.ndarray, fmt: NumberFormat) -> Verification:
    """Freivalds' check with a per-row bound (see tolerance.py for the constants).

    The per-element bound alpha*|c_ij| + beta*s2_ij + floor cannot be formed for every element without
    an O(n^3) product, so s2_ij is bounded by max_l|a_il| * ||b_j||_2 (Cauchy-Schwarz), and the row
    bound sqrt(sum_j bound_ij^2) by the triangle inequality:
        alpha*||c_i|| + beta*max|a_i|*||B||_F + floor*sqrt(n)
    """
    seed = secrets.randbits(63)
    rng = np.random.default_rng(seed)
    nb, m, k = a.shape
    n = b.shape[2]
    alpha, beta = tolerance.coefficients(fmt, k)
    floor = tolerance.floor(fmt)
    lhs = np.empty((nb, m, PROJECTION_VECTORS))
    rhs = np.empty_like(lhs)
    bound = np.empty((nb, m, 1))
    for bi in range(nb):
        r = rng.choice((-1.0, 1.0), size=(n, PROJECTION_VECTORS))
        rhs[bi] = a[bi] @ (b[bi] @ r)
        b_frobenius = float(np.sqrt(np.einsum("ij,ij->", b[bi], b[bi])))
        a_max = np.abs(a[bi]).max(axis=1)
        for r0 in range(0, m, _ROW_BLOCK):
            rows = slice(r0, r0 + _ROW_BLOCK)
            block = c[bi, rows].astype(np.float64)
            lhs[bi, rows] = block @ r
            c_norm = np.sqrt(np.einsum("ij,ij->i", block, block))
            bound[bi, rows, 0] = alpha * c_norm + beta * a_max[rows] * b_frobenius + floor * np.sqrt(n)
    # A row holding Inf would get an infinite bound; NaN makes the comparison fail as it must.
    bound[~np.isfinite(bound)] = np.nan
    bound = tolerance.LAMBDA_PROJECTION * _oracle_factor(fmt) * np.broadcast_to(bound, lhs.shape)
    v = _compare("projection", lhs, rhs, bound, lambda idx: idx[:2])
    v.secret_seed = seed
    return v
