"""chipaudit watch: its metrics parse and are what the dashboard queries; its duty holds; its state and
hours live in the store; and, as real processes, SIGTERM flushes and exits 0, SIGKILL loses at most the
running burst and a restart goes on, --once exits with run's codes (1 on a device that flips bits, with
a signed bundle that replays), a sampler's findings fail a burst, a device holder's connection in the
middle of a watch is reported with its pid and destination, and a driver library replaced in the
middle of a watch is a high finding at the next stack comparison."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import chipaudit, chipaudit_argv, cli_env
from prometheus_client.parser import text_string_to_metric_families

from chipaudit.checks.behaviour.allowlist import Allowlist
from chipaudit.checks.stack import baseline, snapshot
from chipaudit.evidence import keys
from chipaudit.evidence.verify import verify
from chipaudit.report.model import Category, Finding, Severity
from chipaudit.runner.watch import WatchConfig, Watcher
from chipaudit.runner.watch.loop import DutyBucket
from chipaudit.runner.watch.outputs import METRICS, MetricsServer, metric_names, metrics_text
from chipaudit.runner.watch.state import Hour, WatchState, WatchStore
from chipaudit.sensors.events import SensorStatus
from chipaudit.sensors.samplers import samplers_for
from chipaudit.store import SCHEMA_VERSION, Store

DASHBOARD = Path(__file__).parents[1] / "contrib" / "grafana" / "chipaudit-watch.json"
# Quick bursts for real processes: a second apart, a fifth of the time each.
FAST = ("--device", "cpu", "--interval", "1", "--duty", "0.2", "--no-syscall-tracer")
# A device that flips bits (the self-test's fault), as the red team ships one: a sitecustomize.py.
BITFLIP = "from chipaudit.selftest.faults import BitFlip\nBitFlip(rate=1e-3).install()\n"


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def wait_for(predicate: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_the_metrics_parse_and_the_dashboard_queries_only_what_the_watcher_exports() -> None:
    values = {name: 1.0 for name, _, _ in METRICS}
    text = metrics_text("cuda:0", values, {"power_w": 312.5, "temperature c": 61.0})
    found = families(text)
    assert found["chipaudit_watch_bursts"].type == "counter"
    assert found["chipaudit_watch_telemetry"].samples[0].labels == {"device": "cuda:0", "metric": "power_w"}
    exported = {s.name for f in found.values() for s in f.samples}
    assert exported == metric_names()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    queried = {m for e in exprs for m in re.findall(r"\b(chipaudit_[a-z_]+)", e)}
    assert queried and queried <= exported, queried - exported
    assert {p["title"] for p in dashboard["panels"]} >= {"Failures (last 24 h)", "Telemetry"}


def test_the_metrics_are_served_on_loopback_and_parse() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    values = {name: 2.0 for name, _, _ in METRICS}
    server = MetricsServer(port, lambda: metrics_text("cpu", values, {"temperature_celsius": 40.0}))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            found = families(answer.read().decode())
        listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    finally:
        server.close()
    assert found["chipaudit_watch_bursts"].samples[0].value == 2.0
    assert found["chipaudit_watch_telemetry"].samples[0].labels["metric"] == "temperature_celsius"
    assert listening == {"127.0.0.1"}


def test_the_duty_bucket_pays_an_overrun_back_by_waiting() -> None:
    now = [0.0]
    bucket = DutyBucket(0.01, 60.0, clock=lambda: now[0])
    assert bucket.take() == pytest.approx(0.6)
    bucket.spend(1.8)  # a burst that took three times its budget
    assert bucket.wait_s(0.1) == pytest.approx(130.0)  # 1.3 s of credit at 0.01 per second
    now[0] = 1e6  # a day idle fills the bucket to its capacity, not a day's worth
    assert bucket.take() == pytest.approx(1.2)


def test_the_state_and_hours_are_saved_together_and_a_store_at_version_2_gains_them(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite3"
    Store.open(db).close()
    with sqlite3.connect(db) as conn:  # a store as version 2 left it
        conn.execute("DROP TABLE watch_state")
        conn.execute("DROP TABLE watch_hours")
        conn.execute("PRAGMA user_version = 2")
    store = WatchStore(db)
    assert store.load("gpu-1") is None
    state = WatchState(device_id="gpu-1", device_spec="cuda:0", hostname="h", seed=7, bursts=3, products=30)
    t = datetime_at("2026-01-01T10:15:00+00:00")
    store.save(state, Hour(bursts=1, products=10, busy_s=0.5, wall_s=60.0), t)
    store.save(state, Hour(bursts=1, products=12, failures=1, findings=2, worst="high"), t)
    store.save(state, Hour(bursts=1, worst="low"), datetime_at("2026-01-01T11:00:00+00:00"))
    loaded = store.load("gpu-1")
    assert loaded is not None and (loaded.bursts, loaded.products, loaded.seed) == (3, 30, 7)
    hours = store.hours("gpu-1")
    assert [(h["hour"], h["bursts"], h["products"], h["failures"], h["worst"]) for h in hours] == [
        ("2026-01-01T10:00Z", 2, 22, 1, "high"), ("2026-01-01T11:00Z", 1, 0, 0, "low")]
    store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def datetime_at(iso: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(iso)


class Holder:
    """A sampler of the kind sensors/procwatch.py provides: a process that holds the device opened a
    connection on its second sample."""

    def __init__(self) -> None:
        self.samples = 0
        self.closed = False

    def sample(self) -> list[Finding]:
        self.samples += 1
        if self.samples != 2:
            return []
        return [Finding(check="behaviour.watch", category=Category.behaviour, severity=Severity.high,
                        title="a device holder connected to 203.0.113.5:443", evidence={"pid": 4242})]

    def metrics(self) -> dict[str, float]:
        return {"power_w": 100.0 + self.samples}

    def status(self) -> SensorStatus:
        return SensorStatus("test holder", True, "a process that connects once")

    def close(self) -> None:
        self.closed = True


def test_a_samplers_finding_fails_its_interval_and_its_gauges_are_exported(tmp_path: Path) -> None:
    config = WatchConfig(device="cpu", db=tmp_path / "db.sqlite3", events=tmp_path / "events.jsonl",
                         interval_s=0.5, duty=0.5, count=3, syscalls=False, prometheus=tmp_path / "w.prom",
                         bundle_dir=tmp_path / "bundles")
    (tmp_path / "bundles").mkdir()
    holder = Holder()
    assert Watcher(config, [holder]).run() == 0
    assert holder.closed
    bursts = [e for e in events(config.events) if e["event"] == "burst"]
    assert [bool(e["findings"]) for e in bursts] == [False, True, False]
    assert bursts[1]["findings"][0]["title"].endswith("203.0.113.5:443") and bursts[1]["bundle"]
    found = families((tmp_path / "w.prom").read_text())
    assert found["chipaudit_watch_failures"].samples[0].value == 1
    assert found["chipaudit_watch_telemetry"].samples[0].value == 103.0
    assert found["chipaudit_watch_products_verified"].samples[0].value >= 3


class Trigger:
    """Tells a device holder to connect when the watch samples for the second time, so that the
    connection falls in the middle of the watch, between two of the holders' samples."""

    def __init__(self, holder: subprocess.Popen[str]) -> None:
        self.holder, self.samples = holder, 0

    def sample(self) -> list[Finding]:
        self.samples += 1
        if self.samples == 2:
            assert self.holder.stdin is not None and self.holder.stdout is not None
            self.holder.stdin.write("connect\n")
            self.holder.stdin.flush()
            assert self.holder.stdout.readline().strip() == "connected"
        return []

    def metrics(self) -> dict[str, float]:
        return {}

    def status(self) -> SensorStatus:
        return SensorStatus("trigger", True, "tells the holder when to connect")

    def close(self) -> None:
        pass


def test_a_device_holder_that_connects_mid_watch_is_reported_with_its_pid_and_destination(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys\nsys.stdin.readline()\n"
         f"s = socket.create_connection(('127.0.0.1', {port}))\nprint('connected', flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    config = WatchConfig(device="cpu", db=tmp_path / "db.sqlite3", events=tmp_path / "events.jsonl",
                         interval_s=0.5, duty=0.5, count=3, syscalls=False, bundle_dir=tmp_path / "bundles")
    (tmp_path / "bundles").mkdir()
    try:
        samplers = [Trigger(holder), *samplers_for("cpu", [holder.pid], [], Allowlist())]
        assert Watcher(config, samplers).run() == 0
    finally:
        holder.kill()
        listener.close()
    bursts = [e for e in events(config.events) if e["event"] == "burst"]
    seen = [[f for f in e["findings"] if f["check"] == "watch.holders"] for e in bursts]
    assert [bool(found) for found in seen] == [False, True, False], seen
    finding = seen[1][0]
    assert Severity(finding["severity"]).rank >= Severity.high.rank and f"127.0.0.1:{port}" in finding["title"]
    [failure] = list((tmp_path / "bundles").iterdir())
    report = json.loads((failure / "report.json").read_text())
    [kept] = [f for f in report["findings"] if f["check"] == "watch.holders"]
    assert kept["evidence"]["pids"] == [holder.pid] and kept["evidence"]["processes"][0]["pid"] == holder.pid


def test_sigterm_flushes_and_exits_0_and_after_sigkill_a_restart_goes_on(tmp_path: Path) -> None:
    db, log, prom = tmp_path / "db.sqlite3", tmp_path / "watch-events.jsonl", tmp_path / "w.prom"
    args = [*FAST, "--db", str(db), "--prometheus", str(prom)]
    first = subprocess.Popen(chipaudit_argv("watch", *args), env=cli_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: sum(e["event"] == "burst" for e in events(log)) >= 2)
    finally:
        first.kill()  # SIGKILL: no chance to flush
        first.wait()
    done = sum(e["event"] == "burst" for e in events(log))
    assert events(log)[-1]["event"] != "stop"

    second = subprocess.Popen(chipaudit_argv("watch", *args), env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: sum(e["event"] == "burst" for e in events(log)) >= done + 1)
        second.send_signal(signal.SIGTERM)
        out, _ = second.communicate(timeout=60)
    finally:
        second.kill()
    assert second.returncode == 0, out
    after = events(log)
    start = [e for e in after if e["event"] == "start"][-1]
    assert start["continuing"] and after[-1]["event"] == "stop"
    bursts = [e["burst"] for e in after if e["event"] == "burst"]
    assert bursts == list(range(1, len(bursts) + 1))  # the restart went on counting
    assert [e["rotation"] for e in after if e["event"] == "burst"] == sorted(
        e["rotation"] for e in after if e["event"] == "burst")
    found = families(prom.read_text())
    assert found["chipaudit_watch_bursts"].samples[0].value == bursts[-1] == after[-1]["bursts"]


def test_once_exits_0_on_the_clean_cpu_and_2_on_bad_input(tmp_path: Path) -> None:
    p = chipaudit("watch", *FAST, "--once", "--db", str(tmp_path / "db.sqlite3"))
    assert p.returncode == 0, p.stderr
    (burst,) = [e for e in events(tmp_path / "watch-events.jsonl") if e["event"] == "burst"]
    assert burst["status"] == "passed" and burst["products"] >= 1
    with sqlite3.connect(tmp_path / "db.sqlite3") as conn:  # its hour is kept; a watch's place is not its
        assert conn.execute("SELECT bursts FROM watch_hours").fetchall() == [(1,)]
        assert conn.execute("SELECT count(*) FROM watch_state").fetchone() == (0,)
    p = chipaudit("watch", "--device", "cpu", "--seed", "1", "--db", str(tmp_path / "db.sqlite3"))
    assert p.returncode == 2 and "--once" in p.stderr and "Traceback" not in p.stderr


def test_once_exits_1_on_a_device_that_flips_bits_with_a_signed_bundle(tmp_path: Path) -> None:
    stack = tmp_path / "stack"
    stack.mkdir()
    (stack / "sitecustomize.py").write_text(textwrap.dedent(BITFLIP))
    _, public, _ = keys.generate(tmp_path / "watcher", None)
    env = cli_env()
    env["PYTHONPATH"] = f"{stack}:{env.get('PYTHONPATH', '')}"
    p = chipaudit("watch", *FAST, "--once", "--db", str(tmp_path / "db.sqlite3"), "--bundle-dir",
                  str(tmp_path / "fails"), "--key", str(tmp_path / "watcher.key"), env=env)
    assert p.returncode == 1, p.stderr
    (burst,) = [e for e in events(tmp_path / "fails" / "watch-events.jsonl") if e["event"] == "burst"]
    assert burst["status"] == "failed" and any("wrong fp32" in f["title"] for f in burst["findings"])
    assert re.fullmatch(r"chipaudit watch --device cpu --once --seed \d+ --rotation 0 --duty 0.2 --interval 1",
                        burst["replay"])
    checked = verify(Path(burst["bundle"]), [keys.load_public(public)])
    assert checked.ok, [s.problems for s in checked.steps]
    assert checked.report is not None and checked.report.replay == burst["replay"]


def test_a_late_bit_flip_is_healthy_until_its_moment() -> None:
    import torch

    from chipaudit.selftest.faults import LateBitFlip

    out = torch.ones(100, 100)
    LateBitFlip(rate=0.01, at=time.time() + 3600).after("mm", (out, out), out, 0.0)
    assert (out == 1.0).all()
    LateBitFlip(rate=0.01, at=time.time() - 1).after("mm", (out, out), out, 0.0)
    assert (out != 1.0).any()


# A vendor's driver library, as the device process maps it; a later build differs in one constant.
DRIVER = "int vendor_driver_version(void) {{ return {version}; }}\n"


class Upgrade:
    """Replaces the driver library with another build at its `at`-th sample, as a package upgrade does
    (a new file renamed over the old), between one interval's burst and its stack comparison."""

    def __init__(self, library: Path, build: Path, at: int) -> None:
        self.library, self.build, self.at, self.samples = library, build, at, 0

    def sample(self) -> list[Finding]:
        self.samples += 1
        if self.samples == self.at:
            os.replace(self.build, self.library)
        return []

    def metrics(self) -> dict[str, float]:
        return {}

    def status(self) -> SensorStatus:
        return SensorStatus("test upgrade", True, "replaces the driver library once")

    def close(self) -> None:
        pass


def _driver(tmp_path: Path, version: int) -> Path:
    source, built = tmp_path / f"driver{version}.c", tmp_path / f"libvendordrv.so.{version}"
    source.write_text(DRIVER.format(version=version))
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(built), str(source)], check=True)
    return built


def test_a_driver_library_replaced_mid_watch_is_high_at_the_next_stack_comparison(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every comparison is a fresh worker's fresh probe and hashing: nothing from an earlier one (the
    snapshot cache of checks/stack/snapshot.py is per worker) hides the change."""
    assert shutil.which("gcc"), "gcc builds the driver library"
    library = tmp_path / "vendor" / "libvendordrv.so"
    library.parent.mkdir()
    shutil.copy(_driver(tmp_path, 1), library)
    # Every process the watch starts maps the library, as a device process maps its driver.
    monkeypatch.setenv("LD_PRELOAD", str(library))
    trusted = tmp_path / "baseline.json"
    baseline.save(trusted, snapshot.with_inventory("cpu"))
    assert any(i.kind == "library" and i.path == str(library) for i in baseline.load(trusted).items)
    config = WatchConfig(device="cpu", db=tmp_path / "db.sqlite3", events=tmp_path / "events.jsonl",
                         interval_s=0.5, duty=0.5, count=2, syscalls=False, baseline=trusted, stack_every=1)
    watcher = Watcher(config, [Upgrade(library, _driver(tmp_path, 2), at=2)])
    assert watcher.run() == 0
    log = events(config.events)
    before, after = [e["findings"] for e in log if e["event"] == "stack"]
    assert [e["status"] for e in log if e["event"] == "stack"] == ["passed", "failed"]
    assert not [f for f in before if f["severity"] not in ("info", "low")], before
    changed = [f for f in after if f["severity"] == "high"]
    assert [f["title"] for f in changed] == ["changed since the baseline: libvendordrv.so"], after
    assert str(library) in changed[0]["detail"]
    bursts = [e for e in log if e["event"] == "burst"]
    assert [any(f["severity"] == "high" for f in b["findings"]) for b in bursts] == [False, True]
    assert watcher.state is not None and (watcher.state.stack_checks, watcher.state.failures) == (2, 1)
