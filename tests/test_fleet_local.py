"""A fleet without a cluster, on a real local Ray instance: `chipaudit fleet run` with no --address starts
Ray for this machine's devices, bound to loopback only, and stops it afterwards; and the fleet consensus
on it flags the one device whose products differ from its peers', and only that one.

The devices are three units of a custom resource on this CPU (RAY_OVERRIDE_RESOURCES, Ray's own way
to state a node's resources); the second computes under the selftest's AfterUse fault (faults.py) with
the lowest mantissa bit of one element of every fp32 product flipped: well inside the oracle's error
bound, so only the comparison with its peers can see it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from fleet_support import after_torch

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

DEVICES = 3
FAULTY_SLOT = "1"
# Installed in every process of the faulty device's audit that imports torch (its slot says which).
FAULT = after_torch(f"""
    if slot() == "{FAULTY_SLOT}":
        from chipaudit.selftest.faults import AfterUse
        AfterUse(after_calls=0, bit=0).install()
""")
MARK = "CHIPAUDIT_TEST_FLEET_MARK"


def marked(mark: str) -> list[psutil.Process]:
    """Processes that inherited this test's mark: the fleet command and every Ray process it started."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == mark:
                found.append(proc)
        except (psutil.Error, OSError):
            pass
    return found


def test_fleet_run_without_a_cluster_flags_the_device_unlike_its_peers(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAULT)
    mark = uuid.uuid4().hex
    token_file = Path.home() / ".ray" / "auth_token"
    had_token = token_file.exists()
    env = {**os.environ, MARK: mark, "XDG_DATA_HOME": str(tmp_path / "data"),
           "RAY_OVERRIDE_RESOURCES": json.dumps({"fake_gpu": DEVICES}),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    db = str(tmp_path / "fleet.sqlite3")
    cmd = [sys.executable, "-m", "chipaudit", "fleet", "run", "--resource", "fake_gpu", "--device", "cpu",
           "--level", "quick", "--seed", "3", "--only", "fleet.consensus", "--db", db]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    listening: set[str] = set()
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        for p in marked(mark):
            with contextlib.suppress(psutil.Error, OSError):
                listening |= {c.laddr.ip for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        time.sleep(0.5)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err  # the fleet fails: one device is unlike its model
    assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
    assert token_file.exists() == had_token  # the instance's token lived in its environment only
    time.sleep(1)
    assert marked(mark) == [], "Ray processes outlived the fleet run"

    run_id = next(line.split()[2].rstrip(":") for line in out.splitlines() if line.startswith("fleet run "))
    report = tmp_path / "fleet.json"
    p = subprocess.run([sys.executable, "-m", "chipaudit", "fleet", "report", run_id, "--db", db, "--json",
                        str(report), "--html", str(tmp_path / "fleet.html")], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    summary = json.loads(report.read_text())
    assert summary["devices"] == DEVICES and summary["audited"] == DEVICES and summary["failed"] == 0
    (model,) = summary["consensus"]
    fp32 = next(row for row in model["products"] if row["format"] == "fp32")
    assert fp32["deterministic"] and fp32["majority_size"] == DEVICES - 1, fp32
    flagged = {d["device"].split("/")[-1] for d in summary["consensus_deviants"]}
    assert flagged == {f"fake_gpu-{FAULTY_SLOT}"}, summary["consensus_deviants"]
    (deviant,) = summary["consensus_deviants"]
    assert any(why.startswith("fp32: digest") for why in deviant["why"])
    unanimous = {row["format"] for row in model["products"] if row.get("majority_size") == DEVICES}
    assert {"fp64", "bf16", "int8"} <= unanimous  # the fault touches fp32 results only
    assert "Consensus per model" in (tmp_path / "fleet.html").read_text()
