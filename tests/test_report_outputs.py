"""JUnit XML for CI and the node-exporter textfile for Prometheus."""

from __future__ import annotations

import stat
import xml.etree.ElementTree as ET
from pathlib import Path

from conftest import chipaudit
from evidence_support import synthetic_report
from prometheus_client.parser import text_string_to_metric_families

from chipaudit.report import junit, prometheus
from chipaudit.report.model import Category, CheckResult, Report, Status


def _report_with_an_error() -> Report:
    report = synthetic_report(failing=True)
    report.add(CheckResult(id="behaviour.killswitch", category=Category.behaviour, status=Status.error,
                           reason="the worker process died (exit status -9)\x07",
                           measurements={"traceback": "Traceback...\x00\nRuntimeError"}), [])
    return report


def test_junit_maps_each_status(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    junit.write(_report_with_an_error(), path)
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    assert suite is not None
    counts = tuple(suite.get(k) for k in ("tests", "failures", "errors", "skipped"))
    assert counts == ("5", "1", "1", "1")
    cases = {c.get("name"): {child.tag: child for child in c} for c in suite.iter("testcase")}
    assert "outside the error bound" in (cases["integrity.gemm.bf16"]["failure"].text or "")
    assert "exit status -9" in (cases["behaviour.killswitch"]["error"].get("message") or "")
    assert cases["integrity.gemm.tf32"]["skipped"].get("message") == "TF32 is an NVIDIA tensor-core mode"
    assert cases["integrity.gemm.fp32"] == {}
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["verdict"] == "fail" and props["seed"] == "1234"


def test_junit_marks_an_interrupted_audit() -> None:
    report = synthetic_report()
    report.finish(complete=False)
    root = ET.fromstring(junit.to_xml(report).split("\n", 1)[1])
    case = next(c for c in root.iter("testcase") if c.get("name") == "audit.complete")
    assert case.find("error") is not None


def test_prometheus_textfile_parses_and_says_what_happened(tmp_path: Path) -> None:
    report = _report_with_an_error()
    report.device.spec = 'cuda:0"\n'  # label values are escaped
    path = tmp_path / "chipaudit.prom"
    prometheus.write(report, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chipaudit.prom"]  # atomic: no leftovers
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # node_exporter runs as its own user
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(path.read_text()) for s in family.samples}
    base = (("device", 'cuda:0"\n'), ("level", "quick"))

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted((*base, *labels.items()))))]

    assert value("chipaudit_verdict", verdict="fail") == 1 and value("chipaudit_verdict", verdict="pass") == 0
    assert value("chipaudit_check_status", check="behaviour.killswitch", status="error") == 1
    assert value("chipaudit_findings", severity="high") == 1
    assert value("chipaudit_check_figure", check="integrity.gemm.fp32", figure="max_error_to_bound") == 0.25
    assert value("chipaudit_audit_info", seed="1234", tool_version="0.1.0", device_name="Synthetic CPU") == 1


def test_report_command_writes_each_format(tmp_path: Path) -> None:
    source = tmp_path / "r.json"
    synthetic_report().write_json(source)
    out = {name: tmp_path / name for name in ("r.html", "r.xml", "r.prom")}
    p = chipaudit("report", str(source), "--html", str(out["r.html"]), "--junit", str(out["r.xml"]),
                  "--prometheus", str(out["r.prom"]))
    assert p.returncode == 0, p.stderr
    assert all(path.stat().st_size > 0 for path in out.values())
    for args, message in ((["report", str(source)], "at least one"),
                          (["report", str(tmp_path / "none.json"), "--html", "x.html"], "no such"),
                          (["report", str(tmp_path / "r.prom"), "--html", str(tmp_path / "x.html")], "not valid JSON"),
                          (["report", str(source), "--html", "/no/such/dir/x.html"], "does not exist")):
        p = chipaudit(*args)
        assert p.returncode == 2 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
