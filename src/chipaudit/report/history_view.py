"""Terminal tables of the run history: the runs, and one device's key figures over time."""

from __future__ import annotations

from rich.table import Table

from chipaudit.evidence.history import Run
from chipaudit.report.figures import format_figure
from chipaudit.report.model import Verdict
from chipaudit.report.terminal import VERDICT_STYLE

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None]) -> str:
    """One character per run, oldest first; a blank where a run did not measure the figure."""
    present = [v for v in values if v is not None]
    if not present:
        return ""
    low, high = min(present), max(present)
    span = high - low
    return "".join(" " if v is None else SPARK[int((v - low) / span * (len(SPARK) - 1)) if span else 3]
                   for v in values)


def runs_table(runs: list[Run]) -> Table:
    table = Table("run", "started (UTC)", "device", "level", "seed", "verdict", "checks", "findings",
                  title="chipaudit history")
    table.columns[1].no_wrap = True
    for r in runs:
        counts = ", ".join(f"{n} {label}" for n, label in ((r.passed, "passed"), (r.failed, "failed"),
                                                            (r.warning, "warning"), (r.skipped, "skipped"),
                                                            (r.error, "error")) if n)
        verdict = Verdict(r.verdict)
        incomplete = "" if r.complete else " (incomplete)"
        table.add_row(str(r.id), r.started[:16].replace("T", " "), f"{r.device_id} ({r.device_name})", r.level,
                      str(r.seed), f"[{VERDICT_STYLE[verdict]}]{verdict.value}[/]{incomplete}", counts,
                      str(r.findings))
    return table


def figures_table(runs: list[Run], trends: dict[tuple[str, str], dict[int, float]]) -> Table:
    table = Table("check", "figure", "runs", "first", "latest", "min", "max", "trend",
                  title="key figures over time")
    for (check, name), by_run in sorted(trends.items()):
        series = [by_run.get(r.id) for r in runs]
        values = [v for v in series if v is not None]
        latest = next(v for v in reversed(series) if v is not None)
        table.add_row(check, name, str(len(values)), format_figure(values[0]), format_figure(latest),
                      format_figure(min(values)), format_figure(max(values)), sparkline(series))
    return table
