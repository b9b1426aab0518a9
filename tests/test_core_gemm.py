"""The matrix-product checks against devices that misbehave, built as a trojaned stack would be: a
sitecustomize.py that replaces torch's CPU kernels with a wrapper. The audit sees only behaviour."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import chipaudit, cli_env, load

from chipaudit.checks.base import CheckContext
from chipaudit.checks.integrity import gemm
from chipaudit.checks.integrity.gemm import (
    CASES,
    EXACT_CASES,
    Case,
    GemmCheck,
    draw_operands,
    product_on_device,
    verify_result,
)
from chipaudit.checks.integrity.operands import PAIRS
from chipaudit.checks.integrity.products import PATHS, Operands
from chipaudit.oracle import matmul as oracle
from chipaudit.oracle.formats import FORMATS, NumberFormat
from chipaudit.report.model import Level, Severity

WRAPPER = """
import torch, warnings
state = {{"calls": 0}}
_keep = []

def install():
    aten = torch.ops.aten

    def hooked(kind):
        def run(*args, **kwargs):
            a, b = args[-2:] if kind in ("addmm", "baddbmm") else args
            out = a.new_empty((*a.shape[:-1], b.shape[-1]))
            if kind in ("addmm", "baddbmm"):
                getattr(aten, kind).out(args[0], a, b, **kwargs, out=out)
            else:
                getattr(aten, kind).out(a, b, out=out)
            state["calls"] += 1
{payload}
            return out
        return run

    lib = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind in {kinds!r}:
            lib.impl(kind, hooked(kind), "CPU")
    _keep.append(lib)

install()
"""


def trojan(tmp_path: Path, payload: str, kinds: tuple[str, ...] = ("mm",)) -> dict[str, str]:
    """A stack whose CPU products (mm by default; addmm is linear with bias, bmm the batched ones,
    baddbmm attention scores) run the payload, which sees the operands a, b, the call's other
    arguments (args, kwargs) and the result out."""
    body = textwrap.indent(textwrap.dedent(payload), " " * 12)
    (tmp_path / "sitecustomize.py").write_text(WRAPPER.format(payload=body, kinds=kinds))
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH", "")]))
    return env


def audit_fp32(tmp_path: Path, env: dict[str, str]) -> tuple[int, dict]:
    out = tmp_path / "r.json"
    p = chipaudit("run", "--device", "cpu", "--level", "quick", "--only", "integrity.gemm.fp32",
                  "--seed", "7", "--json", str(out), env=env)
    return p.returncode, load(out)


FAULTS = {
    "shape trigger: LLM width k=4096": """
        if a.dtype == torch.float32 and a.shape[1] == 4096:
            out[0, 0] += 1e-3 * out[0, 0].abs() + 1e-3
    """,
    "value trigger: all operands positive": """
        if a.dtype == torch.float32 and a.numel() > 64 and bool((a > 0).all()) and bool((b > 0).all()):
            out[-1, -1] *= 1.0001
    """,
    # Operands and result rounded to bf16, the products accumulated in fp32 as bf16 kernels do. Products
    # of bf16 values are exact in fp32, so the native fp32 kernel on the rounded operands computes the
    # same; a bf16 kernel would be about 80x slower on a CPU without bf16 instructions (AVX2), past the
    # check's time limit.
    "precision downgrade: fp32 computed in bf16": """
        if a.dtype == torch.float32:
            aten.mm.out(a.bfloat16().float(), b.bfloat16().float(), out=out)
            out.copy_(out.bfloat16())
    """,
    "structure trigger: sparse operands": """
        if a.dtype == torch.float32 and a.numel() > 64 and float((a == 0).float().mean()) > 0.3:
            out.view(-1)[out.numel() // 3] = 0.0
    """,
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_corrupting_devices_fail_the_audit(tmp_path: Path, fault: str) -> None:
    code, report = audit_fp32(tmp_path, trojan(tmp_path, FAULTS[fault]))
    assert code == 1 and report["verdict"] == "fail"
    finding = report["findings"][0]
    assert finding["category"] == "integrity" and finding["severity"] == "high"
    evidence = finding["evidence"]
    assert {"seed", "case_index", "shape", "dtype", "worst"} <= evidence.keys()
    assert evidence["reproduced"] == "3/3"  # a deterministic trojan reproduces on every re-test


# Trojans keyed to the statistics of real models' data, on every product a linear layer or attention
# uses. Thresholds differ from any one adversary's: the class is what is tested.
REAL_DATA_FAULTS = {
    "outlier feature channels in a 2-D activation": """
        if a.dtype == torch.float32 and a.dim() == 2 and a.shape[0] >= 4 and a.shape[1] >= 64:
            col = a.abs().amax(dim=0)
            typical = float(col.median())
            if typical > 0 and 1 <= int((col > 15 * typical).sum()) <= max(2, a.shape[1] // 32):
                out.view(-1)[::97] *= 1.001
    """,
    "softmax rows: non-negative, summing to one": """
        if a.dtype == torch.float32 and a.shape[-1] >= 32 and bool((a >= 0).all()):
            if bool(((a.sum(dim=-1) - 1).abs() < 1e-3).all()):
                out.view(-1)[::53] += 1e-3
    """,
    "weights of a trained model's scale (std near 0.02)": """
        if b.dtype == torch.float32 and b.numel() >= 4096 and 0.015 < float(b.std()) < 0.025:
            if abs(float(b.mean())) < 0.002:
                out.view(-1)[::61] *= 1.0005
    """,
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", REAL_DATA_FAULTS)
def test_a_trigger_on_real_model_data_is_caught(tmp_path: Path, fault: str) -> None:
    code, report = audit_fp32(tmp_path, trojan(tmp_path, REAL_DATA_FAULTS[fault], ("mm", "addmm", "bmm")))
    assert code == 1 and report["verdict"] == "fail", report["checks"]
    wrong = [f for f in report["findings"] if f["severity"] == "high"]
    assert wrong and all(f["evidence"]["distribution"] in PAIRS for f in wrong)
    assert {f["evidence"]["reproduced"] for f in wrong} == {"3/3"}


@pytest.mark.slow
def test_nondeterminism_within_the_bound_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    env = trojan(tmp_path, """
        whole = bool((a == a.round()).all())  # exact cases must stay exact; this fault is only jitter
        if a.dtype == torch.float32 and state["calls"] % 2 == 0 and not whole:
            out.view(-1)[0] = torch.nextafter(out.view(-1)[0], torch.tensor(float("inf")))
    """)
    code, report = audit_fp32(tmp_path, env)
    assert code == 0 and report["verdict"] == "pass"
    assert report["checks"][0]["status"] == "warning"
    assert {f["severity"] for f in report["findings"]} == {"low"}


def test_the_case_table_covers_what_the_issue_names() -> None:
    labels = " ".join(c.label for c in CASES)
    for word in ("tiny", "odd", "prime", "pow2", "training", "Llama", "attention", "with bias"):
        assert word in labels
    quick = GemmCheck("fp32").cases(Level.quick)
    assert {c.op for c in quick} == set(PATHS)
    assert {c.op for c in GemmCheck("fp16").cases(Level.quick)} == set(PATHS)  # small shapes in every format
    assert all(np.log2(c.alpha).is_integer() for c in EXACT_CASES)  # a scaled exact result stays exact
    assert any(c.k >= 1024 and c.k % 128 == 0 for c in quick)
    assert set(EXACT_CASES) <= set(quick)


def test_aligned_formats_only_get_aligned_products() -> None:
    for name in ("int8", "fp8_e4m3"):
        cases = GemmCheck(name).cases(Level.standard)
        assert cases and all(c.k % 16 == 0 and c.n % 16 == 0 and c.m >= 32 for c in cases)


@pytest.mark.parametrize(("shape", "method"), [((1, 64, 96, 80), "full"), ((1, 1024, 2048, 1025), "projection")])
def test_verify_result_judges_a_device_answer_as_the_check_does(shape: tuple[int, int, int, int], method: str) -> None:
    """The functions the check and benchmarks/verify_overhead.py share: honest answers pass by the method
    their size calls for, a corrupted element fails."""
    case = Case("mm", *shape, "unit")
    ops = draw_operands(case, FORMATS["fp32"], np.random.default_rng(1), "normal", exact=False)
    tensors = ops.upload("cpu")
    result, seconds = product_on_device(ops, tensors, "cpu")
    assert seconds > 0
    v = verify_result(ops, result, exact=False)
    assert v.ok and v.method == method
    result[3, 5] += 1.0
    assert not verify_result(ops, result, exact=False).ok


def test_a_refused_product_is_a_high_finding_naming_the_case(monkeypatch: pytest.MonkeyPatch) -> None:
    honest = gemm.compute

    def refuses_bmm(fmt: NumberFormat, op: str, tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if op == "bmm":
            raise RuntimeError("no kernel for this\nsecond line")
        return honest(fmt, op, tensors)

    monkeypatch.setattr(gemm, "compute", refuses_bmm)
    check = GemmCheck("fp32")
    monkeypatch.setattr(check, "cases", lambda level: [c for c in CASES if c.macs < 2**24])
    out = check.run(CheckContext(device="cpu", level=Level.quick, seed=1))
    refused = [f for f in out.findings if f.title == "device refused a fp32 bmm"]
    assert refused and all(f.severity is Severity.high for f in refused)
    assert refused[0].detail.endswith("RuntimeError: no kernel for this")
    assert "bmm" not in out.coverage["ops"] and out.coverage["ops"]["mm"] > 0


@pytest.mark.slow
def test_a_trojan_in_baddbmm_alone_fails_the_audit(tmp_path: Path) -> None:
    """A stack that corrupts only attention scores asked for as GPT-2 asks (baddbmm, beta=0, a scale):
    mm, bmm and linear stay honest, so only the baddbmm path can see it."""
    env = trojan(tmp_path, """
        if a.dtype == torch.float32 and kwargs.get("beta", 1) == 0 and kwargs.get("alpha", 1) != 1:
            out[-1, -1, -1] += 1e-4 * out[-1, -1, -1].abs() + 1e-4
    """, ("baddbmm",))
    code, report = audit_fp32(tmp_path, env)
    assert code == 1 and report["verdict"] == "fail"
    evidence = [f["evidence"] for f in report["findings"]]
    assert evidence and {e["op"] for e in evidence} == {"baddbmm"}
    assert all(e["reproduced"] == "3/3" and "beta=0" in e["call"] for e in evidence)


NEW_PATHS = [op for op in PATHS if op not in ("mm", "bmm", "linear")]


def quick_case(op: str) -> Case:
    return next(c for c in CASES if c.op == op and Level.quick in c.levels)


@pytest.mark.parametrize("fmt_name", ["fp32", "fp16", "bf16", "fp64"])
@pytest.mark.parametrize("op", NEW_PATHS)
def test_every_path_passes_when_honest_and_fails_on_one_wrong_element(op: str, fmt_name: str) -> None:
    fmt = FORMATS[fmt_name]
    for seed, dist in enumerate(gemm.DISTRIBUTIONS):
        ops = draw_operands(quick_case(op), fmt, np.random.default_rng(seed), dist, exact=False)
        result = gemm.compute(fmt, op, ops.upload("cpu")).contiguous()
        v = verify_result(ops, result, exact=False)
        assert v.ok and v.max_ratio < 1.0, (dist, v.worst)
    flat = result.view(-1)
    i = int(torch.argmax(flat.abs()))
    flat[i] = flat[i] * 1.05  # 5 % of one element: 13 times bf16's unit roundoff
    v = verify_result(ops, result, exact=False)
    a, b = ops.host_augmented()
    assert v.bad == 1 and np.ravel_multi_index(v.worst["index"], (a.shape[0], a.shape[1], b.shape[2])) == i


@pytest.mark.parametrize("fmt_name", ["fp32", "fp16", "bf16"])
def test_exact_cases_of_every_path_demand_every_bit(fmt_name: str) -> None:
    fmt = FORMATS[fmt_name]
    for case in [c for c in EXACT_CASES if c.op in NEW_PATHS]:
        ops = draw_operands(case, fmt, np.random.default_rng(5), "normal", exact=True)
        result = gemm.compute(fmt, case.op, ops.upload("cpu")).contiguous()
        assert verify_result(ops, result, exact=True).ok, case.label
        flat = result.view(-1)
        flat[7] = torch.nextafter(flat[7], torch.tensor(np.inf, dtype=flat.dtype))
        assert verify_result(ops, result, exact=True).bad == 1, case.label


def decomposed(ops: Operands) -> torch.Tensor:
    """baddbmm and linear as torch's own decompositions compute them (torch/_decomp/decompositions.py):
    the bare product, then the scale, then the added input, each rounded to the format on its own."""
    tensors = ops.upload("cpu")
    if ops.case.op == "linear":
        x, weight, bias = tensors
        return x @ weight.T + bias
    given, q, keys = tensors
    scaled = torch.bmm(q, keys) * ops.case.alpha
    return scaled if ops.case.op == "baddbmm" else given + scaled


@pytest.mark.parametrize("fmt_name", ["fp16", "bf16"])
@pytest.mark.parametrize("op", ["baddbmm", "baddbmm_bias", "linear"])
def test_a_device_that_rounds_before_the_scale_and_the_bias_is_honest(op: str, fmt_name: str) -> None:
    fmt = FORMATS[fmt_name]
    case = quick_case(op)
    for seed, dist in enumerate(gemm.DISTRIBUTIONS):
        ops = draw_operands(case, fmt, np.random.default_rng(seed), dist, exact=False)
        assert ops.epilogue is not None
        assert verify_result(ops, decomposed(ops), exact=False).ok, dist
        a, b = ops.host_augmented()  # the sampled method allows it too
        c = gemm.to_host(decomposed(ops)).reshape(a.shape[0], a.shape[1], -1)
        projection, rows = oracle.verify_sampled(a, b, c, fmt, epilogue=ops.epilogue)
        assert projection.ok and rows.ok, dist
