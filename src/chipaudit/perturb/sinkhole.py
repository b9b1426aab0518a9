"""The sinkhole: one network namespace of the tool's own that device processes are wired to, so
that whatever they send, to any address, is answered, captured and attributed, without a tracer or
a packet socket anywhere a process could see them.

Malware analysts work this way (INetSim, FakeNet-NG). A process that checks whether it is watched
(TracerPid, its parent's command line, /proc/net/packet) finds nothing: it runs in a network
namespace of its own whose eth0 has an ordinary private address and a default route, and its
parent is the tool. Everything it sends leaves through eth0 to the sinkhole end
(perturb/sinkhole_end.py), which lives in yet another namespace with no route out, no forwarding
and no NAT or bridge to a real interface: nothing leaves the machine. There every destination is
local, DNS answers every name, a TCP and a UDP responder accept anything, and one tcpdump records
every packet; the loopback traffic inside the process's namespace reaches the capture through a tc
mirror. Each attachment has its own link, so each packet is attributed to the process's name by the
interface it came in on.

Offline attachments (the sealed world) get eth0 up with no address or route, as an unplugged
machine: only their loopback traffic can reach the capture.

Cannot see: what never becomes a packet (a connect() refused before anything is sent, a socket
made and never used, a UNIX socket: the socket sampler and a syscall tracer see those); a process
that lists its loopback's qdiscs (`tc qdisc show dev lo`) can see the mirror, and one that knows
the real network's addresses can tell this one is not it. A resolver configured on loopback (such
as systemd-resolved's 127.0.0.53) is captured through the mirror but not answered.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import IO

from chipaudit.perturb import sinkhole_end
from chipaudit.perturb.conditions import unshare_net
from chipaudit.sensors.events import NETWORK, Event, SensorStatus

NAME = "sinkhole"
START_TIMEOUT_S = 30.0
ATTACH_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# The resolver a private world's resolv.conf names: every UDP and TCP port 53 off a process's own
# link is redirected to the sinkhole end's DNS responder, so any such address is answered; this one
# looks like a gateway's, as on most private networks.
NAMESERVER = "10.0.0.1"
# Payload bytes an event shows of a flow's first packet that carries data.
SHOWN_BYTES = 64
TOOLS = {"ip": "iproute2", "tc": "iproute2", "nsenter": "util-linux", "tcpdump": "tcpdump"}
# pcap(5): link types of tcpdump -i any, with and without the interface index (libpcap >= 1.10).
LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2 = 113, 276
PACKET_OUTGOING = 4  # linux/if_packet.h: sent by the sinkhole itself
ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
SYN, ACK = 0x02, 0x10
IPV6_EXTENSIONS = {0, 43, 60, 51}
IPV6_FRAGMENT = 44
# What the kernels say by themselves, not what a process sent: ICMP destination unreachable (the
# answer to a packet already recorded), IPv6 neighbour discovery and multicast listener reports.
KERNEL_ICMP = {ICMP: {3}, ICMPV6: {1, 130, 131, 132, 133, 134, 135, 136, 137, 143}}


@cache
def unavailable() -> str:
    """'' when a sinkhole can run here, else why not."""
    problem = unshare_net()
    if problem:
        return problem
    missing = [f"{tool} (Debian package {package})" for tool, package in TOOLS.items() if shutil.which(tool) is None]
    return f"not installed: {', '.join(missing)}" if missing else ""


@dataclass
class Flow:
    """One conversation seen by the capture: who began it, where to, and its first bytes."""

    link: int
    family: str
    proto: int
    source: str
    destination: str
    time: float
    first: bytes = b""
    size: int = 0
    packets: int = 0
    mirrored: bool = False

    def event(self) -> Event:
        proto = {TCP: "TCP", UDP: "UDP", ICMP: "ICMP", ICMPV6: "ICMPv6"}.get(self.proto, f"IP protocol {self.proto}")
        via = "loopback inside its namespace (mirrored)" if self.mirrored else "eth0"
        shown = repr(self.first[:SHOWN_BYTES])[2:-1]
        detail = (f"{proto} {self.source} > {self.destination} via {via}, {self.packets} packet(s), "
                  f"{self.size} payload bytes; first bytes: {shown or '(none)'}")
        name = dns_name(self.first) if _port(self.destination) == 53 else ""
        if name:
            detail = f"DNS query for {name}; {detail}"
        return Event(NAME, NETWORK, "packet", f"{self.family} {self.destination}", time=self.time,
                     family=self.family, detail=detail[:600])


@dataclass
class Attachment:
    name: str
    online: bool
    ifindex: int = 0
    addresses: dict[str, str] = field(default_factory=dict)
    netns: int = 0  # the namespace's inode: how a syscall tracer tells its processes apart


class Sinkhole:
    """The tool's side of one sinkhole: started at once, attached to, read back, closed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.attachments: list[Attachment] = []
        self.degraded = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)  # never reused: a failed attachment may have left its link
        self._flows: dict[tuple[object, ...], Flow] = {}
        self._offset = 0
        self._linktype = 0
        self._endian = "<"
        self._scale = 1e-6
        self.started_s = 0.0
        problem = unavailable()
        if problem:
            self.status = SensorStatus(NAME, False, f"not run: {problem}; device processes ran in the host's "
                                       "network, and their packets were not captured")
            return
        self.status = self._start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pcap(self) -> Path:
        return self.folder / "sinkhole.pcap"

    def _start(self) -> SensorStatus:
        t0 = time.monotonic()
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        argv = [str(shutil.which("unshare")), "--net", "--", sys.executable, "-I", sinkhole_end.__file__,
                "--dir", str(self.folder), *(a for tool in TOOLS for a in (f"--{tool}", str(shutil.which(tool))))]
        nft = shutil.which("nft")
        if nft:
            argv += ["--nft", nft]
        with open(self.folder / "end.log", "wb") as log:
            # A session of its own: the tool's Ctrl-C reaches it through close(), not as a signal
            # that would stop the capture before the last packets are written.
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                          start_new_session=True)
        ready = self._answer(START_TIMEOUT_S)
        if not ready or not ready.get("ready"):
            reason = (ready or {}).get("error") or self._last_words() or "the sinkhole end did not start"
            self.close()
            return SensorStatus(NAME, False, f"not run: {reason}")
        self.started_s = time.monotonic() - t0
        self.degraded = str(ready.get("degraded") or "")
        what = ("every TCP and UDP destination answered (DNS for every name, TCP and UDP responders)"
                if not self.degraded else f"no redirect ({self.degraded}): the capture still sees every SYN and "
                "UDP payload, but only the DNS, TCP and UDP responders' own ports answer")
        return SensorStatus(NAME, True, "each device process in a network namespace of its own, wired to a sinkhole "
                            f"namespace of the tool's ({what}; nothing routed off the machine), and every packet "
                            "captured there by tcpdump, its loopback traffic included through a tc mirror; no "
                            "tracer and no packet socket in the process's sight")

    def _answer(self, timeout: float) -> dict[str, object] | None:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return None
        out: IO[bytes] = proc.stdout
        if not select.select([out], [], [], timeout)[0]:
            return None
        line = out.readline()
        return json.loads(line) if line.strip() else None

    def _last_words(self) -> str:
        with contextlib.suppress(OSError):
            lines = (self.folder / "end.log").read_text(errors="replace").strip().splitlines()
            return lines[-1] if lines else ""
        return ""

    def attach(self, name: str, online: bool = True) -> Callable[[int], None]:
        """The configure hook (process/isolation.py `wrapper`) that wires the namespace of the
        process `pid` to this sinkhole under `name`, while the process's shim waits."""

        def configure(pid: int) -> None:
            with self._lock:
                if not self.running or self._proc is None or self._proc.stdin is None:
                    raise RuntimeError(f"the sinkhole is not running: {self.status.detail}")
                n = next(self._numbers)
                self._proc.stdin.write((json.dumps({"n": n, "pid": pid, "online": online}) + "\n").encode())
                self._proc.stdin.flush()
                answer = self._answer(ATTACH_TIMEOUT_S)
                if not answer or not answer.get("ok"):
                    raise RuntimeError(f"the sinkhole could not wire the process: "
                                       f"{(answer or {}).get('error') or self._last_words() or 'no answer'}")
                self.attachments.append(Attachment(
                    name, online, int(str(answer["ifindex"])),
                    {k: str(v) for k, v in answer.items() if k not in ("ok", "ifindex")}, _netns(pid)))

        return configure

    def netns(self, name: str) -> set[int]:
        return {a.netns for a in self.attachments if a.name == name and a.netns}

    def events(self, name: str) -> list[Event]:
        """One event per conversation that a process attached under `name` began, in time order."""
        with self._lock:
            self._read()
            links = {a.ifindex: a for a in self.attachments}
            out = []
            for flow in self._flows.values():
                attachment = links.get(flow.link) if flow.link else _by_address(self.attachments, flow)
                if attachment is not None and attachment.name == name:
                    out.append(flow.event())
        return sorted(out, key=lambda e: e.time)

    def close(self) -> None:
        """Let the end stop its capture (it writes the last packets first), then end it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, 9)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> Sinkhole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self) -> None:
        """Every packet written since the last read, folded into conversations."""
        try:
            with open(self.pcap, "rb") as f:
                if self._offset == 0:
                    header = f.read(24)
                    if len(header) < 24:
                        return
                    self._endian = "<" if header[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
                    nano = header[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
                    self._scale = 1e-9 if nano else 1e-6
                    self._linktype = struct.unpack(self._endian + "I", header[20:24])[0]
                    self._offset = 24
                f.seek(self._offset)
                while True:
                    record = f.read(16)
                    if len(record) < 16:
                        break
                    sec, frac, caplen, _ = struct.unpack(self._endian + "IIII", record)
                    data = f.read(caplen)
                    if len(data) < caplen:
                        break  # tcpdump is still writing it
                    self._offset = f.tell()
                    self._packet(sec + frac * self._scale, data)
        except OSError:
            return

    def _packet(self, t: float, data: bytes) -> None:
        if self._linktype == LINKTYPE_LINUX_SLL2 and len(data) >= 20:
            proto, link, kind = struct.unpack("!H2xI2xB", data[:11])
            ip = data[20:]
        elif self._linktype == LINKTYPE_LINUX_SLL and len(data) >= 16:
            kind, proto, link, ip = struct.unpack("!H", data[:2])[0], struct.unpack("!H", data[14:16])[0], 0, data[16:]
        else:
            return
        parsed = parse_ip(proto, ip)
        if parsed is None or link == 1:  # the sinkhole's own loopback
            return
        family, number, src, dst, sport, dport, flags, payload, icmp_type = parsed
        if number in KERNEL_ICMP and icmp_type in KERNEL_ICMP[number]:
            return
        a, b = (src, sport), (dst, dport)
        key = (link, number, *sorted([a, b]))
        flow = self._flows.get(key)
        if flow is None:
            # A conversation is the process's when it began it: the sinkhole's own packets never begin one,
            # and of a TCP conversation only the SYN does.
            if kind == PACKET_OUTGOING or (number == TCP and flags & (SYN | ACK) != SYN):
                return
            flow = self._flows[key] = Flow(link, family, number, _endpoint(family, src, sport),
                                           _endpoint(family, dst, dport), t, mirrored=_is_loopback(dst))
        flow.packets += 1
        if payload and (src, sport) == _split(flow.source):
            flow.size += len(payload)
            if not flow.first:
                flow.first = payload


def parse_ip(proto: int, ip: bytes) -> tuple[str, int, str, str, int, int, int, bytes, int] | None:
    """(family, protocol, source, destination, ports, TCP flags, payload, ICMP type) of one IP packet."""
    if proto == ETH_IPV4 and len(ip) >= 20:
        header = (ip[0] & 0x0F) * 4
        number, src, dst = ip[9], str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))
        family, rest = "AF_INET", ip[header:struct.unpack("!H", ip[2:4])[0]]
        if struct.unpack("!H", ip[6:8])[0] & 0x1FFF:
            return None  # a later fragment: its first one carried the header
    elif proto == ETH_IPV6 and len(ip) >= 40:
        number, src, dst = ip[6], str(ipaddress.IPv6Address(ip[8:24])), str(ipaddress.IPv6Address(ip[24:40]))
        family, rest = "AF_INET6", ip[40:40 + struct.unpack("!H", ip[4:6])[0]]
        while number in IPV6_EXTENSIONS | {IPV6_FRAGMENT} and len(rest) >= 8:
            size = 8 if number == IPV6_FRAGMENT else (rest[1] + 2) * 4 if number == 51 else (rest[1] + 1) * 8
            number, rest = rest[0], rest[size:]
    else:
        return None
    sport = dport = flags = icmp_type = 0
    payload = b""
    if number == TCP and len(rest) >= 20:
        sport, dport = struct.unpack("!HH", rest[:4])
        flags, payload = rest[13], rest[(rest[12] >> 4) * 4:]
    elif number == UDP and len(rest) >= 8:
        sport, dport = struct.unpack("!HH", rest[:4])
        payload = rest[8:]
    elif number in (ICMP, ICMPV6) and rest:
        icmp_type, payload = rest[0], rest[4:]
    return family, number, src, dst, sport, dport, flags, payload, icmp_type


def dns_name(message: bytes) -> str:
    """The name a DNS query asks for (over TCP its two length bytes come first); '' for none."""
    for body in (message, message[2:]):
        if len(body) < 13 or body[2] & 0x80 or struct.unpack("!H", body[4:6])[0] < 1:
            continue
        pos, labels = 12, []
        while pos < len(body) and 0 < body[pos] < 64:
            labels.append(body[pos + 1:pos + 1 + body[pos]].decode("ascii", "replace"))
            pos += 1 + body[pos]
        if pos < len(body) and body[pos] == 0 and labels:
            return ".".join(labels)
    return ""


def routes(pid: int) -> list[str]:
    """The routes off loopback in the network namespace of `pid` ("eth0 0.0.0.0/0"), from the tables
    the kernel lists there: what an offline world must not have. Link-local and multicast routes
    reach no host but the sinkhole end, and are no way out."""
    out = []
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/net/route") as f:
        for line in list(f)[1:]:
            p = line.split()
            if len(p) >= 8 and p[0] != "lo":
                host = ipaddress.IPv4Address(struct.pack("<I", int(p[1], 16)))
                out.append(f"{p[0]} {host}/{bin(int(p[7], 16)).count('1')}")
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/net/ipv6_route") as f:
        for line in f:
            p = line.split()
            if len(p) >= 10 and p[9] != "lo" and not p[0].startswith(("fe80", "ff")):
                out.append(f"{p[9]} {ipaddress.IPv6Address(bytes.fromhex(p[0]))}/{int(p[1], 16)}")
    return out


def _netns(pid: int) -> int:
    with contextlib.suppress(OSError):
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    return 0


def _port(endpoint: str) -> int:
    tail = endpoint.rpartition(":")[2]
    return int(tail) if tail.isdigit() else 0


def _endpoint(family: str, host: str, port: int) -> str:
    if not port:
        return host
    return f"{host}:{port}" if family == "AF_INET" else f"[{host}]:{port}"


def _split(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or (endpoint.count(":") > 1 and not endpoint.startswith("[")):
        return endpoint, 0
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


def _by_address(attachments: list[Attachment], flow: Flow) -> Attachment | None:
    """Without interface indices (an older libpcap) a packet is known by its source address; one on
    a process's loopback cannot be told apart, and is nobody's."""
    host = _split(flow.source)[0]
    return next((a for a in attachments if host in (a.addresses.get("proc4"), a.addresses.get("proc6"))), None)
