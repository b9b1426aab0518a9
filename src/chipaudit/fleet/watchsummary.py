"""What a fleet watch found, in the fleet summary's data model (summary.py), so that one report, one
page and one exit code serve a fleet run and a fleet watch: each device's watch (its bursts, failures,
errors, last good burst, duty and hours, from the watch tables), its findings and its losses (from the
fleet watch's events), and the consensus rounds.

A device fails when any of its bursts, samples, stack comparisons or consensus rounds had a failing
finding; it passed when it had a good burst and none failed; otherwise (no burst, lost with nothing
against it) it is inconclusive.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from chipaudit.fleet.store import DONE, LOST, RUNNING, Audit, FleetStore
from chipaudit.report.model import FAILING_SEVERITY, Severity
from chipaudit.runner.watch.state import WatchState, WatchStore, hour_of

# The events a reader is shown besides findings: what happened to a device's watch.
LIFECYCLE = ("start", "lost", "back", "worker", "stack", "sampler", "bundle")


def _failing(severity: str | None) -> bool:
    return severity is not None and Severity(severity).rank >= FAILING_SEVERITY.rank


def summarize_watch(store: FleetStore, run: dict[str, Any], audits: list[Audit]) -> dict[str, Any]:
    events = store.events(run["run_id"])
    watch_store = WatchStore(store.store)
    since = hour_of(datetime.fromisoformat(run["created"]))
    findings: dict[tuple[str, str], dict[str, Any]] = {}
    found: list[dict[str, Any]] = []
    happened: list[dict[str, Any]] = []
    failing: set[str] = set()
    for e in events:
        label = f"{e['node']}/{e['device_uuid']}"
        for f in e.get("findings") or []:
            found.append({"device": label, "time": e.get("time"), "event": e["event"], "severity": f["severity"],
                          "check": f["check"], "title": f["title"], "detail": f.get("detail", "")})
            entry = findings.setdefault((f["check"], f["title"]), {
                "category": f["check"].split(".")[0], "check": f["check"], "title": f["title"],
                "severity": f["severity"], "devices": []})
            if Severity(f["severity"]).rank > Severity(entry["severity"]).rank:
                entry["severity"] = f["severity"]
            if label not in entry["devices"]:
                entry["devices"].append(label)
            if _failing(f["severity"]):
                failing.add(label)
        if e["event"] in LIFECYCLE and e["node"]:
            happened.append({"device": label, "time": e.get("time"), "event": e["event"],
                             "what": e.get("reason") or e.get("action") or e.get("error") or e.get("status") or ""})
    rounds = [e for e in events if e["event"] == "round"]
    deviants = [{"model": m["model"], "round": e["round"], **d} for e in rounds for m in e["models"]
                for d in m["deviants"]]
    devices, verdicts = [], Counter()
    for a in audits:
        label = f"{a.node}/{a.device_uuid}"
        state = watch_store.load(label)
        hours = [h for h in watch_store.hours(label) if str(h["hour"]) >= since] if state else []
        verdict = "fail" if label in failing else "pass" if state and state.last_good else "inconclusive"
        verdicts[verdict] += 1
        devices.append({"node": a.node, "device_uuid": a.device_uuid, "device": a.device, "state": a.state,
                        "watchers_started": a.attempts, "model": a.model, "verdict": verdict, "reason": a.reason,
                        "losses": sum(e["event"] == "lost" for e in events if (e["node"], e["device_uuid"]) == a.key),
                        **_totals(state), "hours": hours})
    ends = [datetime.fromisoformat(a.finished) for a in audits if a.finished]
    wall = (max(ends) - datetime.fromisoformat(run["created"])).total_seconds() if ends else None
    return {
        "run_id": run["run_id"], "kind": "watch", "state": run["state"], "config": run["config"],
        "devices": len(audits), "audited": sum(d["bursts"] > 0 for d in devices),
        "passed": verdicts["pass"], "failed": verdicts["fail"], "inconclusive": verdicts["inconclusive"],
        "lost": sum(a.state == LOST for a in audits), "could_not_run": 0,
        "not_finished": sum(a.state not in (DONE, LOST, RUNNING) for a in audits), "wall_time_s": wall,
        "findings": sorted(findings.values(), key=lambda e: (e["category"], e["check"], e["title"])),
        "consensus": [{**m, "round": rounds[-1]["round"]} for m in rounds[-1]["models"]]
        if rounds else [],
        "consensus_rounds": len(rounds),
        "consensus_deviants": deviants,
        "outliers": [], "stack_deviants": [],
        "watch": devices, "watch_findings": found, "watch_events": happened,
        "audits": [{"node": d["node"], "device_uuid": d["device_uuid"], "device": d["device"], "state": d["state"],
                    "attempts": d["watchers_started"], "verdict": d["verdict"], "model": d["model"],
                    "reason": d["reason"], "note": None} for d in devices],
    }


def _totals(state: WatchState | None) -> dict[str, Any]:
    if state is None:
        return {"bursts": 0, "products": 0, "failures": 0, "errors": 0, "restarts": 0, "last_burst": None,
                "last_good": None, "duty": None}
    return {"bursts": state.bursts, "products": state.products, "failures": state.failures, "errors": state.errors,
            "restarts": state.restarts, "last_burst": state.last_burst, "last_good": state.last_good,
            "duty": round(state.busy_s / state.wall_s, 5) if state.wall_s else None}
