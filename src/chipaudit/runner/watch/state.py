"""Where a device's watch stands, and its hours, in the one store (store/schema.py: watch_state,
watch_hours). Every save is one transaction: the state after a burst and that burst's share of its
hour's row are written together or not at all, so that a watcher killed at any moment loses at most
the burst it was running, and its restart goes on from the last one saved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Connection, Table, insert, select, update

from chipaudit.report.model import Severity
from chipaudit.store import Store
from chipaudit.store.dialects import is_postgres
from chipaudit.store.schema import watch_hours, watch_state


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass
class WatchState:
    device_id: str
    device_spec: str
    hostname: str
    seed: int
    started: str = dataclasses.field(default_factory=now)
    rotation: int = 0
    bursts: int = 0
    products: int = 0
    failures: int = 0
    errors: int = 0
    restarts: int = 0
    stack_checks: int = 0
    busy_s: float = 0.0
    wall_s: float = 0.0
    last_burst: str | None = None
    last_good: str | None = None
    updated: str = ""


@dataclass
class Hour:
    """What one burst (or stack check) adds to its hour's row."""

    bursts: int = 0
    products: int = 0
    failures: int = 0
    errors: int = 0
    findings: int = 0
    busy_s: float = 0.0
    wall_s: float = 0.0
    worst: str | None = None


def hour_of(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:00Z")


def worst(severities: Iterable[Severity | str | None]) -> str | None:
    """The worst of some severities (None among them ignored), or None: an hour's, a burst's."""
    ranked = [Severity(s) for s in severities if s]
    return max(ranked, key=lambda s: s.rank).value if ranked else None


class WatchStore:
    """The watcher's queries over one Store (a SQLite file, made with its folder, or a PostgreSQL URL, or
    a store already open: a fleet's, which its driver writes)."""

    def __init__(self, target: Path | str | Store) -> None:
        if isinstance(target, Store):
            self.store = target
            return
        if not is_postgres(target):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        self.store = Store.open(target)

    def close(self) -> None:
        self.store.close()

    def load(self, device_id: str) -> WatchState | None:
        with self.store.read() as conn:
            row = conn.execute(select(watch_state).where(watch_state.c.device_id == device_id)).first()
        return None if row is None else WatchState(**row._asdict())

    def save(self, state: WatchState, hour: Hour, when: datetime, keep_state: bool = True) -> None:
        """The state (unless `keep_state` is False: a single burst's, which a watch must not lose its
        place to) and the hour's row with `hour` added."""
        state.updated = now()
        values = dataclasses.asdict(state)
        with self.store.write() as conn:
            if keep_state:
                _upsert(conn, watch_state, watch_state.c.device_id == state.device_id, values)
            key = (watch_hours.c.device_id == state.device_id) & (watch_hours.c.hour == hour_of(when))
            old = conn.execute(select(watch_hours).where(key)).first()
            row = dataclasses.asdict(hour)
            if old is not None:
                row = {k: (worst([old.worst, v]) if k == "worst" else getattr(old, k) + v) for k, v in row.items()}
            _upsert(conn, watch_hours, key, {"device_id": state.device_id, "hour": hour_of(when), **row})

    def mirror(self, state: WatchState, hours: list[dict[str, object]]) -> None:
        """A device's state and hour rows as another store holds them (a fleet's node reports them to
        its driver, and a restarted node's watcher starts from the driver's), replacing ours, at once."""
        with self.store.write() as conn:
            _upsert(conn, watch_state, watch_state.c.device_id == state.device_id, dataclasses.asdict(state))
            for row in hours:
                values = {**row, "device_id": state.device_id}
                _upsert(conn, watch_hours, (watch_hours.c.device_id == state.device_id)
                        & (watch_hours.c.hour == row["hour"]), values)

    def hours(self, device_id: str) -> list[dict[str, object]]:
        with self.store.read() as conn:
            rows = conn.execute(select(watch_hours).where(watch_hours.c.device_id == device_id)
                                .order_by(watch_hours.c.hour)).all()
        return [row._asdict() for row in rows]


def _upsert(conn: Connection, table: Table, key: object, values: dict[str, object]) -> None:
    """Update the keyed row, or insert it: inside the write transaction, which holds the lock (one
    watcher per device writes its rows)."""
    if not conn.execute(update(table).where(key).values(**values)).rowcount:  # type: ignore[arg-type]
        conn.execute(insert(table), values)
