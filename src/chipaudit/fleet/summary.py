"""What a fleet run found: outcomes, findings by kind, performance outliers among peers, and stacks that
differ from the rest of their model.

A capped, throttled or slowly failing device often looks fine alone and stands out only next to its
peers. Outliers are judged per device model with the modified z-score of Iglewicz and Hoaglin: robust to
the outliers themselves, because it uses the median and the median absolute deviation (MAD), taken
among the devices that agree with the median (chipaudit/stats.py, `modified_z`).

Key figures: every performance figure (and its noise), and the other checks' throughputs and noise.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from chipaudit.fleet.store import DONE, FAILED, LOST, Audit, FleetStore
from chipaudit.perf.metrics import figure_key, figures_of
from chipaudit.perf.stats import MIN_EFFECT
from chipaudit.report.figures import scalar_figures
from chipaudit.report.model import Report
from chipaudit.stats import median as median_of
from chipaudit.stats import modified_z

# |modified z| above this marks an outlier (Iglewicz & Hoaglin, "How to Detect and Handle Outliers", 1993).
OUTLIER_Z = 3.5
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
        median = median_of(values)
        for (audit, value), z in zip(points, modified_z(values, MIN_OUTLIER_FACTOR, MIN_PEERS), strict=True):
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


def _consensus(done: list[tuple[Audit, Report]]) -> list[dict[str, Any]]:
    """Each model's consensus (fleet/consensus.py) from the consensus check of its devices' audits."""
    from chipaudit.fleet.consensus import CHECK_ID, compare

    by_model: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for audit, report in done:
        for check in report.checks:
            if check.id == CHECK_ID and "consensus" in check.measurements:
                by_model[report.device.name].append((f"{audit.node}/{audit.device_uuid}",
                                                     check.measurements["consensus"]))
    return [{"model": model, **compare(entries)} for model, entries in sorted(by_model.items())]


def _consensus_findings(consensus: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from chipaudit.fleet.consensus import CHECK_ID

    devices = [d["device"] for model in consensus for d in model["deviants"]]
    return [{"category": "integrity", "check": CHECK_ID, "title": "products unlike the majority of the device's model",
             "severity": "high", "devices": devices}] if devices else []


def load(store: FleetStore, run_id: str) -> dict[str, Any] | None:
    """The summary of a fleet run or a fleet watch (watchsummary.py), None when the store has neither."""
    run = store.run(run_id)
    if run is None:
        return None
    if run["config"].get("kind") == "watch":
        from chipaudit.fleet.watchsummary import summarize_watch

        return summarize_watch(store, run, store.audits(run_id))
    return summarize(run, store.audits(run_id))


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
    consensus = _consensus(done)
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
        "findings": sorted([*findings.values(), *_consensus_findings(consensus)],
                           key=lambda e: (e["category"], e["check"], e["title"])),
        "consensus": consensus,
        "consensus_deviants": [{"model": m["model"], **d} for m in consensus for d in m["deviants"]],
        "outliers": [asdict(o) for o in _outliers(done)],
        "stack_deviants": _stack_deviants(done),
        "audits": [{"node": a.node, "device_uuid": a.device_uuid, "device": a.device, "state": a.state,
                    "attempts": a.attempts, "verdict": a.verdict, "model": a.model, "reason": a.reason,
                    "note": a.note}
                   for a in audits],
    }
