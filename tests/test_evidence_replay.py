"""Replay's comparison of a recorded audit with its reproduction (the runs themselves: test_evidence_e2e)."""

from __future__ import annotations

from evidence_support import synthetic_report

from chipaudit.checks.base import derive_seed
from chipaudit.evidence.replay import FIGURE_RTOL, compare, config_for
from chipaudit.report.model import Report, Status


def _consistent(report: Report) -> Report:
    """Give each check the seed a real run would have derived for it."""
    for check in report.checks:
        check.seed = derive_seed(report.seed, check.id)
    return report


def test_identical_reproduction_agrees_everywhere() -> None:
    recorded = _consistent(synthetic_report(failing=True))
    rows = compare(recorded, recorded.model_copy(deep=True))
    assert all(r.agrees for r in rows) and len(rows) == len(recorded.checks)
    fp32 = next(r for r in rows if r.check == "integrity.gemm.fp32")
    by_name = {f.name: f for f in fp32.figures}
    assert by_name["max_error_to_bound"].within is True
    assert by_name["probe_macs_per_s"].timing and by_name["probe_macs_per_s"].within is None


def test_disagreements_are_named() -> None:
    recorded = _consistent(synthetic_report(failing=True))
    again = recorded.model_copy(deep=True)
    again.checks = [c for c in again.checks if c.id != "performance.burnin"]
    fp32 = next(c for c in again.checks if c.id == "integrity.gemm.fp32")
    fp32.status, fp32.reason = Status.error, "the worker process died"
    fp32.measurements["max_error_to_bound"] *= 1 + 2 * FIGURE_RTOL
    fp32.measurements["probe_macs_per_s"] /= 10  # timing: shown, never judged
    again.findings[0].title = "a different fault"
    rows = {r.check: r for r in compare(recorded, again)}
    assert not rows["performance.burnin"].agrees and rows["performance.burnin"].reproduced is None
    assert not rows["integrity.gemm.fp32"].agrees and "worker process died" in rows["integrity.gemm.fp32"].note
    figures = {f.name: f for f in rows["integrity.gemm.fp32"].figures}
    assert figures["max_error_to_bound"].within is False and figures["probe_macs_per_s"].within is None
    assert not rows["integrity.gemm.bf16"].agrees
    assert rows["integrity.gemm.bf16"].note == ("not reproduced: wrong bf16 mm results: outside the error bound; "
                                                "new: a different fault")
    assert rows["integrity.gemm.tf32"].agrees


def test_a_seed_that_does_not_follow_from_the_run_seed_is_a_disagreement() -> None:
    recorded = _consistent(synthetic_report())
    recorded.checks[0].seed = 7
    rows = compare(recorded, recorded.model_copy(deep=True))
    assert not rows[0].agrees and "seed" in rows[0].note


def test_config_replays_only_the_checks_this_version_has() -> None:
    config = config_for(synthetic_report(), "cpu")
    assert config.only == ["integrity.gemm.fp32", "integrity.gemm.tf32", "integrity.gemm.bf16"]
    assert (config.seed, config.level.value, config.device) == (1234, "quick", "cpu")


def test_config_replays_with_the_recorded_parameters() -> None:
    recorded = synthetic_report()
    recorded.params = {"burn_in_seconds": 3.0, "baseline": "/recorded/trusted.json"}
    assert config_for(recorded, "cpu").params == recorded.params
    moved = config_for(recorded, "cpu", baseline="/here/trusted.json")
    assert moved.params == {"burn_in_seconds": 3.0, "baseline": "/here/trusted.json"}
