"""The HTML pages: one for an audit, one for a fleet run, each a single self-contained file that a
buyer, a regulator or an operator can open anywhere.

Both are drawn from the same templates (report/templates: base.html.j2 and its shared macros), so
they share one style, one way of showing findings, tables and plots, and one policy: everything is
inline, the page may load nothing, and every string is escaped, because a report may come from
someone else. This module only turns a report or a fleet summary into what the templates show.

The audit page, in order: the verdict at a glance, findings by severity, every check with its
coverage, plots where measurements form series, the limits of the audit, and how to reproduce it.
The fleet page: what needs attention first, the outcomes, the devices that stand out among their
peers, the findings by kind with the devices that had them, and every audit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from markupsafe import Markup

from chipaudit.report import plots
from chipaudit.report.figures import scalar_figures
from chipaudit.report.model import (
    FAILING_SEVERITY,
    SHARED_MODE,
    Report,
    Severity,
    Status,
    Verdict,
    write_atomic,
)
from chipaudit.report.templating import render_page

VERDICT_TEXT = {Verdict.pass_: "PASS", Verdict.fail: "FAIL", Verdict.inconclusive: "INCONCLUSIVE"}
VERDICT_MEANING = {
    Verdict.pass_: "Every check that ran agreed with the independent oracle and no finding reached "
                   f"{FAILING_SEVERITY.value} severity.",
    Verdict.fail: f"At least one finding of {FAILING_SEVERITY.value} severity or above: the device did something "
                  "it must not.",
    Verdict.inconclusive: "The audit cannot vouch for the device: it did not finish, a check errored, or "
                          "nothing was observed.",
}
# More informational findings than this are folded away, under their count.
FOLDED_INFO = 3
# Coverage figures shown on a check's row before it is opened.
COVERAGE_SUMMARY = 4
# Fleet plots: one per figure with outliers, at most this many.
MAX_OUTLIER_PLOTS = 8
# The fleet's bars in style.css's colours for the same outcomes, so that the plot and the cards agree.
_COLOUR = {"pass": "#1a7f37", "fail": "#cf222e", "warn": "#bf8700", "grey": "#8c959f", "peer": "#0072B2"}


def _severity_groups(findings: Iterable[Any],
                     severity_of: Callable[[Any], Severity]) -> list[tuple[str, list[Any], bool]]:
    """(severity, its findings, folded) from the most severe down: informational notes, when many, are
    folded so that they do not push what matters off the first screen."""
    groups = []
    listed = list(findings)
    for severity in sorted(Severity, key=lambda s: -s.rank):
        group = [f for f in listed if severity_of(f) is severity]
        if group:
            groups.append((severity.value, group, severity.rank < Severity.low.rank and len(group) > FOLDED_INFO))
    return groups


def _audit_banner(report: Report) -> dict[str, Any]:
    counts = {s: sum(c.status is s for c in report.checks) for s in Status}
    tally = ", ".join(f"{n} {s.value}" for s, n in counts.items() if n) or "no checks"
    serious = sum(f.severity.rank >= FAILING_SEVERITY.rank for f in report.findings)
    incomplete = " · INCOMPLETE: the audit was interrupted" if not report.complete else ""
    return {"verdict": report.verdict.value, "word": VERDICT_TEXT[report.verdict],
            "what": f"{report.level.value} audit of {report.device.spec} "
                    f"({report.device.name or report.device.type}){incomplete}",
            "lines": [f"{tally} · {serious} finding(s) of {FAILING_SEVERITY.value} severity or above"],
            "meaning": VERDICT_MEANING[report.verdict]}


def _audit_cards(report: Report) -> list[tuple[str, Any, str]]:
    duration = f"{(report.finished - report.started).total_seconds():.0f} s" if report.finished else "unfinished"
    memory = f"{report.device.memory_bytes / 2**30:.1f} GiB" if report.device.memory_bytes else "unknown"
    items = [("device", f"{report.device.spec} · {report.device.name}"), ("memory", memory),
             ("level", report.level.value), ("seed", report.seed),
             ("started", report.started.strftime("%Y-%m-%d %H:%M:%S %Z")), ("duration", duration),
             ("torch", report.device.torch_version or report.environment.torch), ("host", report.environment.hostname),
             ("tool", f"{report.tool.name} {report.tool.version}"), ("schema", report.schema_),
             *report.device.driver.items()]
    return [(k, v, "") for k, v in items]


def _checks(report: Report, plot_ids: dict[str, list[str]]) -> list[dict[str, Any]]:
    """One row per check. A row shows its reason (why it was skipped or errored) or, failing that, its
    first few coverage numbers: how much it looked at matters more at a glance than what it found."""
    rows = []
    for c in report.checks:
        numbers = [(k.replace("_", " "), v) for k, v in c.coverage.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)]
        details = [("seed", c.seed), ("findings", sum(f.check == c.id for f in report.findings)),
                   *c.coverage.items(), *scalar_figures(c).items()]
        rows.append({"id": c.id, "category": c.category.value, "status": c.status.value,
                     "duration": f"{c.duration_s:.1f} s", "reason": c.reason, "coverage": numbers[:COVERAGE_SUMMARY],
                     "details": details, "traceback": c.measurements.get("traceback"),
                     "plots": plot_ids.get(c.id, [])})
    return rows


def _audit_plots(report: Report) -> tuple[list[tuple[str, str, str, Markup]], dict[str, list[str]]]:
    figures = []
    ids: dict[str, list[str]] = {}
    for c in report.checks:
        for i, plot in enumerate(plots.plots_for(c)):
            anchor = f"plot-{c.id}-{i}"
            ids.setdefault(c.id, []).append(anchor)
            figures.append((anchor, c.id, plot.title, Markup(plots.to_svg(plot))))
    return figures, ids


def to_html(report: Report) -> str:
    figures, plot_ids = _audit_plots(report)
    env = report.environment
    return render_page(
        "audit.html.j2",
        title=f"chipaudit: {VERDICT_TEXT[report.verdict]} — {report.level.value} audit of {report.device.spec}",
        banner=_audit_banner(report),
        sections=[("findings", "Findings"), ("checks", "Checks"), ("plots", "Plots"), ("limits", "Limits"),
                  ("reproduce", "Reproduce")],
        cards=_audit_cards(report),
        findings=_severity_groups(report.findings, lambda f: f.severity),
        checks=_checks(report, plot_ids), figures=figures, limits=report.limits, replay=report.replay,
        environment=[("os", env.os), ("python", env.python), ("torch", env.torch), ("numpy", env.numpy),
                     ("host", env.hostname)],
        tool=f"{report.tool.name} {report.tool.version}", schema=report.schema_,
        data_id="report-data", data=json.loads(report.to_json()))


def write(report: Report, path: Path) -> None:
    write_atomic(path, to_html(report), mode=SHARED_MODE)


# What each count on the fleet page means for the banner: a failed audit fails the run; anything else
# unfinished or unclear leaves it to review.
_FLEET_BAD = ("failed",)
_FLEET_UNCLEAR = ("inconclusive", "lost", "could_not_run", "not_finished")
FLEET_COUNTS = ("devices", "audited", "passed", *_FLEET_BAD, *_FLEET_UNCLEAR)
FLEET_MEANING = {
    "pass": "Every device was audited and passed, none stands out among its peers of the same model, and "
            "each model runs one stack.",
    "fail": "At least one device failed its audit: it did something it must not.",
    "inconclusive": "No device failed, but the run cannot vouch for the whole fleet yet.",
}
FLEET_WORD = {"pass": "PASS", "fail": "FAIL", "inconclusive": "REVIEW"}


def _fleet_attention(summary: dict[str, Any]) -> list[str]:
    """What a reader should look at, in words: every count that is not a clean pass."""
    notes = [f"{summary[c]} {c.replace('_', ' ')}" for c in (*_FLEET_BAD, *_FLEET_UNCLEAR) if summary[c]]
    if summary["outliers"]:
        notes.append(f"{len(summary['outliers'])} performance outlier(s)")
    if summary["stack_deviants"]:
        notes.append(f"{len(summary['stack_deviants'])} stack(s) unlike their model's majority")
    if summary.get("consensus_deviants"):
        notes.append(f"{len({d['device'] for d in summary['consensus_deviants']})} device(s) whose products are "
                     "unlike their model's majority")
    return notes


def _fleet_banner(summary: dict[str, Any]) -> dict[str, Any]:
    attention = _fleet_attention(summary)
    bad = any(summary[c] for c in _FLEET_BAD) or summary.get("consensus_deviants")
    verdict = "fail" if bad else "inconclusive" if attention else "pass"
    wall = summary["wall_time_s"]
    what = f"Fleet {summary.get('kind', 'run')} {summary['run_id']}"
    return {"verdict": verdict, "word": FLEET_WORD[verdict], "what": what,
            "lines": [f"{summary['audited']} of {summary['devices']} device(s) audited · state: {summary['state']} · "
                      f"wall time: {'-' if wall is None else f'{wall:.0f} s'}",
                      "needs attention: " + ", ".join(attention) if attention else "nothing needs attention"],
            "meaning": FLEET_MEANING[verdict]}


def _fleet_plots(summary: dict[str, Any]) -> list[tuple[str, str, str, Markup]]:
    """The outcomes, and for each figure with outliers the outlying devices against their peers' median."""
    colour = {"passed": "pass", "failed": "fail", "not_finished": "grey"}
    outcomes = [c for c in FLEET_COUNTS if c not in ("devices", "audited")]
    shown = [plots.Plot("fleet", "outcomes", bars=[(c.replace("_", " "), float(summary[c])) for c in outcomes],
                        colours=[_COLOUR[colour.get(c, "warn")] for c in outcomes])]
    by_figure: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for o in summary["outliers"]:
        by_figure.setdefault((o["model"], o["figure"]), []).append(o)
    for (model, figure), found in list(by_figure.items())[:MAX_OUTLIER_PLOTS]:
        bars = [("peer median", float(found[0]["peer_median"]))]
        bars += [(f"{o['node']}/{o['device_uuid']}", float(o["value"])) for o in found]
        shown.append(plots.Plot(model, figure, bars=bars[:plots.MAX_BARS],
                                colours=[_COLOUR["peer"]] + [_COLOUR["fail"] if o["kind"] == "slow" else
                                                             _COLOUR["warn"] for o in found]))
    return [(f"fleet-plot-{i}", p.check if i else "", p.title, Markup(plots.to_svg(p))) for i, p in enumerate(shown)]


def fleet_html(summary: dict[str, Any]) -> str:
    """The fleet page from fleet.summary.summarize's data model."""
    zero_mark = {**dict.fromkeys(_FLEET_BAD, "nonzero-bad"), **dict.fromkeys(_FLEET_UNCLEAR, "nonzero-warn")}
    banner = _fleet_banner(summary)
    return render_page(
        "fleet.html.j2", title=f"chipaudit fleet {summary['run_id']}: {banner['word']}", banner=banner,
        sections=[("outcomes", "Outcomes"), *([("watch", "Watch")] if "watch" in summary else []),
                  ("outliers", "Outliers"), ("stacks", "Stacks"), ("consensus", "Consensus"),
                  ("findings", "Findings"),
                  ("plots", "Plots"), ("audits", "Audits")],
        counts=[(c.replace("_", " "), summary[c], zero_mark.get(c, "") if summary[c] else "") for c in FLEET_COUNTS],
        config=[(k, v, "") for k, v in sorted(summary["config"].items())],
        summary=summary,
        findings=_severity_groups(summary["findings"], lambda f: Severity(f["severity"])),
        figures=_fleet_plots(summary), data_id="fleet-data", data=summary)


def write_fleet(summary: dict[str, Any], path: Path) -> None:
    write_atomic(path, fleet_html(summary), mode=SHARED_MODE)
