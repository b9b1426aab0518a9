"""The central store of a fleet run: one row per planned audit, keyed (run id, node, device UUID), in the
one store (chipaudit.store) beside the run history: SQLite by default, or PostgreSQL.

Every write is one transaction, so a driver that dies or is interrupted leaves the store consistent, and
a finished audit is written once: a retried task that finishes again never duplicates or overwrites its
row. A run's plan is fixed when it is created: resume finishes those audits, and a device that joined the
cluster since belongs to a new run, so that a run's counts always mean the devices it set out to audit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import ColumnElement, and_, func, insert, select, update

from chipaudit.store import Store
from chipaudit.store.schema import fleet_audits, fleet_runs, fleet_watch_events

# Audit states. Only `pending` audits are (re)scheduled by resume; `done`, `failed` and `lost` are final
# for a run, though resume retries `lost` and `failed` ones too.
PENDING, RUNNING, DONE, FAILED, LOST = "pending", "running", "done", "failed", "lost"

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
    note: str | None = None  # why the evidence bundle is not in the store, and where it stays

    @property
    def key(self) -> tuple[str, str]:
        return self.node, self.device_uuid


_COLUMNS = [fleet_audits.c[name] for name in Audit.__dataclass_fields__]


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


class FleetStore:
    """The fleet runs' queries over one Store; every method is one transaction."""

    def __init__(self, store: Store):
        self.store = store

    @classmethod
    def open(cls, url: str) -> FleetStore:
        """A SQLite file path (made if missing, in an existing folder) or a postgresql:// URL."""
        return cls(Store.open(url))

    @property
    def postgres(self) -> bool:
        return self.store.postgres

    def close(self) -> None:
        self.store.close()

    def create_run(self, run_id: str, config: dict[str, Any], audits: list[Audit]) -> None:
        """The run and its plan, at once. A device listed twice is planned once."""
        with self.store.write() as conn:
            conn.execute(insert(fleet_runs), {"run_id": run_id, "created": now(), "state": "running",
                                              "config": json.dumps(config)})
            if audits:
                conn.execute(self.store.insert_ignoring_duplicates(conn, fleet_audits), [
                    {"run_id": a.run_id, "node": a.node, "device_uuid": a.device_uuid, "device": a.device,
                     "state": PENDING, "attempts": 0} for a in audits])

    def run(self, run_id: str) -> dict[str, Any] | None:
        t = fleet_runs.c
        with self.store.read() as conn:
            row = conn.execute(select(t.run_id, t.created, t.finished, t.state, t.config)
                               .where(t.run_id == run_id)).first()
        if row is None:
            return None
        return {**row._asdict(), "config": json.loads(row.config)}

    def set_run_state(self, run_id: str, state: str) -> None:
        with self.store.write() as conn:
            conn.execute(update(fleet_runs).where(fleet_runs.c.run_id == run_id)
                         .values(state=state, finished=now() if state == "finished" else None))

    def audits(self, run_id: str, key: tuple[str, str] | None = None) -> list[Audit]:
        t = fleet_audits.c
        where = t.run_id == run_id if key is None else _one(run_id, key)
        with self.store.read() as conn:
            rows = conn.execute(select(*_COLUMNS).where(where).order_by(t.node, t.device_uuid)).all()
        return [Audit(**{**row._asdict(), "bundle": None if row.bundle is None else bytes(row.bundle)})
                for row in rows]

    def counts(self, run_id: str) -> dict[str, int]:
        t = fleet_audits.c
        with self.store.read() as conn:
            rows = conn.execute(select(t.state, func.count()).where(t.run_id == run_id).group_by(t.state)).all()
        return {state: int(n) for state, n in rows}

    def start(self, run_id: str, key: tuple[str, str]) -> None:
        self._unless_done(run_id, key, state=RUNNING, attempts=fleet_audits.c.attempts + 1, started=now(),
                          reason=None)

    def finish(self, run_id: str, key: tuple[str, str], verdict: str, model: str, report: str,
               bundle: bytes | None, note: str | None = None) -> bool:
        """Record a finished audit once; False when it was already recorded (a duplicate finish)."""
        return self._unless_done(run_id, key, state=DONE, verdict=verdict, model=model, report=report,
                                 bundle=bundle, note=note, finished=now(), reason=None)

    def fail(self, run_id: str, key: tuple[str, str], state: str, reason: str) -> None:
        self._unless_done(run_id, key, state=state, reason=reason[:1000], finished=now())

    def _unless_done(self, run_id: str, key: tuple[str, str], **values: Any) -> bool:
        """The one way an audit's row changes: never once it is done, so a finished result stands. On
        PostgreSQL a concurrent twin waits for the row's lock and then sees `done`."""
        with self.store.write() as conn:
            changed = conn.execute(update(fleet_audits).where(_one(run_id, key), fleet_audits.c.state != DONE)
                                   .values(**values))
            return bool(changed.rowcount)

    def requeue(self, run_id: str) -> None:
        """Everything not finished becomes pending again, for resume."""
        with self.store.write() as conn:
            conn.execute(update(fleet_audits).where(fleet_audits.c.run_id == run_id, fleet_audits.c.state != DONE)
                         .values(state=PENDING))
            conn.execute(update(fleet_runs).where(fleet_runs.c.run_id == run_id)
                         .values(state="running", finished=None))


    # ----- a fleet watch (fleet/watching.py): its devices' rows say watching (RUNNING), LOST or DONE -----

    def end_watch(self, run_id: str, key: tuple[str, str], verdict: str, model: str | None) -> None:
        self._unless_done(run_id, key, state=DONE, verdict=verdict, model=model, finished=now(), reason=None)

    def add_events(self, run_id: str, key: tuple[str, str], events: list[dict[str, Any]]) -> None:
        """Events of one device (key ("", "") for the whole fleet), in order, in one transaction."""
        if not events:
            return
        rows = [{"run_id": run_id, "node": key[0], "device_uuid": key[1], "time": e.get("time") or now(),
                 "event": e["event"], "severity": e.get("severity"), "body": json.dumps(e, default=str)}
                for e in events]
        with self.store.write() as conn:
            conn.execute(insert(fleet_watch_events), rows)

    def events(self, run_id: str) -> list[dict[str, Any]]:
        t = fleet_watch_events.c
        with self.store.read() as conn:
            rows = conn.execute(select(t.node, t.device_uuid, t.body).where(t.run_id == run_id).order_by(t.id)).all()
        return [{**json.loads(r.body), "node": r.node, "device_uuid": r.device_uuid} for r in rows]


def _one(run_id: str, key: tuple[str, str]) -> ColumnElement[bool]:
    t = fleet_audits.c
    return and_(t.run_id == run_id, t.node == key[0], t.device_uuid == key[1])
