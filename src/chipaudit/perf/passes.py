"""The performance checks measured in several passes, each in a fresh worker process, and each check's
passes merged into one result.

Part of a figure's variation is fixed for a process's lifetime and differs from one process to the
next: on an idle 2-core CPU host, three back-to-back quick benches measured the same 1024^3 fp32
product at 0.157, 0.097 and 0.151 TFLOP/s, and launch latencies x1.64 apart, while each run's five
blocks agreed within 1-3 % (issue 14); in fresh interpreters on the same host, one-element launches
took either about 2.6 us or about 4.5 us, with address-space randomisation off as well as on. Blocks
of repeats inside one worker cannot see that variation, so `compare` judged two healthy benches
against a noise that left it out and called them regressions. The bench therefore measures each
performance check in PASSES workers, one after the other, each with its share of the budget
(perf_budget_scale), and the merged figure (timing.Figure.from_passes) takes its value from the
repeats of every pass and a noise of at least the range of the passes' values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chipaudit.checks.base import status_for
from chipaudit.perf.metrics import figure_key, value_name
from chipaudit.perf.timing import Figure
from chipaudit.report.model import CheckResult, Finding, Status

# The audit parameter that asks for this many passes (perf/bench.py sets it; absent, one pass). It is
# recorded in the report, so `chipaudit replay` measures in as many passes.
PASSES_PARAM = "perf_passes"
# Three, the fewest whose range gives the process-to-process spread a second look: with two passes,
# two healthy benches whose passes each happened to land in one mode, the one in the fast mode and
# the other in the slow, were called a regression in about one comparison of ten per figure when
# the latencies measured in fresh interpreters above were drawn at random; with three, one in forty
# (launch) and one in three hundred (gemm.fp32). Each pass costs a worker's start, about 2.5 s on a
# 2-core host, beside its share of the measurement.
PASSES = 3
# The budget-scale parameter of the performance checks (checks/performance/common.py), split among
# the passes.
BUDGET_SCALE_PARAM = "perf_budget_scale"


def count(params: dict[str, Any]) -> int:
    return max(1, int(params.get(PASSES_PARAM, 1)))


def pass_params(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters of one pass: the budget shared out among the passes."""
    return {**params, BUDGET_SCALE_PARAM: float(params.get(BUDGET_SCALE_PARAM, 1.0)) / count(params)}


def merge(passes: Sequence[tuple[CheckResult, list[Finding]]]) -> tuple[CheckResult, list[Finding]]:
    """One check's passes as one result. Findings of every pass (the same finding once); where a pass
    skipped or errored, that pass's result stands for the check, since a figure measured in only
    some processes does not carry their spread; else the figures merged, each from the passes that
    measured it, and the rest of the measurements and coverage from the first pass, lists united (an
    entry of a later pass added when no entry names the same thing: "4096x4096x4096: budget: ..."
    once, whatever each pass predicted)."""
    findings: list[Finding] = []
    for _, found in passes:
        findings.extend(f for f in found if not any((f.severity, f.title) == (g.severity, g.title)
                                                    for g in findings))
    results = [r for r, _ in passes]
    duration = round(sum(r.duration_s for r in results), 3)
    broken = next((r for r in results if r.status is Status.error), None) or \
        next((r for r in results if r.status is Status.skipped), None)
    if broken is not None:
        return broken.model_copy(update={"duration_s": duration}), findings
    first = results[0]
    by_key: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        for f in r.measurements.get("figures", []):
            by_key.setdefault(figure_key(f), []).append(f)
    figures = [Figure.from_passes(group).to_dict() for group in by_key.values()]
    measurements = {**first.measurements, "figures": figures,
                    "values": {value_name(f): f["value"] for f in figures}, "passes": len(results)}
    coverage = dict(first.coverage)
    for r in results[1:]:
        for key, value in r.coverage.items():
            if isinstance(value, list) and isinstance(coverage.get(key), list):
                coverage[key] = coverage[key] + [v for v in value if _head(v) not in map(_head, coverage[key])]
    if "cases" in coverage and "figures" in coverage:
        coverage["cases"] = len(figures)
    merged = first.model_copy(update={"status": status_for(findings), "duration_s": duration,
                                      "measurements": measurements, "coverage": coverage})
    return merged, findings


def _head(entry: object) -> object:
    """What a coverage entry is about: a note's text before its first colon."""
    return entry.split(":", 1)[0] if isinstance(entry, str) else entry
