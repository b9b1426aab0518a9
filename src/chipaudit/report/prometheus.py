"""Prometheus node-exporter textfile format, for fleet dashboards.

Point node_exporter's --collector.textfile.directory at the folder and write FILE.prom there; the file
is replaced atomically, as the collector requires, so it never reads half a file. Verdict and check
status are state sets (one series per state, the current one 1) so that alerts can match on a label.
Every series carries the device and the level; the instance label comes from the scrape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from chipaudit.report.figures import scalar_figures
from chipaudit.report.model import SHARED_MODE, Report, Severity, Status, Verdict, write_atomic

PREFIX = "chipaudit"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


class Writer:
    def __init__(self, base: dict[str, str]):
        self.base, self.lines = base, []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[dict[str, str], float]]) -> None:
        metric = f"{PREFIX}_{name}"
        self.lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
        self.lines += [f"{metric}{_labels({**self.base, **extra})} {_number(value)}" for extra, value in samples]


def to_text(report: Report) -> str:
    w = Writer({"device": report.device.spec, "level": report.level.value})
    when = (report.finished or report.started).timestamp()
    w.family("verdict", "gauge", "The audit's verdict: 1 for the current one.",
             [({"verdict": v.value}, float(report.verdict is v)) for v in Verdict])
    w.family("audit_complete", "gauge", "1 when every planned check ran; 0 for an interrupted audit.",
             [({}, float(report.complete))])
    w.family("audit_timestamp_seconds", "gauge", "When the audit finished (Unix time).", [({}, when)])
    w.family("audit_info", "gauge", "The audit's seed (replay with chipaudit run --seed), tool and device name.",
             [({"seed": str(report.seed), "tool_version": report.tool.version,
                "device_name": report.device.name}, 1)])
    w.family("findings", "gauge", "Findings by severity.",
             [({"severity": s.value}, sum(f.severity is s for f in report.findings)) for s in Severity])
    w.family("check_status", "gauge", "Each check's status: 1 for the current one.",
             [({"check": c.id, "status": s.value}, float(c.status is s)) for c in report.checks for s in Status])
    w.family("check_duration_seconds", "gauge", "How long each check ran.",
             [({"check": c.id}, c.duration_s) for c in report.checks])
    w.family("check_figure", "gauge", "Each check's key figures, by name (units in the name).",
             [({"check": c.id, "figure": re.sub(r"[^A-Za-z0-9_.]", "_", name)}, value)
              for c in report.checks for name, value in scalar_figures(c).items()])
    return "\n".join(w.lines) + "\n"


def write(report: Report, path: Path) -> None:
    write_atomic(path, to_text(report), mode=SHARED_MODE)
