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

import itertools
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chipaudit.oracle import tolerance
from chipaudit.oracle.formats import NumberFormat

PROJECTION_VECTORS = 2
SAMPLED_ROWS = 8
# Bytes of float64 in one block of a pass over a matrix (_Pass): with the block's squares and its
# widened copy it stays within a core's L2 cache (1 MiB on the AMD EPYC that measured this; 1-2 MiB on
# current server CPUs), large enough that NumPy's per-call cost stays small beside the arithmetic.
BLOCK_BYTES = 2**19
# Fixed ranges of rows that a pass sums apart and adds in order (the sums never depend on the host);
# host threads read them side by side, up to HOST_THREADS, never more than the cores this process may use.
PASS_CHUNKS = 4
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
HOST_THREADS = min(PASS_CHUNKS, _CORES)
# Below this many elements a pass is read by the calling thread alone: threads would cost more than they save.
_THREADED_ELEMENTS = 2**20
# Up to this many rows, a pass's projection goes row by row (_accumulate_product).
GEMV_ROWS = PROJECTION_VECTORS
# Column norms summed from float32 squares (relative error below rows * 2**-24, rows being at most the
# rows of one block, which are then added in float64) are scaled up by this much so that they never
# understate the norm.
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
    """Properties of the operands alone, which bound the root-sum-square of products by Cauchy-Schwarz:
    s2_ij <= max_l|a_il| * ||b_:j||_2.

    A caller that verifies many products of the same operands (the burn-in) computes them once, when the
    operands are drawn (OpenDCDiag's golden values up front); `verify_sampled` otherwise gathers them in
    the passes over A and B that its projections make anyway.
    """

    a_row_max: np.ndarray  # (batch, m)
    b_col_norm: np.ndarray  # (batch, n)

    @classmethod
    def of(cls, a: np.ndarray, b: np.ndarray) -> OperandNorms:
        return cls(np.stack([_Pass.over(x, row_max=True).row_max for x in a]),
                   np.stack([np.sqrt(_Pass.over(x, col_sq=True).col_sq) for x in b]))


@dataclass
class _Pass:
    """What one read of a matrix x (rows, cols) gives: left @ x in float64, the largest |x| of each row,
    and the sum of squares of each column (float64, over float32 squares of a narrower x).

    The read goes by blocks of rows that stay in a core's cache while they are widened to float64,
    projected and reduced, so that the memory holding x is read once and no float64 copy of it is
    made. The blocks fall into PASS_CHUNKS fixed ranges of rows, each summed on its own and the ranges
    added in order, so that the result is the same whatever the number of host threads that read them.
    """

    projected: np.ndarray | None = None
    row_max: np.ndarray | None = None
    col_sq: np.ndarray | None = None

    @classmethod
    def over(cls, x: np.ndarray, left: np.ndarray | None = None, row_max: bool = False,
             col_sq: bool = False) -> _Pass:
        rows = x.shape[0]
        edges = np.linspace(0, rows, min(PASS_CHUNKS, rows) + 1)
        spans = list(itertools.pairwise(int(e) for e in edges))
        row_max_out = np.empty(rows) if row_max else None
        if len(spans) == 1 or x.size < _THREADED_ELEMENTS:
            parts = [_read(x, left, row_max_out, col_sq, r0, r1) for r0, r1 in spans]
        else:
            with ThreadPoolExecutor(min(HOST_THREADS, len(spans))) as pool:
                parts = list(pool.map(lambda span: _read(x, left, row_max_out, col_sq, *span), spans))
        out = cls(row_max=row_max_out)
        if left is not None:
            out.projected = sum(p[0] for p in parts[1:]) + parts[0][0]
        if col_sq:
            out.col_sq = sum(p[1] for p in parts[1:]) + parts[0][1]
        return out


def _read(x: np.ndarray, left: np.ndarray | None, row_max: np.ndarray | None, col_sq: bool,
          r0: int, r1: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """One chunk of rows [r0, r1) of a _Pass, block by block."""
    cols = x.shape[1]
    step = max(1, BLOCK_BYTES // (8 * cols))
    projected = np.zeros((left.shape[0], cols)) if left is not None else None
    squares = np.zeros(cols) if col_sq else None
    wide = np.empty((step, cols)) if left is not None and x.dtype != np.float64 else None
    # A narrow matrix is squared in float32, where its squares cannot overflow; float64 stays float64.
    square_type = np.float64 if x.dtype == np.float64 else np.float32
    with np.errstate(over="ignore", invalid="ignore"):
        for i0 in range(r0, r1, step):
            i1 = min(i0 + step, r1)
            block = x[i0:i1]
            if projected is not None and left is not None:
                if wide is not None:
                    np.copyto(wide[: i1 - i0], block)
                    block = wide[: i1 - i0]
                _accumulate_product(projected, left[:, i0:i1], block)
            if row_max is not None:
                np.maximum(x[i0:i1].max(axis=1), -x[i0:i1].min(axis=1), out=row_max[i0:i1])
            if squares is not None:
                squares += np.einsum("ij,ij->j", x[i0:i1], x[i0:i1], dtype=square_type)
    return projected, squares


def _accumulate_product(out: np.ndarray, left: np.ndarray, block: np.ndarray) -> None:
    """out += left @ block. A few rows of `left` go one by one as matrix-vector products, which read the
    block where it lies; a matrix product first copies the whole block into panels, which costs more
    (measured: 2.3 against 3.3 ms for two rows over a 2048^2 float64 matrix in 32-row blocks)."""
    if left.shape[0] <= GEMV_ROWS:
        for row, target in zip(left, out, strict=True):
            target += row @ block
    else:
        out += left @ block


def verify_sampled(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, fmt: NumberFormat, norms: OperandNorms | None = None,
    rows: int = SAMPLED_ROWS, epilogue: Epilogue | None = None,
) -> tuple[Verification, Verification]:
    """Freivalds projections and secretly sampled rows of a product too large to recompute.

    Both are drawn from one fresh secret seed after the device answered. Each of A, B and C is read
    once (_Pass): A gives r^T A (and the operand norms' row maxima, unless `norms` came with the
    operands), B gives [r^T A; A[rows]] @ B, that is r^T (A B) and the sampled rows (and B's column
    norms), and C gives r^T C and C's column norms. Projections are summed in float64 so that the
    oracle's own rounding stays far below the device's bound.

    Projection (column-wise): r^T C against (r^T A) B. Its bound per column j is the root-sum-square of
    the element bounds over the column, bounded by the triangle inequality as
        alpha*||c_:j|| + beta*||max_l|a_il| over i||_2 * ||b_:j||_2 + floor*sqrt(m),
    times LAMBDA_PROJECTION (tolerance.py), plus, after an epilogue, the staged roundings of the bare
    product's column. Rows: every element of the sampled rows against its own bound, with s2 bounded by
    Cauchy-Schwarz (OperandNorms).
    """
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
    gathered = norms or OperandNorms(np.empty((nb, m)), np.empty((nb, n)))
    for bi in range(nb):
        rt = rng.choice((-1.0, 1.0), size=(m, PROJECTION_VECTORS)).T.copy()
        over_a = _Pass.over(a[bi], rt, row_max=norms is None)
        over_b = _Pass.over(b[bi], np.vstack([over_a.projected, a[bi, picks[bi]]]), col_sq=norms is None)
        if norms is None:
            gathered.a_row_max[bi], gathered.b_col_norm[bi] = over_a.row_max, np.sqrt(over_b.col_sq)
        assert over_b.projected is not None
        rhs[bi], expected[bi] = over_b.projected[:PROJECTION_VECTORS], over_b.projected[PROJECTION_VECTORS:]
        over_c = _Pass.over(c[bi], rt, col_sq=True)
        lhs[bi] = over_c.projected
        # Column norms only scale the bound; summed from float32 squares they are scaled up by
        # NORM_SAFETY, and one that overflows becomes Inf, whose column then fails below as it should.
        c_norm = np.sqrt(over_c.col_sq) * NORM_SAFETY
        a_max_norm = float(np.sqrt(np.dot(gathered.a_row_max[bi], gathered.a_row_max[bi])))
        proj_bound[bi, 0] = alpha * c_norm + beta * a_max_norm * gathered.b_col_norm[bi] + floor * np.sqrt(m)
        if epilogue is not None:
            proj_bound[bi, 0] += staged_bound(fmt, epilogue.bare_column_norms(a[bi], b[bi], c_norm))
    # A column holding Inf would get an infinite bound; NaN makes the comparison fail as it must.
    proj_bound[~np.isfinite(proj_bound)] = np.nan
    proj_bound = tolerance.LAMBDA_PROJECTION * factor * np.broadcast_to(proj_bound, lhs.shape)
    projection = _compare("projection", lhs, rhs, proj_bound, lambda idx: (idx[0], idx[2]))

    batch = np.arange(nb)[:, None]
    s2 = gathered.a_row_max[batch, picks][:, :, None] * gathered.b_col_norm[:, None, :]
    row_bound = tolerance.element_bound(fmt, k, np.abs(expected), s2)
    if epilogue is not None:
        row_bound = row_bound + staged_bound(fmt, epilogue.bare(a[batch, picks], b, expected))
    row_bound = row_bound * factor
    sampled = _compare("rows", c[batch, picks], expected, row_bound,
                       lambda idx: (idx[0], picks[idx[0]][idx[1]], idx[2]))
    projection.secret_seed = sampled.secret_seed = seed
    return projection, sampled
