"""An audit in front of a person: a live bar per running check and one for the whole plan, and the
report handed out after every check, so that Ctrl-C still leaves the last complete picture.

The bars are transient: when the audit ends, the terminal shows the verdict, not the bars.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from chipaudit.report.model import CheckResult, Finding, Report
from chipaudit.runner.audit import AuditConfig, plan, run_audit
from chipaudit.runner.watchdog import Events
from chipaudit.sensors.watch import Watch


class Interrupted(Exception):
    """Ctrl-C: `report` is the last report handed out (marked incomplete), or None if none was yet."""

    def __init__(self, report: Report | None):
        super().__init__("interrupted")
        self.report = report


def bars(console: Console, *extra: object) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    *extra, console=console, transient=True)  # type: ignore[arg-type]


def run_live(config: AuditConfig, console: Console, on_update: Callable[[Report], None],
             watch: Watch | None = None) -> Report:
    progress = bars(console)
    overall = progress.add_task("checks", total=len(plan(config)))
    tasks: dict[str, int] = {}

    def started(check_id: str) -> None:
        if check_id in tasks:  # a performance check's next pass (perf/passes.py)
            progress.reset(tasks[check_id], total=None)
        else:
            tasks[check_id] = progress.add_task(check_id, total=None)

    def step(check_id: str, done: int, total: int, note: str) -> None:
        progress.update(tasks[check_id], completed=done, total=total, description=f"{check_id}: {note}"[:70])

    def finished(result: CheckResult, findings: list[Finding]) -> None:
        task = tasks.pop(result.id, None)
        if task is not None:
            progress.remove_task(task)
        progress.advance(overall)

    latest: list[Report] = []

    def update(report: Report) -> None:
        latest[:] = [report]
        on_update(report)

    try:
        with progress:
            return run_audit(config, Events(started, step, finished), on_update=update, watch=watch)
    except KeyboardInterrupt:
        raise Interrupted(latest[0] if latest else None) from None
