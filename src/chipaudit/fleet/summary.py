"""What a fleet run found: outcomes, findings by kind, performance outliers among peers, and stacks that
differ from the rest of their model.

A capped, throttled or slowly failing device often looks fine alone and stands out only next to its
peers. Outliers are judged per device model with the modified z-score of Iglewicz and Hoaglin: robust to
the outliers themselves, because it uses the median and the median absolute deviation (MAD), taken
among the devices that agree with the median (see `modified_z`).

Key figures: every performance figure (and its noise), and the other checks' throughputs and noise.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from chipaudit.fleet.store import DONE, FAILED, LOST, Audit
from chipaudit.perf.metrics import figure_key, figures_of
from chipaudit.perf.stats import MIN_EFFECT
from chipaudit.report.figures import format_figure, scalar_figures
from chipaudit.report.model import Report

# |modified z| above this marks an outlier (Iglewicz & Hoaglin, "How to Detect and Handle Outliers", 1993).
OUTLIER_Z = 3.5
# 0.6745 = the 0.75 quantile of the standard normal: it makes MAD-based z comparable to a standard z.
MAD_SCALE = 0.6745
# When more than half the values are equal (MAD = 0), the mean absolute deviation stands in, scaled by
# sqrt(pi/2) to estimate the standard deviation (IBM SPSS / Iglewicz-Hoaglin practice).
MEAN_AD_SCALE = 1.253314
# Peers needed before a device can be called an outlier among them.
MIN_PEERS = 3
# An outlier must also differ from its peers' median by this factor: on a busy machine a tight group of
# peers makes small, harmless differences statistically "significant" (the behaviour probes use the same
# rule: large and significant).
MIN_OUTLIER_FACTOR = 1.5
# A figure whose repeats spread by less than this is steady, however its peers' spread compares: below
# the smallest change the benchmarks ever call a regression (perf/stats.py).
ERRATIC_MIN_NOISE = MIN_EFFECT
# Figures where lower is worse (throughputs) and where higher is worse (noise, jitter).
_SPEED = re.compile(r"(_per_s|flops|tops|throughput|bandwidth)$")
_NOISE = re.compile(r"(noise|jitter|cv|stdev|spread)$")
_FINGERPRINT_CHECK = "stack.fingerprint"


def modified_z(values: list[float], band: float | None = None) -> list[float]:
    """(value - median) / robust spread for each value.

    With `band`, the spread is measured among the values within that factor of the median only: the
    devices under suspicion would otherwise widen the very spread they are judged against. With a
    third of a small fleet throttled, the MAD of all devices doubles and hides them (seen in
    tests/test_fleet_ray.py); the MAD's breakdown point protects the median, not its efficiency.
    """
    median = statistics.median(values)
    low, high = sorted((median / band, median * band)) if band else (-math.inf, math.inf)
    core = [v for v in values if low <= v <= high]
    for group in ([core, values] if len(core) >= MIN_PEERS else [values]):
        scale = _spread(group, median)
        if scale > 0:
            return [(v - median) / scale for v in values]
    return [0.0 for _ in values]


def _spread(values: list[float], median: float) -> float:
    """A standard deviation estimate: MAD / 0.6745, or the scaled mean absolute deviation when more
    than half the values sit on the median (MAD = 0); 0 when all do."""
    deviations = [abs(v - median) for v in values]
    mad = statistics.median(deviations)
    return mad / MAD_SCALE if mad > 0 else MEAN_AD_SCALE * statistics.fmean(deviations)


@dataclass
class Outlier:
    node: str
    device_uuid: str
    model: str
    figure: str
    value: float
    peer_median: float
    z: float
    kind: str  # slow | erratic


def fingerprint_digest(report: Report) -> str | None:
    """One digest of the device's software stack, as the stack fingerprint check recorded it."""
    for check in report.checks:
        if check.id == _FINGERPRINT_CHECK and "fingerprint" in check.measurements:
            canonical = json.dumps(check.measurements["fingerprint"], sort_keys=True, separators=(",", ":"))
            return hashlib.sha256(canonical.encode()).hexdigest()
    return None


def _key_figures(report: Report) -> list[tuple[str, float, bool, str]]:
    """(figure, value, lower is worse, kind of outlier) for each figure compared among peers."""
    out = []
    for check in report.checks:
        for name, value in scalar_figures(check).items():
            if _SPEED.search(name):
                out.append((f"{check.id}/{name}", value, True, "slow"))
            elif _NOISE.search(name):
                out.append((f"{check.id}/{name}", value, False, "erratic"))
    for figure in figures_of(report.checks):
        name = f"{figure['check']}/{figure_key(figure)}"
        out.append((name, float(figure["value"]), figure.get("better", "higher") == "higher", "slow"))
        if isinstance(figure.get("noise"), int | float):
            out.append((f"{name}.noise", float(figure["noise"]), False, "erratic"))
    return out


def _outliers(done: list[tuple[Audit, Report]]) -> list[Outlier]:
    by_figure: dict[tuple[str, str, bool, str], list[tuple[Audit, float]]] = defaultdict(list)
    for audit, report in done:
        for name, value, lower_is_worse, kind in _key_figures(report):
            by_figure[(report.device.name, name, lower_is_worse, kind)].append((audit, value))
    found = []
    for (model, figure, lower_is_worse, kind), points in sorted(by_figure.items()):
        if len(points) < MIN_PEERS:
            continue
        values = [v for _, v in points]
        median = statistics.median(values)
        for (audit, value), z in zip(points, modified_z(values, MIN_OUTLIER_FACTOR), strict=True):
            if lower_is_worse:
                outlying = z <= -OUTLIER_Z and value * MIN_OUTLIER_FACTOR <= median
            else:
                outlying = z >= OUTLIER_Z and value >= median * MIN_OUTLIER_FACTOR
                outlying &= kind != "erratic" or value >= ERRATIC_MIN_NOISE
            if outlying:
                found.append(Outlier(audit.node, audit.device_uuid, model, figure, value, median, round(z, 2), kind))
    return found


def _stack_deviants(done: list[tuple[Audit, Report]]) -> list[dict[str, Any]]:
    by_model: dict[str, list[tuple[Audit, str]]] = defaultdict(list)
    for audit, report in done:
        digest = fingerprint_digest(report)
        if digest:
            by_model[report.device.name].append((audit, digest))
    deviants = []
    for model, entries in by_model.items():
        majority, count = Counter(d for _, d in entries).most_common(1)[0]
        if count * 2 <= len(entries):
            continue  # no majority to deviate from
        deviants += [{"node": a.node, "device_uuid": a.device_uuid, "model": model, "digest": d[:16],
                      "majority_digest": majority[:16], "majority_size": count}
                     for a, d in entries if d != majority]
    return deviants


def summarize(run: dict[str, Any], audits: list[Audit]) -> dict[str, Any]:
    done = [(a, Report.model_validate_json(a.report)) for a in audits if a.state == DONE and a.report]
    verdicts = Counter(r.verdict.value for _, r in done)
    findings: dict[tuple[str, str, str], dict[str, Any]] = {}
    for audit, report in done:
        for f in report.findings:
            entry = findings.setdefault((f.category.value, f.check, f.title),
                                        {"category": f.category.value, "check": f.check, "title": f.title,
                                         "severity": f.severity.value, "devices": []})
            if f.severity.rank > type(f.severity)(entry["severity"]).rank:
                entry["severity"] = f.severity.value
            device = f"{audit.node}/{audit.device_uuid}"
            if device not in entry["devices"]:
                entry["devices"].append(device)
    ends = [datetime.fromisoformat(a.finished) for a in audits if a.finished]
    wall = (max(ends) - datetime.fromisoformat(run["created"])).total_seconds() if ends else None
    return {
        "run_id": run["run_id"],
        "state": run["state"],
        "config": run["config"],
        "devices": len(audits),
        "audited": len(done),
        "passed": verdicts.get("pass", 0),
        "failed": verdicts.get("fail", 0),
        "inconclusive": verdicts.get("inconclusive", 0),
        "lost": sum(a.state == LOST for a in audits),
        "could_not_run": sum(a.state == FAILED for a in audits),
        "not_finished": sum(a.state not in (DONE, LOST, FAILED) for a in audits),
        "wall_time_s": wall,
        "findings": sorted(findings.values(), key=lambda e: (e["category"], e["check"], e["title"])),
        "outliers": [asdict(o) for o in _outliers(done)],
        "stack_deviants": _stack_deviants(done),
        "audits": [{"node": a.node, "device_uuid": a.device_uuid, "device": a.device, "state": a.state,
                    "attempts": a.attempts, "verdict": a.verdict, "model": a.model, "reason": a.reason,
                    "note": a.note}
                   for a in audits],
    }


def to_html(summary: dict[str, Any]) -> str:
    """One self-contained page: no scripts, no fetches."""
    e = html.escape

    def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
        if not rows:
            return "<p>none</p>"
        head = "".join(f"<th>{e(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{e(_cell(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    counts = ["devices", "audited", "passed", "failed", "inconclusive", "lost", "could_not_run", "not_finished"]
    tiles = "".join(f"<div class=tile><b>{summary[c]}</b><span>{e(c.replace('_', ' '))}</span></div>" for c in counts)
    wall = summary["wall_time_s"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>chipaudit fleet {e(summary['run_id'])}</title>
<style>{_CSS}</style></head><body><h1>Fleet run {e(summary['run_id'])}</h1><p>state: {e(summary['state'])}; wall time:
{'-' if wall is None else f'{wall:.0f} s'}</p>{tiles}
<h2>Performance outliers among peers</h2>{table(summary['outliers'], ['node', 'device_uuid', 'model', 'figure',
'value', 'peer_median', 'z', 'kind'])}
<h2>Stacks that differ from their model's majority</h2>{table(summary['stack_deviants'], ['node', 'device_uuid',
'model', 'digest', 'majority_digest', 'majority_size'])}
<h2>Findings by kind</h2>{table(summary['findings'], ['severity', 'category', 'check', 'title', 'devices'])}
<h2>Audits</h2>{table(summary['audits'], ['node', 'device_uuid', 'state', 'attempts', 'verdict', 'model', 'reason'])}
</body></html>"""


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222 }
.tile { display: inline-block; margin: 0 1em 1em 0; padding: .6em 1em; border: 1px solid #ccc; border-radius: 6px }
.tile b { display: block; font-size: 1.6em }
table { border-collapse: collapse; margin-bottom: 1.5em }
td, th { border: 1px solid #ddd; padding: .3em .6em; text-align: left }
th { background: #f4f4f4 }
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return format_figure(value)
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return "" if value is None else str(value)
