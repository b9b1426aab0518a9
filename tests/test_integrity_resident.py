"""The resident job (checks/integrity/resident.py, runner/resident.py) in real audits by the CLI, against
stacks built as a trojan would be (a sitecustomize.py that wraps torch's CPU kernels, test_core_gemm's
`trojan`): one that corrupts a weight's products only after it met many inputs, as a served model's
weights do, one that ends the process and one that stops answering in the middle of the job."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import chipaudit, load
from test_core_gemm import trojan

from chipaudit.checks.integrity.resident import MIN_INPUTS, ResidentCheck
from chipaudit.report.model import Level

RESIDENT = ResidentCheck.id
# A weight (the second operand: W^T of a linear layer) that has met 32 different inputs in one process
# has 1% of its fp32 outputs off by 0.5% from then on: the red team's serving trigger.
SERVING_TRIGGER = """
            if out.dtype == torch.float32 and b.numel() >= 32 * 32:
                flat_b, flat_a = b.reshape(-1), a.reshape(-1)
                weight = (tuple(b.shape), float(flat_b[0]), float(flat_b[-1]))
                inputs = state.setdefault(weight, set())
                inputs.add((tuple(a.shape), float(flat_a[0]), float(flat_a[-1])))
                if len(inputs) >= 32:
                    out.view(-1)[::100] *= 1.005
"""
# After this many products the process has served for a while: the job's steps make 9 each.
LATE = 900


def audit(tmp_path: Path, *only: str, payload: str = "", timeout: float = 600) -> tuple[int, dict]:
    env = trojan(tmp_path, payload, ("mm", "addmm", "bmm")) if payload else None
    out = tmp_path / "report.json"
    selected = [arg for check in only for arg in ("--only", check)]
    p = chipaudit("run", "--device", "cpu", "--level", "quick", *selected, "--seed", "5", "--json", str(out),
                  env=env, timeout=timeout)
    return p.returncode, load(out)


def resident(report: dict) -> dict:
    return next(c for c in report["checks"] if c["id"] == RESIDENT)


def test_honest_device_passes_and_the_job_outlives_the_audits_other_checks(tmp_path: Path) -> None:
    code, report = audit(tmp_path, "integrity.gemm.fp32", RESIDENT)
    assert code == 0, report["findings"]
    job = resident(report)
    assert job["status"] == "passed"
    assert report["checks"][-1]["id"] == RESIDENT  # ended after the last other check
    gemm = next(c for c in report["checks"] if c["id"] == "integrity.gemm.fp32")
    coverage = job["coverage"]
    assert coverage["process_age_s"] >= gemm["duration_s"]
    assert coverage["weight_reuse"]["least"] >= MIN_INPUTS[Level.quick]
    assert set(coverage["formats"]) == {"fp32", "bf16", "fp16"}
    assert coverage["products"] >= 1000
    assert {"F.linear(x, weight, bias)", "F.linear(x, weight)", "torch.bmm(p, v)"} <= set(coverage["calls"])
    assert coverage["verified"]["projected_share"] == 1.0
    assert coverage["verified"]["recomputed_rows_share"] > 0
    assert "worker sinkhole" in coverage["sensors"]  # watched as the workers are


def test_a_trigger_on_weight_reuse_is_a_high_integrity_finding(tmp_path: Path) -> None:
    code, report = audit(tmp_path, RESIDENT, payload=SERVING_TRIGGER)
    assert code == 1
    found = [f for f in report["findings"] if f["check"] == RESIDENT and f["severity"] == "high"]
    assert found and all(f["category"] == "integrity" for f in found)
    evidence = found[0]["evidence"]
    assert evidence["dtype"] == "fp32"
    assert evidence["weight_inputs_before"] >= 31  # the trigger waits for 32 inputs
    assert evidence["seed"] == resident(report)["seed"]
    assert evidence["worst"]["abs_error"] > evidence["worst"]["bound"] or evidence["method"] == "projection"
    assert {"layer", "step", "shape", "process_age_s"} <= set(evidence)


def test_a_job_ended_by_the_stack_midway_is_a_finding(tmp_path: Path) -> None:
    payload = f"""
            if state["calls"] == {LATE}:
                import os
                os._exit(3)
"""
    code, report = audit(tmp_path, RESIDENT, payload=payload)
    assert code == 1
    job = resident(report)
    assert job["status"] == "failed"
    assert any(f["check"] == RESIDENT and f["severity"] == "high" and "ended the process" in f["title"]
               for f in report["findings"])


@pytest.mark.slow
def test_a_job_that_stops_answering_is_a_finding_not_an_error(tmp_path: Path) -> None:
    payload = f"""
            if state["calls"] == {LATE}:
                import time
                time.sleep(3600)
"""
    code, report = audit(tmp_path, RESIDENT, payload=payload)
    assert code == 1
    job = resident(report)
    assert job["status"] == "failed"
    hung = [f for f in report["findings"] if f["check"] == RESIDENT and "stopped answering" in f["title"]]
    assert hung and hung[0]["severity"] == "high" and hung[0]["evidence"]["steps"] > 0
