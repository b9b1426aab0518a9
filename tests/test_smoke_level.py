"""Level smoke: a job's prolog in seconds. It plans exactly its few small checks, says what it left out,
passes a healthy CPU through the real command line and fails a simulated bit-flipping device."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from conftest import chipaudit, load

from chipaudit.checks import by_id
from chipaudit.checks.base import CheckContext, NotApplicable
from chipaudit.checks.integrity import gemm, health, memory
from chipaudit.devices import nvml
from chipaudit.devices.vendor_reads import ReplayReader
from chipaudit.report.model import EXIT_CODES, Category, Level, Severity, Status, Verdict
from chipaudit.runner import levels
from chipaudit.runner.audit import AuditConfig, not_at_level, plan, run_audit
from chipaudit.runner.watchdog import Events
from chipaudit.selftest.faults import BitFlip, worker_wrapper

SMOKE = ["stack.fingerprint", "integrity.health", "integrity.gemm.fp32", "integrity.gemm.bf16", "integrity.memory"]
VENDOR = Path(__file__).parent / "fixtures" / "vendor"


def test_the_smoke_plan_holds_exactly_its_checks_with_small_params() -> None:
    planned = plan(AuditConfig("cpu", Level.smoke, 1))
    assert [p.id for p in planned] == SMOKE
    assert levels.BUDGET_S[Level.smoke] == 15.0
    assert all(p.timeout_s <= 20.0 for p in planned if p.category is Category.integrity)
    for fmt in ("fp32", "bf16"):
        cases = gemm.GemmCheck(fmt, gemm.SQSD).cases(Level.smoke)
        assert 4 <= len(cases) <= 10 and sum(c.macs for c in cases) < 1 << 28
        assert {c.op for c in cases} >= {"mm", "bmm", "linear"}
        assert any(c in gemm.EXACT_CASES for c in cases) and any(c.repeat for c in cases)
        # enough outputs for a weak part flipping one element in 10^5 to show about ten times
        assert sum(c.batch * c.m * c.n for c in cases) >= 10**6
    assert memory.MEMORY_SHARE[Level.smoke] <= 0.001
    assert memory.TIME_SHARE[Level.smoke] * memory.MemoryCheck.timeout_s[Level.smoke] <= 1.0
    # eBPF goes at smoke alone; every other level keeps it.
    assert set(levels.WITHOUT_SYSCALL_TRACER) == {Level.smoke}


def test_smoke_names_what_it_leaves_out() -> None:
    left = " ".join(not_at_level(AuditConfig("cpu", Level.smoke, 1)))
    for check_id in ("behaviour.drift", "integrity.burnin", "integrity.ops.attention", "performance.launch",
                     "integrity.gemm.fp16", "stack.capabilities"):
        assert check_id in left
    assert not any(c in left for c in SMOKE)
    assert not_at_level(AuditConfig("cpu", Level.deep, 1, only=["integrity.gemm"])) == []


def test_smoke_fingerprints_the_stack_only_against_a_baseline() -> None:
    with pytest.raises(NotApplicable, match="--baseline"):
        by_id()["stack.fingerprint"].run(CheckContext("cpu", Level.smoke, 1))


def test_health_counters_are_judged_from_the_reading_watch_takes(tmp_path: Path) -> None:
    check = health.HealthCheck()
    reading, _ = nvml.health_reading(ReplayReader.from_file(VENDOR / "nvml_h100_sxm5.json"), 0)
    assert check.judge(reading) == []
    failing = copy.deepcopy(reading)
    failing["ecc_errors"]["volatile"]["uncorrected"] = 2
    failing["ecc_errors"]["aggregate"]["uncorrected"] = 5
    failing["remapped_rows"]["pending"] = True
    failing["reasons"] = ["gpu_idle", "hw_thermal_slowdown"]
    found = {f.title: f.severity for f in check.judge(failing)}
    assert found == {"2 uncorrectable ECC error(s) since the driver loaded": Severity.high,
                     "a row remap is pending (applied at the next reset)": Severity.high,
                     "the device names a slowdown: hw_thermal_slowdown": Severity.medium,
                     "uncorrectable ECC errors over the part's life: 5": Severity.info}
    mc = tmp_path / "mc0"
    mc.mkdir()
    (mc / "ce_count").write_text("3\n")
    (mc / "ue_count").write_text("1\n")
    assert health.edac_counters(tmp_path) == {"mc0": {"ce_count": 3, "ue_count": 1}}
    assert [f.severity for f in check.judge_edac({"mc0": {"ce_count": 3, "ue_count": 1}})] == [Severity.high,
                                                                                                 Severity.info]
    assert health.edac_counters(tmp_path / "none") is None


def test_smoke_passes_a_healthy_cpu_through_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = chipaudit("run", "--device", "cpu", "--level", "smoke", "--json", str(out), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    report = load(out)
    assert report["level"] == "smoke" and report["verdict"] == "pass"
    statuses = {c["id"]: c["status"] for c in report["checks"]}
    assert list(statuses) == SMOKE
    assert statuses["integrity.gemm.fp32"] == statuses["integrity.gemm.bf16"] == "passed"
    assert statuses["stack.fingerprint"] == "skipped"  # no baseline given
    limits = " ".join(report["limits"])
    assert "Not run at level smoke" in limits and "behaviour.drift" in limits
    assert "not watched by ebpf: not run at level smoke" in limits
    assert "No behaviour check ran in this audit" in limits


def test_smoke_fails_a_bit_flipping_device() -> None:
    report = run_audit(AuditConfig("cpu", Level.smoke, 5), Events(), wrappers=[worker_wrapper(BitFlip())])
    assert report.verdict is Verdict.fail and EXIT_CODES[report.verdict] == 1
    failed = {c.id for c in report.checks if c.status is Status.failed}
    assert "integrity.gemm.fp32" in failed
    assert all(f.check == "integrity.gemm.fp32" for f in report.findings if f.severity.rank >= Severity.medium.rank)
