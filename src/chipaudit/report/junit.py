"""JUnit XML, so that CI systems (Jenkins, GitLab, GitHub Actions reporters) show each check as a test.

passed and warning -> a passing testcase (warnings listed in its output); failed -> <failure>;
error -> <error>; skipped -> <skipped>. An interrupted audit adds an errored testcase 'audit.complete',
so that CI cannot mistake a partial audit for a whole one.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from chipaudit.report.model import SHARED_MODE, Report, Status, write_atomic

# Characters XML 1.0 cannot carry at all, even escaped; a device's error message may hold them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clean(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def _findings_text(report: Report, check_id: str) -> str:
    return _clean("\n".join(f"[{f.severity.value}] {f.title}: {f.detail}"
                             for f in report.findings if f.check == check_id))


def to_xml(report: Report) -> str:
    counts = {s: sum(c.status is s for c in report.checks) for s in Status}
    errors = counts[Status.error] + (0 if report.complete else 1)
    tests = len(report.checks) + (0 if report.complete else 1)
    total_time = f"{sum(c.duration_s for c in report.checks):.3f}"
    attrs = {"tests": str(tests), "failures": str(counts[Status.failed]), "errors": str(errors),
             "skipped": str(counts[Status.skipped]), "time": total_time}
    root = ET.Element("testsuites", {"name": "chipaudit", **attrs})
    suite = ET.SubElement(root, "testsuite", {
        "name": _clean(f"chipaudit {report.level.value} audit of {report.device.spec}"), **attrs,
        "timestamp": report.started.isoformat(), "hostname": _clean(report.environment.hostname),
    })
    properties = ET.SubElement(suite, "properties")
    for name, value in (("verdict", report.verdict.value), ("level", report.level.value),
                        ("seed", str(report.seed)), ("device", report.device.spec),
                        ("device_name", report.device.name), ("tool_version", report.tool.version),
                        ("replay", report.replay)):
        ET.SubElement(properties, "property", {"name": name, "value": _clean(value)})
    for check in report.checks:
        case = ET.SubElement(suite, "testcase", {"classname": f"chipaudit.{check.category.value}",
                                                 "name": _clean(check.id), "time": f"{check.duration_s:.3f}"})
        findings = _findings_text(report, check.id)
        if check.status is Status.failed:
            failure = ET.SubElement(case, "failure", {"message": findings.splitlines()[0] if findings else "failed",
                                                      "type": "finding"})
            failure.text = findings
        elif check.status is Status.error:
            ET.SubElement(case, "error", {"message": _clean(check.reason or "error"), "type": "error"}).text = (
                _clean(str(check.measurements.get("traceback", ""))) or None)
        elif check.status is Status.skipped:
            ET.SubElement(case, "skipped", {"message": _clean(check.reason or "skipped")})
        elif findings:
            ET.SubElement(case, "system-out").text = findings
    if not report.complete:
        case = ET.SubElement(suite, "testcase", {"classname": "chipaudit.audit", "name": "audit.complete",
                                                 "time": "0"})
        ET.SubElement(case, "error", {"message": "the audit did not run to completion", "type": "incomplete"})
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write(report: Report, path: Path) -> None:
    write_atomic(path, to_xml(report), mode=SHARED_MODE)
