"""The sinkhole's own end: runs inside a network namespace made for it alone (`unshare --net`),
never the host's, and answers whatever a device process sends, so that a beacon reveals itself.

- Every address is local here (a `local` default route in the main table, both families), and
  there is no other route, no forwarding, no NAT and no bridge to a real interface: nothing that
  arrives can leave the machine.
- nft redirects every TCP and UDP destination to the responders: DNS on UDP and TCP 53, answering
  every name with the address of the sinkhole end it came through (A and AAAA); a TCP responder that
  accepts any address and port and reads the first bytes; a UDP responder. Without nft the responders
  still listen on their own ports and the capture still sees every SYN and every UDP payload.
- tcpdump on every interface (-i any) writes one pcap; the tool (perturb/sinkhole.py) reads it and
  attributes each packet to an attachment by the interface it came in on.
- Attachments: the tool asks on stdin (one JSON object a line) and this end wires the process's
  namespace from here: a veth pair whose sinkhole end is named per attachment, and in the process's
  namespace an eth0 with an ordinary private address and default routes (online), or up with no
  address or route (offline), and a tc mirror of its loopback's egress to eth0, so that loopback
  traffic inside it is captured here too. The helpers run as children of this process, out of
  sight of the tool's samplers.

Run by path with `python -I` and the standard library only. Answers on stdout, one JSON object a
line: first {"ready": ...}, then one per request. Ends when stdin ends.

usage: python -I sinkhole_end.py --dir DIR --ip EXE --tc EXE --nsenter EXE --tcpdump EXE [--nft EXE]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import pwd
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

TCP_PORT, UDP_PORT, DNS_PORT = 10000, 10001, 53
FIRST_BYTES = 512  # what a responder reads and logs of each connection or datagram
READ_S = 2.0  # how long the TCP responder waits for a client's first bytes
TTL_S = 60
CAPTURE_READY_S = 10.0
CAPTURE_DRAIN_S = 0.2  # for tcpdump to write the last packets before it is stopped
CAPTURE_STOP_S = 5.0
SNAPLEN = 1024  # headers and the first bytes of each packet are the evidence; the rest is not kept
HELPER_TIMEOUT_S = 20.0
READY_MARK = "listening on"
# Each attachment n gets 10.(n/256).(n%256).0/24 and fd42:5c1b:0:n::/64, the sinkhole end .1/::1 and
# the process .2/::2: addresses of an ordinary private network.
V6_PREFIX = "fd42:5c1b:0"
RULESET = f"""
table inet sinkhole {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        udp dport 53 redirect to :{DNS_PORT}
        tcp dport 53 redirect to :{DNS_PORT}
        meta l4proto tcp redirect to :{TCP_PORT}
        meta l4proto udp redirect to :{UDP_PORT}
    }}
}}
"""
SYSCTLS = {"net/ipv4/ip_forward": "0", "net/ipv6/conf/all/forwarding": "0", "net/ipv4/conf/all/rp_filter": "0",
           "net/ipv4/conf/default/rp_filter": "0"}


class EndError(Exception):
    pass


def addresses(n: int) -> dict[str, str]:
    v4 = f"10.{n // 256 % 256}.{n % 256}"
    v6 = f"{V6_PREFIX}:{n % 65536:x}"
    return {"sink4": f"{v4}.1", "proc4": f"{v4}.2", "sink6": f"{v6}::1", "proc6": f"{v6}::2"}


def gateway(peer: str) -> tuple[str, str]:
    """The sinkhole end's addresses on the attachment `peer` belongs to (the scheme of `addresses`)."""
    address = ipaddress.ip_address(peer.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        octets = str(address).split(".")
        n = int(octets[1]) * 256 + int(octets[2])
    else:
        n = int(str(address.exploded).split(":")[3], 16)
    a = addresses(n)
    return a["sink4"], a["sink6"]


class Log:
    """The responders' record: one JSON object a line."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 (open for the process's life)
        self._lock = threading.Lock()

    def write(self, **record: Any) -> None:
        with self._lock:
            self._file.write(json.dumps({"time": time.time(), **record}) + "\n")


def run(argv: list[str], stdin: str = "", ns_pid: int | None = None, nsenter: str = "") -> str:
    if ns_pid is not None:
        argv = [nsenter, f"--net=/proc/{ns_pid}/ns/net", "--", *argv]
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=HELPER_TIMEOUT_S)
    if done.returncode != 0:
        raise EndError(f"{' '.join(argv[:4])}: {(done.stderr.strip() or done.stdout.strip())[-300:]}")
    return done.stdout


def prepare(ip: str, nft: str | None) -> str:
    """Loopback up, every address local, no forwarding, the redirect rules. Returns '' or why the
    redirect is missing (the sinkhole then degrades)."""
    run([ip, "-batch", "-"], "link set lo up\nroute add local 0.0.0.0/0 dev lo table main\n"
        "route add local ::/0 dev lo table main\n")
    for key, value in SYSCTLS.items():
        with contextlib.suppress(OSError), open(f"/proc/sys/{key}", "w") as f:
            f.write(value)
    if nft is None:
        return "nft is not installed (Debian package nftables)"
    try:
        run([nft, "-f", "-"], RULESET)
    except (EndError, OSError, subprocess.TimeoutExpired) as e:
        return f"nft failed: {e}"
    return ""


def attach(request: dict[str, Any], tools: argparse.Namespace) -> dict[str, Any]:
    n, pid, online = int(request["n"]), int(request["pid"]), bool(request["online"])
    link, a = f"sh{n}", addresses(n)
    shown = run([tools.ip, "-oneline", "-batch", "-"],
                f"link add {link} type veth peer name eth0 netns {pid}\n"
                f"addr add {a['sink4']}/24 dev {link}\naddr add {a['sink6']}/64 dev {link} nodad\n"
                f"link set {link} up\nlink show dev {link}\n")
    inside = "link set eth0 up\n"
    if online:
        inside = (f"addr add {a['proc4']}/24 dev eth0\naddr add {a['proc6']}/64 dev eth0 nodad\n{inside}"
                  f"route add default via {a['sink4']}\nroute add default via {a['sink6']}\n")
    run([tools.ip, "-batch", "-"], inside, pid, tools.nsenter)
    run([tools.tc, "-batch", "-"], "qdisc add dev lo clsact\n"
        "filter add dev lo egress protocol all u32 match u32 0 0 action mirred egress mirror dev eth0\n",
        pid, tools.nsenter)
    # "7: sh3@if2: <...>": the interface index the capture records for each packet on this link.
    return {"ok": True, "ifindex": int(shown.strip().splitlines()[-1].split(":", 1)[0]), **a}


def dns_answer(query: bytes, peer: str) -> tuple[bytes, str] | None:
    """An answer to every A and AAAA question (the sinkhole end's address), an empty one to any
    other type, and the name asked; None for what is no query."""
    if len(query) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qdcount < 1:
        return None
    pos, labels = 12, []
    while pos < len(query) and query[pos]:
        size = query[pos]
        if size & 0xC0:
            return None
        labels.append(query[pos + 1:pos + 1 + size].decode("ascii", "replace"))
        pos += 1 + size
    pos += 1
    if pos + 4 > len(query):
        return None
    qtype = struct.unpack("!H", query[pos:pos + 2])[0]
    question = query[12:pos + 4]
    sink4, sink6 = gateway(peer)
    rdata = {1: socket.inet_pton(socket.AF_INET, sink4), 28: socket.inet_pton(socket.AF_INET6, sink6)}.get(qtype)
    answer = b"" if rdata is None else b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, TTL_S, len(rdata)) + rdata
    header = struct.pack("!HHHHHH", qid, 0x8180 | (flags & 0x0100), 1, 1 if answer else 0, 0, 0)
    return header + question + answer, ".".join(labels)


def _dual_stack(kind: int, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    if kind == socket.SOCK_STREAM:
        s.listen(128)
    return s


def _peer(address: tuple[Any, ...]) -> str:
    return str(address[0]).removeprefix("::ffff:")


def serve_udp(sock: socket.socket, log: Log, dns: bool) -> None:
    while True:
        data, address = sock.recvfrom(65535)
        peer = _peer(address)
        answer = dns_answer(data, peer) if dns else None
        log.write(responder="dns" if dns else "udp", peer=f"{peer}:{address[1]}", name=answer[1] if answer else "",
                  first=data[:FIRST_BYTES].hex(), size=len(data))
        if answer is not None:
            with contextlib.suppress(OSError):
                sock.sendto(answer[0], address)


def serve_tcp_client(conn: socket.socket, address: tuple[Any, ...], log: Log, dns: bool) -> None:
    with conn:
        conn.settimeout(READ_S)
        data = b""
        with contextlib.suppress(OSError):
            while len(data) < FIRST_BYTES:
                chunk = conn.recv(FIRST_BYTES - len(data))
                if not chunk:
                    break
                data += chunk
                if dns and len(data) >= 2 and len(data) >= 2 + struct.unpack("!H", data[:2])[0]:
                    break
        peer = _peer(address)
        answer = dns_answer(data[2:], peer) if dns else None
        log.write(responder="dns-tcp" if dns else "tcp", peer=f"{peer}:{address[1]}", local=_peer(conn.getsockname()),
                  name=answer[1] if answer else "", first=data.hex(), size=len(data))
        if answer is not None:
            with contextlib.suppress(OSError):
                conn.sendall(struct.pack("!H", len(answer[0])) + answer[0])


def serve_tcp(sock: socket.socket, log: Log, dns: bool) -> None:
    while True:
        conn, address = sock.accept()
        threading.Thread(target=serve_tcp_client, args=(conn, address, log, dns), daemon=True).start()


def start_responders(log: Log) -> None:
    for target, kind, port, dns in ((serve_udp, socket.SOCK_DGRAM, DNS_PORT, True),
                                    (serve_tcp, socket.SOCK_STREAM, DNS_PORT, True),
                                    (serve_udp, socket.SOCK_DGRAM, UDP_PORT, False),
                                    (serve_tcp, socket.SOCK_STREAM, TCP_PORT, False)):
        threading.Thread(target=target, args=(_dual_stack(kind, port), log, dns), daemon=True).start()


def start_capture(tcpdump: str, pcap: Path, log: Path) -> subprocess.Popen[bytes]:
    # Debian's and Ubuntu's tcpdump drops root for the user 'tcpdump', which a host without the package
    # (a tcpdump brought along, a minimal image) lacks; it then refuses to start. Writing packets to a
    # file (-w) decodes none of them, so keeping root there exposes nothing a packet could exploit.
    user = ["-Z", "root"] if not _user_exists("tcpdump") else []
    with open(log, "wb") as err:
        # -U --immediate-mode: each packet reaches the file as it comes, not in blocks a stop would lose.
        proc = subprocess.Popen([tcpdump, "-i", "any", "-n", "-s", str(SNAPLEN), "-U", "--immediate-mode", *user,
                                 "-w", str(pcap)], stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + CAPTURE_READY_S
    while time.monotonic() < deadline and proc.poll() is None:
        if READY_MARK in log.read_text(errors="replace"):
            return proc
        time.sleep(0.02)
    with contextlib.suppress(OSError):
        proc.kill()
    proc.wait()
    text = log.read_text(errors="replace").strip()
    raise EndError(f"tcpdump did not start: {' '.join(text.splitlines())[-300:] or 'no output'}")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def stop_capture(proc: subprocess.Popen[bytes]) -> None:
    time.sleep(CAPTURE_DRAIN_S)
    proc.terminate()
    try:
        proc.wait(timeout=CAPTURE_STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sinkhole_end.py")
    for option in ("--dir", "--ip", "--tc", "--nsenter", "--tcpdump"):
        parser.add_argument(option, required=True)
    parser.add_argument("--nft")
    tools = parser.parse_args(argv)
    folder = Path(tools.dir)
    capture = None
    try:
        degraded = prepare(tools.ip, tools.nft)
        start_responders(Log(folder / "responders.jsonl"))
        capture = start_capture(tools.tcpdump, folder / "sinkhole.pcap", folder / "tcpdump.log")
    except (EndError, OSError, subprocess.TimeoutExpired) as e:
        say({"ready": False, "error": str(e)})
        return 1
    say({"ready": True, "degraded": degraded})
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        for line in sys.stdin:
            try:
                say(attach(json.loads(line), tools))
            except (EndError, OSError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
                say({"ok": False, "error": str(e)})
    finally:
        stop_capture(capture)
    return 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main(sys.argv[1:]))
