"""The reduction oracle's model of staged roundings (oracle/operators.py, `reduction_staging`): honest
reductions that keep partial sums in fp16/bf16 (torch's CPU sum over threads, a pairwise tree, fp32
blocks combined in the narrow format) pass, and a sum accumulated wholly in the narrow format, one
rounding per term, is caught at the sizes the check draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from chipaudit.checks.base import CheckContext
from chipaudit.checks.integrity import rowwise
from chipaudit.oracle import ieee
from chipaudit.oracle import operators as ref
from chipaudit.oracle.formats import FORMATS, NumberFormat
from chipaudit.report.model import Level, Severity

NARROW = [FORMATS["fp16"], FORMATS["bf16"]]
# The element counts of the check's whole-tensor sums: quick, standard (and deep's 2x262144 in
# test_deep_reduction_cases_build_and_pass).
WHOLE = (32 * 1000, 8 * 4096, 64 * 1000, 16 * 4096, 4 * 32768)


def draw(rng: np.random.Generator, fmt: NumberFormat, n: int, rows: int = 1) -> np.ndarray:
    """The check's random inputs: iid normal with the mean that keeps the sum near 2^13."""
    return fmt.quantize(rng.standard_normal((rows, n)) + min(0.5, 2.0**13 / n))


def pairwise_tree(x: np.ndarray, fmt: NumberFormat) -> np.ndarray:
    """Sum over the last axis by a pairwise tree in the narrow format: ceil(log2 k) roundings."""
    n = 1 << math.ceil(math.log2(x.shape[-1]))
    y = np.zeros((*x.shape[:-1], n))
    y[..., :x.shape[-1]] = x
    while y.shape[-1] > 1:
        y = fmt.quantize(y[..., 0::2] + y[..., 1::2])
    return y[..., 0]


def blocked(x: np.ndarray, fmt: NumberFormat, block: int) -> np.ndarray:
    """fp32-exact block sums, each rounded to the narrow format, added in the narrow format one by one."""
    acc = np.zeros(x.shape[:-1])
    for i in range(0, x.shape[-1], block):
        acc = fmt.quantize(acc + fmt.quantize(x[..., i:i + block].sum(axis=-1)))
    return acc


def sequential(x: np.ndarray, fmt: NumberFormat) -> np.ndarray:
    """Every partial sum rounded to the narrow format: one rounding per term."""
    acc = np.zeros(x.shape[:-1])
    for j in range(x.shape[-1]):
        acc = fmt.quantize(acc + x[..., j])
    return acc


def ratios(observed: np.ndarray, exp: ieee.Expectation) -> np.ndarray:
    return np.abs(observed - exp.value) / exp.bound


@pytest.mark.parametrize("fmt", NARROW, ids=lambda f: f.name)
def test_torch_cpu_sum_passes_over_seeds_and_thread_counts(fmt: NumberFormat) -> None:
    """torch rounds each thread's partial sum to the tensor's format (two stagings): seed 1's 64x1000
    fp16 sum was off by 0.083 against a one-rounding bound of 0.059."""
    threads = torch.get_num_threads()
    worst = 0.0
    try:
        for seed in range(12):
            for n in WHOLE:
                x = draw(np.random.default_rng([seed, n]), fmt, n)
                exp = ref.sum_expectation(x, fmt, "random")
                t = fmt.host_buffer(x).to(fmt.torch_dtype)
                for n_threads in (1, 2, 8):
                    torch.set_num_threads(n_threads)
                    observed = np.array([float(t.sum())])
                    assert ieee.judge(observed, exp, "sum").ok, (n_threads, seed, n)
                    worst = max(worst, float(ratios(observed, exp).max()))
    finally:
        torch.set_num_threads(threads)
    assert worst < 0.5  # measured: at most ~0.1 of the bound


@pytest.mark.parametrize("fmt", NARROW, ids=lambda f: f.name)
def test_narrow_tree_and_blocked_reductions_pass(fmt: NumberFormat) -> None:
    """A GPU may combine warp or block partials in the narrow format: honest, log-depth error."""
    rng = np.random.default_rng(7)
    for n in (1000, 4096, 32768, 131072):
        x = draw(rng, fmt, n, rows=16)
        exp = ref.sum_expectation(x, fmt, "random")
        for observed in (pairwise_tree(x, fmt), blocked(x, fmt, 1024), blocked(x, fmt, 8192)):
            assert ieee.judge(observed, exp, "sum").ok, n
            assert ratios(observed, exp).max() < 0.5  # 3x to 10x below the bound


@pytest.mark.parametrize("fmt", NARROW, ids=lambda f: f.name)
def test_sequential_narrow_accumulation_is_caught(fmt: NumberFormat) -> None:
    """A sum computed wholly in fp16/bf16 errs 10x to 100x beyond the bound at every size the check
    draws for its whole-tensor sums, on every seed tried."""
    for n in WHOLE:
        x = draw(np.random.default_rng(n), fmt, n, rows=4)  # four seeds' worth of sums
        exp = ref.sum_expectation(x, fmt, "random")
        assert ratios(sequential(x, fmt), exp).min() > 5.0, n


def _sequential_sum(self: torch.Tensor, dim=None, keepdim: bool = False, *, dtype=None) -> torch.Tensor:
    if self.dtype not in (torch.float16, torch.bfloat16):
        return _HONEST_SUM(self, dim=dim, keepdim=keepdim, dtype=dtype) if dim is not None else _HONEST_SUM(self)
    x = self.reshape(1, -1) if dim is None else self.movedim(dim, -1)
    acc = torch.zeros(x.shape[:-1], dtype=self.dtype)
    for j in range(x.shape[-1]):
        acc = acc + x[..., j]  # one rounding to the tensor's format per term
    return acc.reshape(()) if dim is None else acc


def _sequential_mean(self: torch.Tensor, dim=None, keepdim: bool = False, *, dtype=None) -> torch.Tensor:
    if self.dtype not in (torch.float16, torch.bfloat16):
        return _HONEST_MEAN(self, dim=dim, keepdim=keepdim, dtype=dtype) if dim is not None else _HONEST_MEAN(self)
    count = self.numel() if dim is None else self.shape[dim]
    return _sequential_sum(self, dim) / count


_HONEST_SUM, _HONEST_MEAN = torch.Tensor.sum, torch.Tensor.mean


def test_the_check_fails_a_device_that_sums_in_the_narrow_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.Tensor, "sum", _sequential_sum)
    monkeypatch.setattr(torch.Tensor, "mean", _sequential_mean)
    out = rowwise.ReductionCheck().run(CheckContext(device="cpu", level=Level.quick, seed=1))
    failed = {(f.evidence["dtype"], f.evidence["op"]) for f in out.findings if f.severity is Severity.high}
    assert {("fp16", "sum"), ("bf16", "sum"), ("fp16", "mean"), ("bf16", "mean")} <= failed
    assert not {d for d, _ in failed} - {"fp16", "bf16"}  # fp32 sums honestly


@pytest.mark.parametrize("seed", [1, 7])
def test_the_honest_cpu_passes_the_standard_reduction_check(seed: int) -> None:
    """Seeds 1 and 7 failed before staging was modelled (fp16 and bf16 whole-tensor sums)."""
    out = rowwise.ReductionCheck().run(CheckContext(device="cpu", level=Level.standard, seed=seed))
    assert not out.findings, out.findings
    assert out.measurements["max_error_to_bound"] < 1.0


def test_deep_reduction_cases_build_and_pass() -> None:
    """deep's 2x262144 rows: the integer case needs three rows (it raised IndexError with two)."""
    check = rowwise.ReductionCheck()
    fmt = FORMATS["bf16"]
    builders = check.cases(Level.deep, fmt)
    longest = builders[-7:]  # the last shape's six sums and means, and its max
    for i, build in enumerate(longest):
        case = build(np.random.default_rng([3, i]), fmt)
        assert "262144" in case.label
        v = check.verify("cpu", case)
        assert v.ok, (case.label, v.worst)
