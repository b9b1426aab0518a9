"""The one schema of the store: the run history (runs, their checks and key figures) and fleet runs (one
row per planned audit), in one database, with one version number and the migrations that reach it.

Version history:
  0  an empty database, or a PostgreSQL fleet store written before versions existed
  1  the history as chipaudit wrote it before the one store (SQLite PRAGMA user_version 1), with the
     fleet tables beside it when a fleet run had used the file
  2  the one store: every table in every database, and fleet_audits.note (why an audit's evidence
     bundle is not in the store, and where it stays)
  3  the watcher's tables: watch_state (where each device's watch stands, so that a restart goes on)
     and watch_hours (one compact row per device and hour)
  4  fleet_watch_events: what a fleet watch's devices reported (failures, consensus answers, a node
     lost and back), one row per event

Timestamps stay ISO 8601 text, as version 1 wrote them: they sort correctly and read the same everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    inspect,
    text,
)

SCHEMA_VERSION = 4

metadata = MetaData()

runs = Table(
    "runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("recorded", Text, nullable=False),
    Column("started", Text, nullable=False),
    Column("finished", Text),
    Column("device_id", Text, nullable=False),
    Column("device_spec", Text, nullable=False),
    Column("device_name", Text, nullable=False),
    Column("hostname", Text, nullable=False),
    Column("level", Text, nullable=False),
    Column("seed", BigInteger, nullable=False),  # 32 random bits: past PostgreSQL's INTEGER
    Column("verdict", Text, nullable=False),
    Column("complete", Boolean, nullable=False),
    Column("tool_version", Text, nullable=False),
    # How many checks ended in each status, and how many findings: a history listing reads no report.
    *(Column(count, Integer, nullable=False) for count in ("passed", "failed", "warning", "skipped", "error",
                                                            "findings")),
    Column("bundle", Text),
    Column("report", Text, nullable=False),
    Index("runs_by_device", "device_id", "started"),
    sqlite_autoincrement=True,  # ids are never reused, as version 1 promised
)


def _of_a_check(name: str, *columns: Column[Any]) -> Table:
    """Rows that belong to one check of one recorded run, and go with the run."""
    return Table(name, metadata,
                 Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
                 Column("check_id", Text, primary_key=True), *columns)


checks = _of_a_check("checks", Column("status", Text, nullable=False), Column("duration_s", Double, nullable=False))
# One row per key figure (report.figures.scalar_figures), so that a device's figures can be followed.
figures = _of_a_check("figures", Column("name", Text, primary_key=True), Column("value", Double, nullable=False))

fleet_runs = Table(
    "fleet_runs", metadata,
    Column("run_id", Text, primary_key=True),
    Column("created", Text, nullable=False),
    Column("finished", Text),
    Column("state", Text, nullable=False),
    Column("config", Text, nullable=False),
)

# The key (run, node, device UUID) is what makes results idempotent: a retried task updates its row,
# never adds one.
fleet_audits = Table(
    "fleet_audits", metadata,
    Column("run_id", Text, ForeignKey("fleet_runs.run_id"), primary_key=True),
    Column("node", Text, primary_key=True),
    Column("device_uuid", Text, primary_key=True),
    Column("device", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    # Unknown until the audit has run.
    *(Column(name, Text) for name in ("verdict", "reason", "model", "started", "finished", "report")),
    Column("bundle", LargeBinary),
    Column("note", Text),
)

# Where each device's watch stands (runner/watch): written after every burst, in one transaction, so
# that a watcher killed at any moment loses at most the burst it was running, and a restart goes on.
watch_state = Table(
    "watch_state", metadata,
    Column("device_id", Text, primary_key=True),
    Column("device_spec", Text, nullable=False),
    Column("hostname", Text, nullable=False),
    Column("started", Text, nullable=False),  # when this device was first watched
    Column("updated", Text, nullable=False),
    Column("seed", BigInteger, nullable=False),  # the next burst's seed
    Column("rotation", BigInteger, nullable=False),  # the next burst's rotation position
    *(Column(count, BigInteger, nullable=False) for count in ("bursts", "products", "failures", "errors",
                                                               "restarts", "stack_checks")),
    Column("busy_s", Double, nullable=False),
    Column("wall_s", Double, nullable=False),
    Column("last_burst", Text),
    Column("last_good", Text),
)

# One row per device and hour (UTC, ISO 8601 to the hour): a long watch's history, compact.
watch_hours = Table(
    "watch_hours", metadata,
    Column("device_id", Text, primary_key=True),
    Column("hour", Text, primary_key=True),
    *(Column(count, BigInteger, nullable=False) for count in ("bursts", "products", "failures", "errors",
                                                               "findings")),
    Column("busy_s", Double, nullable=False),
    Column("wall_s", Double, nullable=False),
    Column("worst", Text),  # the worst finding's severity in the hour, if any
)


# What a fleet watch's devices reported (fleet/watching.py), in the order the driver wrote it: a burst
# with findings, a consensus answer, a watcher started, a node lost and back. node and device_uuid are
# empty for an event of the whole fleet (a consensus round's judgement).
fleet_watch_events = Table(
    "fleet_watch_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Text, ForeignKey("fleet_runs.run_id"), nullable=False),
    Column("node", Text, nullable=False),
    Column("device_uuid", Text, nullable=False),
    Column("time", Text, nullable=False),
    Column("event", Text, nullable=False),
    Column("severity", Text),  # the worst finding's, if any
    Column("body", Text, nullable=False),  # the event as JSON
    Index("fleet_watch_events_by_run", "run_id", "id"),
    sqlite_autoincrement=True,
)


def _one_store(conn: Connection) -> None:
    """Version 2 from 0 or 1: whichever tables a database lacks, and the columns version 1 did not have.
    Idempotent, so that a half-used version 1 file (history only, or fleet only) comes out whole."""
    metadata.create_all(conn, checkfirst=True)
    have = {c["name"] for c in inspect(conn).get_columns(fleet_audits.name)}
    for column in fleet_audits.columns:
        if column.name not in have:  # only nullable columns are ever added, so no default is needed
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE {fleet_audits.name} ADD COLUMN {column.name} {kind}"))


# (version reached, step), in order; a database at version v runs every step past v.
def _watch_tables(conn: Connection) -> None:
    """Version 3 from 2: the watcher's tables, new and empty."""
    metadata.create_all(conn, tables=[watch_state, watch_hours], checkfirst=True)


def _fleet_watch_events(conn: Connection) -> None:
    """Version 4 from 3: the fleet watch's events, new and empty."""
    metadata.create_all(conn, tables=[fleet_watch_events], checkfirst=True)


MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [(2, _one_store), (3, _watch_tables),
                                                              (4, _fleet_watch_events)]
