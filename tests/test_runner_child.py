"""The one child-process protocol: wrappers compose, messages go both ways, a partial line is no
message, the end of a child is not a timeout, and stopping a child ends its whole process group."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from chipaudit.perturb.conditions import unshare_net
from chipaudit.process.child import Child, Wrapper, command, environment
from chipaudit.report.model import Category, CheckResult, Finding, Status
from chipaudit.runner.watchdog import Events, PlannedCheck, run_plan

PYTHON = (sys.executable, "-c")
ECHO = textwrap.dedent("""
    import os, sys
    from chipaudit.process.child import child_main

    def serve(job, channel):
        channel.send({"job": job, "env": {k: os.environ.get(k) for k in ("OUTER", "INNER", "GONE")},
                      "interfaces": [l.split(":")[0].strip() for l in open("/proc/self/net/dev").readlines()[2:]]})
        for message in channel:
            channel.send({"echo": message})

    sys.exit(child_main(serve))
""")
# Writes half a message, waits for the go, finishes it, and exits with status 3.
HALF = textwrap.dedent("""
    import json, os, sys
    fd = json.loads(sys.stdin.readline())["result_fd"]
    os.write(fd, b'{"half": ')
    sys.stdin.readline()
    os.write(fd, b'true}\\n')
    sys.exit(3)
""")
# Leaves a grandchild in its process group and reports its pid.
GRANDCHILD = textwrap.dedent("""
    import json, os, subprocess, sys, time
    sleeper = subprocess.Popen(["sleep", "600"])
    fd = json.loads(sys.stdin.readline())["result_fd"]
    os.write(fd, (json.dumps({"pid": sleeper.pid}) + "\\n").encode())
    time.sleep(600)
""")
INTERFACES_CHECK = textwrap.dedent("""
    from chipaudit.checks.base import Check, Outcome
    from chipaudit.report.model import Category

    class Interfaces(Check):
        id = "test.interfaces"
        category = Category.integrity

        def run(self, ctx):
            names = [l.split(":")[0].strip() for l in open("/proc/self/net/dev").readlines()[2:]]
            return Outcome(coverage={"interfaces": names})

    CHECKS = [Interfaces()]
""")
needs_netns = pytest.mark.skipif(unshare_net() != "", reason="needs a network namespace")


def test_wrappers_compose_from_the_outside_in() -> None:
    outer = Wrapper(("unshare", "--net", "--"), {"A": "outer", "B": "outer"}, (Path("/tmp/x.pcap"),))
    inner = Wrapper(("strace", "-o", "t", "--"), {"A": "inner", "C": None})
    assert command(["python", "-m", "w"], [outer, inner]) == [
        "unshare", "--net", "--", "strace", "-o", "t", "--", "python", "-m", "w"]
    assert environment([outer, inner], {"C": "1", "D": "2"}) == {"A": "inner", "B": "outer", "D": "2"}


def test_messages_go_both_ways_through_the_wrappers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GONE", "1")
    wrappers = [Wrapper(("env", "OUTER=1"), files=(tmp_path / "trace",)), Wrapper(env={"INNER": "2", "GONE": None})]
    with Child([*PYTHON, ECHO], wrappers, log=tmp_path / "log") as child:
        assert child.wrapped and child.files == [tmp_path / "log", tmp_path / "trace"]
        assert child.send({"device": "cpu"})
        hello = child.receive(60)
        assert hello is not None
        assert hello["job"] == {"device": "cpu"} and hello["env"] == {"OUTER": "1", "INNER": "2", "GONE": None}
        for i in range(3):
            assert child.send({"op": i})
            assert child.receive(10) == {"echo": {"op": i}}
        child.close_input()
        assert child.receive(10) is None and child.eof
        assert child.stop(grace_s=10) == 0
    assert (tmp_path / "log").exists()  # the caller's log is the caller's


def test_a_partial_line_is_no_message_and_the_end_is_no_timeout() -> None:
    with Child([*PYTHON, HALF]) as child:
        assert child.receive(0.5) is None and not child.eof
        assert child.running
        child.send({"go": True})
        assert child.receive(30) == {"half": True}
        assert child.receive(30) is None and child.eof
        assert child.stop(grace_s=10) == 3
        log = child.log
    assert not log.exists()  # a log of its own is deleted with the child


def test_stopping_a_child_ends_its_whole_group_even_on_ctrl_c() -> None:
    with pytest.raises(KeyboardInterrupt), Child([*PYTHON, GRANDCHILD]) as child:
        message = child.receive(30)
        assert message is not None
        raise KeyboardInterrupt
    assert child.proc.returncode is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(message["pid"]):
        time.sleep(0.05)
    assert not _alive(message["pid"])


@needs_netns
def test_a_child_in_a_namespace_wrapper_sees_only_loopback() -> None:
    with Child([*PYTHON, ECHO], [Wrapper(("unshare", "--net", "--"))]) as child:
        child.send({})
        hello = child.receive(60)
    assert hello is not None and hello["interfaces"] == ["lo"]


@needs_netns
def test_a_runner_worker_runs_inside_its_wrappers(tmp_path: Path) -> None:
    """How the runner's workers get a world of their own: the same wrappers a workload gets."""
    (tmp_path / "interfaces_check.py").write_text(INTERFACES_CHECK)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    wrappers = [Wrapper(("unshare", "--net", "--")),
                Wrapper(env={"CHIPAUDIT_CHECK_MODULES": "interfaces_check", "PYTHONPATH": path})]
    results: list[CheckResult] = []

    def finished(result: CheckResult, findings: list[Finding]) -> None:
        results.append(result)

    plan = [PlannedCheck("test.interfaces", Category.integrity, 1, 60.0)]
    run_plan(plan, {"device": "cpu", "level": "quick"}, Events(finished=finished), wrappers)
    (result,) = results
    assert result.status is Status.passed, result.reason
    assert result.coverage["interfaces"] == ["lo"]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
