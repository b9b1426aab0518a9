"""chipaudit fleet watch: one watcher per device on a real Ray cluster of two nodes (test_fleet_ray.py's,
in a network namespace of its own), reporting into the fleet store through the driver.

One watch shows every property at once, since a cluster and a watch are what cost: the head's three
devices, the second of which computes under the selftest's AfterUse fault (the lowest mantissa bit of
one element of every fp32 product flipped: within the oracle's bound for realistic operands, so that
the consensus with its peers is what must single it out), and a second node's healthy device, whose
node is killed mid-watch, marked lost, started again, and whose watcher goes on from the stored state.
SIGTERM then stops every watcher and the driver exits 0. The store's new table has its migration test.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fleet_support import after_torch

from chipaudit.fleet.store import Audit, FleetStore
from chipaudit.runner.watch.state import WatchState, WatchStore
from chipaudit.store import SCHEMA_VERSION, Store

MOVES = ("lost", "back")
FAULT = after_torch("""
    if slot() == "1":
        from chipaudit.selftest.faults import AfterUse
        AfterUse(after_calls=0, bit=0).install()
""")


def test_a_store_at_version_3_gains_the_fleet_watch_events_and_the_driver_mirrors_a_nodes_rows(tmp_path: Path,
                                                                                                ) -> None:
    db = tmp_path / "store.sqlite3"
    Store.open(db).close()
    with sqlite3.connect(db) as conn:  # a store as version 3 left it
        conn.execute("DROP TABLE fleet_watch_events")
        conn.execute("PRAGMA user_version = 3")
    store = FleetStore.open(str(db))
    store.create_run("w1", {"kind": "watch"}, [Audit("w1", "n1", "fake_gpu-0", "cpu", "pending", 0)])
    store.add_events("w1", ("n1", "fake_gpu-0"), [{"event": "lost", "reason": "node died"}])
    store.add_events("w1", ("", ""), [{"event": "round", "round": 1, "models": []}])
    assert [(e["event"], e["node"]) for e in store.events("w1")] == [("lost", "n1"), ("round", "")]
    watch = WatchStore(store.store)
    state = WatchState(device_id="n1/fake_gpu-0", device_spec="cpu", hostname="h", seed=1, bursts=4)
    hour = {"hour": "2026-01-01T10:00Z", "bursts": 4, "products": 40, "failures": 0, "errors": 0, "findings": 0,
            "busy_s": 1.0, "wall_s": 60.0, "worst": None}
    watch.mirror(state, [hour])
    watch.mirror(dataclass_replace(state, bursts=5), [{**hour, "bursts": 5}])  # a later poll replaces
    assert watch.load("n1/fake_gpu-0").bursts == 5 and [h["bursts"] for h in watch.hours("n1/fake_gpu-0")] == [5]
    store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def dataclass_replace(state: WatchState, **changes: Any) -> WatchState:
    import dataclasses

    return dataclasses.replace(state, **changes)


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            print(f"{time.monotonic():.1f}: {what}")
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def query(db: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    if not Path(db).exists():
        return []
    with sqlite3.connect(db, timeout=10) as conn:
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # not made yet
            return []


@pytest.mark.slow
def test_a_fleet_watch_flags_the_device_unlike_its_peers_and_restarts_a_node_that_comes_back(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from store_support import Namespace
    from test_fleet_ray import RAY_PORT, base_env, kill_node, start_node

    ns = Namespace()
    env = base_env(tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAULT)
    faulty_env = {**env, "PYTHONPATH": ":".join(filter(None, [str(site), env.get("PYTHONPATH")]))}
    db = str(tmp_path / "fleet.sqlite3")
    victim = "n2/fake_gpu-0"
    try:
        print(f"{time.monotonic():.1f}: start")
        start_node(ns, faulty_env, "head", head=True, devices=3)
        start_node(ns, env, "n2")
        t0 = time.monotonic()
        print(f"{t0:.1f}: cluster up")
        proc = subprocess.Popen(ns.argv(
            "chipaudit", "fleet", "watch", "--address", f"127.0.0.1:{RAY_PORT}", "--resource", "fake_gpu",
            "--interval", "1", "--duty", "0.2", "--consensus-every", "2", "--seed", "3", "--no-syscall-tracer",
            "--db", db), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for("a consensus round and the victim's bursts", lambda: query(
            db, "SELECT 1 FROM fleet_watch_events WHERE event = 'round'") and query(
            db, "SELECT 1 FROM watch_state WHERE device_id = ? AND bursts >= 2", victim))
        kill_node(ns, env, "n2")
        wait_for("the victim marked lost", lambda: query(
            db, "SELECT 1 FROM fleet_audits WHERE node = 'n2' AND state = 'lost'"))
        (before,) = query(db, "SELECT bursts FROM watch_state WHERE device_id = ?", victim)[0]
        start_node(ns, env, "n2")
        wait_for("the victim's watcher going on", lambda: query(
            db, "SELECT 1 FROM watch_state WHERE device_id = ? AND bursts > ?", victim, before))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        print(f"fleet watch: {time.monotonic() - t0:.1f} s")
        assert proc.returncode == 0, (proc.returncode, out, err[-3000:])
        run_id = query(db, "SELECT run_id FROM fleet_runs")[0][0]
        report = tmp_path / "fleet.json"
        p = ns.run("chipaudit", "fleet", "report", run_id, "--db", db, "--json", str(report), "--html",
                   str(tmp_path / "fleet.html"), env=env, timeout=120, check=False)
        assert p.returncode == 0, p.stderr
        summary = json.loads(report.read_text())
        devices = {f"{d['node']}/{d['device_uuid']}": d for d in summary["watch"]}
        assert set(devices) == {"head/fake_gpu-0", "head/fake_gpu-1", "head/fake_gpu-2", victim}
        assert {k for k, d in devices.items() if d["verdict"] == "fail"} == {"head/fake_gpu-1"}, summary["watch"]
        assert {d["device"] for d in summary["consensus_deviants"]} == {"head/fake_gpu-1"}
        assert any(why.startswith("fp32: digest") for d in summary["consensus_deviants"] for why in d["why"])
        lost = devices[victim]
        assert lost["losses"] == 1 and lost["watchers_started"] == 2 and lost["bursts"] > before, lost
        moves = [e["event"] for e in summary["watch_events"] if e["device"] == victim and e["event"] in MOVES]
        assert moves == ["lost", "back"]
        continuing = [json.loads(b)["continuing"] for (b,) in query(
            db, "SELECT body FROM fleet_watch_events WHERE node = 'n2' AND event = 'start' ORDER BY id")]
        assert continuing == [False, True]
        assert all(d["state"] == "done" and d["bursts"] >= 2 for d in devices.values())
        assert "Each device's watch" in (tmp_path / "fleet.html").read_text()
    finally:
        ns.close()
