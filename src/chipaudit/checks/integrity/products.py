"""The product paths a model uses, and what each is to the host oracle: how integrity.gemm and the
behaviour workloads lay a case's operands out on the device, call the path, and present the call to
the oracle as one batched product (gemm.py's docstring is the contract).
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch

from chipaudit.oracle import matmul as oracle
from chipaudit.oracle.formats import NumberFormat


class Case(Protocol):
    """What a path needs of a case (integrity.gemm's `Case`, a behaviour workload's task)."""

    @property
    def op(self) -> str: ...
    @property
    def batch(self) -> int: ...
    @property
    def m(self) -> int: ...
    @property
    def k(self) -> int: ...
    @property
    def n(self) -> int: ...
    @property
    def heads(self) -> int: ...
    @property
    def alpha(self) -> float: ...

# The paths, and how each is called. Attention paths read a case's batch as batch/heads sequences of
# `heads` heads, m as queries, and k, n as head_dim and keys (scores) or keys and head_dim (PV).
PATHS: dict[str, str] = {
    "mm": "torch.mm(a, b)",
    "bmm": "torch.bmm(a, b)",
    "linear": "F.linear(x, weight, bias)",
    "baddbmm": "torch.baddbmm(empty, q, k.transpose(1, 2), beta=0, alpha=1/sqrt(head_dim))",
    "baddbmm_bias": "torch.baddbmm(bias, q, k_t, beta=1, alpha=1/sqrt(head_dim))",
    "matmul": "torch.matmul((B, H, m, k), (k, n))",
    "matmul_heads": "torch.matmul((B, 1, m, k), (H, k, n))",
    "einsum_scores": "torch.einsum('bhqd,bhkd->bhqk', q, k)",
    "einsum_pv": "torch.einsum('bhqk,bhkd->bhqd', p, v)",
}
_EINSUM = {"einsum_scores": "bhqd,bhkd->bhqk", "einsum_pv": "bhqk,bhkd->bhqd"}
SCALED = frozenset({"baddbmm", "baddbmm_bias"})


def attention_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


class Operands:
    """One case's operands, on the host (float64, exact values, shaped as `operand_shapes` says) and on
    the device (laid out as the path's callers do)."""

    def __init__(self, case: Case, fmt: NumberFormat, a: np.ndarray, b: np.ndarray, bias: np.ndarray | None):
        self.case, self.fmt = case, fmt
        self.a, self.b, self.bias = a, b, bias

    def host_augmented(self) -> tuple[np.ndarray, np.ndarray]:
        """Every path as one batched product: operands a broadcast shares are repeated, the scale goes
        into A and an added input (a bias) is one more term, [alpha*x, 1] @ [B; bias]."""
        case, a, b = self.case, self.a, self.b
        if case.op == "matmul_heads":
            a, b = np.repeat(a, case.heads, axis=0), np.tile(b, (case.batch // case.heads, 1, 1))
        if case.alpha != 1.0:
            a = a * case.alpha
        if self.bias is not None:
            a = np.concatenate([a, np.ones((*a.shape[:2], 1))], axis=2)
            b = np.concatenate([b, self.bias.reshape(b.shape[0], 1, -1)], axis=1)
        return a, b

    @property
    def epilogue(self) -> oracle.Epilogue | None:
        """What the device does after the bare product: a scale, an added bias (the last inner term)."""
        if self.bias is None and self.case.alpha == 1.0:
            return None
        return oracle.Epilogue(added_terms=0 if self.bias is None else 1)

    def upload(self, device: str) -> tuple[torch.Tensor, ...]:
        def dev(x: np.ndarray) -> torch.Tensor:
            return self.fmt.host_buffer(x).to(device).to(self.fmt.torch_dtype)

        case, a, b = self.case, self.a, self.b
        op, m, k, n = case.op, case.m, case.k, case.n
        heads = (case.batch // case.heads, case.heads)
        if op == "mm":
            return dev(a[0]), dev(b[0])
        if op == "bmm":
            return dev(a), dev(b)
        if op == "linear":
            weight = np.ascontiguousarray(b[0].T)  # nn.Linear stores (out_features, in_features)
            return dev(a.reshape(case.batch, m, k)), dev(weight), dev(self.bias)
        if op == "baddbmm":  # GPT-2: an uninitialised input, ignored at beta=0; keys transposed as a view
            return dev(np.full((case.batch, m, n), np.nan)), dev(a), dev(np.swapaxes(b, 1, 2).copy()).transpose(1, 2)
        if op == "baddbmm_bias":
            return dev(self.bias), dev(a), dev(b)
        if op == "matmul":
            return dev(a.reshape(*heads, m, k)), dev(b[0])
        if op == "matmul_heads":
            return dev(a[:, None]), dev(b)
        if op == "einsum_scores":
            return dev(a.reshape(*heads, m, k)), dev(np.swapaxes(b, 1, 2).reshape(*heads, n, k))
        return dev(a.reshape(*heads, m, k)), dev(b.reshape(*heads, k, n))


def compute(fmt: NumberFormat, op: str, tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    if fmt.name == "int8":
        return torch._int_mm(*tensors)
    if fmt.name == "fp8_e4m3":
        a, b = tensors
        one = torch.ones((), device=a.device)
        # _scaled_mm wants the second operand column-major.
        return torch._scaled_mm(a, b.t().contiguous().t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
    if op == "mm":
        return torch.mm(*tensors)
    if op == "bmm":
        return torch.bmm(*tensors)
    if op == "linear":
        return torch.nn.functional.linear(*tensors)
    if op in SCALED:
        given, q, keys = tensors
        return torch.baddbmm(given, q, keys, beta=0.0 if op == "baddbmm" else 1.0, alpha=attention_scale(q.shape[-1]))
    if op in _EINSUM:
        return torch.einsum(_EINSUM[op], *tensors)
    return torch.matmul(*tensors)


def operand_shapes(case: Case) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...] | None]:
    """(A, B, bias) as drawn: A (batch, m, k) and B (batch, k, n), except where a path shares an operand:
    a weight across every row (linear, matmul) or a broadcast dimension (matmul_heads)."""
    batch, m, k, n = case.batch, case.m, case.k, case.n
    if case.op in ("linear", "matmul"):
        return (1, batch * m, k), (1, k, n), ((n,) if case.op == "linear" else None)
    if case.op == "mm":
        return (1, m, k), (1, k, n), None
    if case.op == "matmul_heads":
        return (batch // case.heads, m, k), (case.heads, k, n), None
    return (batch, m, k), (batch, k, n), ((batch, 1, n) if case.op == "baddbmm_bias" else None)
