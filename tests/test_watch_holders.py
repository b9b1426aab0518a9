"""The watch's holder sampler on real processes and real sockets: a process named with --watch-pid
(or in a --watch-cgroup, or on NVML's process list) that connects, listens, starts a child or opens
a file for writing between two samples is reported with its pid and what it reached."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chipaudit.checks.behaviour.allowlist import Allowlist
from chipaudit.devices.vendor_reads import RECORDING_SCHEMA, ReplayReader
from chipaudit.errors import InputError
from chipaudit.report.model import Finding, Severity
from chipaudit.sensors.procwatch import CGROUP, CHECK, NAMED_PID, NVML, HolderSampler
from chipaudit.sensors.samplers import samplers_for

# A stand-in for a device process: does what it is told on stdin, answers "ok" when done.
WORKLOAD = r"""
import os, socket, subprocess, sys, time
keep = []
for line in sys.stdin:
    verb, _, arg = line.strip().partition(" ")
    if verb == "connect":
        s = socket.create_connection(("127.0.0.1", int(arg))); keep.append(s)
    elif verb == "listen":
        s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); keep.append(s)
        print(s.getsockname()[1], flush=True); continue
    elif verb == "child":
        keep.append(subprocess.Popen(["sleep", "30"]))
        print(keep[-1].pid, flush=True); continue
    elif verb == "write":
        keep.append(open(arg, "a"))
    elif verb == "unix":
        s = socket.socket(socket.AF_UNIX); s.connect(arg); keep.append(s)
    elif verb == "netlink":
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); s.bind((0, 0)); keep.append(s)
    elif verb == "packet":
        keep.append(socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)))
    print("ok", flush=True)
"""


class Workload:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WORKLOAD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.pid = self.proc.pid

    def do(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def end(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def workload() -> Iterator[Workload]:
    w = Workload()
    yield w
    w.end()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s
    s.close()


def failing(found: list[Finding]) -> list[Finding]:
    return [f for f in found if f.severity.rank >= Severity.low.rank]


def test_connection_in_the_middle_of_a_watch(workload: Workload, listener: socket.socket) -> None:
    sampler = HolderSampler("cpu", [workload.pid], [], Allowlist())
    assert failing(sampler.sample()) == []  # an idle python holds no socket and no file for writing
    port = listener.getsockname()[1]
    assert workload.do(f"connect {port}") == "ok"
    found = sampler.sample()
    [f] = failing(found)
    assert f.check == CHECK and f.severity is Severity.high
    assert f"AF_INET 127.0.0.1:{port}" in f.evidence["instances"]
    assert f.evidence["pids"] == [workload.pid]
    [proc] = f.evidence["processes"]
    assert proc["pid"] == workload.pid and proc["found_by"] == NAMED_PID and "socket" in proc["cmdline"]
    assert sampler.sample() == []  # the same connection is not news twice
    assert sampler.metrics()["holder_processes"] == 1.0


def test_listening_port_child_and_file(workload: Workload, tmp_path: Path) -> None:
    sampler = HolderSampler("cpu", [workload.pid], [], Allowlist())
    sampler.sample()
    port = int(workload.do("listen"))
    child = int(workload.do("child"))
    assert workload.do(f"write {tmp_path / 'beacon.log'}") == "ok"
    found = {f.title: f for f in sampler.sample()}
    listens = next(f for t, f in found.items() if t.startswith("the workload listens on"))
    assert listens.severity is Severity.high and f"AF_INET 127.0.0.1:{port}" in listens.evidence["instances"]
    started = next(f for t, f in found.items() if "started a program" in t)
    assert started.evidence["pids"] == [child] and started.evidence["processes"][0]["name"] == "sleep"
    assert started.evidence["processes"][0]["found_by"] == f"descendant of {workload.pid} ({NAMED_PID})"
    wrote = next(f for t, f in found.items() if "file system" in t)
    assert wrote.severity is Severity.high and wrote.evidence["target"] == str(tmp_path / "beacon.log")
    assert len(found) == 3


def test_netlink_and_packet_sockets_are_placed(workload: Workload) -> None:
    sampler = HolderSampler("cpu", [workload.pid], [], Allowlist())
    sampler.sample()
    workload.do("netlink")
    workload.do("packet")  # needs CAP_NET_RAW: the tests run as root
    found = {f.evidence["target"].split(" ")[0]: f for f in sampler.sample()}
    assert found["AF_NETLINK"].severity is Severity.medium and "route" in found["AF_NETLINK"].evidence["target"]
    assert found["AF_PACKET"].severity is Severity.high
    assert found["AF_PACKET"].evidence["target"] == "AF_PACKET protocol 0x0003 interface 0"


def test_unix_client_is_named_by_its_peer(workload: Workload, tmp_path: Path) -> None:
    path = str(tmp_path / "daemon.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    sampler = HolderSampler("cpu", [workload.pid], [], Allowlist())
    sampler.sample()
    workload.do(f"unix {path}")
    conn, _ = server.accept()
    [f] = sampler.sample()
    assert f.severity is Severity.high and f.evidence["target"] == f"AF_UNIX {path}"
    conn.close()
    server.close()


def test_allowed_destination_is_not_a_failure(workload: Workload, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    sampler = HolderSampler("cpu", [workload.pid], [], Allowlist(destinations=[f"127.0.0.1:{port}"]))
    sampler.sample()
    workload.do(f"connect {port}")
    found = sampler.sample()
    assert failing(found) == [] and [f.severity for f in found] == [Severity.info]


def test_state_at_first_sight_is_the_baseline(workload: Workload, listener: socket.socket, tmp_path: Path) -> None:
    """A job's connections and log files, held when the watch first sees it, are no alarm (a job always
    has some); a destination it reaches afterwards is."""
    port = listener.getsockname()[1]
    workload.do(f"connect {port}")
    workload.do(f"write {tmp_path / 'job.log'}")
    sampler = HolderSampler("cpu", [workload.pid], [], Allowlist())
    assert failing(sampler.sample()) == []
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()
    later = other.getsockname()[1]
    child = subprocess.Popen([sys.executable, "-c", f"import socket, time\ns = socket.create_connection(('127.0.0.1', "
                              f"{port}))\nprint('ok', flush=True)\ntime.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        workload.do(f"connect {later}")
        [f] = failing(sampler.sample())
        assert f.severity is Severity.high and f"AF_INET 127.0.0.1:{later}" in f.evidence["instances"]
        assert child.stdout is not None and child.stdout.readline().strip() == "ok"
        sampler.pids.append(child.pid)  # named later, as a job started mid-watch: its state is its baseline
        assert failing(sampler.sample()) == []
    finally:
        child.kill()
        other.close()


def test_vanished_process_is_counted() -> None:
    w = Workload()
    sampler = HolderSampler("cpu", [w.pid], [], Allowlist())
    sampler.sample()
    w.end()
    assert sampler.sample() == []
    assert sampler.metrics()["holder_processes_vanished_total"] == 1.0


def _cgroup2() -> Path:
    with open("/proc/mounts") as f:
        return next(Path(line.split()[1]) for line in f if line.split()[2] == "cgroup2")


def test_cgroup_and_its_children(listener: socket.socket) -> None:
    group = _cgroup2() / f"chipaudit-test-{os.getpid()}"
    (group / "inner").mkdir(parents=True)
    w = Workload()
    try:
        (group / "inner" / "cgroup.procs").write_text(str(w.pid))
        sampler = HolderSampler("cpu", [], [group], Allowlist())
        sampler.sample()
        w.do(f"connect {listener.getsockname()[1]}")
        [f] = failing(sampler.sample())
        assert f.evidence["processes"][0]["found_by"] == f"{CGROUP} {group}"
    finally:
        w.end()
        (group / "inner").rmdir()
        group.rmdir()


def test_nvml_process_list_finds_holders(workload: Workload, listener: socket.socket) -> None:
    reader = ReplayReader({"schema": RECORDING_SCHEMA, "source": "nvml", "devices": [{
        "nvmlDeviceGetComputeRunningProcesses": [{"pid": workload.pid, "usedGpuMemory": 1 << 20}],
        "nvmlDeviceGetGraphicsRunningProcesses": {"__error__": "NVML_ERROR_NOT_SUPPORTED"}}]})
    holders, health = samplers_for("cuda:0", [], [], Allowlist(), reader=reader, own=lambda: {os.getpid()})
    holders.sample()
    workload.do(f"connect {listener.getsockname()[1]}")
    [f] = failing(holders.sample())
    assert f.evidence["processes"][0]["found_by"] == NVML
    assert holders.metrics()["nvml_process_list_available"] == 1.0
    assert health.status().ran


def test_targets_that_name_nothing_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        samplers_for("cpu", [], [tmp_path], Allowlist())
    dead = Workload()
    dead.end()
    with pytest.raises(InputError):
        samplers_for("cpu", [dead.pid], [], Allowlist())
