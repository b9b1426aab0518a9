"""The sinkhole on real namespaces and sockets: a process wired to it reaches nothing but the
sinkhole whatever address it sends to (a capture on the host's own interfaces sees none of it), its
DNS questions are answered, its loopback traffic is captured through the mirror, an offline process
has no route, and from inside nothing of the sensors can be seen."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chipaudit.perturb import sinkhole
from chipaudit.perturb.sinkhole import Sinkhole
from chipaudit.process import isolation
from chipaudit.sensors.watch import Watch

pytestmark = pytest.mark.skipif(sinkhole.unavailable() != "", reason=f"no sinkhole here: {sinkhole.unavailable()}")

PUBLIC4, PUBLIC6 = "93.184.216.34", "2606:2800:220:1::"
# A port on the host's loopback that the host capture must see, to prove that it captures at all.
HOST_CONTROL_PORT = 47999
NAME = "telemetry.vendor.example"

# Talks to public addresses, a resolver and its own loopback, then says what it saw of its world.
TALKER = textwrap.dedent(f"""
    import json, os, socket, struct, sys

    def query(qtype):
        name = b"".join(bytes([len(p)]) + p.encode() for p in "{NAME}".split(".")) + b"\\0"
        return struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", qtype, 1)

    def answer(reply):
        return socket.inet_ntop(socket.AF_INET if reply[-6:-4] != b"\\0\\x10" else socket.AF_INET6,
                                reply[-4:] if reply[-6:-4] != b"\\0\\x10" else reply[-16:])

    seen = {{}}
    for host in ("{PUBLIC4}", "{PUBLIC6}"):
        try:
            with socket.create_connection((host, 443), timeout=5) as s:
                s.sendall(b"BEACON " + host.encode())
            seen[host] = "connected"
        except OSError as e:
            seen[host] = e.strerror
    try:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(5)
        u.sendto(query(1), ("8.8.8.8", 53))
        seen["A"] = answer(u.recv(512))
        u.sendto(query(28), ("8.8.8.8", 53))
        reply = u.recv(512)
        seen["AAAA"] = socket.inet_ntop(socket.AF_INET6, reply[-16:])
        with socket.create_connection(("1.1.1.1", 53), timeout=5) as t:
            q = query(1)
            t.sendall(struct.pack("!H", len(q)) + q)
            seen["A over TCP"] = socket.inet_ntop(socket.AF_INET, t.recv(512)[-4:])
    except OSError as e:
        seen["dns"] = e.strerror
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"LOCAL BEACON", ("127.0.0.1", 47555))
    socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b"LOCAL BEACON 6", ("::1", 47556))
    status = open("/proc/self/status").read()
    seen["tracer"] = int(status.split("TracerPid:")[1].split()[0])
    seen["pid"], seen["ppid"] = os.getpid(), os.getppid()
    seen["parent"] = open(f"/proc/{{os.getppid()}}/cmdline", "rb").read().split(b"\\0")[0].decode()
    seen["etc_mounts"] = sorted(l.split()[4] for l in open("/proc/self/mountinfo") if l.split()[4].startswith("/etc"))
    seen["namespaces"] = {{n: os.readlink(f"/proc/self/ns/{{n}}") == os.readlink(f"/proc/1/ns/{{n}}")
                          for n in ("net", "mnt", "uts", "ipc", "pid_for_children", "cgroup")}}
    seen["packet_sockets"] = open("/proc/net/packet").read().splitlines()[1:]
    seen["interfaces"] = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:])
    print(json.dumps(seen), flush=True)
""")


def attached(sink: Sinkhole, folder: Path, name: str, online: bool) -> dict[str, object]:
    """Run the talker in a namespace attached under `name`: what it saw, and its routes."""
    wrapper = isolation.wrapper(isolation.Isolation(), folder, sink.attach(name, online))
    proc = subprocess.Popen([*wrapper.prefix, sys.executable, "-c", TALKER], stdout=subprocess.PIPE, text=True)
    assert wrapper.started is not None
    wrapper.started(proc.pid)
    routes = sinkhole.routes(proc.pid)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    return {**json.loads(out.strip().splitlines()[-1]), "routes": routes}


@pytest.fixture
def host_capture(tmp_path: Path) -> Iterator[Path]:
    """tcpdump on every interface of the host's own network namespace, for the test's addresses."""
    pcap, log = tmp_path / "host.pcap", tmp_path / "host.log"
    expr = f"host {PUBLIC4} or host {PUBLIC6} or host 8.8.8.8 or host 1.1.1.1 or udp port {HOST_CONTROL_PORT}"
    with open(log, "wb") as err:
        proc = subprocess.Popen([str(shutil.which("tcpdump")), "-i", "any", "-n", "-U", "--immediate-mode", "-w",
                                 str(pcap), expr], stderr=err)
    deadline = time.monotonic() + 20
    while "listening on" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield pcap
    finally:
        time.sleep(0.3)
        proc.terminate()
        proc.wait(timeout=10)


def host_packets(pcap: Path) -> list[str]:
    out = subprocess.run(["tcpdump", "-r", str(pcap), "-n"], capture_output=True, text=True, timeout=30).stdout
    return out.splitlines()


def test_a_public_address_reaches_the_sinkhole_and_nothing_leaves_the_machine(tmp_path: Path,
                                                                               host_capture: Path) -> None:
    sink = Sinkhole(tmp_path / "sink")
    try:
        assert sink.status.ran, sink.status.detail
        seen = attached(sink, tmp_path / "w", "online", online=True)
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"control", ("127.0.0.1", HOST_CONTROL_PORT))
        time.sleep(0.3)
        events = {e.target: e for e in sink.events("online")}
    finally:
        sink.close()
    # Answered by the sinkhole's TCP responder, which recorded what was sent.
    assert seen[PUBLIC4] == "connected" and seen[PUBLIC6] == "connected", seen
    answered = [json.loads(line) for line in (tmp_path / "sink" / "responders.jsonl").read_text().splitlines()]
    firsts = {bytes.fromhex(r["first"]) for r in answered if r["responder"] == "tcp"}
    assert {f"BEACON {PUBLIC4}".encode(), f"BEACON {PUBLIC6}".encode()} <= firsts
    # Captured, with the destination and the first bytes.
    v4, v6 = events[f"AF_INET {PUBLIC4}:443"], events[f"AF_INET6 [{PUBLIC6}]:443"]
    assert v4.sensor == "sinkhole" and v4.action == "packet" and f"BEACON {PUBLIC4}" in v4.detail
    assert f"BEACON {PUBLIC6}" in v6.detail
    # The host's own interfaces saw the control datagram and nothing of the process's traffic.
    lines = host_packets(host_capture)
    assert any(str(HOST_CONTROL_PORT) in line for line in lines), lines
    assert [line for line in lines if str(HOST_CONTROL_PORT) not in line] == []


def test_every_name_is_answered_and_loopback_is_captured_through_the_mirror(tmp_path: Path) -> None:
    with Sinkhole(tmp_path / "sink") as sink:
        seen = attached(sink, tmp_path / "w", "online", online=True)
        time.sleep(0.3)
        events = sink.events("online")
        (attachment,) = sink.attachments
    a = attachment.addresses
    assert (seen["A"], seen["AAAA"], seen["A over TCP"]) == (a["sink4"], a["sink6"], a["sink4"]), seen
    targets = {e.target: e.detail for e in events}
    assert f"DNS query for {NAME}" in targets["AF_INET 8.8.8.8:53"]
    assert f"DNS query for {NAME}" in targets["AF_INET 1.1.1.1:53"]
    assert "LOCAL BEACON" in targets["AF_INET 127.0.0.1:47555"] and "mirrored" in targets["AF_INET 127.0.0.1:47555"]
    assert "LOCAL BEACON 6" in targets["AF_INET6 [::1]:47556"]
    assert {"eth0 0.0.0.0/0", "eth0 ::/0"} <= set(seen["routes"])  # type: ignore[arg-type]


def test_an_offline_process_has_no_route_but_its_loopback_is_still_captured(tmp_path: Path) -> None:
    with Sinkhole(tmp_path / "sink") as sink:
        offline = attached(sink, tmp_path / "off", "sealed", online=False)
        attached(sink, tmp_path / "on", "reference", online=True)
        time.sleep(0.3)
        sealed_events, reference_events = sink.events("sealed"), sink.events("reference")
    assert offline["routes"] == [] and offline[PUBLIC4] == "Network is unreachable", offline
    assert offline["interfaces"] == ["eth0", "lo"]  # as an unplugged machine
    assert [e.target for e in sealed_events] == ["AF_INET 127.0.0.1:47555", "AF_INET6 [::1]:47556"]
    # Each attachment's packets are its own.
    assert f"AF_INET {PUBLIC4}:443" in {e.target for e in reference_events}


def test_from_inside_nothing_of_the_sensors_can_be_seen(tmp_path: Path) -> None:
    with Watch(tmp_path / "watch") as watch:
        wrapper = watch.wrapper("reference")
        proc = subprocess.Popen([*wrapper.prefix, sys.executable, "-c", TALKER], stdout=subprocess.PIPE, text=True)
        assert wrapper.started is not None
        wrapper.started(proc.pid)
        watch.watch("reference", proc.pid)
        out, _ = proc.communicate(timeout=120)
        seen = json.loads(out.strip().splitlines()[-1])
        time.sleep(0.3)
        events = watch.events("reference")
    assert seen["tracer"] == 0 and seen["packet_sockets"] == []
    # A job started from a shell in a container: its parent a shell that is PID 1, every namespace shared
    # with it, on /etc only the runtime's three files, the interfaces of a container.
    assert seen["ppid"] == 1 and seen["parent"] == "/bin/sh" and all(seen["namespaces"].values()), seen
    assert seen["etc_mounts"] == ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"]
    assert seen["interfaces"] == ["eth0", "lo"]
    assert f"AF_INET {PUBLIC4}:443" in {e.target for e in events}
    names = {s.name: s for s in watch.statuses()}
    assert names["sinkhole"].ran and names["socket_sampling"].ran


def test_a_missing_tool_is_reported_and_processes_run_unattached(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "tcpdump" else real(name, *a, **k))
    sinkhole.unavailable.cache_clear()
    try:
        with Watch(tmp_path / "watch") as watch:
            online = watch.wrapper("reference")  # a container in the host's network: only sampled
            assert "--pid" in online.prefix and "--net" not in online.prefix and online.started is not None
            offline = watch.wrapper("sealed", online=False)  # loopback only, and uncaptured
            assert "--net" in offline.prefix
            status = watch.statuses()[0]
    finally:
        sinkhole.unavailable.cache_clear()
    assert status.name == "sinkhole" and not status.ran and "tcpdump" in status.detail
