"""Fleet audits on a real local Ray cluster, and a real PostgreSQL store.

Everything runs inside a network namespace of its own that holds only a loopback interface, so Ray,
PostgreSQL and the audits can bind to nothing but 127.0.0.1, whatever the host's interfaces are. Nodes
are separate `ray start` processes with custom resources standing in for GPUs; one node's workers run
under a 3x throttle from the built-in selftest fault models. Devices are as few as each property needs:
the throttled one among three healthy peers (the fewest the outlier rule judges robustly, stats.py's
modified_z), two for a killed node. One cluster serves the module, since starting nodes is what costs:
the killed node joins it last, with a resource of its own (VICTIM) that only it and the head have.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from fleet_support import after_torch
from store_support import Namespace, Postgres, postgres_server

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

RAY_PORT = 6391
PG_PORT = 55432
# The healthy head's devices and the throttled node's one; every fleet run here audits all of them.
HEALTHY = 3
FLEET_DEVICES = HEALTHY + 1
# The resource of the killed-node test's two devices: one on the head, one on the node that is killed.
VICTIM = "victim_gpu"
# Ray notices a dead node after period x threshold; the defaults take about half a minute.
FAST_HEALTH_CHECKS = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4",
                      "RAY_health_check_initial_delay_ms": "500"}
# Installed on the slow node in every process that imports torch: its audits and their workers.
THROTTLE = after_torch("""
    from chipaudit.selftest.faults import Throttle
    Throttle(factor={factor}, after_busy_s=0).install()
""")


def start_node(ns: Namespace, env: dict[str, str], name: str, head: bool = False, devices: int = 1,
               resources: dict[str, int] | None = None) -> None:
    """A node with `devices` units of fake_gpu, or the `resources` given instead."""
    where = ["--head", "--port", str(RAY_PORT), "--include-dashboard=false"] if head else [
        "--address", f"127.0.0.1:{RAY_PORT}"]
    ns.run("ray", "start", *where, "--temp-dir", ns.ray_dir, "--num-cpus", "1",
           "--resources", json.dumps(resources or {"fake_gpu": devices}), "--labels", f"chipaudit-node={name}",
           "--disable-usage-stats", env=env, timeout=120)


NODE_IDS = f"""
import json, ray
ray.init(address="127.0.0.1:{RAY_PORT}", logging_level="ERROR")
print(json.dumps({{n["Labels"].get("chipaudit-node"): n["NodeID"] for n in ray.nodes() if n["Alive"]}}))
"""


def kill_node(ns: Namespace, env: dict[str, str], name: str) -> None:
    """Kill one node's raylet and everything under it (its workers and their audits)."""
    node_id = json.loads(ns.run("python", "-c", NODE_IDS, env=env).stdout.strip().splitlines()[-1])[name]
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0].endswith("raylet/raylet") and f"--node_id={node_id}" in cmdline:
            for p in [*proc.children(recursive=True), proc]:
                p.kill()
            return
    raise AssertionError(f"no raylet for node {name}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fleet")


def base_env(workdir: Path) -> dict[str, str]:
    env = {**os.environ, "XDG_DATA_HOME": str(workdir / "data"), **FAST_HEALTH_CHECKS}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def cluster(workdir: Path) -> Iterator[tuple[Namespace, dict[str, str]]]:
    """head's fake GPUs are healthy; slow's one runs 3x slower. The head also holds one VICTIM unit."""
    ns = Namespace()
    env = base_env(workdir)
    throttle = workdir / "throttle"
    throttle.mkdir()
    (throttle / "sitecustomize.py").write_text(THROTTLE.replace("{factor}", "3"))
    slow_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(throttle), env.get("PYTHONPATH")]))}
    try:
        start_node(ns, env, "head", head=True, resources={"fake_gpu": HEALTHY, VICTIM: 1})
        start_node(ns, slow_env, "slow")
        yield ns, env
    finally:
        ns.close()


def fleet(ns: Namespace, env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return ns.run("chipaudit", "fleet", *args, env=env, timeout=timeout, check=False)


def run_id_of(p: subprocess.CompletedProcess[str]) -> str:
    return next(line.split()[2].rstrip(":") for line in p.stdout.splitlines() if line.startswith("fleet run "))


def summary(ns: Namespace, env: dict[str, str], run_id: str, db: str, workdir: Path) -> dict:
    out = workdir / f"{run_id}.json"
    p = fleet(ns, env, "report", run_id, "--db", db, "--json", str(out), "--html", str(out.with_suffix(".html")))
    assert p.returncode == 0, p.stderr
    return json.loads(out.read_text())


# One audit at a time, so that the audits' speeds are compared on an otherwise idle machine, and so that
# the first audit finishes soon on a loaded host (the interrupted run waits for one to be done).
ON_CLUSTER = ["--address", f"127.0.0.1:{RAY_PORT}", "--level", "quick", "--seed", "3", "--max-parallel", "1"]
CLUSTER = [*ON_CLUSTER, "--resource", "fake_gpu"]
AUDIT = [*CLUSTER, "--only", "integrity.gemm.fp32"]


def check_throttled_run(result: dict) -> None:
    assert result["devices"] == FLEET_DEVICES
    assert result["audited"] == result["devices"] and result["lost"] == 0
    assert len({(a["node"], a["device_uuid"]) for a in result["audits"]}) == result["devices"]
    flagged = {(o["node"], o["kind"]) for o in result["outliers"]}
    assert flagged == {("slow", "slow")}, result["outliers"]


@pytest.fixture(scope="module")
def postgres(cluster: tuple[Namespace, dict[str, str]]) -> Iterator[Postgres]:
    ns, env = cluster
    with postgres_server(ns, PG_PORT, env) as server:
        yield server


def query(db: str, sql: str) -> list[tuple]:
    """Rows of a SQLite file or, through its socket, a PostgreSQL database; none while the tables are
    not made yet."""
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as conn:
            try:
                return [tuple(r) for r in conn.execute(sql).fetchall()]  # type: ignore[arg-type]
            except psycopg.errors.UndefinedTable:
                return []
    if not Path(db).exists():
        return []
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:  # the file exists before its tables do
            return []


def test_fleet_run_stores_one_result_per_device_and_flags_the_throttled_node(cluster, workdir: Path) -> None:
    ns, env = cluster
    db = str(workdir / "fleet.sqlite3")
    p = fleet(ns, env, "run", *AUDIT, "--db", db)
    assert p.returncode == 0, p.stdout + p.stderr
    run_id = run_id_of(p)
    rows = sqlite3.connect(db).execute(
        "SELECT node, device_uuid, state, attempts FROM fleet_audits WHERE run_id = ?", (run_id,)).fetchall()
    assert len(rows) == FLEET_DEVICES and {r[2] for r in rows} == {"done"}
    result = summary(ns, env, run_id, db, workdir)
    check_throttled_run(result)
    (workdir / "sqlite-summary.json").write_text(json.dumps(result))
    assert "Fleet run" in (workdir / f"{run_id}.html").read_text()


def test_an_interrupted_run_on_postgresql_resumes_without_redoing_finished_audits_and_sums_up_alike(
        cluster, postgres: Postgres, workdir: Path) -> None:
    """The store a fleet shares, PostgreSQL: a run interrupted once an audit is done, then resumed, redoes
    none of the finished audits, and its summary says what the SQLite run's said."""
    ns, env = cluster
    db, rows_of = postgres.url, postgres.socket_url  # the fleet's address inside the namespace; ours
    proc = subprocess.Popen(ns.argv("chipaudit", "fleet", "run", *AUDIT, "--db", db), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    done: list = []
    while time.time() < deadline and not done:
        time.sleep(0.5)
        done = query(rows_of, "SELECT node, device_uuid, finished FROM fleet_audits WHERE state = 'done'")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "fleet resume" in err, err
    run_id = err.split("fleet resume ")[1].split()[0]
    assert query(rows_of, "SELECT state FROM fleet_runs") == [("interrupted",)]
    first = {(n, u): f for n, u, f in query(
        rows_of, "SELECT node, device_uuid, finished FROM fleet_audits WHERE state = 'done'")}
    assert first
    p = fleet(ns, env, "resume", run_id, "--db", db)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = query(rows_of, "SELECT node, device_uuid, state, attempts, finished FROM fleet_audits")
    assert len(rows) == FLEET_DEVICES and {r[2] for r in rows} == {"done"}
    for node, uuid, _, attempts, finished in rows:
        if (node, uuid) in first:
            assert finished == first[(node, uuid)] and attempts == 1  # not redone
    result = summary(ns, env, run_id, db, workdir)
    check_throttled_run(result)
    before = json.loads((workdir / "sqlite-summary.json").read_text())
    keys = ("devices", "audited", "passed", "failed", "inconclusive", "lost", "could_not_run")
    assert {k: result[k] for k in keys} == {k: before[k] for k in keys}
    assert {o["node"] for o in result["outliers"]} == {o["node"] for o in before["outliers"]}


def test_a_killed_node_is_retried_or_lost_never_missing(cluster, workdir: Path) -> None:
    """The victim joins the module's cluster and never comes back: this test runs last on it. Its
    fleet is the VICTIM resource's two devices, one on the head and one on the victim."""
    ns, env = cluster
    db = str(workdir / "kill.sqlite3")
    start_node(ns, env, "victim", resources={VICTIM: 1})
    # A third try: the second may still be sent to the dying node before Ray has marked it dead.
    args = [*ON_CLUSTER, "--resource", VICTIM, "--only", "integrity.gemm.fp32", "--node-wait", "3",
            "--max-attempts", "3"]
    proc = subprocess.Popen(ns.argv("chipaudit", "fleet", "run", *args, "--db", db), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(0.3)
        if Path(db).exists() and sqlite3.connect(db).execute(
                "SELECT 1 FROM fleet_audits WHERE node = 'victim' AND state = 'running'").fetchone():
            break
    kill_node(ns, env, "victim")
    out, err = proc.communicate(timeout=300)
    rows = sqlite3.connect(db).execute("SELECT node, device_uuid, state, reason FROM fleet_audits").fetchall()
    assert len(rows) == 2, rows
    assert {r[2] for r in rows if r[0] == "head"} == {"done"}
    victims = [r for r in rows if r[0] == "victim"]
    assert all(r[2] in ("done", "lost") for r in victims), victims
    assert any(r[2] == "lost" and "did not come back" in r[3] for r in victims), victims
    assert proc.returncode == 3, out + err


@pytest.mark.parametrize(("args", "message"), [
    (["run", "--address", "127.0.0.1:1"], "no Ray cluster answers"),
    (["run", "--db", "mysql://nope"], "a SQLite file path or a postgresql:// URL"),
    (["report", "no-such-run"], "no fleet run no-such-run"),
    (["run", "--only", "integrity.nosuch"], "no check has that id or prefix"),
])
def test_bad_addresses_stores_and_run_ids_fail_fast_with_one_line(args: list[str], message: str, workdir: Path,
                                                                  ) -> None:
    env = base_env(workdir)
    t0 = time.time()
    p = subprocess.run(["chipaudit", "fleet", *args], env=env, capture_output=True, text=True, timeout=60)
    assert time.time() - t0 < 30
    assert p.returncode == 2 and message in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1

