"""What `chipaudit bench` adds to an audit of the performance checks: choosing the checks, passing the
measurements a requirements file asks for to the workers, and the figures and fitness tables.

A benchmark is an audit restricted to the performance category, so its output is an ordinary
report: `chipaudit compare` reads benchmarks and audits alike.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

from rich.table import Table
from rich.text import Text

from chipaudit.perf import requirements
from chipaudit.perf.compare import _number
from chipaudit.perf.metrics import METRICS, check_for, figures_of
from chipaudit.report.model import Report, Status

PREFIX = "performance"
# Extra workload measurements (JSON list of {"metric", "model", "batch"}) for the workers: bench sets
# it from a requirements file; the workload checks add these cases to their own.
PERF_CASES_ENV = "CHIPAUDIT_PERF_CASES"


class BenchInputError(ValueError):
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


@contextlib.contextmanager
def requested_cases(scenario: requirements.Scenario | None) -> Iterator[None]:
    """Make the workers measure what the requirements ask for, for the duration of the run."""
    cases = requirements.perf_cases(scenario) if scenario else []
    saved = os.environ.get(PERF_CASES_ENV)
    if cases:
        os.environ[PERF_CASES_ENV] = json.dumps(cases)
    try:
        yield
    finally:
        if cases:
            if saved is None:
                os.environ.pop(PERF_CASES_ENV, None)
            else:
                os.environ[PERF_CASES_ENV] = saved


def env_cases() -> list[dict[str, Any]]:
    """The cases bench asked for through the environment (empty when none or malformed)."""
    try:
        cases = json.loads(os.environ.get(PERF_CASES_ENV, "[]"))
    except ValueError:
        return []
    return [c for c in cases if isinstance(c, dict)] if isinstance(cases, list) else []


def figures_table(report: Report) -> Table:
    table = Table(title=f"performance of {report.device.spec} ({report.device.name})")
    for name, justify in (("figure", "left"), ("measured", "right"), ("noise", "right"), ("rated", "right"),
                          ("efficiency", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for f in figures_of(report.checks):
        params = ", ".join(f"{k} {v}" for k, v in (f.get("params") or {}).items())
        rated = f"{_number(f['rated'])}" if f.get("rated") else "no spec"
        eff = f"{f['efficiency']:.0%}" if f.get("efficiency") is not None else "—"
        table.add_row(f"{f['metric']}" + (f" ({params})" if params else ""), f"{_number(f['value'])} {f['unit']}",
                      f"±{f.get('noise', 0):.1%}", rated, eff)
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
        measured = "—" if r.measured is None else f"{_number(r.measured)} {r.need.unit}"
        margin = "—" if r.margin is None else f"{r.margin:+.0%}"
        result = Text("pass", style="bold green") if r.passed else Text("FAIL", style="bold red")
        table.add_row(r.need.describe(), measured, margin, result, r.note)
    return table


def evaluate(report: Report, scenario: requirements.Scenario) -> list[requirements.Fitness]:
    return requirements.evaluate(scenario, figures_of(report.checks), why_missing(report))
