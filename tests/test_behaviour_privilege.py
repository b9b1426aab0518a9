"""Without privilege the sealed run and the sinkhole cannot happen: they must say so, with the
reason, and never appear as coverage. Privilege is taken away for real, as a non-root user lacks it:
the probes run under setpriv with an emptied capability bounding set (no CAP_SYS_ADMIN for
namespaces, no CAP_NET_RAW for the sinkhole's capture), or without CAP_NET_RAW alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from chipaudit.perturb import conditions

pytestmark = pytest.mark.skipif(
    shutil.which("setpriv") is None or os.geteuid() != 0 or conditions.unshare_net() != "",
    reason="needs root with capabilities to take away, and setpriv (util-linux)")

SCRIPT = """
import json, sys
from chipaudit.checks import by_id
from chipaudit.checks.base import CheckContext, NotApplicable
from chipaudit.report.model import Level
out = {}
for check_id in sys.argv[1:]:
    try:
        outcome = by_id()[check_id].run(CheckContext(device="cpu", level=Level.quick, seed=3))
    except NotApplicable as e:
        out[check_id] = {"skipped": str(e)}
    else:
        serious = [f.title for f in outcome.findings if f.severity.value in ("medium", "high", "critical")]
        out[check_id] = {"coverage": outcome.coverage, "serious": serious}
print(json.dumps(out))
"""


def run_without(caps: str, *checks: str) -> dict[str, dict[str, object]]:
    cmd = ["setpriv", f"--bounding-set={caps}", "--inh-caps=-all", "--", sys.executable, "-c", SCRIPT, *checks]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_without_privilege_the_sealed_run_and_the_sinkhole_do_not_run() -> None:
    out = run_without("-all", "behaviour.sealed", "behaviour.sidechannel")
    sealed = out["behaviour.sealed"]
    assert "unshare --net failed" in str(sealed["skipped"]) and "CAP_SYS_ADMIN" in str(sealed["skipped"])
    side = out["behaviour.sidechannel"]
    assert isinstance(side["coverage"], dict)
    sensors = side["coverage"]["sensors"]
    assert sensors["strace"]["ran"] and sensors["socket_sampling"]["ran"]  # tracing one's own children needs none
    sink = sensors["sinkhole"]  # the workloads ran unattached, in the host's network, and the report says so
    assert not sink["ran"] and "CAP_SYS_ADMIN" in sink["detail"] and "not captured" in sink["detail"]
    assert any(line.startswith("sensor sinkhole not run") for line in side["coverage"]["limits"])
    assert side["serious"] == []


@pytest.mark.slow
def test_without_cap_net_raw_the_sealed_run_goes_on_without_the_sinkhole() -> None:
    out = run_without("-net_raw", "behaviour.sealed")
    sealed = out["behaviour.sealed"]
    assert isinstance(sealed["coverage"], dict), sealed
    sink = sealed["coverage"]["sensors"]["sinkhole"]
    assert not sink["ran"] and "permission" in sink["detail"].lower()
    assert any(w["applied"] and w["label"] == "sealed" for w in sealed["coverage"]["worlds"])  # offline, uncaptured
    assert any("sinkhole" in line for line in sealed["coverage"]["limits"])
    assert sealed["serious"] == []
