"""Packet capture (tcpdump) on the interfaces of a workload's own network namespace.

Only a sealed run has a namespace of its own; there every packet on its interfaces is the
workload's, so the capture needs no filter and cannot mistake another program's traffic for the
device's. The capture is started by the namespace shim (perturb/netns.py) before the workload and
read back here with tcpdump itself. It needs CAP_NET_RAW (root); without it tcpdump says so, and
the capture is reported as not run with tcpdump's own words.

Cannot see: traffic outside the namespace (in a sealed run there is none to reach), and what a
process never put on the wire (a connect() refused before any packet was sent: strace sees that).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from chipaudit.sensors.events import NETWORK, Event, SensorStatus

READ_TIMEOUT_S = 30.0
READY_MARK = "listening on"
# 1795664580.338537 lo    In  IP 127.0.0.1.46934 > 127.0.0.1.9999: UDP, length 1  (-i any adds the
# interface and the direction)
_PACKET = re.compile(r"^(\d+\.\d+)\s+(?:\S+\s+(?:In|Out|B|M|P)\s+)?(IP6?)\s+(\S+)\s+>\s+(\S+?):\s*(.*)$")


def tcpdump() -> str | None:
    return shutil.which("tcpdump")


def unavailable() -> SensorStatus | None:
    """None when a capture can be attempted; else the status saying why not."""
    if tcpdump() is None:
        return SensorStatus("packet_capture", False, "not run: tcpdump is not installed (Debian package tcpdump)")
    return None


def status_from(err_path: Path) -> SensorStatus:
    """What tcpdump reported when the shim started it: ready, or the reason it could not capture."""
    try:
        text = err_path.read_text(errors="replace").strip()
    except OSError:
        text = ""
    if READY_MARK in text:
        return SensorStatus("packet_capture", True, "tcpdump on every interface of the sealed namespace "
                            "(each packet there is the workload's)")
    reason = text.splitlines()[0] if text else "tcpdump did not start"
    return SensorStatus("packet_capture", False, f"not run: {reason}")


def _endpoint(token: str, with_port: bool) -> str:
    if not with_port:
        return token
    host, _, port = token.rpartition(".")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse(pcap: Path) -> list[Event]:
    exe = tcpdump()
    if exe is None or not pcap.exists() or pcap.stat().st_size == 0:
        return []
    try:
        out = subprocess.run([exe, "-r", str(pcap), "-n", "-tt", "-q"], capture_output=True, text=True,
                             timeout=READ_TIMEOUT_S).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    events = []
    for line in out.splitlines():
        m = _PACKET.match(line)
        if not m:
            continue
        t, ip, src, dst, what = m.groups()
        if what.startswith("ICMP") and "unreachable" in what:
            continue  # the kernel's answer to a packet already recorded, not the workload's own
        with_port = what.startswith(("UDP", "tcp", "TCP", "Flags")) or " UDP" in what[:8]
        family = "AF_INET6" if ip == "IP6" else "AF_INET"
        events.append(Event("capture", NETWORK, "packet", f"{family} {_endpoint(dst, with_port)}",
                            time=float(t), family=family, detail=f"{src} > {dst}: {what}"[:300]))
    return events
