"""Host verification of a device's matrix products, in float64 NumPy, never with the device's kernels.

Three methods, by cost:
- `verify_full`: recompute every element on the host and compare it with its own error bound.
- `verify_sampled`, for products too large to recompute:
  - Freivalds projections: compare R^T C with (R^T A) B for random sign vectors R, an O(n^2) check of
    an O(n^3) product. R is drawn from a fresh secret seed *after* the device returned C, so a device
    cannot arrange its errors to cancel in the projection. The seed is returned for the record.
  - sampled rows: recompute a secretly chosen sample of whole rows. Projections see large errors
    anywhere; sampled rows see small ones where they land.

All functions take batched operands: A (b, m, k), B (b, k, n), C (b, m, n), as float64 (or int64). A
product that a model finishes with a scale or an added input (baddbmm, a linear layer) comes as one
product of augmented operands, [alpha*A, 1] @ [B; input], with an `Epilogue` saying which inner terms
were added after the product, so that the bound allows the roundings of the bare product as well.
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
_ROW_BLOCK = 64
# Column norms summed in the result's own precision (fp32: relative error below n * 2**-24) are scaled up
# by this much so that they never understate the norm.
NORM_SAFETY = 1.01


@dataclass
class Verification:
    method: str
    checked: int  # elements compared (full, rows) or column projections compared (projection)
    bad: int = 0
    max_ratio: float = 0.0  # worst |error| / bound over everything checked: the honest headroom
    worst: dict[str, Any] = field(default_factory=dict)
    secret_seed: int | None = None

    @property
    def ok(self) -> bool:
        return self.bad == 0


@dataclass(frozen=True)
class Epilogue:
    """The product was finished after its sum: scaled, and with the last `added_terms` inner terms of the
    augmented operands added (an input or a bias against a column of ones). The bare product, the
    result less those terms, may be rounded to the output format tolerance.STAGED_ROUNDINGS times."""

    added_terms: int = 0

    def bare(self, a: np.ndarray, b: np.ndarray, full: np.ndarray) -> np.ndarray:
        """|the bare product| of each element of `full` (the exact result of a @ b)."""
        t = self.added_terms
        return np.abs(full - np.matmul(a[..., a.shape[-1] - t:], b[:, b.shape[1] - t:])) if t else np.abs(full)

    def bare_column_norms(self, a: np.ndarray, b: np.ndarray, c_norm: np.ndarray) -> np.ndarray:
        """An upper bound on each column's 2-norm of the bare product, for one batch (a (m, k), b (k, n)):
        that of the result plus that of the added terms (triangle inequality)."""
        t = self.added_terms
        if not t:
            return c_norm
        tail_a = a[:, a.shape[-1] - t:]
        return c_norm + np.sqrt(np.einsum("ij,ij->j", tail_a, tail_a)) @ np.abs(b[b.shape[0] - t:])


def staged_bound(fmt: NumberFormat, bare: np.ndarray) -> np.ndarray:
    return tolerance.STAGED_ROUNDINGS * fmt.u_out * bare


def oracle_factor(fmt: NumberFormat) -> float:
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


def verify_full(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, fmt: NumberFormat, epilogue: Epilogue | None = None
) -> Verification:
    k = a.shape[-1]
    expected = np.matmul(a, b)
    s2 = np.sqrt(np.matmul(a * a, b * b))
    bound = tolerance.element_bound(fmt, k, np.abs(expected), s2)
    if epilogue is not None:
        bound = bound + staged_bound(fmt, epilogue.bare(a, b, expected))
    return _compare("full", c, expected, bound * oracle_factor(fmt), lambda idx: idx)


def verify_exact(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> Verification:
    """Operands whose products and sums are exact: the answer has one right bit pattern. They are
    integers, summed in int64, or integers scaled by a power of two (a product's alpha), which float64
    sums exactly as long as the integers stay far below 2**53."""
    if np.array_equal(a, np.rint(a)) and np.array_equal(b, np.rint(b)):
        expected = np.matmul(a.astype(np.int64), b.astype(np.int64)).astype(np.float64)
    else:
        expected = np.matmul(a, b)
    return _compare("exact", c, expected, np.zeros(expected.shape), lambda idx: idx)


@dataclass
class OperandNorms:
    """Properties of the operands alone, computed once when they are drawn (OpenDCDiag's golden values up
    front), so that checking a large product after the device answers costs as few passes as possible.

    They bound the root-sum-square of products by Cauchy-Schwarz: s2_ij <= max_l|a_il| * ||b_:j||_2.
    """

    a_row_max: np.ndarray  # (batch, m)
    b_col_norm: np.ndarray  # (batch, n)

    @classmethod
    def of(cls, a: np.ndarray, b: np.ndarray) -> OperandNorms:
        return cls(np.maximum(a.max(axis=2), -a.min(axis=2)), np.sqrt(np.einsum("bkn,bkn->bn", b, b)))


def verify_sampled(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, fmt: NumberFormat, norms: OperandNorms | None = None,
    rows: int = SAMPLED_ROWS, epilogue: Epilogue | None = None,
) -> tuple[Verification, Verification]:
    """Freivalds projections and secretly sampled rows of a product too large to recompute.

    Both are drawn from one fresh secret seed after the device answered, and both need a product with
    B, so they share a single pass over it: [r^T A; A[rows]] @ B gives r^T (A B) and the sampled rows.

    Projection (column-wise): r^T C against (r^T A) B. Its bound per column j is the root-sum-square of
    the element bounds over the column, bounded by the triangle inequality as
        alpha*||c_:j|| + beta*||max_l|a_il| over i||_2 * ||b_:j||_2 + floor*sqrt(m),
    times LAMBDA_PROJECTION (tolerance.py), plus, after an epilogue, the staged roundings of the bare
    product's column. Rows: every element of the sampled rows against its own bound, with s2 bounded by
    Cauchy-Schwarz (OperandNorms).
    """
    norms = norms or OperandNorms.of(a, b)
    seed = secrets.randbits(63)
    rng = np.random.default_rng(seed)
    nb, m, k = a.shape
    n = b.shape[2]
    alpha, beta = tolerance.coefficients(fmt, k)
    floor = tolerance.floor(fmt)
    factor = oracle_factor(fmt)
    lhs = np.empty((nb, PROJECTION_VECTORS, n))
    rhs = np.empty_like(lhs)
    proj_bound = np.empty((nb, 1, n))
    picks = [np.sort(rng.choice(m, size=min(rows, m), replace=False)) for _ in range(nb)]
    expected = np.empty((nb, len(picks[0]), n))
    for bi in range(nb):
        r = rng.choice((-1.0, 1.0), size=(m, PROJECTION_VECTORS))
        both = np.vstack([r.T @ a[bi], a[bi, picks[bi]]]) @ b[bi]
        rhs[bi], expected[bi] = both[:PROJECTION_VECTORS], both[PROJECTION_VECTORS:]
        lhs[bi] = sum(r[r0 : r0 + _ROW_BLOCK].T @ c[bi, r0 : r0 + _ROW_BLOCK].astype(np.float64)
                      for r0 in range(0, m, _ROW_BLOCK))
        # Column norms only scale the bound, so float32 is plenty for them (a half-precision result's
        # squares would overflow its own format); a norm that overflows float32 becomes Inf, and its
        # column then fails below as it should.
        cb = c[bi] if c.dtype.itemsize >= 4 else c[bi].astype(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            c_norm = np.sqrt(np.einsum("ij,ij->j", cb, cb).astype(np.float64)) * NORM_SAFETY
        a_max_norm = float(np.sqrt(np.dot(norms.a_row_max[bi], norms.a_row_max[bi])))
        proj_bound[bi, 0] = alpha * c_norm + beta * a_max_norm * norms.b_col_norm[bi] + floor * np.sqrt(m)
        if epilogue is not None:
            proj_bound[bi, 0] += staged_bound(fmt, epilogue.bare_column_norms(a[bi], b[bi], c_norm))
    # A column holding Inf would get an infinite bound; NaN makes the comparison fail as it must.
    proj_bound[~np.isfinite(proj_bound)] = np.nan
    proj_bound = tolerance.LAMBDA_PROJECTION * factor * np.broadcast_to(proj_bound, lhs.shape)
    projection = _compare("projection", lhs, rhs, proj_bound, lambda idx: (idx[0], idx[2]))

    batch = np.arange(nb)[:, None]
    s2 = norms.a_row_max[batch, picks][:, :, None] * norms.b_col_norm[:, None, :]
    row_bound = tolerance.element_bound(fmt, k, np.abs(expected), s2)
    if epilogue is not None:
        row_bound = row_bound + staged_bound(fmt, epilogue.bare(a[batch, picks], b, expected))
    row_bound = row_bound * factor
    sampled = _compare("rows", c[batch, picks], expected, row_bound,
                       lambda idx: (idx[0], picks[idx[0]][idx[1]], idx[2]))
    projection.secret_seed = sampled.secret_seed = seed
    return projection, sampled
