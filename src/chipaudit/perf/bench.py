"""What `chipaudit bench` adds to an audit of the performance checks: choosing the checks, asking the
workers for the measurements a requirements file names, and the figures and fitness tables.

A benchmark is an audit restricted to the performance category, so its output is an ordinary
report: `chipaudit compare` reads benchmarks and audits alike. The requested measurements travel in
the audit's parameters (PERF_CASES_PARAM), so the report records them and `chipaudit replay` measures
them again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from chipaudit.errors import InputError
from chipaudit.perf import passes, requirements
from chipaudit.perf.compare import format_number
from chipaudit.perf.metrics import METRICS, check_for, figures_of
from chipaudit.report.model import Report, Status

PREFIX = "performance"
# The audit parameter that carries extra workload measurements (a list of {"metric", "model", "batch"});
# the workload checks add these cases to their own.
PERF_CASES_PARAM = "perf_cases"


class BenchInputError(InputError):
    """Bad bench options; one line."""


def only_patterns(only: list[str] | None) -> list[str]:
    """Check-id patterns for the benchmark: all performance checks, or the ones named (with or without
    the 'performance.' prefix)."""
    from chipaudit.checks import select

    if not only:
        return [PREFIX]
    patterns = [p if p == PREFIX or p.startswith(PREFIX + ".") else f"{PREFIX}.{p}" for p in only]
    for given, pattern in zip(only, patterns, strict=True):
        if not select([pattern]):
            raise BenchInputError(f"--only {given}: no performance check has that id or prefix "
                                  "(see 'chipaudit checks')")
    return patterns


def load_scenario(path: Path | None) -> requirements.Scenario | None:
    """The needs to judge, or None; a malformed file is bad input, found before anything is measured."""
    if path is None:
        return None
    try:
        return requirements.load(path)
    except requirements.RequirementsError as e:
        raise BenchInputError(str(e)) from None


def params(scenario: requirements.Scenario | None) -> dict[str, Any]:
    """Audit parameters that make the workers measure what the requirements ask for, in passes
    (perf/passes.py)."""
    cases = requirements.perf_cases(scenario) if scenario else []
    return {passes.PASSES_PARAM: passes.PASSES, **({PERF_CASES_PARAM: cases} if cases else {})}


def judge(report: Report, scenario: requirements.Scenario, console: Console) -> bool:
    """Print the fitness table and a count; True when every need is met."""
    results = evaluate(report, scenario)
    console.print(fitness_table(scenario, results))
    failed = sum(not r.passed for r in results)
    console.print(f"{len(results) - failed} of {len(results)} need(s) met", markup=False, highlight=False)
    return not failed


def figures_table(report: Report) -> Table:
    table = Table(title=f"performance of {report.device.spec} ({report.device.name})")
    for name, justify in (("figure", "left"), ("measured", "right"), ("noise", "right"), ("rated", "right"),
                          ("efficiency", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for f in figures_of(report.checks):
        params = ", ".join(f"{k} {v}" for k, v in (f.get("params") or {}).items())
        rated = f"{format_number(f['rated'])}" if f.get("rated") else "no spec"
        eff = f"{f['efficiency']:.0%}" if f.get("efficiency") is not None else "—"
        table.add_row(f"{f['metric']}" + (f" ({params})" if params else ""),
                      f"{format_number(f['value'])} {f['unit']}", f"±{f.get('noise', 0):.1%}", rated, eff)
    return table


def why_missing(report: Report) -> dict[str, str]:
    """For each metric, why its check produced no figure (skipped, errored, or over budget)."""
    checks = {c.id: c for c in report.checks}
    out: dict[str, str] = {}
    for metric in METRICS:
        check = checks.get(check_for(metric))
        if check is None:
            out[metric] = f"{check_for(metric)} did not run"
        elif check.status in (Status.skipped, Status.error):
            out[metric] = f"{check.id} {check.status.value}: {check.reason}"
        else:
            skipped = [s for s in check.coverage.get("skipped_cases", []) if s.startswith(metric)]
            if skipped:
                out[metric] = "; ".join(skipped)
    return out


def fitness_table(scenario: requirements.Scenario, results: list[requirements.Fitness]) -> Table:
    table = Table(title=f"fitness{f' for {scenario.name}' if scenario.name else ''}")
    for name in ("need", "measured", "margin", "result", "note"):
        table.add_column(name, justify="right" if name in ("measured", "margin") else "left",
                         overflow="fold")
    for r in results:
        measured = "—" if r.measured is None else f"{format_number(r.measured)} {r.need.unit}"
        margin = "—" if r.margin is None else f"{r.margin:+.0%}"
        result = Text("pass", style="bold green") if r.passed else Text("FAIL", style="bold red")
        table.add_row(r.need.describe(), measured, margin, result, r.note)
    return table


def evaluate(report: Report, scenario: requirements.Scenario) -> list[requirements.Fitness]:
    return requirements.evaluate(scenario, figures_of(report.checks), why_missing(report))
