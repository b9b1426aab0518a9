"""A second, independent sensor: sampling the socket table and open files of a process tree (psutil).

Several times a second every process of each watched tree (descendants of the workload, and
orphans re-parented to this process, which is made a child subreaper so that double-forked
daemons land here instead of at init) is asked for its sockets and for files it holds open for
writing. It needs no privilege for one's own processes and no tracer, so it still runs where
strace cannot; it also sees sockets strace would miss if a tracer were evaded.

Sockets in another network namespace (the sealed world) are placed from that namespace's own
tables, /proc/PID/net/*, which list the sockets of the namespace PID is in.

A UNIX socket connected to another (a client's, which has no name of its own) is named by its
peer, from the kernel's socket diagnostics. Netlink and packet sockets, which psutil does not
list, are placed from the same tables (/proc/PID/net/netlink and packet): a netlink socket by its
protocol, a packet socket by its protocol and interface.

Cannot see: a socket or file opened and closed between two samples, and anything done by a
process that ends between two samples. Packet contents. Addresses of socket families no table
lists (vsock, bluetooth, ...): those are seen as sockets without an address.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from chipaudit.process import world
from chipaudit.sensors.events import FILE, NETWORK, Event, SensorStatus

SAMPLE_INTERVAL_S = 0.1
LISTENING = "listening socket"  # the action of a socket that waits for connections
O_ACCMODE, O_APPEND = 0o3, 0o2000  # asm-generic/fcntl.h
CLOCK_TICK_S = 0.01  # resolution of a process's start time in /proc (USER_HZ)
DELETED = " (deleted)"  # what readlink adds for a file unlinked while open (proc(5))
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
# sock_diag(7) and linux/unix_diag.h, linux/netlink.h.
NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY = 4, 20
NLM_F_REQUEST, NLM_F_DUMP, NLMSG_ERROR, NLMSG_DONE = 0x1, 0x300, 2, 3
UDIAG_SHOW_NAME, UDIAG_SHOW_PEER, UNIX_DIAG_NAME, UNIX_DIAG_PEER = 0x1, 0x4, 0, 2
_FAMILIES = {2: "AF_INET", 10: "AF_INET6", 1: "AF_UNIX"}
# A network namespace's socket tables (proc(5)): /proc/PID/net/<table>.
_NET_TABLES = (("unix", "AF_UNIX"), ("tcp", "AF_INET"), ("udp", "AF_INET"), ("tcp6", "AF_INET6"),
               ("udp6", "AF_INET6"), ("netlink", "AF_NETLINK"), ("packet", "AF_PACKET"))
# Netlink protocols by number (linux/netlink.h), as a netlink socket's address.
NETLINK_PROTOCOLS = {0: "route", 2: "usersock", 4: "sock_diag", 6: "xfrm", 7: "selinux", 9: "audit",
                     10: "fib_lookup", 11: "connector", 12: "netfilter", 15: "kobject_uevent", 16: "generic",
                     18: "scsitransport", 19: "ecryptfs", 20: "rdma", 21: "crypto"}
LISTEN = "LISTEN"  # psutil's status of a listening TCP socket
TCP_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column (include/net/tcp_states.h)
UNIX_ACCEPTING, UNIX_UNCONNECTED = 0x10000, "01"  # __SO_ACCEPTCON flag and SS_UNCONNECTED, /proc/net/unix


def become_subreaper() -> bool:
    """Orphans of our descendants are re-parented to this process rather than to init, so that a
    workload's detached children stay visible (and can be ended) after their parent exits."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@dataclass
class Seen:
    label: str
    pid: int
    created: float
    cmdline: list[str]


@dataclass
class TreeSampler:
    """Watches the process trees under registered roots until stopped.

    `infrastructure(proc)` tells the tool's own wrapper processes (tracer, namespace shim, packet
    capture) apart from the workload's; they are walked through but not reported.
    """

    infrastructure: Callable[[psutil.Process], bool]
    ignore_paths: set[str] = field(default_factory=set)
    interval_s: float = SAMPLE_INTERVAL_S
    roots: dict[int, str] = field(default_factory=dict)
    seen: dict[tuple[int, float], Seen] = field(default_factory=dict)
    events: list[tuple[str, Event]] = field(default_factory=list)
    samples: int = 0
    started: float = 0.0
    _keys: set[tuple[object, ...]] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _procs: dict[int, psutil.Process] = field(default_factory=dict)
    _checked: dict[tuple[int, int, str], bool] = field(default_factory=dict)
    _past_shim: set[tuple[int, float]] = field(default_factory=set)

    def watch(self, pid: int, label: str) -> None:
        if pid <= 1 or pid == os.getpid():
            # A process's word for its own pid inside a PID namespace (1), or this process: the tree
            # would be every process here, and its lingering ones would be ended.
            raise ValueError(f"not a device process's pid here: {pid}")
        with self._lock:
            self.roots[pid] = label

    def start(self) -> None:
        self.started = time.time()
        self._thread = threading.Thread(target=self._loop, name="chipaudit-socket-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()  # one last look after the workloads were asked to end

    def status(self) -> SensorStatus:
        """What it watches, the same in every run, so that a replay's coverage can agree (`samples`
        counts how often it looked)."""
        return SensorStatus("socket_sampling", True, f"psutil, every {self.interval_s * 1000:.0f} ms: sockets "
                            "and files open for writing in the workload's process tree")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def processes(self) -> list[tuple[str, int]]:
        """(label, pid) for every live process of the watched trees and every orphan."""
        with self._lock:
            roots = dict(self.roots)
        out: list[tuple[str, int]] = []
        known: set[int] = set()
        children = children_map()
        for pid, label in roots.items():
            tree = descendants(pid, children) if os.path.exists(f"/proc/{pid}") else []
            out += [(label, p) for p in tree if p not in known]
            known.update(tree)
        for orphan in children.get(os.getpid(), []):
            if orphan not in known and self._adopted(orphan):
                label = self._label_of(orphan)
                out += [(label, p) for p in descendants(orphan, children)]
        return out

    def _world_shim(self, proc: psutil.Process) -> bool:
        """A device process still in its world's shim (process/world.py), which brings loopback up
        through a socket of its own before it executes the process: the tool's step, read once the
        process is what it runs. Asked before its descriptors are read, as the shim holds that socket
        only before it executes. A process once seen past its shim never counts as one again, so that
        a device process cannot hide by taking the shim's command line."""
        key = (proc.pid, proc.create_time())
        if key in self._past_shim:
            return False
        if proc.cmdline()[1:3] == ["-I", world.__file__]:
            return True
        self._past_shim.add(key)
        return False

    def _adopted(self, pid: int) -> bool:
        """A child of this process that it did not start itself: an orphan of a watched tree. Children
        older than the sampler (another part of the program started them) are not."""
        with contextlib.suppress(psutil.Error):
            return self._process(pid).create_time() >= self.started - CLOCK_TICK_S
        return False

    def _label_of(self, pid: int) -> str:
        """An orphan belongs to the session it was first seen in; one never seen before is still
        ours (nothing else makes this process a parent), but its session is unknown."""
        for (seen_pid, _), seen in self.seen.items():
            if seen_pid == pid:
                return seen.label
        return "(detached, session unknown)"

    def _process(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        if proc is None or not proc.is_running():
            proc = self._procs[pid] = psutil.Process(pid)
        return proc

    def sample(self) -> None:
        self.samples += 1
        for label, pid in self.processes():
            try:
                proc = self._process(pid)
                if self._world_shim(proc):
                    continue
                key = (pid, proc.create_time())
                if key not in self.seen:
                    self.seen[key] = Seen(label, pid, key[1], proc.cmdline())
                found = self._descriptors(proc)
                # Asked after the descriptors were read: a wrapper forked from the tool's shim is not yet
                # the tracer or the capture until it has exec'd, and then opens their files and sockets.
                if found and not self.infrastructure(proc):
                    for event_key, event in found:
                        self._record(label, event_key, event)
            except (psutil.Error, OSError):
                continue

    def _record(self, label: str, key: tuple[object, ...], event: Event) -> None:
        if key not in self._keys:
            self._keys.add(key)
            self.events.append((label, event))

    def _descriptors(self, proc: psutil.Process) -> list[tuple[tuple[object, ...], Event]]:
        return descriptors(proc, self._checked, self.ignore_paths)

    def alive(self) -> list[Seen]:
        """Processes of the watched trees seen at any time that still run now."""
        out = []
        for (pid, created), seen in self.seen.items():
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).create_time() == created:
                    out.append(seen)
        return out


def descriptors(proc: psutil.Process, checked: dict[tuple[int, int, str], bool],
                ignore_paths: set[str] | frozenset[str] = frozenset()) -> list[tuple[tuple[object, ...], Event]]:
    """A process's sockets and files open for writing, from /proc/PID/fd, as (key, event): psutil
    decodes sockets' addresses. `checked` caches which descriptors were opened for writing."""
    found: list[tuple[tuple[object, ...], Event]] = []
    sockets: dict[int, str] = {}
    base = f"/proc/{proc.pid}/fd"
    for fd in os.listdir(base):
        with contextlib.suppress(OSError, ValueError):
            link = os.readlink(f"{base}/{fd}")
            if link.startswith("socket:["):
                sockets[int(fd)] = link
            elif link.startswith("/") and _writable_file(proc.pid, int(fd), link, checked):
                path = link.removesuffix(DELETED)
                if path not in ignore_paths:
                    found.append(((proc.pid, "file", path), Event(
                        "sockets", FILE, "open for writing", path, proc.pid, time.time(),
                        detail="deleted since it was opened" if path != link else "")))
    if sockets:
        found += _sockets(proc, sockets)
    return found


def _sockets(proc: psutil.Process, sockets: dict[int, str]) -> list[tuple[tuple[object, ...], Event]]:
    found: list[tuple[tuple[object, ...], Event]] = []
    now = time.time()
    placed: list[tuple[int, str, str, str, str]] = []  # fd, family, address, action, detail
    peers: dict[str, str] | None = None
    for c in proc.net_connections(kind="all"):
        family = _FAMILIES.get(int(c.family), str(c.family))
        address = c.raddr or c.laddr
        where = _host_port(family, *address) if isinstance(address, tuple) and address \
            else str(address or "(unnamed)")
        inode = sockets.pop(c.fd, "socket:[]")[8:-1]
        connected = bool(c.raddr)
        if family == "AF_UNIX" and not address:  # a client: named by the socket it is connected to
            peers = unix_peers() if peers is None else peers
            where, connected = peers.get(inode, where), inode in peers
        placed.append((c.fd, family, where, _action(connected, c.status == LISTEN),
                       f"{c.type!s} {c.status}".strip()))
    # Sockets our namespace's tables do not list: the process's own namespace's tables place those
    # of another namespace, and the netlink and packet sockets psutil leaves out; what is left is a
    # family no table decodes. Either way it is a socket the workload holds.
    elsewhere = namespace_sockets(proc.pid) if sockets else {}
    for fd, link in sockets.items():
        if link[8:-1] in elsewhere:
            placed.append((fd, *elsewhere[link[8:-1]], f"from /proc/{proc.pid}/net"))
        else:
            found.append(((proc.pid, "sock", fd, link), Event(
                "sockets", NETWORK, "open socket", f"socket {link[7:]} (address not readable)", proc.pid, now)))
    for fd, family, where, action, detail in placed:
        found.append(((proc.pid, "sock", fd, family, where), Event(
            "sockets", NETWORK, action, f"{family} {where}", proc.pid, now, family=family, detail=detail)))
    return found


def unix_peers() -> dict[str, str]:
    """UNIX socket inode -> the name of the socket it is connected to, for every connected socket of
    this network namespace that has no name of its own (a client's), asked of the kernel's socket
    diagnostics (sock_diag(7): UNIX_DIAG_NAME and UNIX_DIAG_PEER); abstract names are written with
    '@' as psutil writes them. /proc/net/unix names only a socket's own address, so without this a
    client of /run/docker.sock would read as an unnamed socket. Empty when the kernel will not answer."""
    names: dict[int, str] = {}
    peer_of: dict[int, int] = {}
    request = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, UDIAG_SHOW_NAME | UDIAG_SHOW_PEER, 0, 0)
    header = struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as s:
            s.settimeout(1.0)
            s.sendall(header + request)
            done = False
            while not done:
                data = s.recv(1 << 16)
                offset = 0
                while offset + 16 <= len(data):
                    length, kind = struct.unpack_from("=IH", data, offset)
                    if kind in (NLMSG_DONE, NLMSG_ERROR) or length < 16:
                        done = True
                        break
                    _unix_diag_message(data[offset + 16:offset + length], names, peer_of)
                    offset += (length + 3) & ~3
    except OSError:
        return {}
    return {str(ino): names[peer] for ino, peer in peer_of.items() if ino not in names and peer in names}


def _unix_diag_message(body: bytes, names: dict[int, str], peer_of: dict[int, int]) -> None:
    """One unix_diag_msg (linux/unix_diag.h: family, type, state, pad, inode, cookie) and its attributes."""
    inode = struct.unpack_from("=I", body, 4)[0]
    offset = 16
    while offset + 4 <= len(body):
        length, kind = struct.unpack_from("=HH", body, offset)
        if length < 4:
            break
        value = body[offset + 4:offset + length]
        if kind == UNIX_DIAG_NAME and value:
            name = value if value.startswith(b"\0") else value.split(b"\0", 1)[0]  # a path ends at its NUL
            names[inode] = name.replace(b"\0", b"@").decode(errors="replace")
        elif kind == UNIX_DIAG_PEER and len(value) >= 4:
            peer_of[inode] = struct.unpack_from("=I", value)[0]
        offset += (length + 3) & ~3


def _action(connected: bool, listening: bool) -> str:
    return "connected socket" if connected else LISTENING if listening else "open socket"


def namespace_sockets(pid: int) -> dict[str, tuple[str, str, str]]:
    """Socket inode -> (family, address, action) from the tables of PID's network namespace.

    psutil reads /proc/net/*, the tables of the caller's namespace, so it cannot place the sockets of a
    workload in another one, and it lists no netlink or packet sockets. Addresses are written as psutil
    writes them: 'host:port', '[host]:port', and UNIX paths with '@' for each NUL byte (abstract names
    start with one); a netlink socket's is its protocol, a packet socket's its protocol and interface.
    """
    out: dict[str, tuple[str, str, str]] = {}
    for table, family in _NET_TABLES:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as f:
            next(f, None)  # the header
            for line in f:
                fields = line.split()
                with contextlib.suppress(IndexError, ValueError):
                    inode, entry = _table_entry(family, fields)
                    out[inode] = (family, *entry)
    return out


def _table_entry(family: str, fields: list[str]) -> tuple[str, tuple[str, str]]:
    """(inode, (address, action)) of one line of a /proc/net table (proc(5), net/netlink/af_netlink.c,
    net/packet/af_packet.c)."""
    if family == "AF_UNIX":
        listening = int(fields[3], 16) & UNIX_ACCEPTING and fields[5] == UNIX_UNCONNECTED
        return fields[6], (" ".join(fields[7:]) or "(unnamed)", _action(False, bool(listening)))
    if family == "AF_NETLINK":
        protocol = int(fields[1])
        return fields[9], (f"{NETLINK_PROTOCOLS.get(protocol, f'protocol {protocol}')} portid {fields[2]}",
                           "open socket")
    if family == "AF_PACKET":
        return fields[8], (f"protocol 0x{int(fields[3], 16):04x} interface {fields[4]}", "open socket")
    local, remote = _inet(fields[1]), _inet(fields[2])
    connected = not remote.endswith(":0")
    return fields[9], (remote if connected else local, _action(connected, fields[3] == TCP_LISTEN))


def _inet(hex_address: str) -> str:
    """'0100007F:0035' -> '127.0.0.1:53' (on a little-endian host): the kernel prints each 32-bit word
    of the address in host byte order, and the port in hex."""
    host, port = hex_address.split(":")
    words = [bytes.fromhex(host[i:i + 8]) for i in range(0, len(host), 8)]
    raw = b"".join(w[::-1] if sys.byteorder == "little" else w for w in words)
    address = ipaddress.ip_address(raw)
    return _host_port("AF_INET" if address.version == 4 else "AF_INET6", str(address), int(port, 16))


def _host_port(family: str, host: str, port: int) -> str:
    return f"{host}:{port}" if family == "AF_INET" else f"[{host}]:{port}"


def children_map() -> dict[int, list[int]]:
    """Every process's children, from one pass over /proc/*/stat."""
    out: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{name}/stat", "rb") as f:
            ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            out.setdefault(ppid, []).append(int(name))
    return out


def descendants(pid: int, children: dict[int, list[int]]) -> list[int]:
    out, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.append(child)
                todo.append(child)
    return out


def _writable_file(pid: int, fd: int, link: str, cache: dict[tuple[int, int, str], bool]) -> bool:
    """Whether a descriptor on a regular path was opened for writing (flags in /proc/PID/fdinfo)."""
    key = (pid, fd, link)
    if key not in cache:
        flags = 0
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    flags = int(line.split()[1], 8)
        device_node = link.startswith("/dev/") and not link.startswith(("/dev/shm/", "/dev/mqueue/"))
        cache[key] = not device_node and (flags & O_ACCMODE in (1, 2) or bool(flags & O_APPEND))
    return cache[key]
