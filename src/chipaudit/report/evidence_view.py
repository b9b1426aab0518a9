"""How `chipaudit verify` and `chipaudit replay` show their results: a verifier reads every step, not
only the verdict, and a replay's reader needs the recorded and reproduced values side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from chipaudit.report.figures import format_figure

if TYPE_CHECKING:
    from chipaudit.evidence.replay import Agreement
    from chipaudit.evidence.verify import Verification


def verification_lines(result: Verification) -> list[str]:
    """One numbered line per step, its problems indented below it; steps after a failure read '--'."""
    lines: list[str] = []
    for i, step in enumerate(result.steps, 1):
        mark = {True: "ok  ", False: "FAIL", None: "--  "}[step.ok]
        lines.append(f"{i}. {step.name:<10} {mark} {step.detail if step.ok is not False else ''}"
                     f"{'not checked' if step.ok is None else ''}".rstrip())
        lines += [f"     {problem}" for problem in step.problems]
    return lines


def replay_tables(rows: list[Agreement], source: str) -> list[Table]:
    """The agreement per check, and the key figures where any were recorded."""
    from chipaudit.evidence.replay import FIGURE_RTOL  # loads the registry: verify has no need of it

    table = Table("check", "recorded", "reproduced", "agrees", "note", title=f"replay of {source}")
    figures = Table("check", "figure", "recorded", "reproduced", "difference", "within tolerance",
                    title=f"key figures (accuracy within {FIGURE_RTOL:.0%}; timing shown only)")
    for row in rows:
        table.add_row(row.check, row.recorded.value, row.reproduced.value if row.reproduced else "—",
                      "[green]yes[/]" if row.agrees else "[bold red]NO[/]", row.note)
        for f in row.figures:
            diff = f.relative_difference
            figures.add_row(row.check, f.name, format_figure(f.recorded),
                            format_figure(f.reproduced) if f.reproduced is not None else "—",
                            f"{diff:.1%}" if diff is not None else "—",
                            {True: "yes", False: "[yellow]no[/]", None: "(timing)"}[f.within])
    return [table, figures] if figures.row_count else [table]
