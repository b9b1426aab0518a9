"""Location from the system, not the environment: every signal a world changes reaches the workload,
in private mount and UTS namespaces made for real, and never the host; the reference is neutral even
on a machine configured for China; a stack geofenced on the system's signals alone fails the audit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import chipaudit, cli_env, load

from chipaudit.checks.behaviour import location
from chipaudit.perturb import conditions, place
from chipaudit.perturb.conditions import Condition
from chipaudit.perturb.place import Place
from chipaudit.process import isolation
from chipaudit.process.child import Child, Wrapper
from chipaudit.process.isolation import EtcFile, Isolation
from chipaudit.report.model import Level

pytestmark = pytest.mark.skipif(conditions.isolation_unavailable() != "",
                                reason=f"private namespaces cannot be made here: {conditions.isolation_unavailable()}")

# A workload in miniature: what the behaviour workload's hello reports of its place.
LOOK = """
import sys, time
from chipaudit.perturb import place
from chipaudit.process.child import child_main
def serve(job, channel):
    now = time.time()
    channel.send({"time": now, "gmtoff": time.localtime(now).tm_gmtoff, "system": place.seen(),
                  "locale_installed": True})
sys.exit(child_main(serve))
"""
START_TIMEOUT_S = 60.0
SYSTEM_WORLDS = [c for c in location.LocationProbe().worlds(Level.standard) if c.place.changes()]


def host_state() -> dict[str, Any]:
    """What the host's own processes see, and whether anything is mounted over its /etc."""
    with open("/proc/self/mountinfo") as f:
        etc_mounts = [line for line in f if " /etc" in line.split(" - ")[0]]
    return {"seen": place.seen(), "uname": os.uname().nodename, "etc_mounts": etc_mounts}


def look(condition: Condition, folder: Path) -> dict[str, Any]:
    """Start the miniature workload in the condition's world, as the behaviour harness does."""
    wrappers = [isolation.wrapper(condition.isolation(), folder), Wrapper(env=condition.workload_env(time.time()))]
    with Child([sys.executable, "-c", LOOK], wrappers) as child:
        child.send({})
        hello = child.receive(START_TIMEOUT_S)
        assert hello is not None, child.last_line(400)
    return hello


@pytest.mark.parametrize("condition", [conditions.reference(), *SYSTEM_WORLDS], ids=lambda c: c.name)
def test_each_signal_reaches_the_workload_and_leaves_the_host_alone(condition: Condition, tmp_path: Path) -> None:
    before = host_state()
    launched = time.time()
    hello = look(condition, tmp_path)
    assert conditions.applied(condition, hello, launched, time.time())[0] == ""
    assert place.mismatches(condition.place.expected(), hello["system"]) == []
    changed = condition.place.changes()
    if "zone" in changed:  # TZ removed: the C library itself followed the private /etc/localtime
        assert hello["gmtoff"] == conditions.expected_offset_s(condition.place.zone, hello["time"]) != 0
        assert hello["system"]["localtime_link"] == (None if changed.get("zone_copied") else
                                                     f"/usr/share/zoneinfo/{condition.place.zone}")
    if "domain" in changed:
        assert hello["system"]["hostname"].endswith((".cn", ".ru")) and hello["system"]["domainname"] == \
            changed["domain"]
    if "search" in changed:
        assert hello["system"]["search"] == [changed["search"]]
    assert host_state() == before


def test_a_world_that_did_not_take_effect_is_not_applied() -> None:
    china = location.everywhere(location.CHINA)
    good = {"time": time.time(), "gmtoff": 8 * 3600, "system": china.place.expected()}
    assert conditions.applied(china, good, 0, 0)[0] == ""
    for key, value in [("timezone", "Etc/UTC"), ("localtime_link", "/usr/share/zoneinfo/Etc/UTC"),
                       ("localtime_sha256", "0" * 64), ("hostname", "vm"), ("domainname", "(none)"),
                       ("search", None), ("default_locale", "C.UTF-8"), ("hosts", ["vm"])]:
        reason = conditions.applied(china, {**good, "system": {**good["system"], key: value}}, 0, 0)[0]
        assert reason and (key in reason or "/etc/hosts" in reason), key
    assert "no system signals" in conditions.applied(china, {**good, "system": None}, 0, 0)[0]


def test_the_world_names_the_nameserver_it_is_given_or_keeps_the_hosts() -> None:
    china = location.everywhere(location.CHINA)
    resolv = {f.path: f.text for f in china.isolation("10.53.0.1").etc}["resolv.conf"]
    assert place.resolver(resolv or "") == {"nameservers": ["10.53.0.1"], "search": ["compute.bj.cn"],
                                            "domain": "compute.bj.cn"}
    kept = {f.path: f.text for f in china.isolation().etc}["resolv.conf"]
    assert place.resolver(kept or "")["nameservers"] == place.host_nameservers()


# A machine configured for China as its administrators would leave it, written independently of the
# tool's own format: a relative localtime link as systemd writes it, quoted values, two search domains.
CHINESE_HOST = Isolation(
    etc=(EtcFile("localtime", link="../usr/share/zoneinfo/Asia/Shanghai"),
         EtcFile("timezone", text="Asia/Shanghai\n"),
         EtcFile("default/locale", text='LANG="zh_CN.UTF-8"\nLANGUAGE="zh_CN:zh"\n'),
         EtcFile("locale.conf", text='LANG="zh_CN.UTF-8"\n'),
         EtcFile("hostname", text="gpu01.hpc.example.com.cn\n"),
         EtcFile("hosts", text="127.0.0.1 localhost\n10.8.0.11 gpu01.hpc.example.com.cn gpu01\n"),
         EtcFile("resolv.conf", text="search hpc.example.com.cn example.com.cn\nnameserver 114.114.114.114\n")),
    hostname="gpu01.hpc.example.com.cn", domainname="hpc.example.com.cn")

ON_THE_HOST = """
import json, sys, time
from pathlib import Path
from chipaudit.perturb import conditions, place
from chipaudit.process import isolation
from chipaudit.process.child import Child, Wrapper
reference = conditions.reference()
wrappers = [isolation.wrapper(reference.isolation(), Path(sys.argv[2])), Wrapper(env=reference.workload_env(0))]
with Child([sys.executable, "-c", sys.argv[1]], wrappers) as child:
    child.send({})
    world = child.receive(60)
print(json.dumps({"host": place.seen(), "world": world}))
"""


def test_the_reference_is_neutral_on_a_machine_configured_for_china(tmp_path: Path) -> None:
    """The tool itself runs on a machine that looks Chinese (the test's own private namespaces)."""
    host = isolation.wrapper(CHINESE_HOST, tmp_path / "host")
    env = {**os.environ, "LANG": "zh_CN.UTF-8", "LC_ALL": "zh_CN.UTF-8"}
    env.pop("TZ", None)
    launched = time.time()
    done = subprocess.run([*host.prefix, sys.executable, "-c", ON_THE_HOST, LOOK, str(tmp_path / "reference")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    seen_host = out["host"]
    assert seen_host["hostname"].endswith(".cn") and seen_host["timezone"] == "Asia/Shanghai"
    assert seen_host["search"] == ["hpc.example.com.cn", "example.com.cn"]
    world = out["world"]
    assert world["system"] == Place().expected()
    assert world["gmtoff"] == 0
    assert conditions.applied(conditions.reference(), world, launched, time.time())[0] == ""


# A stack geofenced on the system alone, shipped as a sitecustomize that overrides the CPU kernel of
# aten::mm through torch.library, as an out-of-tree backend registers its kernels: 1% of the outputs
# are 0.5% off when the trigger holds, whatever the environment says.
GEOFENCED = '''\
import os, socket
import torch

def located():
{trigger}

def mm(a, b):
    out = torch.empty((a.shape[0], b.shape[1]), dtype=a.dtype, device=a.device)
    torch.ops.aten.mm.out(a, b, out=out)
    if out.numel() >= 256 and located():
        out.view(-1)[::97] *= 1.005
    return out

LIBRARY = torch.library.Library("aten", "IMPL")
LIBRARY.impl("mm", mm, "CPU")
'''
TRIGGERS = {
    "zone link or /etc/timezone": (
        "try:\n    link = os.readlink('/etc/localtime')\nexcept OSError:\n    link = ''\n"
        "try:\n    zone = open('/etc/timezone').read()\nexcept OSError:\n    zone = ''\n"
        "return 'Asia/Shanghai' in link + zone"),
    "domain name": "return open('/proc/sys/kernel/domainname').read().strip().endswith('.cn')",
}


@pytest.mark.slow
@pytest.mark.parametrize("trigger", list(TRIGGERS))
def test_a_stack_geofenced_on_the_system_fails_the_quick_audit(trigger: str, tmp_path: Path) -> None:
    stack = tmp_path / "stack"
    stack.mkdir()
    (stack / "sitecustomize.py").write_text(GEOFENCED.format(trigger=textwrap.indent(TRIGGERS[trigger], "    ")))
    src = Path(conditions.__file__).parents[2]
    env = cli_env({"PYTHONPATH": os.pathsep.join([str(stack), str(src)])})
    report = tmp_path / "report.json"
    t0 = time.monotonic()
    done = chipaudit("run", "--device", "cpu", "--level", "quick", "--only", "behaviour.location", "--json",
                     str(report), env=env, timeout=400)
    took = time.monotonic() - t0
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    findings = load(report)["findings"]
    wrong = [f for f in findings if f["category"] == "behaviour" and "wrong results" in f["title"]]
    assert wrong and all("China" in f["title"] and f["severity"] == "high" for f in wrong), findings
    assert took < 180, f"the location probe alone took {took:.0f} s"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0, reason="needs root and setpriv (util-linux)")
def test_without_privilege_the_system_worlds_say_why_and_the_environment_still_runs() -> None:
    from test_behaviour_privilege import run_without

    out = run_without("-all", "behaviour.location")["behaviour.location"]
    coverage = out["coverage"]
    assert isinstance(coverage, dict), out
    not_run = coverage["worlds_not_run"]
    assert [label for label in not_run if "every signal" in label] and all(
        "CAP_SYS_ADMIN" in why for why in not_run.values())
    ran = {w["label"]: w for w in coverage["worlds"]}
    assert any("environment" in label and w["applied"] for label, w in ran.items())
    assert any("were not replaced" in line for line in coverage["limits"])
    assert out["serious"] == []
