"""The one store: migration of databases written before it, its guarantees on SQLite and on a real
PostgreSQL (concurrent writers lose no row, a fleet result's key is idempotent), and its errors."""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from evidence_support import synthetic_report
from store_support import Namespace, Postgres, postgres_server

from chipaudit.evidence import history
from chipaudit.fleet.store import DONE, LOST, PENDING, RUNNING, Audit, FleetStore
from chipaudit.report.model import Report
from chipaudit.store import SCHEMA_VERSION, Store, StoreError
from chipaudit.store.dialects import display_name

V1_FILE = Path(__file__).parent / "fixtures" / "store" / "history-v1.sqlite3"
V1_RUN = "20260101-000000-abcdef"
# Another port than test_fleet_ray's, though each server has a namespace of its own.
PG_PORT = 55433
RUN = "run-1"


@pytest.fixture(scope="module")
def server() -> Iterator[Postgres]:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a PostgreSQL server in a network namespace needs root and unshare")
    ns = Namespace()
    try:
        with postgres_server(ns, PG_PORT) as pg:
            yield pg
    finally:
        ns.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store of each kind."""
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite3")
    return request.getfixturevalue("server").create_database(f"t_{secrets.token_hex(4)}")


def _columns(db: Path, table: str) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


@pytest.mark.parametrize("fleet_tables", [True, False], ids=["history-and-fleet", "history-only"])
def test_a_file_written_before_the_one_store_opens_and_is_migrated(tmp_path: Path, fleet_tables: bool) -> None:
    db = tmp_path / "history.sqlite3"
    shutil.copy(V1_FILE, db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        if not fleet_tables:
            conn.execute("DROP TABLE fleet_audits")
            conn.execute("DROP TABLE fleet_runs")
    assert [r.verdict for r in history.runs(db)] == ["pass", "fail"]  # reading migrates it, nothing is lost
    assert "note" in _columns(db, "fleet_audits")
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert ("integrity.gemm.fp32", "max_error_to_bound") in history.figures(db, [1, 2])
    store = FleetStore.open(str(db))
    audits = store.audits(V1_RUN)
    if fleet_tables:
        assert [(a.node, a.state, a.bundle, a.note) for a in audits] == [
            ("n0", DONE, b"\x1f\x8b", None), ("n1", PENDING, None, None)]
        assert Report.model_validate_json(audits[0].report or "").verdict.value == "pass"
        assert (store.run(V1_RUN) or {})["state"] == "interrupted"
    else:
        assert audits == []
    store.close()
    assert history.record(db, synthetic_report()) == 3  # ids go on where version 1 left them
    assert len(history.runs(db)) == 3


def test_a_postgresql_store_written_before_versions_is_migrated(server: Postgres) -> None:
    """What the fleet store of version 1 created on PostgreSQL, statement for statement."""
    import psycopg

    url = server.create_database("legacy")
    with psycopg.connect(host=str(server.data), port=server.port, user="postgres", dbname="legacy") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS fleet_runs (run_id TEXT PRIMARY KEY, created TEXT NOT NULL, "
                     "finished TEXT, state TEXT NOT NULL, config TEXT NOT NULL)")
        conn.execute("CREATE TABLE IF NOT EXISTS fleet_audits (run_id TEXT NOT NULL REFERENCES fleet_runs (run_id),"
                     " node TEXT NOT NULL, device_uuid TEXT NOT NULL, device TEXT NOT NULL, state TEXT NOT NULL,"
                     " attempts INTEGER NOT NULL, verdict TEXT, reason TEXT, model TEXT, started TEXT, finished TEXT,"
                     " report TEXT, bundle BYTEA, PRIMARY KEY (run_id, node, device_uuid))")
        conn.execute("INSERT INTO fleet_runs VALUES ('old', '2026-01-01T00:00:00+00:00', NULL, 'running', '{}')")
        conn.execute("INSERT INTO fleet_audits (run_id, node, device_uuid, device, state, attempts, bundle) "
                     "VALUES ('old', 'n0', 'GPU-1', 'cuda:0', 'lost', 2, %s)", (b"\x00\x01",))
    store = FleetStore.open(url)
    (audit,) = store.audits("old")
    assert (audit.state, audit.attempts, audit.bundle, audit.note) == (LOST, 2, b"\x00\x01", None)
    store.close()
    with psycopg.connect(host=str(server.data), port=server.port, user="postgres", dbname="legacy") as conn:
        assert conn.execute("SELECT version FROM chipaudit_schema").fetchall() == [(SCHEMA_VERSION,)]
    assert history.record(url, synthetic_report()) == 1  # the history's tables came with the migration


def test_a_store_from_a_newer_chipaudit_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "future.sqlite3"
    Store.open(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer chipaudit"):
        history.record(db, synthetic_report())
    with pytest.raises(StoreError, match="newer chipaudit"):
        FleetStore.open(str(db))
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)


def test_history_round_trip(target: str) -> None:
    report = synthetic_report()
    report.seed = 2**32 - 1  # a seed is 32 random bits: past PostgreSQL's INTEGER
    first = history.record(target, report)
    assert history.record(target, synthetic_report(failing=True)) == first + 1
    (run,) = history.runs(target, limit=1)
    assert run.verdict == "fail" and run.complete is True
    assert [r.seed for r in history.runs(target)] == [2**32 - 1, 1234]
    assert history.figures(target, [first])[("integrity.gemm.fp32", "max_error_to_bound")] == {first: 0.25}


def _together(tmp_path: Path, script: str, count: int) -> list[str]:
    """Run `script` in `count` processes that start their work at the same moment; their outputs."""
    go = tmp_path / "go"
    prelude = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        while not Path({str(go)!r}).exists():
            time.sleep(0.005)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(script), str(w)],
                              stdout=subprocess.PIPE, text=True) for w in range(count)]
    time.sleep(0.5)
    go.touch()
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * count
    return outputs


def test_concurrent_processes_lose_no_row(target: str, tmp_path: Path) -> None:
    """Several audits recording at once, into a store none of them has created yet."""
    writers, each = 4, 8
    _together(tmp_path, f"""
        from evidence_support import synthetic_report
        from chipaudit.evidence import history
        for i in range({each}):
            report = synthetic_report(failing=i % 2 == 1)
            report.seed = int(sys.argv[1]) * 1000 + i
            history.record({target!r}, report)
    """, writers)
    runs = history.runs(target, limit=1000)
    assert sorted(r.seed for r in runs) == sorted(w * 1000 + i for w in range(writers) for i in range(each))
    trend = history.figures(target, [r.id for r in runs])[("integrity.gemm.fp32", "max_error_to_bound")]
    assert sorted(trend) == sorted(r.id for r in runs)


def _finish(store: FleetStore, node: str, flops: float) -> bool:
    report = synthetic_report()
    report.checks[0].measurements["probe_macs_per_s"] = flops
    return store.finish(RUN, (node, "cpu"), report.verdict.value, report.device.name, report.to_json(), b"tar")


def test_a_retried_task_never_duplicates_and_a_finished_result_stands(target: str) -> None:
    store = FleetStore.open(target)
    twice = [Audit(RUN, "n0", "cpu", "cpu", PENDING, 0)] * 2  # a device listed twice is planned once
    store.create_run(RUN, {"level": "quick"}, [*twice, Audit(RUN, "n1", "cpu", "cpu", PENDING, 0)])
    assert store.counts(RUN) == {PENDING: 2}
    store.start(RUN, ("n0", "cpu"))
    assert store.counts(RUN) == {PENDING: 1, RUNNING: 1}
    assert _finish(store, "n0", 1e9)
    assert not _finish(store, "n0", 2e9)  # a retried task that finished too
    store.fail(RUN, ("n0", "cpu"), LOST, "the node died")  # a late failure report
    store.start(RUN, ("n0", "cpu"))  # a late start
    store.requeue(RUN)
    audit = store.audits(RUN, ("n0", "cpu"))[0]
    assert (audit.state, audit.attempts, audit.reason, audit.bundle) == (DONE, 1, None, b"tar")
    assert Report.model_validate_json(audit.report or "").checks[0].measurements["probe_macs_per_s"] == 1e9
    assert len(store.audits(RUN)) == 2 and store.counts(RUN) == {DONE: 1, PENDING: 1}
    store.close()


def test_concurrent_finishes_of_one_audit_record_exactly_one(target: str, tmp_path: Path) -> None:
    """Ray retried a task whose first try was not dead after all: both finish at the same moment."""
    store = FleetStore.open(target)
    store.create_run(RUN, {}, [Audit(RUN, "n0", "cpu", "cpu", PENDING, 0)])
    store.start(RUN, ("n0", "cpu"))
    outputs = _together(tmp_path, f"""
        from evidence_support import synthetic_report
        from chipaudit.fleet.store import FleetStore
        store = FleetStore.open({target!r})
        report = synthetic_report()
        print(store.finish({RUN!r}, ("n0", "cpu"), "pass", sys.argv[1], report.to_json(), None))
    """, 4)
    assert sorted(o.strip() for o in outputs) == ["False", "False", "False", "True"]
    winner = [str(w) for w, o in enumerate(outputs) if o.strip() == "True"]
    (audit,) = store.audits(RUN)
    assert (audit.state, audit.attempts, [audit.model]) == (DONE, 1, winner)
    store.close()


@pytest.mark.parametrize(("url", "names"), [
    ("postgresql://auditor:s3cret@127.0.0.1:1/fleet", "postgresql://auditor:***@127.0.0.1:1/fleet"),
    ("postgresql://auditor:s3cret@127.0.0.1:port/fleet", "postgresql://auditor:***@127.0.0.1:port/fleet: not a"),
    ("mysql://auditor:s3cret@127.0.0.1/fleet", "a SQLite file path or a postgresql:// URL"),
    ("/no/such/folder/fleet.sqlite3", "does not exist"),
])
def test_an_unusable_store_is_one_line_without_its_password(url: str, names: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(StoreError) as caught:
        FleetStore.open(url)
    message = str(caught.value)
    assert names in message and "s3cret" not in message and len(message.splitlines()) == 1, message
    assert time.monotonic() - t0 < 15


def test_a_file_that_is_not_a_database_is_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite3"
    junk.write_text("this is not a database, but it is long enough to look like one" * 20)
    with pytest.raises(StoreError, match=f"^{junk}: file is not a database$"):
        FleetStore.open(str(junk))


def test_a_database_lost_during_use_is_a_store_error(server: Postgres) -> None:
    url = server.create_database("doomed")
    store = FleetStore.open(url)
    store.create_run(RUN, {}, [Audit(RUN, "n0", "cpu", "cpu", PENDING, 0)])
    server.drop_database("doomed")  # under the store's feet
    with pytest.raises(StoreError) as caught:
        store.start(RUN, ("n0", "cpu"))
    message = str(caught.value)
    assert message.startswith(f"{display_name(url)}: ") and '"doomed" does not exist' in message, message
    assert len(message.splitlines()) == 1
    store.close()
