"""The history of runs: every audit recorded in the store (chipaudit.store), by default an SQLite file in
the user's data folder.

One row per run (with the whole report, so nothing measured is lost), one per check, and one per key
figure, so that a device's verdicts and figures can be followed over months. Each run is written in a
single transaction: concurrent runs queue on the store's lock and never interleave, and a crash mid-write
leaves the database as it was.

A device is identified by a serial or UUID its report carries, else by host and device string.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import insert, or_, select

from chipaudit.paths import data_dir
from chipaudit.report.figures import scalar_figures
from chipaudit.report.model import Report, Status
from chipaudit.store import Store, StoreAbsent, StoreTargetError
from chipaudit.store.dialects import is_postgres
from chipaudit.store.schema import checks as checks_table
from chipaudit.store.schema import figures as figures_table
from chipaudit.store.schema import runs as runs_table

DB_NAME = "history.sqlite3"
# Device properties that name one physical device, in order of preference.
IDENTITY_KEYS = ("uuid", "serial", "device_uuid", "serial_number")

def default_db() -> Path:
    return data_dir() / DB_NAME


def device_id(report: Report) -> str:
    for key in IDENTITY_KEYS:
        value = report.device.properties.get(key)
        if isinstance(value, str) and value:
            return value
    return f"{report.environment.hostname or 'localhost'}:{report.device.spec}"


@contextmanager
def _opened(db: Path | str, create: bool) -> Iterator[Store]:
    """The store, made (folder included) when recording; reading never creates an empty one."""
    if create and not is_postgres(db):
        Path(db).parent.mkdir(parents=True, exist_ok=True)
    try:
        store = Store.open(db, create=create)
    except StoreAbsent:
        raise StoreTargetError(f"{db}: no history yet (runs are recorded there by chipaudit run)") from None
    with store:
        yield store


def record(db: Path | str, report: Report, bundle: Path | None = None) -> int:
    """Store one run in a SQLite file or a postgresql:// URL; returns its id."""
    counts = {s: sum(c.status is s for c in report.checks) for s in Status}
    row = {
        "recorded": datetime.now(timezone.utc).isoformat(), "started": report.started.isoformat(),
        "finished": report.finished.isoformat() if report.finished else None, "device_id": device_id(report),
        "device_spec": report.device.spec, "device_name": report.device.name,
        "hostname": report.environment.hostname, "level": report.level.value, "seed": report.seed,
        "verdict": report.verdict.value, "complete": report.complete, "tool_version": report.tool.version,
        "passed": counts[Status.passed], "failed": counts[Status.failed], "warning": counts[Status.warning],
        "skipped": counts[Status.skipped], "error": counts[Status.error], "findings": len(report.findings),
        "bundle": str(bundle.resolve()) if bundle else None, "report": report.to_json(),
    }
    with _opened(db, create=True) as store, store.write() as conn:
        run_id = int(conn.execute(insert(runs_table), row).inserted_primary_key[0])
        check_rows = [{"run_id": run_id, "check_id": c.id, "status": c.status.value, "duration_s": c.duration_s}
                      for c in report.checks]
        figure_rows = [{"run_id": run_id, "check_id": c.id, "name": name, "value": value}
                       for c in report.checks for name, value in scalar_figures(c).items()]
        for table, rows in ((checks_table, check_rows), (figures_table, figure_rows)):
            if rows:  # an empty list would be one insert of no values
                conn.execute(insert(table), rows)
    return run_id


@dataclass
class Run:
    id: int
    started: str
    device_id: str
    device_spec: str
    device_name: str
    level: str
    seed: int
    verdict: str
    complete: bool
    passed: int
    failed: int
    warning: int
    skipped: int
    error: int
    findings: int


def runs(db: Path | str, device: str | None = None, limit: int = 50) -> list[Run]:
    """The latest `limit` runs (of one device, when given: its id, device string or name), oldest first."""
    t = runs_table.c
    query = select(*(runs_table.c[name] for name in Run.__dataclass_fields__))
    if device is not None:
        query = query.where(or_(t.device_id == device, t.device_spec == device, t.device_name == device))
    with _opened(db, create=False) as store, store.read() as conn:
        rows = conn.execute(query.order_by(t.started.desc(), t.id.desc()).limit(limit)).all()
    return [Run(**{**row._asdict(), "complete": bool(row.complete)}) for row in reversed(rows)]


def figures(db: Path | str, run_ids: list[int]) -> dict[tuple[str, str], dict[int, float]]:
    """(check, figure) -> {run id: value} for the given runs."""
    found: dict[tuple[str, str], dict[int, float]] = {}
    if not run_ids:
        return found
    t = figures_table.c
    with _opened(db, create=False) as store, store.read() as conn:
        for run_id, check_id, name, value in conn.execute(
                select(t.run_id, t.check_id, t.name, t.value).where(t.run_id.in_(run_ids))):
            found.setdefault((check_id, name), {})[run_id] = value
    return found
