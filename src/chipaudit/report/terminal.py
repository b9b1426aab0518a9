"""The terminal view of a report: a summary table and a one-line verdict."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from chipaudit.report.model import Report, Severity, Status, Verdict

STATUS_STYLE = {
    Status.passed: "green", Status.warning: "yellow", Status.failed: "bold red",
    Status.skipped: "dim", Status.error: "magenta",
}
VERDICT_STYLE = {Verdict.pass_: "bold green", Verdict.fail: "bold red", Verdict.inconclusive: "bold yellow"}


def _coverage_text(coverage: dict[str, object]) -> str:
    keys = ("cases", "exact_cases", "determinism_repeats", "elements_checked")
    parts = [f"{k.replace('_', ' ')} {coverage[k]:,}" for k in keys if isinstance(coverage.get(k), int)]
    return ", ".join(parts)


def summary_table(report: Report) -> Table:
    table = Table(title=f"chipaudit {report.level.value} audit of {report.device.spec} ({report.device.name})")
    table.add_column("check")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("coverage / reason", overflow="fold")
    for check in report.checks:
        style = STATUS_STYLE[check.status]
        detail = check.reason or _coverage_text(check.coverage)
        table.add_row(check.id, f"[{style}]{check.status.value}[/]", f"{check.duration_s:.1f}s", detail)
    return table


def verdict_line(report: Report) -> str:
    serious = [f for f in report.findings if f.severity.rank >= Severity.medium.rank]
    counts = {s: sum(c.status is s for c in report.checks) for s in Status}
    tail = ", ".join(f"{n} {s.value}" for s, n in counts.items() if n)
    style = VERDICT_STYLE[report.verdict]
    incomplete = "" if report.complete else " (incomplete)"
    return (f"[{style}]verdict: {report.verdict.value.upper()}[/]{incomplete} — {tail}; "
            f"{len(serious)} finding(s) of medium severity or above")


def render(report: Report, console: Console) -> None:
    console.print(summary_table(report))
    for finding in sorted(report.findings, key=lambda f: -f.severity.rank):
        if finding.severity.rank >= Severity.low.rank:
            console.print(f"  [{finding.severity.value}] {finding.check}: {finding.title} — {finding.detail}",
                          markup=False, highlight=False)
    console.print(verdict_line(report))
    console.print(f"replay: {report.replay}", markup=False, highlight=False)
