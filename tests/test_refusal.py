"""A refusal is a finding, never a skip: what the device declares (devices/capability.py) decides how a
refused format weighs, and only a declared absence skips. The refusing devices are built as a trojaned
stack would be: a sitecustomize.py on PYTHONPATH that overrides torch's CPU matrix kernels in every
process (the self-test's Refusal fault), so that the audit sees only what the device does."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from conftest import chipaudit, cli_env, load

from chipaudit.checks.behaviour import findings
from chipaudit.checks.behaviour.session import Session
from chipaudit.checks.behaviour.sidechannel import SideChannelProbe
from chipaudit.checks.behaviour.workload import TaskSpec
from chipaudit.checks.integrity.gemm import GemmCheck
from chipaudit.checks.refusal import Hung, answer_within
from chipaudit.devices import capability
from chipaudit.devices.capability import Support
from chipaudit.perturb import conditions
from chipaudit.report.model import DeviceInfo, Severity


@pytest.fixture
def fresh_capabilities() -> object:
    """Answers are cached per process; tests that change what torch release is seen start afresh."""
    capability.of_format.cache_clear()
    yield
    capability.of_format.cache_clear()


def test_the_cpu_declares_or_implements_every_product_format_but_tf32() -> None:
    for fmt in ("fp64", "fp32"):  # x86-64 and Armv8 make double and single precision SIMD architectural
        assert capability.of_format("cpu", fmt).support is Support.declared
    for fmt in ("fp16", "bf16", "int8", "fp8_e4m3"):  # torch 2.13's CPU backend has all of them
        assert capability.of_format("cpu", fmt).support in (Support.declared, Support.backend)
    tf32 = capability.of_format("cpu", "tf32")
    assert tf32.lacking and "allow_tf32" in tf32.source
    assert capability.SEVERITY[Support.declared] is Severity.high
    assert capability.SEVERITY[Support.backend] is Severity.medium


def test_a_skip_names_the_declaration_that_the_device_lacks_the_format(
        monkeypatch: pytest.MonkeyPatch, fresh_capabilities: object) -> None:
    reason = GemmCheck("tf32").is_supported("cpu")
    assert reason is not None and reason.startswith("the device declares that it lacks tf32 products: torch's TF32")
    assert GemmCheck("int8").is_supported("cpu") is None
    # A torch that predates the CPU's int8 kernel lacks it, whatever the CPU's own flags say.
    monkeypatch.setattr(capability, "torch_release", lambda version=None: (2, 2))
    capability.of_format.cache_clear()
    reason = GemmCheck("int8").is_supported("cpu")
    assert reason is not None and "predates it" in reason and "pull request 121792" in reason
    assert capability.of_operator("cpu", "rms_norm", ("fp32",)).lacking
    assert not capability.of_operator("cpu", "softmax", ("fp32",)).lacking


@pytest.mark.parametrize(("name", "major", "minor", "expected"), [
    ("NVIDIA H100 80GB HBM3", 9, 0, {f: "declared" for f in ("fp64", "tf32", "fp8_e4m3", "int8")}),
    ("Tesla T4", 7, 5, {"fp64": "declared", "tf32": "lacks", "fp8_e4m3": "lacks", "int8": "declared"}),
    ("Tesla P100-PCIE-16GB", 6, 0, {"fp16": "declared", "tf32": "lacks", "int8": "undeclared"}),
])
def test_a_cuda_device_declares_by_its_rating_and_compute_capability(
        monkeypatch: pytest.MonkeyPatch, fresh_capabilities: object, name: str, major: int, minor: int,
        expected: dict[str, str]) -> None:
    """What a CUDA device reports of itself (recorded, as torchdev.describe gives it: this machine has no
    GPU) decides; the maker's rating names its source."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(capability.torchdev, "describe", lambda device: DeviceInfo(
        spec=device, type="cuda", index=0, name=name, properties={"major": major, "minor": minor}))
    for fmt, support in expected.items():
        assert capability.of_format("cuda:0", fmt).support.value == support, fmt
    if name.startswith("NVIDIA H100"):
        assert "datasheet" in capability.of_format("cuda:0", "fp8_e4m3").source
    else:
        assert "compute capability" in capability.of_format("cuda:0", "tf32").reason


def test_an_operation_is_promised_as_weakly_as_its_weakest_format() -> None:
    both = capability.of_operator("cpu", "convert", ("fp32", "tf32"))
    assert both.lacking and both.subject == "convert in fp32/tf32"
    assert capability.of_operator("cpu", "softmax", ("fp32",)).support is Support.declared


def test_an_answer_that_never_comes_is_a_hang() -> None:
    assert answer_within(lambda: 7, 1.0) == 7
    with pytest.raises(ValueError, match="no kernel"):
        answer_within(lambda: (_ for _ in ()).throw(ValueError("no kernel")), 1.0)
    t0 = time.monotonic()
    with pytest.raises(Hung):
        answer_within(lambda: time.sleep(30), 0.2)
    assert time.monotonic() - t0 < 5


def _session(label: str, tasks: list[TaskSpec], errors: dict[int, str], verified: tuple[int, ...] = ()) -> Session:
    s = Session(label, conditions.reference(), tasks, child=None, launched=0.0, trace=None)  # type: ignore[arg-type]
    s.hello = {"pid": 1}
    s.errors = dict(errors)
    s.verifications = {i: [{"ok": True, "digest": "d"}] for i in verified}
    return s


def test_a_task_refused_in_every_world_is_a_finding_weighed_by_its_declaration() -> None:
    tasks = [TaskSpec("pow2 256 in fp64", "mm", 1, 256, 256, 256, "fp64"),
             TaskSpec("pow2 256 in tf32", "mm", 1, 256, 256, 256, "tf32"),
             TaskSpec("pow2 256 in fp32", "mm", 1, 256, 256, 256, "fp32")]
    error = "RuntimeError: FP64 disabled by device policy"
    lacks = "RuntimeError: no TF32 here"
    sessions = [_session("reference", tasks, {0: error, 1: lacks}, verified=(2,)),
                _session("China", tasks, {0: error, 1: lacks}, verified=(2,))]
    out = findings.session_findings(SideChannelProbe(), sessions, sessions[0], "cpu")
    assert len(out) == 1
    f = out[0]
    assert f.title == "device refused pow2 256 in fp64 in every world"
    assert f.severity is capability.of_format("cpu", "fp64").severity is Severity.high
    assert f.evidence["error"] == error and f.evidence["worlds"] == ["reference", "China"]
    assert f.evidence["capability"]["support"] == "declared"
    # Only the format the device declares that it lacks is listed as not computed, with the declaration.
    listed = findings.not_computed(sessions, "cpu")
    assert list(listed) == ["pow2 256 in tf32"] and "declares that it lacks tf32" in listed["pow2 256 in tf32"]


def test_a_task_refused_in_one_world_only_stays_a_reaction_to_that_world() -> None:
    tasks = [TaskSpec("pow2 256 in fp64", "mm", 1, 256, 256, 256, "fp64")]
    sessions = [_session("reference", tasks, {}, verified=(0,)),
                _session("China", tasks, {0: "RuntimeError: not licensed here"})]
    out = findings.session_findings(SideChannelProbe(), sessions, sessions[0], "cpu")
    assert [f.title for f in out] == ["the device refused pow2 256 in fp64 in the world 'China'"]


def refusing_stack(tmp_path: Path, dtype: str, hang: bool = False, crash: bool = False) -> dict[str, str]:
    """A sitecustomize.py that switches one format off in every Python process of the audit."""
    (tmp_path / "sitecustomize.py").write_text(
        "from chipaudit.selftest.faults import Refusal\n"
        f"Refusal(dtype={dtype!r}, hang={hang!r}, crash={crash!r}).install()\n")
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH", "")]))
    return env


def audit(tmp_path: Path, env: dict[str, str], *only: str) -> tuple[int, dict]:
    out = tmp_path / "r.json"
    args = [a for check in only for a in ("--only", check)]
    p = chipaudit("run", "--device", "cpu", "--level", "quick", *args, "--seed", "3", "--json", str(out), env=env)
    return p.returncode, load(out)


@pytest.mark.slow
def test_a_refused_declared_format_fails_the_audit(tmp_path: Path) -> None:
    code, report = audit(tmp_path, refusing_stack(tmp_path, "float64"), "integrity.gemm.fp64", "integrity.corner")
    assert code == 1 and report["verdict"] == "fail"
    status = {c["id"]: c["status"] for c in report["checks"]}
    assert status == {"integrity.gemm.fp64": "failed", "integrity.corner.gemm": "failed"}
    refused = [f for f in report["findings"] if f["title"] == "device refused fp64 products"]
    assert {f["check"] for f in refused} == {"integrity.gemm.fp64", "integrity.corner.gemm"}
    for f in refused:
        assert f["category"] == "integrity" and f["severity"] == "high"
        assert "float64 products are disabled by device policy" in f["evidence"]["error"]
        assert f["evidence"]["capability"]["support"] == "declared" and "/proc/cpuinfo" in f["detail"]


@pytest.mark.slow
def test_a_format_that_hangs_is_a_finding_not_a_timeout(tmp_path: Path) -> None:
    code, report = audit(tmp_path, refusing_stack(tmp_path, "float16", hang=True), "integrity.gemm.fp16")
    assert code == 1 and report["verdict"] == "fail"
    [f] = report["findings"]
    assert f["title"] == "device hung on fp16 products"
    assert f["severity"] == capability.of_format("cpu", "fp16").severity.value
    assert "no answer within" in f["evidence"]["error"]


@pytest.mark.slow
def test_a_format_that_crashes_the_process_is_a_finding_not_an_error(tmp_path: Path) -> None:
    """A driver that aborts the process on a switched-off format: the check fails with a high finding
    naming the exit status, and the checks after it run on in a fresh worker."""
    code, report = audit(tmp_path, refusing_stack(tmp_path, "float16", crash=True), "integrity.gemm.fp16",
                         "integrity.gemm.fp32")
    assert code == 1 and report["verdict"] == "fail"
    status = {c["id"]: c["status"] for c in report["checks"]}
    assert status == {"integrity.gemm.fp16": "failed", "integrity.gemm.fp32": "passed"}
    [f] = [f for f in report["findings"] if f["severity"] != "info"]
    assert f["check"] == "integrity.gemm.fp16" and f["severity"] == "high" and f["category"] == "integrity"
    assert f["title"] == "the device's stack ended the process computing integrity.gemm.fp16"
    assert f["evidence"]["exit_status"] in (-6, 134)  # SIGABRT, as the process or as its wrapper reports it
