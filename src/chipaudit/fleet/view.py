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
    ("findings by kind", "findings", ["severity", "check", "title", "devices"]),
    ("audits", "audits", ["node", "device_uuid", "state", "attempts", "verdict", "reason"]),
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


def outcome(run_id: str, summary: dict[str, Any]) -> tuple[str, Verdict]:
    counts = {k: summary.get(k, 0) for k in _COUNTS}
    line = ("fleet run {}: {audited} of {devices} devices audited, {passed} passed, {failed} failed, "
            "{lost} lost".format(run_id, **counts))
    if summary.get("failed"):
        return line, Verdict.fail
    unfinished = summary.get("lost", 0) + summary.get("could_not_run", 0) + summary.get("inconclusive", 0)
    return line, Verdict.inconclusive if unfinished or not summary else Verdict.pass_


def headline(run_id: str, summary: dict[str, Any]) -> str:
    return (f"fleet run {run_id} ({summary['state']}): {summary['devices']} devices, {summary['audited']} "
            f"audited, {summary['passed']} passed, {summary['failed']} failed, {summary['lost']} lost, "
            f"{summary['could_not_run']} could not run")


def tables(summary: dict[str, Any]) -> list[Table]:
    out = []
    for title, key, columns in _TABLES:
        table = Table(*columns, title=title)
        for row in summary[key]:
            table.add_row(*(str(row.get(c)) for c in columns))
        out.append(table)
    return out
