"""The fleet page: everything the summary holds is on it, hostile strings stay text, it loads nothing,
and real Chromium renders it with the banner that says what needs attention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from evidence_support import check_rendering, synthetic_report
from page_support import assert_loads_nothing, embedded, page_requests, text_of

from chipaudit.fleet.store import DONE, FAILED, LOST, Audit
from chipaudit.fleet.summary import summarize
from chipaudit.report import html
from chipaudit.report.model import Category, CheckResult, Finding, Report, Severity, Status

RUN = "run-1"
HOSTILE = "<script>alert(1)</script>"


def _report(flops: float, stack: str = "driver 1", failing: bool = False, model: str = "Synthetic CPU") -> Report:
    report = synthetic_report(failing=failing)
    report.device.name = model
    report.add(CheckResult(id="performance.gemm.fp32", category=Category.performance, status=Status.passed,
                           duration_s=1.0, measurements={"flops": flops}), [])
    report.add(CheckResult(id="stack.fingerprint", category=Category.stack, status=Status.passed, duration_s=1.0,
                           measurements={"fingerprint": {"stack": stack}}), [])
    return report


def _done(node: str, report: Report) -> Audit:
    return Audit(RUN, node, "cpu", "cpu", DONE, 1, verdict=report.verdict.value, model=report.device.name,
                 finished="2026-01-01T00:05:00+00:00", report=report.model_dump_json())


def _summary(audits: list[Audit], config: dict[str, Any] | None = None) -> dict[str, Any]:
    config = config or {"level": "quick", "seed": 3, "only": ["integrity.gemm.fp32"]}
    run = {"run_id": RUN, "state": "done", "config": config, "created": "2026-01-01T00:00:00+00:00"}
    return summarize(run, audits)


@pytest.fixture
def troubled() -> dict[str, Any]:
    """Six devices of one model: n2 fails, n4 runs at a third of its peers' speed, n5 has another
    driver, n3 has a finding with a hostile title; n6 was lost and n7 could not run."""
    audits = []
    for i, flops in enumerate([1.00e9, 1.05e9, 0.95e9, 1.10e9, 0.33e9, 0.98e9]):
        report = _report(flops, "driver 2" if i == 5 else "driver 1", failing=i == 2)
        if i == 3:
            report.findings.append(Finding(check="integrity.gemm.bf16", category=Category.integrity,
                                           severity=Severity.medium, title=f"</td>{HOSTILE}", detail="a & b < c"))
        audits.append(_done(f"n{i}", report))
    audits += [Audit(RUN, "n6", "cpu", "cpu", LOST, 2, reason="the node did not come back"),
               Audit(RUN, "n7", "cpu", "cpu", FAILED, 1, reason="chipaudit exited 2 without a report")]
    return _summary(audits)


def test_the_page_shows_everything_the_summary_holds(troubled: dict[str, Any]) -> None:
    page = html.fleet_html(troubled)
    seen = text_of(page)
    assert f"Fleet run {RUN}" in seen and "state: done" in seen and "wall time: 300 s" in seen
    for count in html.FLEET_COUNTS:
        assert f"{count.replace('_', ' ')} {troubled[count]}" in seen, count
    assert "level quick" in seen and "seed 3" in seen and "only integrity.gemm.fp32" in seen
    (outlier,) = troubled["outliers"]
    assert (f"n4 cpu Synthetic CPU {outlier['figure']} 3.300e+08 9.900e+08 {outlier['z']:g} slow") in seen
    (deviant,) = troubled["stack_deviants"]
    assert f"n5 cpu Synthetic CPU {deviant['digest']} {deviant['majority_digest']} 5" in seen
    for finding in troubled["findings"]:
        assert f"{finding['check']}: {finding['title']}" in seen
        assert ", ".join(finding["devices"]) in seen
    assert "on 5 device(s): n0/cpu, n1/cpu, n3/cpu, n4/cpu, n5/cpu" in seen  # the low finding, on five
    for audit in troubled["audits"]:
        assert f"{audit['node']} {audit['device_uuid']} {audit['device']} {audit['state']} {audit['attempts']}" in seen
        if audit["reason"]:
            assert audit["reason"] in seen
    assert "needs attention: 1 failed, 1 lost, 1 could not run, 1 performance outlier(s), 1 stack(s)" in seen
    assert 'id="fleet-plot-0"' in page and 'id="fleet-plot-1"' in page  # outcomes, and n4 against its peers
    assert embedded(page, "fleet-data") == troubled


def test_hostile_strings_stay_text_and_the_page_loads_nothing() -> None:
    audits = [_done(HOSTILE, _report(1e9, model=HOSTILE)) for _ in range(3)]
    audits[0].report = None
    audits[0].state, audits[0].reason = FAILED, f'"><img src=x onerror=alert(2)>{HOSTILE}'
    page = html.fleet_html(_summary(audits, {"level": HOSTILE}))
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert text_of(page).count(HOSTILE) >= 6  # node and model in each row, the reason, the configuration
    assert page.count("<script") == 2  # the data (never executed) and the one inline script
    assert_loads_nothing(page)


@pytest.mark.parametrize(("states", "verdict", "word"), [
    ([DONE, DONE, DONE], "pass", "PASS"),
    ([DONE, DONE, LOST], "inconclusive", "REVIEW"),
    ([], "pass", "PASS"),  # a run planned on no device
])
def test_the_banner_says_what_needs_attention(states: list[str], verdict: str, word: str) -> None:
    audits = [_done(f"n{i}", _report(1e9)) if s == DONE else Audit(RUN, f"n{i}", "cpu", "cpu", s, 1)
              for i, s in enumerate(states)]
    page = html.fleet_html(_summary(audits))
    assert f'data-verdict="{verdict}"' in page and f'<div id="verdict-word">{word}</div>' in page


def test_the_written_fleet_page_is_the_rendered_one(troubled: dict[str, Any], tmp_path: Path) -> None:
    html.write_fleet(troubled, tmp_path / "fleet.html")
    assert (tmp_path / "fleet.html").read_text() == html.fleet_html(troubled)


def test_chromium_renders_the_fleet_page_and_nothing_leaves(troubled: dict[str, Any], tmp_path: Path) -> None:
    html.write_fleet(troubled, tmp_path / "fleet.html")
    check_rendering(tmp_path / "fleet.html", "fail", tmp_path)
    assert page_requests(tmp_path / "fleet.html", tmp_path) == []


def test_chromium_renders_a_clean_fleet_page(tmp_path: Path) -> None:
    html.write_fleet(_summary([_done(f"n{i}", _report(1e9)) for i in range(4)]), tmp_path / "clean.html")
    check_rendering(tmp_path / "clean.html", "pass", tmp_path)
