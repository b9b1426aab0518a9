"""The history of runs: every audit recorded in an embedded SQLite database.

One row per run (with the whole report, so nothing measured is lost), one per check, and one per key
figure, so that a device's verdicts and figures can be followed over months. Each run is written in a
single IMMEDIATE transaction: concurrent runs queue on SQLite's lock (for up to LOCK_TIMEOUT_S) and
never interleave, and a crash mid-write leaves the database as it was.

A device is identified by a serial or UUID its report carries, else by host and device string.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from chipaudit.report.figures import scalar_figures
from chipaudit.report.model import Report, Status

DB_NAME = "history.sqlite3"
SCHEMA_VERSION = 1
# A deep audit holds the lock for milliseconds; minutes of waiting means something is wrong.
LOCK_TIMEOUT_S = 60.0
# Device properties that name one physical device, in order of preference.
IDENTITY_KEYS = ("uuid", "serial", "device_uuid", "serial_number")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded TEXT NOT NULL,
    started TEXT NOT NULL,
    finished TEXT,
    device_id TEXT NOT NULL,
    device_spec TEXT NOT NULL,
    device_name TEXT NOT NULL,
    hostname TEXT NOT NULL,
    level TEXT NOT NULL,
    seed INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    complete INTEGER NOT NULL,
    tool_version TEXT NOT NULL,
    passed INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    warning INTEGER NOT NULL,
    skipped INTEGER NOT NULL,
    error INTEGER NOT NULL,
    findings INTEGER NOT NULL,
    bundle TEXT,
    report TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_device ON runs (device_id, started);
CREATE TABLE IF NOT EXISTS checks (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    check_id TEXT NOT NULL,
    status TEXT NOT NULL,
    duration_s REAL NOT NULL,
    PRIMARY KEY (run_id, check_id)
);
CREATE TABLE IF NOT EXISTS figures (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    check_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (run_id, check_id, name)
);
"""


class HistoryProblem(Exception):
    """The history database cannot be read or written; the message is one line."""


def data_dir() -> Path:
    """The per-user data folder: $XDG_DATA_HOME wherever it is set, else the platform's own."""
    if os.environ.get("XDG_DATA_HOME"):
        return Path(os.environ["XDG_DATA_HOME"]) / "chipaudit"
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "chipaudit"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "chipaudit"
    return Path.home() / ".local" / "share" / "chipaudit"


def default_db() -> Path:
    return data_dir() / DB_NAME


def device_id(report: Report) -> str:
    for key in IDENTITY_KEYS:
        value = report.device.properties.get(key)
        if isinstance(value, str) and value:
            return value
    return f"{report.environment.hostname or 'localhost'}:{report.device.spec}"


@contextmanager
def _connect(db: Path, create: bool) -> Iterator[sqlite3.Connection]:
    if create:
        db.parent.mkdir(parents=True, exist_ok=True)
    elif not db.exists():
        raise HistoryProblem(f"{db}: no history yet (runs are recorded there by chipaudit run)")
    uri = f"{db.resolve().as_uri()}?mode={'rwc' if create else 'ro'}"
    try:
        with closing(sqlite3.connect(uri, uri=True, timeout=LOCK_TIMEOUT_S, isolation_level=None)) as conn:
            conn.execute("PRAGMA foreign_keys = ON")
            yield conn
    except sqlite3.DatabaseError as e:
        raise HistoryProblem(f"{db}: {e}") from None


def record(db: Path, report: Report, bundle: Path | None = None) -> int:
    """Store one run; returns its id."""
    counts = {s: sum(c.status is s for c in report.checks) for s in Status}
    with _connect(db, create=True) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise HistoryProblem(f"{db}: written by a newer chipaudit (history schema {version})")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            cursor = conn.execute(
                "INSERT INTO runs (recorded, started, finished, device_id, device_spec, device_name, hostname,"
                " level, seed, verdict, complete, tool_version, passed, failed, warning, skipped, error,"
                " findings, bundle, report) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (datetime.now(timezone.utc).isoformat(), report.started.isoformat(),
                 report.finished.isoformat() if report.finished else None, device_id(report),
                 report.device.spec, report.device.name, report.environment.hostname, report.level.value,
                 report.seed, report.verdict.value, int(report.complete), report.tool.version,
                 counts[Status.passed], counts[Status.failed], counts[Status.warning], counts[Status.skipped],
                 counts[Status.error], len(report.findings), str(bundle.resolve()) if bundle else None,
                 report.to_json()),
            )
            run_id = int(cursor.lastrowid or 0)
            conn.executemany("INSERT INTO checks VALUES (?,?,?,?)",
                             [(run_id, c.id, c.status.value, c.duration_s) for c in report.checks])
            conn.executemany("INSERT INTO figures VALUES (?,?,?,?)",
                             [(run_id, c.id, name, value) for c in report.checks
                              for name, value in scalar_figures(c).items()])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
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


_RUN_COLUMNS = ("id, started, device_id, device_spec, device_name, level, seed, verdict, complete, passed, "
                "failed, warning, skipped, error, findings")


def _device_clause(device: str | None) -> tuple[str, tuple[str, ...]]:
    if device is None:
        return "", ()
    return " WHERE device_id = ? OR device_spec = ? OR device_name = ?", (device, device, device)


def runs(db: Path, device: str | None = None, limit: int = 50) -> list[Run]:
    """The latest `limit` runs (of one device, when given), oldest first."""
    where, args = _device_clause(device)
    with _connect(db, create=False) as conn:
        rows = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs{where} ORDER BY started DESC, id DESC LIMIT ?",
                            (*args, limit)).fetchall()
    return [Run(*row[:8], bool(row[8]), *row[9:]) for row in reversed(rows)]


def figures(db: Path, run_ids: list[int]) -> dict[tuple[str, str], dict[int, float]]:
    """(check, figure) -> {run id: value} for the given runs."""
    found: dict[tuple[str, str], dict[int, float]] = {}
    if not run_ids:
        return found
    marks = ",".join("?" * len(run_ids))
    with _connect(db, create=False) as conn:
        for run_id, check_id, name, value in conn.execute(
                f"SELECT run_id, check_id, name, value FROM figures WHERE run_id IN ({marks})", run_ids):
            found.setdefault((check_id, name), {})[run_id] = value
    return found
