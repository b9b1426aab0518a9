"""Shared makings for the performance tests: reports holding performance figures."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chipaudit.perf.timing import Figure
from chipaudit.report import model as m


def figure(metric: str, unit: str, samples: list[float], params: dict[str, Any] | None = None,
           better: str = "higher", rated: float | None = None) -> dict[str, Any]:
    f = Figure.from_values(metric, unit, samples, better, params)
    if rated:
        f.rate_against(rated, "a datasheet [vendor]")
    return f.to_dict()


def perf_report(figures: dict[str, list[dict[str, Any]]], name: str = "Test GPU",
                integrity: m.Status = m.Status.passed) -> m.Report:
    """A finished report with one integrity check and the given figures per performance check id."""
    report = m.Report(
        tool=m.ToolInfo(version="0.1.0"), level=m.Level.standard, seed=7, started=datetime.now(timezone.utc),
        device=m.DeviceInfo(spec="cuda:0", type="cuda", name=name),
        environment=m.Environment(os="Linux", python="3.11", torch="2.13.0", numpy="2.0"),
    )
    findings = [m.Finding(check="integrity.gemm.fp32", category=m.Category.integrity, severity=m.Severity.high,
                        title="wrong fp32 mm results")] if integrity is m.Status.failed else []
    report.add(m.CheckResult(id="integrity.gemm.fp32", category=m.Category.integrity, status=integrity), findings)
    for check_id, figs in figures.items():
        report.add(m.CheckResult(id=check_id, category=m.Category.performance, status=m.Status.passed,
                               measurements={"figures": figs}), [])
    report.finish(complete=True)
    return report


def write(report: m.Report, path: Path) -> Path:
    report.write_json(path)
    return path
