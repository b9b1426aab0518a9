"""How a fleet run looks in a terminal: live counts while it runs, the one-line outcome that decides
the exit code, and the report's tables. The fleet's verdict is its worst device's: one failed device
fails the fleet, and a device not audited leaves it inconclusive."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import TimeRemainingColumn
from rich.table import Table

from chipaudit.fleet.cluster import Progress
from chipaudit.report.model import Verdict
from chipaudit.runner.live import bars

_COUNTS = ("audited", "devices", "passed", "failed", "lost")
_TABLES = (
    ("performance outliers", "outliers", ["node", "device_uuid", "figure", "value", "peer_median", "z", "kind"]),
    ("stacks unlike their model's majority", "stack_deviants", ["node", "device_uuid", "digest", "majority_digest"]),
    ("products unlike their model's majority (consensus)", "consensus_deviants", ["model", "device", "why"]),
    ("findings by kind", "findings", ["severity", "check", "title", "devices"]),
    ("audits", "audits", ["node", "device_uuid", "state", "attempts", "verdict", "reason"]),
)


_CONSENSUS = ["model", "format", "devices", "deterministic", "established", "majority", "judged"]
# A fleet watch's own tables (watchsummary.py).
WATCH_TABLES = (
    ("each device's watch", "watch", ["node", "device_uuid", "state", "verdict", "bursts", "failures", "errors",
                                      "last_good", "duty", "losses", "watchers_started"]),
    ("the watch's findings", "watch_findings", ["device", "time", "event", "severity", "title"]),
    ("what happened to the watchers", "watch_events", ["device", "time", "event", "what"]),
)


@contextmanager
def live(console: Console) -> Iterator[Callable[[Progress], None]]:
    progress = bars(console, TimeRemainingColumn())
    task = progress.add_task("fleet: connecting", total=None)

    def update(p: Progress) -> None:
        counts, total = p.counts, p.total
        finished = counts["done"] + counts["failed"] + counts["lost"]
        progress.update(task, completed=finished, total=total, description=(
            f"fleet: {counts['done']} done, {counts['running']} running, {counts['failed']} failed, "
            f"{counts['lost']} lost"))

    with progress:
        yield update


def _kind(summary: dict[str, Any]) -> str:
    return summary.get("kind", "run")


def outcome(run_id: str, summary: dict[str, Any]) -> tuple[str, Verdict]:
    counts = {k: summary.get(k, 0) for k in _COUNTS}
    line = ("fleet {} {}: {audited} of {devices} devices {}, {passed} passed, {failed} failed, "
            "{lost} lost".format(_kind(summary), run_id, "watched" if _kind(summary) == "watch" else "audited",
                                 **counts))
    deviants = len({d["device"] for d in summary.get("consensus_deviants", [])})
    if deviants:
        line += f", {deviants} unlike their model's majority"
    if summary.get("failed") or deviants:
        return line, Verdict.fail
    unfinished = summary.get("lost", 0) + summary.get("could_not_run", 0) + summary.get("inconclusive", 0)
    return line, Verdict.inconclusive if unfinished or not summary else Verdict.pass_


def headline(run_id: str, summary: dict[str, Any]) -> str:
    if _kind(summary) == "watch":
        return (f"fleet watch {run_id} ({summary['state']}): {summary['devices']} devices, {summary['audited']} "
                f"watched, {summary['passed']} passed, {summary['failed']} failed, {summary['lost']} lost now, "
                f"{summary['consensus_rounds']} consensus round(s)")
    return (f"fleet run {run_id} ({summary['state']}): {summary['devices']} devices, {summary['audited']} "
            f"audited, {summary['passed']} passed, {summary['failed']} failed, {summary['lost']} lost, "
            f"{summary['could_not_run']} could not run")


def consensus_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model and product: how its determinism was established and what was judged."""
    return [{"model": m["model"], **p} for m in summary.get("consensus", []) for p in m["products"]]


def tables(summary: dict[str, Any]) -> list[Table]:
    out = []
    consensus = Table(*_CONSENSUS, title="consensus per model")
    for row in consensus_rows(summary):
        consensus.add_row(*(str(row.get(c, "")) for c in _CONSENSUS))
    out.append(consensus)
    for title, key, columns in (WATCH_TABLES if _kind(summary) == "watch" else ()) + _TABLES:
        table = Table(*columns, title=title)
        for row in summary.get(key, []):
            table.add_row(*(str(row.get(c)) for c in columns))
        out.append(table)
    return out
