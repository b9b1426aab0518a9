"""The sensors on real processes: strace around small programs that talk and write, the socket
sampler on a live process, /proc scans for device holders (the sinkhole: tests/test_sinkhole.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chipaudit.checks.behaviour.allowlist import Allowlist
from chipaudit.checks.behaviour.findings import sensor_findings
from chipaudit.checks.behaviour.sidechannel import SideChannelProbe
from chipaudit.perturb import conditions, sinkhole
from chipaudit.report.model import Severity
from chipaudit.sensors import holders, strace
from chipaudit.sensors.events import FILE, NETWORK, PROCESS, Event, Observation
from chipaudit.sensors.sockets import TreeSampler

needs_strace = pytest.mark.skipif(strace.probe()[0] is None, reason="strace cannot run here")

TALKER = """
import os, socket, subprocess, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"x", ("127.0.0.1", 9)); u.close()
t = socket.socket()
try:
    t.connect(("127.0.0.1", 1))
except OSError:
    pass
with open(sys.argv[1], "w") as f:
    f.write("x")
os.rename(sys.argv[1], sys.argv[1] + ".moved")
subprocess.Popen([sys.executable, "-I", "-c",
                  "import socket; socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b'y', ('2001:db8::1', 53))"],
                 start_new_session=True).wait()
"""


def traced(tmp_path: Path, code: str, *args: str) -> tuple[list[Event], set[int]]:
    base, _ = strace.probe()
    assert base is not None
    out = tmp_path / "trace"
    subprocess.run([*strace.prefix(base, out, {}), sys.executable, "-c", code, *args], check=True, timeout=60,
                   capture_output=True)
    return strace.parse(out)


@needs_strace
def test_strace_records_network_calls_file_writes_and_children(tmp_path: Path) -> None:
    events, pids = traced(tmp_path, TALKER, str(tmp_path / "note"))
    network = {(e.action, e.target) for e in events if e.kind == NETWORK}
    assert ("sendto", "AF_INET 127.0.0.1:9") in network
    assert ("connect", "AF_INET 127.0.0.1:1") in network
    assert ("sendto", "AF_INET6 [2001:db8::1]:53") in network  # from the detached child
    refused = [e for e in events if e.action == "connect"]
    assert refused[0].failed == "ECONNREFUSED"
    files = {(e.action, e.target) for e in events if e.kind == FILE}
    assert ("openat", str(tmp_path / "note")) in files
    assert ("rename", str(tmp_path / "note.moved")) in files
    programs = [e.target for e in events if e.kind == PROCESS]
    assert programs == [sys.executable]  # the child; the traced program itself is not an event
    assert len(pids) >= 2


@needs_strace
def test_strace_ignores_reads_and_device_nodes(tmp_path: Path) -> None:
    events, _ = traced(tmp_path, "import json, os; open('/dev/null', 'w').write('x'); os.listdir('/tmp')")
    assert events == []


@needs_strace
def test_relative_paths_are_resolved_against_the_working_directory(tmp_path: Path) -> None:
    base, _ = strace.probe()
    assert base is not None
    out = tmp_path / "trace"
    subprocess.run([*strace.prefix(base, out, {}), sys.executable, "-c", "open('rel.txt', 'w')"], cwd=tmp_path,
                   check=True, timeout=60)
    events, _ = strace.parse(out)
    assert [e.target for e in events] == [str(tmp_path / "rel.txt")]


def test_strace_env_is_applied_to_the_traced_program_only() -> None:
    args = strace.prefix(("strace",), Path("/x"), {"TZ": "Asia/Shanghai", "LC_ALL": None})
    assert args[-5:] == ["-E", "TZ=Asia/Shanghai", "-E", "LC_ALL", "--"]


def test_socket_sampler_sees_a_held_socket_and_a_file_open_for_writing(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    code = (f"import socket, sys, time; s = socket.create_connection(('127.0.0.1', {port})); "
            f"f = open(sys.argv[1], 'a'); print('ready', flush=True); time.sleep(30)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "held.log")], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith(b"ready")
        sampler = TreeSampler(lambda p: False)
        sampler.watch(proc.pid, "reference")
        sampler.sample()
        targets = {(e.kind, e.target) for _, e in sampler.events}
        assert (NETWORK, f"AF_INET 127.0.0.1:{port}") in targets
        assert (FILE, str(tmp_path / "held.log")) in targets
        assert [s.pid for s in sampler.alive()] == [proc.pid]
    finally:
        proc.kill()
        proc.wait()
        listener.close()


@pytest.mark.skipif(conditions.unshare_net() != "", reason="needs a network namespace")
def test_socket_sampler_places_sockets_in_another_network_namespace() -> None:
    """The sealed world's workload runs in its own namespace, whose sockets our /proc/net does not list."""
    code = ("import socket, time; u = socket.socket(socket.AF_UNIX); u.bind('\\0cuda-uvmfd-1-2'); u.listen(); "
            "t = socket.socket(); t.bind(('127.0.0.1', 4711)); t.listen(); print('ready', flush=True); time.sleep(30)")
    proc = subprocess.Popen(["unshare", "--net", "--", sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith(b"ready")
        sampler = TreeSampler(lambda p: False)
        sampler.watch(proc.pid, "sealed")
        sampler.sample()
        targets = {e.target: e for _, e in sampler.events}
        assert {"AF_UNIX @cuda-uvmfd-1-2", "AF_INET 127.0.0.1:4711"} <= set(targets)
        assert not [t for t in targets if "not readable" in t]
        found = sensor_findings(SideChannelProbe(), {"sealed": Observation([e for _, e in sampler.events])},
                                Allowlist())
        assert {f.evidence["target"]: f.severity for f in found if f.evidence["event"] == NETWORK} == {
            "AF_UNIX @cuda-uvmfd-1-2": Severity.info, "AF_INET 127.0.0.1:4711": Severity.high}
    finally:
        proc.kill()
        proc.wait()


def test_sensor_findings_grade_destinations_and_honour_the_allowlist() -> None:
    home_cache = os.path.expanduser("~/.nv/ComputeCache/index")
    events = [
        Event("strace", NETWORK, "socket", "AF_INET", family="AF_INET"),
        Event("strace", NETWORK, "connect", "AF_INET 127.0.0.1:47555", family="AF_INET"),
        Event("strace", NETWORK, "sendto", "AF_INET 203.0.113.9:443", family="AF_INET"),
        Event("strace", NETWORK, "socket", "AF_NETLINK", family="AF_NETLINK"),
        Event("sockets", NETWORK, "open socket", "AF_UNIX @cuda-uvmfd-4026531836-1367@", family="AF_UNIX"),
        Event("sockets", NETWORK, "open socket", "AF_UNIX @uvmfd-lookalike", family="AF_UNIX"),
        Event("strace", FILE, "openat", "/var/tmp/x"),
        Event("strace", FILE, "openat", home_cache),
        Event("reaper", PROCESS, "lingering", "python -c leak"),
    ]
    found = {f.evidence["target"]: f.severity for f in
             sensor_findings(SideChannelProbe(), {"reference": Observation(events)}, Allowlist())}
    assert found == {
        "AF_INET 127.0.0.1:47555": Severity.high, "AF_INET 203.0.113.9:443": Severity.critical,
        "AF_NETLINK": Severity.medium, "/var/tmp/x": Severity.high, home_cache: Severity.info,
        "AF_UNIX @cuda-uvmfd-4026531836-1367@": Severity.info, "AF_UNIX @uvmfd-lookalike": Severity.high,
        "python -c leak": Severity.medium,
    }


def test_libfaketime_state_is_the_tools_own_but_other_shm_files_are_not() -> None:
    clock = conditions.clock(730, "+2 years")
    line = '7 link("/dev/shm/sem.Ab12Cd", "/dev/shm/sem.faketime_sem_7") = 0'
    events = [
        Event("strace", FILE, "openat", "/dev/shm/sem.Ab12Cd", 7),
        Event("strace", FILE, "link", "/dev/shm/sem.Ab12Cd", 7, detail=line),
        Event("strace", FILE, "link", "/dev/shm/sem.faketime_sem_7", 7, detail=line),
        Event("sockets", FILE, "open for writing", "/dev/shm/faketime_shm_7", 7),
        Event("strace", FILE, "openat", "/dev/shm/faketime_shm_99", 7),  # not a pid of this tree
        Event("strace", FILE, "openat", "/dev/shm/exfil", 7),
    ]
    kept = conditions.without_own_artefacts(clock, events, {7})
    assert [e.target for e in kept] == ["/dev/shm/faketime_shm_99", "/dev/shm/exfil"]
    assert conditions.without_own_artefacts(conditions.reference(), events, {7}) == events


def test_device_holders_are_found_by_their_open_files(tmp_path: Path) -> None:
    node = tmp_path / "fakeaccel0"
    node.write_text("")
    code = f"import time; f = open({str(node)!r}); print('ready', flush=True); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith(b"ready")
        scan = holders.scan((str(tmp_path / "fakeaccel*"),), holders.own_processes() - {proc.pid})
        found = [h for h in scan.holders if h.pid == proc.pid]
        assert found and found[0].files == [str(node)]
        assert scan.inspected > 1
        allow = Allowlist(device_holders=[{"name": found[0].name, "exe": os.path.realpath(sys.executable)}])
        assert allow.holder_allowed(found[0].name, found[0].exe)
        assert not Allowlist().holder_allowed(found[0].name, found[0].exe)
    finally:
        proc.kill()
        proc.wait()


def test_missing_tools_are_reported_not_claimed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    strace.probe.cache_clear()
    sinkhole.unavailable.cache_clear()
    try:
        base, status = strace.probe()
        assert base is None and not status.ran and "not installed" in status.detail
        assert "tcpdump (Debian package tcpdump)" in sinkhole.unavailable() or "unshare" in sinkhole.unavailable()
        assert "strace is not installed" in conditions.unavailable(conditions.traced(conditions.reference()))
    finally:
        strace.probe.cache_clear()
        sinkhole.unavailable.cache_clear()


FIXTURES = Path(__file__).parent / "fixtures" / "strace"


def test_an_honest_cuda_runtimes_own_side_effects_are_info_but_lookalikes_are_not(tmp_path: Path) -> None:
    """Recorded on an H200: libcuda names its threads, makes its device nodes and JIT-cache folders,
    looks for MPS and a profiler, and listens on its unified-memory socket, in every process. Each is
    reported (info), none fails the audit; the same calls on other paths still do."""
    home = os.path.expanduser("~")
    recorded = (FIXTURES / "cuda-h200-workload.txt").read_text().replace('"/root', f'"{home}')
    lookalikes = (
        f'963 1764460001.0 mkdir("{home}/.nvx", 0700) = 0\n'
        f'963 1764460001.1 symlink("/dev/char/195:255", "{home}/.bashrc") = 0\n'
        '963 1764460001.2 openat(AT_FDCWD</x>, "/dev/shm/cuda_injection_path_shm2", O_RDWR|O_CREAT, 0600) = 9\n'
        '963 1764460001.3 connect(8<UNIX:[1]>, {sa_family=AF_UNIX, sun_path="/tmp/nvidia-mps-x/control"}, 26) = 0\n'
        '963 1764460001.4 listen(16<UNIX:[1241,@"uvmfd-4026531836-963"]>, 128) = 0\n'
    )
    out = tmp_path / "trace"
    out.write_text(recorded + lookalikes)
    events, _ = strace.parse(out)
    targets = {(e.action, e.target) for e in events}
    assert ("symlink", "/dev/char/195:255") in targets and not any(t.startswith("..") for _, t in targets)
    assert ("listen", "AF_UNIX @cuda-uvmfd-4026531836-963") in targets
    assert all(t for _, t in targets)  # unlink("") names no file
    found = {f.evidence["target"]: f.severity for f in
             sensor_findings(SideChannelProbe(), {"reference": Observation(events)}, Allowlist())}
    failing = {t for t, sev in found.items() if sev != Severity.info}
    assert failing == {f"{home}/.nvx", f"{home}/.bashrc", "/dev/shm/cuda_injection_path_shm2",
                       "AF_UNIX /tmp/nvidia-mps-x/control", "AF_UNIX @uvmfd-4026531836-963"}, found


def test_a_local_socket_no_process_serves_reached_no_one_but_any_answer_or_internet_attempt_counts() -> None:
    """glibc asks nscd's socket first on every user or host lookup; without nscd that reaches no one
    (seen by eBPF in a standard audit's worker). Where nscd answers, it resolves names outside the
    sinkhole, so a connection that succeeds is high; an attempt on the internet is critical even when
    it fails."""
    def connect(target: str, failed: str, pid: int) -> Event:
        return Event("ebpf", NETWORK, "connect", target, pid, failed=failed, family=target.split()[0])

    def judged(*events: Event) -> dict[str, Severity]:
        return {f.evidence["target"]: f.severity for f in
                sensor_findings(SideChannelProbe(), {"reference": Observation(list(events))}, Allowlist())}

    assert judged(connect("AF_UNIX /var/run/nscd/socket", "ENOENT", 1),
                  connect("AF_UNIX @beacon", "ECONNREFUSED", 1),
                  connect("AF_INET 203.0.113.9:443", "ECONNREFUSED", 1)) == {
        "AF_UNIX /var/run/nscd/socket": Severity.info, "AF_UNIX @beacon": Severity.info,
        "AF_INET 203.0.113.9:443": Severity.critical}
    assert judged(connect("AF_UNIX /var/run/nscd/socket", "ENOENT", 1),
                  connect("AF_UNIX /var/run/nscd/socket", "", 2)) == {"AF_UNIX /var/run/nscd/socket": Severity.high}
    assert judged(connect("AF_UNIX /run/agent.sock", "EACCES", 1)) == {"AF_UNIX /run/agent.sock": Severity.high}
