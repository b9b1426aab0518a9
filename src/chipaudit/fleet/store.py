"""The central store of a fleet run: one row per planned audit, keyed (run id, node, device UUID).

SQLite (the history database, by default) or PostgreSQL, through the same few statements. Every write
is one transaction, so a driver that dies or is interrupted leaves the store consistent, and a finished
audit is written once: a retried task that finishes again never duplicates or overwrites its row.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# Seconds to wait for a lock (SQLite) or a connection (PostgreSQL) before giving up with a clear error.
CONNECT_TIMEOUT_S = 10
# Audit states. Only `pending` audits are (re)scheduled by resume; `done`, `failed` and `lost` are final
# for a run, though resume retries `lost` and `failed` ones too.
PENDING, RUNNING, DONE, FAILED, LOST = "pending", "running", "done", "failed", "lost"
UNFINISHED = (PENDING, RUNNING, FAILED, LOST)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_runs (
    run_id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    finished TEXT,
    state TEXT NOT NULL,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fleet_audits (
    run_id TEXT NOT NULL REFERENCES fleet_runs (run_id),
    node TEXT NOT NULL,
    device_uuid TEXT NOT NULL,
    device TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    verdict TEXT,
    reason TEXT,
    model TEXT,
    started TEXT,
    finished TEXT,
    report TEXT,
    bundle {blob},
    PRIMARY KEY (run_id, node, device_uuid)
)
"""


class StoreProblem(Exception):
    """The store cannot be opened or used; the message is one line."""


@dataclass
class Audit:
    run_id: str
    node: str
    device_uuid: str
    device: str
    state: str
    attempts: int
    verdict: str | None = None
    reason: str | None = None
    model: str | None = None
    started: str | None = None
    finished: str | None = None
    report: str | None = None
    bundle: bytes | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.node, self.device_uuid


_COLUMNS = tuple(Audit.__dataclass_fields__)


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


class FleetStore:
    """Holds one connection; `?` placeholders are translated for PostgreSQL's `%s`."""

    def __init__(self, connection: Any, postgres: bool):
        self.connection, self.postgres = connection, postgres
        with self._transaction() as cur:
            for statement in _SCHEMA.format(blob="BYTEA" if postgres else "BLOB").split(";"):
                cur.execute(statement)

    @classmethod
    def open(cls, url: str) -> FleetStore:
        if url.startswith(("postgresql://", "postgres://")):
            try:
                import psycopg
            except ImportError as e:
                raise StoreProblem("a PostgreSQL store needs psycopg: pip install 'chipaudit[fleet]'") from e
            try:
                connection = psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S)
            except psycopg.Error as e:
                raise StoreProblem(f"cannot connect to {_redact(url)}: {_first_line(e)}") from e
            return cls(connection, postgres=True)
        if "://" in url:
            raise StoreProblem(f"{url}: a store is a SQLite file path or a postgresql:// URL")
        path = Path(url)
        if not path.parent.exists():
            raise StoreProblem(f"{url}: the folder {path.parent} does not exist")
        try:
            connection = sqlite3.connect(path, timeout=CONNECT_TIMEOUT_S, isolation_level=None)
            return cls(connection, postgres=False)
        except sqlite3.Error as e:
            raise StoreProblem(f"{url}: not a usable SQLite database: {_first_line(e)}") from e

    def close(self) -> None:
        self.connection.close()

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        if self.postgres:
            with self.connection.transaction(), self.connection.cursor() as cur:
                yield cur
            return
        cur = self.connection.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.postgres else statement

    def create_run(self, run_id: str, config: dict[str, Any], audits: list[Audit]) -> None:
        with self._transaction() as cur:
            cur.execute(self._sql("INSERT INTO fleet_runs (run_id, created, state, config) VALUES (?, ?, ?, ?)"),
                        (run_id, now(), "running", json.dumps(config)))
            self._plan(cur, audits)

    def plan(self, audits: list[Audit]) -> None:
        """Add planned audits that are not there yet (a resumed run may find new ones)."""
        with self._transaction() as cur:
            self._plan(cur, audits)

    def _plan(self, cur: Any, audits: list[Audit]) -> None:
        for a in audits:
            cur.execute(self._sql(
                "INSERT INTO fleet_audits (run_id, node, device_uuid, device, state, attempts) "
                "VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (run_id, node, device_uuid) DO NOTHING"),
                (a.run_id, a.node, a.device_uuid, a.device, PENDING))

    def run(self, run_id: str) -> dict[str, Any] | None:
        with self._transaction() as cur:
            cur.execute(self._sql("SELECT run_id, created, finished, state, config FROM fleet_runs WHERE run_id = ?"),
                        (run_id,))
            row = cur.fetchone()
        if row is None:
            return None
        return {"run_id": row[0], "created": row[1], "finished": row[2], "state": row[3],
                "config": json.loads(row[4])}

    def set_run_state(self, run_id: str, state: str) -> None:
        with self._transaction() as cur:
            cur.execute(self._sql("UPDATE fleet_runs SET state = ?, finished = ? WHERE run_id = ?"),
                        (state, now() if state == "finished" else None, run_id))

    def audits(self, run_id: str, key: tuple[str, str] | None = None) -> list[Audit]:
        where, args = ("run_id = ?", (run_id,)) if key is None else (
            "run_id = ? AND node = ? AND device_uuid = ?", (run_id, *key))
        with self._transaction() as cur:
            cur.execute(self._sql(f"SELECT {', '.join(_COLUMNS)} FROM fleet_audits WHERE {where} "
                                  "ORDER BY node, device_uuid"), args)
            rows = cur.fetchall()
        return [Audit(*(bytes(v) if isinstance(v, memoryview) else v for v in row)) for row in rows]

    def counts(self, run_id: str) -> dict[str, int]:
        with self._transaction() as cur:
            cur.execute(self._sql("SELECT state, COUNT(*) FROM fleet_audits WHERE run_id = ? GROUP BY state"),
                        (run_id,))
            return {state: int(n) for state, n in cur.fetchall()}

    def start(self, run_id: str, key: tuple[str, str]) -> None:
        with self._transaction() as cur:
            cur.execute(self._sql(
                "UPDATE fleet_audits SET state = ?, attempts = attempts + 1, started = ?, reason = NULL "
                "WHERE run_id = ? AND node = ? AND device_uuid = ? AND state <> ?"),
                (RUNNING, now(), run_id, *key, DONE))

    def finish(self, run_id: str, key: tuple[str, str], verdict: str, model: str, report: str,
               bundle: bytes | None) -> bool:
        """Record a finished audit once; False when it was already recorded (a duplicate finish)."""
        with self._transaction() as cur:
            cur.execute(self._sql(
                "UPDATE fleet_audits SET state = ?, verdict = ?, model = ?, report = ?, bundle = ?, finished = ?, "
                "reason = NULL WHERE run_id = ? AND node = ? AND device_uuid = ? AND state <> ?"),
                (DONE, verdict, model, report, bundle, now(), run_id, *key, DONE))
            return bool(cur.rowcount)

    def fail(self, run_id: str, key: tuple[str, str], state: str, reason: str) -> None:
        with self._transaction() as cur:
            cur.execute(self._sql(
                "UPDATE fleet_audits SET state = ?, reason = ?, finished = ? "
                "WHERE run_id = ? AND node = ? AND device_uuid = ? AND state <> ?"),
                (state, reason[:1000], now(), run_id, *key, DONE))

    def requeue(self, run_id: str) -> None:
        """Everything not finished becomes pending again, for resume."""
        with self._transaction() as cur:
            cur.execute(self._sql("UPDATE fleet_audits SET state = ? WHERE run_id = ? AND state <> ?"),
                        (PENDING, run_id, DONE))
            cur.execute(self._sql("UPDATE fleet_runs SET state = ?, finished = NULL WHERE run_id = ?"),
                        ("running", run_id))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _redact(url: str) -> str:
    """Never print a password from a database URL."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}" if ":" in credentials else url
