"""Side-by-side comparison of reports: audits or benchmarks of different chips, or of one chip before
and after a driver update.

The first report is the reference column. For every other column: each category's and each
check's verdict, and each performance figure with its ratio to the reference, its efficiency
against its rating, and whether it moved beyond noise (perf/stats.py): beyond the two figures'
recorded noises, which include the drift between blocks of repeats spread over each run
(perf/timing.py), so that two runs of one idle machine are not told apart. Reports of another schema
version are refused with the exact reason, not half-read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from chipaudit.perf import stats
from chipaudit.perf.metrics import figure_key, figures_of
from chipaudit.report.model import SCHEMA_VERSION, Category, Report, Status

COMPARE_SCHEMA = "chipaudit.compare/1"
MAX_REPORT_BYTES = 64 * 2**20
# Category summaries, worst first: the first status present in a category names it.
_WORST_FIRST = (Status.failed, Status.error, Status.warning, Status.passed, Status.skipped)
# Check verdicts from worst to best; a skipped check is not comparable (it observed nothing).
_STATUS_RANK = {s.value: i for i, s in enumerate(_WORST_FIRST) if s is not Status.skipped}  # higher is better
_STYLE = {"failed": "bold red", "error": "magenta", "warning": "yellow", "passed": "green", "skipped": "dim",
          "not run": "dim"}


class ReportInputError(ValueError):
    """A report that cannot be compared; one line naming the file and what is wrong."""


def load_report(path: Path) -> Report:
    """Read a report JSON file (or a bundle folder), refusing other schema versions by name."""
    from chipaudit.evidence.bundle import BundleProblem, read_report

    path = Path(path)
    if not path.exists():
        raise ReportInputError(f"{path}: no such file or folder")
    if path.is_file():
        if path.stat().st_size > MAX_REPORT_BYTES:
            raise ReportInputError(f"{path}: larger than {MAX_REPORT_BYTES >> 20} MiB; not a report")
        try:
            document = json.loads(path.read_bytes())
        except (OSError, ValueError) as e:
            raise ReportInputError(f"{path}: not JSON: {e}") from None
        if not isinstance(document, dict):
            raise ReportInputError(f"{path}: not a chipaudit report (the top level is not an object)")
        schema = document.get("schema")
        if schema is None:
            raise ReportInputError(f"{path}: field 'schema' is missing; not a chipaudit report")
        if schema != SCHEMA_VERSION:
            raise ReportInputError(f"{path}: {_schema_mismatch(schema)}")
    try:
        return read_report(path)
    except BundleProblem as e:
        raise ReportInputError(str(e)) from None


def _schema_mismatch(schema: Any) -> str:
    family, _, version = str(schema).rpartition("/")
    ours_family, _, ours = SCHEMA_VERSION.rpartition("/")
    if family != ours_family:
        return f"field 'schema' is {schema!r}, not a chipaudit report schema ({SCHEMA_VERSION!r})"
    newer = version.isdigit() and ours.isdigit() and int(version) > int(ours)
    return (f"report schema {schema!r} is {'newer than' if newer else 'not'} the version this chipaudit reads "
            f"({SCHEMA_VERSION!r}); {'upgrade chipaudit to compare it' if newer else 'it cannot be compared'}")


@dataclass
class Column:
    label: str
    report: Report


def _category_status(report: Report, category: Category) -> str:
    present = {c.status for c in report.checks if c.category is category}
    return next((s.value for s in _WORST_FIRST if s in present), "not run")


def build(columns: list[Column]) -> dict[str, Any]:
    """The comparison as JSON-ready data; `render` draws it."""
    if len(columns) < 2:
        raise ReportInputError("compare needs at least two reports")
    reference = columns[0]
    out: dict[str, Any] = {"schema": COMPARE_SCHEMA, "reference": reference.label, "reports": [], "categories": [],
                           "checks": [], "figures": [], "summary": {}}
    for col in columns:
        r = col.report
        out["reports"].append({
            "label": col.label, "device": r.device.spec, "device_name": r.device.name, "tool": r.tool.version,
            "level": r.level.value, "started": r.started.isoformat(), "verdict": r.verdict.value,
            "complete": r.complete, "seed": r.seed, "torch": r.environment.torch,
            "driver": dict(r.device.driver),
        })
    for category in Category:
        statuses = [_category_status(c.report, category) for c in columns]
        out["categories"].append({"category": category.value, "statuses": statuses,
                                  "differs": len(set(statuses)) > 1})
    ids: list[str] = []
    for col in columns:
        ids += [c.id for c in col.report.checks if c.category is not Category.performance and c.id not in ids]
    worse_checks = 0
    for check_id in ids:
        statuses = []
        for col in columns:
            found = next((c for c in col.report.checks if c.id == check_id), None)
            statuses.append(found.status.value if found else "not run")
        ref = statuses[0]
        worse = [_is_worse(ref, s) for s in statuses]
        worse_checks += sum(worse)
        out["checks"].append({"check": check_id, "statuses": statuses, "differs": len(set(statuses)) > 1,
                              "worse": worse})
    regressions = improvements = 0
    per_column = [{figure_key(f): f for f in figures_of(c.report.checks)} for c in columns]
    keys: list[str] = []
    for figures in per_column:
        keys += [k for k in figures if k not in keys]
    for key in keys:
        base = per_column[0].get(key)
        cells = []
        for figures in per_column:
            cell = _cell(base, figures.get(key))
            regressions += cell.get("change") == "regression"
            improvements += cell.get("change") == "improvement"
            cells.append(cell)
        any_fig = next(f for f in (p.get(key) for p in per_column) if f is not None)
        out["figures"].append({"key": key, "metric": any_fig["metric"], "params": any_fig.get("params", {}),
                               "unit": any_fig.get("unit"), "better": any_fig.get("better", "higher"),
                               "columns": cells})
    out["summary"] = {"regressions": regressions, "improvements": improvements, "worse_checks": worse_checks,
                      "verdicts": [c.report.verdict.value for c in columns]}
    return out


def _is_worse(reference: str, status: str) -> bool:
    if reference not in _STATUS_RANK or status not in _STATUS_RANK:
        return False
    return _STATUS_RANK[status] < _STATUS_RANK[reference]


def _cell(base: dict[str, Any] | None, figure: dict[str, Any] | None) -> dict[str, Any]:
    if figure is None:
        return {"value": None}
    cell: dict[str, Any] = {"value": figure["value"], "noise": figure.get("noise"),
                            "efficiency": figure.get("efficiency"), "rated": figure.get("rated")}
    if base is None or base is figure:
        return cell
    if base.get("unit") != figure.get("unit"):
        cell["note"] = f"unit {figure.get('unit')} differs from the reference's {base.get('unit')}"
        return cell
    if not base["value"] or not figure["value"]:
        return cell
    higher = figure.get("better", "higher") == "higher"
    a, b = _values(base, figure), _values(figure, base)
    if len(a) >= 2 and len(b) >= 2:
        noises = (base["noise"], figure["noise"]) if _has_noise(base) and _has_noise(figure) else None
        change = stats.compare(a, b, higher, noises=noises, centres=(base["value"], figure["value"]))
    else:
        change = stats.compare_summaries(base["value"], base.get("noise") or 0.0, figure["value"],
                                         figure.get("noise") or 0.0, higher)
    cell.update(ratio=round(figure["value"] / base["value"], 4), change=change.verdict,
                threshold=round(change.threshold, 4),
                p_value=None if change.p_value is None else round(change.p_value, 5))
    return cell


def _values(figure: dict[str, Any], other: dict[str, Any]) -> list[float]:
    """What the rank test compares: the block medians where both figures have them (perf/timing.py),
    else the repeats (a report made before blocks)."""
    if len(figure.get("block_values") or []) >= 2 and len(other.get("block_values") or []) >= 2:
        return list(figure["block_values"])
    return list(figure.get("samples") or [])


def _has_noise(figure: dict[str, Any]) -> bool:
    return isinstance(figure.get("noise"), int | float) and not isinstance(figure.get("noise"), bool)


def dumps(comparison: dict[str, Any]) -> str:
    return json.dumps(comparison, indent=2, allow_nan=False, default=str) + "\n"


# --- terminal ---------------------------------------------------------------------------------------------


def _status_text(status: str, highlight: bool) -> Text:
    return Text(status, style=_STYLE.get(status, "") + (" reverse" if highlight else ""))


def format_number(x: float) -> str:
    """Three significant digits (a whole number keeps all of its own) and never scientific notation,
    so that rates from 1e-3 to 1e6 in one column compare by eye."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    digits = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:,.{min(digits, 6)}f}"


def render(comparison: dict[str, Any], console: Console) -> None:
    reports = comparison["reports"]
    heads = [f"{r['label']}\n{r['device_name'] or r['device']}\n{r['level']}, chipaudit {r['tool']}" for r in reports]
    verdicts = Table(title="verdicts (reverse video: differs from the first column)")
    verdicts.add_column("")
    for h in heads:
        verdicts.add_column(h)
    verdicts.add_row("verdict", *(_status_text(r["verdict"], r["verdict"] != reports[0]["verdict"]) for r in reports))
    for row in comparison["categories"]:
        verdicts.add_row(row["category"], *(_status_text(s, s != row["statuses"][0]) for s in row["statuses"]))
    for row in comparison["checks"]:
        verdicts.add_row(Text(row["check"], style="dim"),
                         *(_status_text(s, s != row["statuses"][0]) for s in row["statuses"]))
    console.print(verdicts)
    if comparison["figures"]:
        table = Table(title="performance (ratio to the first column; efficiency against the rating; "
                            "▼ worse / ▲ better beyond noise)")
        table.add_column("figure")
        for h in heads:
            table.add_column(h, justify="right")
        for row in comparison["figures"]:
            params = ", ".join(f"{k} {v}" for k, v in row["params"].items())
            label = f"{row['metric']} ({row['unit']})" + (f"\n  {params}" if params else "")
            table.add_row(label, *(_figure_text(c) for c in row["columns"]))
        console.print(table)
    s = comparison["summary"]
    style = "bold red" if s["regressions"] or s["worse_checks"] else "bold green"
    console.print(Text(f"{s['regressions']} figure(s) worse than the first column beyond noise, "
                       f"{s['improvements']} better; {s['worse_checks']} check verdict(s) worse", style=style))


def _figure_text(cell: dict[str, Any]) -> Text:
    if cell.get("value") is None:
        return Text("—", style="dim")
    text = Text(format_number(cell["value"]))
    if cell.get("noise"):
        text.append(f" ±{cell['noise']:.0%}", style="dim")
    if cell.get("ratio") is not None:
        change = cell.get("change")
        mark = {"regression": " ▼", "improvement": " ▲"}.get(change or "", "")
        style = {"regression": "bold red", "improvement": "bold green"}.get(change or "", "")
        text.append(f"\n×{cell['ratio']:.2f}{mark}", style=style)
    if cell.get("efficiency") is not None:
        text.append(f"\n{cell['efficiency']:.0%} of rated", style="cyan")
    if cell.get("note"):
        text.append(f"\n{cell['note']}", style="yellow")
    return text
