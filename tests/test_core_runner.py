"""The runner: every planned check ends with exactly one result, whatever the check does."""

from __future__ import annotations

import pytest

from chipaudit.checks import select
from chipaudit.checks.base import derive_seed
from chipaudit.report.model import CheckResult, Finding, Level, Report, Severity, Status, Verdict
from chipaudit.runner import watchdog
from chipaudit.runner.audit import AuditConfig, run_audit
from chipaudit.runner.watchdog import Events


def audit(only: list[str], seed: int = 11) -> tuple[Report, dict[str, CheckResult]]:
    results: list[CheckResult] = []
    findings: list[Finding] = []

    def finished(result: CheckResult, found: list[Finding]) -> None:
        results.append(result)
        findings.extend(found)

    report = run_audit(AuditConfig("cpu", Level.quick, seed, only=only), Events(finished=finished))
    return report, {r.id: r for r in results}


@pytest.mark.usefixtures("plugin_env")
def test_hang_and_raise_become_errors_a_crash_a_finding_and_the_run_goes_on() -> None:
    """A crash while the device works is a refusal by crashing (high); a death by SIGKILL comes from
    outside the process (the out-of-memory killer) and says nothing of the device: an error."""
    report, results = audit(["fake.hang", "fake.ok", "fake.raise", "fake.crash", "fake.killed", "fake.warn"])
    assert sorted(c.id for c in report.checks) == ["fake.crash", "fake.hang", "fake.killed", "fake.ok", "fake.raise",
                                                   "fake.warn"]
    assert results["fake.hang"].status is Status.error
    assert "watchdog" in results["fake.hang"].reason
    assert results["fake.raise"].status is Status.error
    assert "the device fell over" in results["fake.raise"].reason
    assert results["fake.crash"].status is Status.failed
    [crash] = [f for f in report.findings if f.check == "fake.crash"]
    assert crash.severity is Severity.high and crash.evidence["exit_status"] == 7
    assert "exit status 7" in results["fake.crash"].reason
    assert results["fake.killed"].status is Status.error
    assert results["fake.ok"].status is Status.passed
    assert results["fake.warn"].status is Status.warning
    assert report.verdict is Verdict.fail and report.complete


@pytest.mark.usefixtures("plugin_env")
def test_skips_are_never_passes() -> None:
    report, results = audit(["fake.not_applicable", "fake.unsupported"])
    assert results["fake.not_applicable"].status is Status.skipped
    assert results["fake.not_applicable"].reason == "the device lacks this format"
    assert results["fake.unsupported"].reason == "this fake check never applies"
    assert report.verdict is Verdict.inconclusive  # nothing observed is not a pass
    assert any("fake.unsupported did not run" in limit for limit in report.limits)


@pytest.mark.usefixtures("plugin_env")
def test_unsupported_dtype_is_skipped_with_its_reason() -> None:
    report, results = audit(["integrity.gemm.tf32", "fake.ok"])
    assert results["integrity.gemm.tf32"].status is Status.skipped
    assert "TF32" in results["integrity.gemm.tf32"].reason
    assert report.verdict is Verdict.pass_


@pytest.mark.usefixtures("plugin_env")
def test_a_high_finding_fails_the_audit_and_carries_the_check_seed() -> None:
    report, results = audit(["fake.fail", "fake.ok"], seed=5)
    assert report.verdict is Verdict.fail
    assert results["fake.fail"].status is Status.failed
    assert report.findings[0].evidence["seed"] == derive_seed(5, "fake.fail")
    assert results["fake.ok"].coverage["seed_seen"] == derive_seed(5, "fake.ok")


@pytest.mark.usefixtures("plugin_env")
def test_a_worker_that_cannot_start_errors_every_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watchdog, "WORKER", ("python3", "-c", "raise SystemExit(4)"))
    report, results = audit(["fake.ok", "fake.warn"])
    assert {r.status for r in results.values()} == {Status.error}
    assert report.verdict is Verdict.inconclusive


def test_selection_by_prefix() -> None:
    ids = [c.id for c in select(["integrity.gemm"])]
    assert "integrity.gemm.fp32" in ids and all(i.startswith("integrity.gemm.") for i in ids)
    assert select(["integrity.gem"]) == []


def test_seeds_are_stable_and_distinct_per_check() -> None:
    assert derive_seed(1, "a") == derive_seed(1, "a")
    assert len({derive_seed(1, "a"), derive_seed(1, "b"), derive_seed(2, "a")}) == 3
