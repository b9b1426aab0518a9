"""A sensor the watched process cannot detect: eBPF programs on the kernel's own tracepoints (bpftrace).

A device stack can tell that it is traced: strace shows in `TracerPid` and in its parent's command
line, a packet capture holds a packet socket in the namespace. This sensor leaves nothing inside:
one bpftrace process, in the tool's own namespaces, attaches programs to the kernel's syscall and
socket tracepoints, and every process of the machine runs through them unchanged. Nothing in
/proc/self, no tracer, no socket, no file in the watched process's view tells it apart from an
unwatched run.

What is recorded, for processes whose network namespace is not the tool's (decided in the kernel,
so that the rest of the machine, an unrelated program talking TCP over loopback, is never logged):
- socket() and socketpair() on every address family, with type and protocol;
- connect, bind, sendto, sendmsg and sendmmsg (each of its first MMSG_MAX messages) with the
  destination decoded: IPv4 and IPv6 address and port, UNIX path or abstract name, the family of
  any other; the address is read when the call returns, after the kernel copied it, so that an
  address in a page not yet mapped is still read;
- at the socket layer, below every system call: the first send on each socket to each peer, with
  its connected peer (IPv4, IPv6, the UNIX peer's path), and each TCP connection attempt (SYN
  sent), also when the process sends through io_uring or write(2), which no syscall probe sees;
- opens for writing and changes to the file system (unlink, rename, mkdir, link, truncate, mknod),
  once per process, call, path and outcome;
- a change of network namespace (setns, unshare, clone into a new one): the new namespace is then
  watched too, and the change itself is an event (entering the tool's namespace leaves the sensor);
- the set-up of an io_uring, whose operations syscall probes do not see.

Event targets are written as strace's parser writes them ("AF_INET 127.0.0.1:9999",
"AF_INET6 [::1]:8080", "AF_UNIX /run/x", "AF_UNIX @abstract"), so that findings group the same way
whichever sensor saw the event.

Cannot see: what is sent through io_uring without a socket-layer trace (an unconnected UDP
destination: the send is seen, its address not), file operations done through io_uring, an address
a second thread rewrites between the kernel's copy and the call's return (the socket layer still
sees the connected peer), paths longer than PATH_MAX_BYTES (cut), a relative path's directory (the
path is reported as given), and what a device does without a syscall of the host (its own network
port, DMA to a peer). Records are lost when the kernel's ring buffer overflows, and a watched
process that can see the tool's processes can kill bpftrace: `status()` then no longer claims the
watching held. A watched process in the tool's PID namespace, or with CAP_SYS_ADMIN or CAP_BPF, can
still find bpftrace (its process, its loaded programs) if it looks; the sensor is invisible only to
the tells a tracer leaves in the process itself.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import shutil
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from chipaudit.sensors.ebpf_program import (
    AF_INET,
    AF_INET6,
    AF_UNIX,
    AT_FDCWD,
    FIELDS,
    PATH_MAX_BYTES,
    TRACEFS,
    event_list,
    program,
    tracepoints,
)
from chipaudit.sensors.events import FILE, NETWORK, PROCESS, Event, SensorStatus
from chipaudit.sensors.strace import IN_PROGRESS, is_device_node

NAME = "ebpf"
# bpftrace compiles and attaches one program per probe (about 70): 13 to 17 s, 4 s of CPU, on the
# 2-core CI machine at a load of 9; detaching takes 4 to 5 s. With the short event list
# (_short_event_list) it attached in 3.9 s at a load of 2, against 6.5 to 7.8 s without.
START_TIMEOUT_S = 60.0
CAP_SYS_ADMIN = 21  # linux/capability.h
SYNC_TIMEOUT_S = 5.0
ABORTED = "the watch closed before its probes were attached, with no process run under it"
MAP_KEYS_MAX = 16384  # per-thread call state, the first send per socket, the first write per path
# The kernel's ring buffer, per CPU: the more, the longer a burst of calls can outrun bpftrace's
# reading before records are lost (and counted); bpftrace's default is 64 pages. Bounded in all.
RING_PAGES_MAX, RING_BYTES_TOTAL = 1024, 64 << 20
# bpftrace's output reaches the tool through a pipe, never a file a watched process (root, in the
# same file system) could edit; a larger pipe lets bpftrace run ahead of a busy reader.
PIPE_BYTES = 1 << 20
F_SETPIPE_SZ = 1031  # linux/fcntl.h
# The marker: a getpgid() call of the tool with an argument no pid can have (pid_max is at most
# 2^22, proc(5)), so that events() knows everything recorded before it has been read.
SYNC_BASE = 1 << 30
SOCK_TYPE_MASK, SOCK_FLAGS = 0xF, ((0o4000, "SOCK_NONBLOCK"), (0o2000000, "SOCK_CLOEXEC"))  # linux/net.h


@dataclass(frozen=True)
class Record:
    """One line the tracer wrote: its kind letter, when (CLOCK_MONOTONIC ns), the network namespace
    it belongs to, which process, which call with its return value, and the call's own fields."""

    kind: str
    nsecs: int
    netns: int
    pid: int
    comm: str
    call: str
    ret: int
    fields: tuple[str, ...]


def _unhex(text: str) -> bytes:
    """Bytes from bpftrace's %rx form (\\x2f\\x74...)."""
    try:
        return bytes.fromhex(text.replace("\\x", ""))
    except ValueError:
        return b""


def _record(data: str) -> Record | None:
    """The record of one line (its layout: ebpf_program.FIELDS), None for anything else."""
    parts = data.removesuffix("\n").split("|", 7)
    if len(parts) < 7 or parts[0] not in FIELDS:
        return None
    try:
        comm = _unhex(parts[4]).split(b"\0", 1)[0].decode("utf-8", "replace")
        fields = tuple(parts[7].split("|", 2)) if len(parts) > 7 else ()
        record = Record(parts[0], int(parts[1]), int(parts[2]), int(parts[3]), comm, parts[5], int(parts[6]), fields)
    except ValueError:
        return None
    return record if len(fields) >= FIELDS[record.kind] else None


def family_name(number: int) -> str:
    """strace's name for an address family (linux/socket.h), by number where Python lacks it."""
    try:
        return socket.AddressFamily(number).name
    except ValueError:
        return f"AF_{number}"


def sockaddr(raw: bytes) -> tuple[str, str]:
    """(family, 'host:port' or path) of a struct sockaddr, as strace's parser writes them."""
    if len(raw) < 2:
        return "", ""
    number = struct.unpack_from("=H", raw)[0]
    family = family_name(number)
    if number == AF_INET:
        if len(raw) < 8:
            return family, "?"
        return family, f"{socket.inet_ntop(socket.AF_INET, raw[4:8])}:{struct.unpack_from('!H', raw, 2)[0]}"
    if number == AF_INET6:
        if len(raw) < 24:
            return family, "?"
        return family, f"[{socket.inet_ntop(socket.AF_INET6, raw[8:24])}]:{struct.unpack_from('!H', raw, 2)[0]}"
    if number == AF_UNIX:
        path = raw[2:]
        if not path:
            return family, "(unnamed)"
        if path[0] == 0:  # abstract: every byte of the address length is the name
            return family, "@" + path[1:].decode("utf-8", "replace")
        return family, path.split(b"\0", 1)[0].decode("utf-8", "replace")
    return family, ""


def _socket_type(number: int) -> str:
    base = number & SOCK_TYPE_MASK
    try:
        name = socket.SocketKind(base).name
    except ValueError:
        name = str(base)
    return "|".join([name, *(flag for bit, flag in SOCK_FLAGS if number & bit)])


def _failed(ret: int) -> str:
    if ret >= 0:
        return ""
    name = errno.errorcode.get(-ret, str(-ret))
    return "" if name in IN_PROGRESS else name


def _event(r: Record, clock: float) -> Event | None:
    """The event a record stands for (None for a record that says nothing, a send with no peer
    known is still an event of its family)."""
    t = clock + r.nsecs / 1e9
    failed = _failed(r.ret)
    head = f"{r.pid} {r.comm}: {r.call}"
    if r.kind == "E" and r.call in ("socket", "socketpair"):
        family, kind, proto = (int(x) for x in r.fields[:3])
        target = family_name(family)
        detail = f"{head}({target}, {_socket_type(kind)}, {proto}) = {r.ret}"
        return Event(NAME, NETWORK, r.call, target, r.pid, t, failed, family=target, detail=detail)
    if r.kind == "E":
        family, dest = sockaddr(_unhex(r.fields[1]))
        target = f"{family} {dest}".strip()
        return Event(NAME, NETWORK, r.call, target, r.pid, t, failed, family=family,
                     detail=f"{head}({r.fields[0]}, {target or '?'}) = {r.ret}")
    if r.kind == "S":
        number, peer = int(r.fields[0]), r.fields[2] if len(r.fields) > 2 else ""
        if number == AF_UNIX:
            dest = sockaddr(_unhex(peer))[1] if peer else ""
        elif number in (AF_INET, AF_INET6):
            dest = "" if peer.startswith(("0.0.0.0:", "[::]:")) else peer  # not connected: no peer
        else:
            dest = ""
        family = family_name(number)
        target = f"{family} {dest}".strip()
        return Event(NAME, NETWORK, r.call, target, r.pid, t, failed, family=family,
                     detail=f"{head} on a {target} socket, at the socket layer = {r.ret}")
    if r.kind == "T":
        number, host, port = int(r.fields[0]), r.fields[1], r.fields[2]
        family = family_name(number)
        target = f"{family} [{host}]:{port}" if number == AF_INET6 else f"{family} {host}:{port}"
        return Event(NAME, NETWORK, r.call, target, r.pid, t, family=family, detail=f"{head}: TCP SYN sent to {target}")
    if r.kind == "F":
        path = r.fields[2] if len(r.fields) > 2 else ""
        if not path or is_device_node(path):
            return None
        cut = " (cut)" if len(path.encode()) >= PATH_MAX_BYTES - 1 else ""
        dfd = int(r.fields[1])
        where = "" if path.startswith("/") or dfd == AT_FDCWD else f" relative to descriptor {dfd}"
        flags = int(r.fields[0])
        how = f", flags={flags:#o}" if flags else ""
        return Event(NAME, FILE, r.call, path, r.pid, t, failed, detail=f"{head}({path!r}{cut}{where}{how}) = {r.ret}")
    if r.kind == "N":
        target = f"net:[{r.fields[0]}]"
        return Event(NAME, PROCESS, r.call, target, r.pid, t, failed,
                     detail=f"{head} moved from net:[{r.netns}] to {target}")
    return Event(NAME, PROCESS, r.call, "io_uring", r.pid, t, failed,
                 detail=f"{head} = {r.ret} (its operations bypass system-call probes)")


class SyscallTracer:
    """One bpftrace process for every watched process of an audit (attaching takes seconds, so it is
    started once): `start`, then `events(netns)` for the namespaces a caller made, `status()` for
    whether the watching held, then `stop`."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.lost = 0  # records the kernel's ring buffer dropped: some activity may be missing
        self.toolns = 0
        self._status = SensorStatus(NAME, False, "not run: not started")
        self._records: list[Record] = []
        self._ready = False
        self._ended: int | None = None  # bpftrace's exit status, once its output has ended
        self._stopping = False
        self._syncs: set[int] = set()
        self._sync_seq = 0
        self._sync_base = SYNC_BASE
        self._changed = threading.Condition()
        self._aborted = False
        # Epoch seconds at CLOCK_MONOTONIC zero: bpftrace's nsecs is CLOCK_MONOTONIC, as is time.monotonic.
        self._clock = time.time() - time.monotonic()

    def start(self, log: Path) -> SensorStatus:
        """Start bpftrace and wait until its probes are attached; `log` receives its output as
        evidence (and `log`.bt the program, `log`.err its complaints)."""
        exe = shutil.which("bpftrace")
        if exe is None:
            self._status = SensorStatus(NAME, False, "not run: bpftrace is not installed (Debian package bpftrace)")
            return self._status
        self.toolns = os.stat("/proc/self/ns/net").st_ino
        self._sync_base = SYNC_BASE + int.from_bytes(os.urandom(2), "little") * 16
        source, errors = log.with_name(log.name + ".bt"), log.with_name(log.name + ".err")
        available = tracepoints()
        source.write_text(program(self.toolns, os.getpid(), self._sync_base, available))
        argv = _short_event_list([exe, "-f", "json", "-B", "line", "--no-warnings", str(source)],
                                 event_list(available), log.with_name(log.name + ".events"))
        env = {**os.environ, "BPFTRACE_STRLEN": str(PATH_MAX_BYTES), "BPFTRACE_MAP_KEYS_MAX": str(MAP_KEYS_MAX),
               "BPFTRACE_PERF_RB_PAGES": str(_ring_pages())}
        with open(errors, "wb") as err, self._changed:
            if self._aborted:
                self._status = SensorStatus(NAME, False, f"not run: {ABORTED}")
                return self._status
            try:
                # A session of its own: a Ctrl-C meant for the tool does not cut the tracer short.
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                             env=env, start_new_session=True)
            except OSError as e:
                self._status = SensorStatus(NAME, False, f"not run: bpftrace cannot be started: {e}")
                return self._status
        assert self.proc.stdout is not None
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.proc.stdout, F_SETPIPE_SZ, PIPE_BYTES)
        reader = threading.Thread(target=self._pump, args=(self.proc.stdout, log), daemon=True,
                                        name="ebpf-reader")
        reader.start()
        with self._changed:
            self._changed.wait_for(lambda: self._ready or self._ended is not None, START_TIMEOUT_S)
        if self._ready:
            self._status = SensorStatus(NAME, True, (
                "bpftrace on the kernel's syscall and socket tracepoints, invisible from inside: socket, connect, "
                "bind and sends on every address family with their addresses, sends and TCP connections at the "
                "socket layer, opens for writing and file-system changes, changes of network namespace, in every "
                "process of the watched network namespaces"))
            return self._status
        if self._aborted:
            reason = ABORTED
        elif self._ended is not None:
            reason = _reason(errors, self.proc.wait())
        else:
            reason = f"bpftrace did not attach its probes within {START_TIMEOUT_S:.0f} s"
        self.stop()
        self._status = SensorStatus(NAME, False, f"not run: {reason}")
        return self._status

    def status(self) -> SensorStatus:
        """Whether the watching held until now: not when bpftrace ended before `stop` (a watched
        process may have killed it) or when records were lost, since what followed or what was lost
        went unseen."""
        with self._changed:
            if not self._status.ran:
                return self._status
            if self._ended is not None and not self._stopping:
                return SensorStatus(NAME, False, f"stopped early: bpftrace ended (exit status {self._ended}) "
                                    "before the tool stopped it; later activity was not watched")
            if self.lost:
                return SensorStatus(NAME, False, f"incomplete: {self.lost} records lost when the kernel's buffer "
                                    "overflowed; what they held was not seen")
            return self._status

    def records(self) -> list[Record]:
        """Everything recorded so far, in every namespace, once bpftrace has passed it all on."""
        self._sync()
        with self._changed:
            return list(self._records)

    def events(self, netns: set[int], since: float = 0.0, follow: bool = True) -> list[Event]:
        """What processes in `netns` (and, with `follow`, in namespaces they moved into) did, from
        `since` (epoch seconds) on. The tool's own steps inside a namespace it made (a shim before it
        executes the device process) are that namespace's too: `since` leaves them out. Without
        `follow` a move is still an event of the namespace it left: for a caller whose watched
        process itself makes namespaces for others (a behaviour harness in an audit worker)."""
        records = self.records()
        watched = set(netns) - {self.toolns}
        moves = [r for r in records if r.kind == "N"]
        grown = follow
        while grown:
            grown = False
            for r in moves:
                new = int(r.fields[0])
                if r.netns in watched and new not in watched and new != self.toolns:
                    watched.add(new)
                    grown = True
        seen = [(r, e) for r in records if r.netns in watched
                for e in [_event(r, self._clock)] if e is not None and e.time >= since]
        # Socket-layer events that only repeat what a system call of the same process showed (a send
        # to a connected peer, a TCP connect) are dropped; those that add something stay: the peer of
        # a send made by write(2) or io_uring, a socket no system call made.
        said = {(e.pid, e.target) for r, e in seen if r.kind == "E"}
        return [e for r, e in seen if r.kind not in "ST" or (e.pid, e.target) not in said]

    def abort(self) -> None:
        """End an attach in progress (its watcher is closing before any process ran under it), so
        that `start` returns at once instead of after the seconds bpftrace takes to compile."""
        with self._changed:
            self._aborted = True
            proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self._sync()  # everything recorded so far is passed on before the tracer goes
        with self._changed:
            self._stopping = True
        if proc.poll() is None:
            # Killed, not asked to exit: the kernel detaches the probes when their last descriptor
            # closes, where bpftrace's orderly exit detaches them one by one, for seconds. Even so the
            # kernel takes seconds (about 5 s here) to tear the probes down; the sync above has passed
            # on every record, so nothing waits for that: a thread reaps the process when it is gone.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            threading.Thread(target=proc.wait, daemon=True, name="ebpf-reaper").start()

    def _sync(self) -> None:
        """Wait (boundedly) until bpftrace has passed on everything recorded so far: a marker call
        made now is written after it, twice, so that a CPU's buffer read in the same pass as the
        first marker has been passed on by the second."""
        for _ in range(2):
            with self._changed:
                if self.proc is None or self._ended is not None:
                    return
                self._sync_seq += 1
                seq = self._sync_seq
            with contextlib.suppress(OSError):
                os.getpgid(self._sync_base + seq)
            with self._changed:
                self._changed.wait_for(lambda s=seq: s in self._syncs or self._ended is not None, SYNC_TIMEOUT_S)

    def _pump(self, stream: IO[bytes], log: Path) -> None:
        """The reader thread: every line bpftrace writes, into the evidence log and the records."""
        with open(log, "wb") as out:
            for line in stream:
                out.write(line)
                self._take(line)
        code = self.proc.wait() if self.proc is not None else -1
        with self._changed:
            self._ended = code
            self._changed.notify_all()

    def _take(self, line: bytes) -> None:
        try:
            item = json.loads(line.decode("utf-8", "surrogateescape"))
        except ValueError:
            return
        kind, value = item.get("type"), item.get("data")
        with self._changed:
            if kind == "lost_events" and isinstance(value, dict):
                self.lost += int(value.get("events", 0))
            elif kind == "printf" and isinstance(value, str):
                if value.startswith("R|"):
                    self._ready = True
                elif value.startswith("Y|"):
                    with contextlib.suppress(ValueError):
                        self._syncs.add(int(value[2:]))
                else:
                    record = _record(value)
                    if record is not None:
                        self._records.append(record)
                    return  # no one waits for an ordinary record
            self._changed.notify_all()


def _short_event_list(argv: list[str], events: str | None, path: Path) -> list[str]:
    """bpftrace in a mount namespace of its own, where tracefs's available_events is `events` (written
    to `path`, ebpf_program.event_list says why), which attaches in about two thirds of the time.
    Where that cannot be done (no unshare, not root, no tracefs) or a bind fails, bpftrace reads the
    kernel's list. Only the tool's tracer sees the namespace: a device process, in a PID namespace of
    its own, cannot see the tracer."""
    unshare = shutil.which("unshare")
    lists = [root / "available_events" for root in TRACEFS if (root / "available_events").is_file()]
    if events is None or unshare is None or not _may_mount() or not lists:
        return argv
    path.write_text(events)
    binds = "".join(f'mount --bind "$0" {shlex.quote(str(f))} 2>/dev/null; ' for f in lists)
    # unshare and sh each execute the next: bpftrace keeps the pid that the tool starts and kills.
    return [unshare, "--mount", "--propagation", "private", "--", "/bin/sh", "-c", binds + 'exec "$@"', str(path),
            *argv]


def _may_mount() -> bool:
    """Whether this process holds CAP_SYS_ADMIN (capability.h: 21), which a mount namespace needs: root
    in a confined container may not."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return bool(int(next(x for x in status if x.startswith("CapEff:")).split()[1], 16) >> CAP_SYS_ADMIN & 1)
    return False


def _ring_pages() -> int:
    """Pages per CPU: a power of two (bpftrace requires one), within the total."""
    fit = RING_BYTES_TOTAL // (os.sysconf("SC_PAGE_SIZE") * (os.cpu_count() or 1))
    return max(1, min(RING_PAGES_MAX, 1 << max(0, fit.bit_length() - 1)))


def _reason(errors: Path, code: int | None) -> str:
    """bpftrace's own words for why it stopped; the warning about RLIMIT_MEMLOCK, printed as an
    ERROR where the limit cannot be raised but harmless with memory-cgroup accounting, is not one."""
    try:
        lines = [x.strip() for x in errors.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        lines = []
    lines = [x for x in lines if "RLIMIT_MEMLOCK" not in x]
    chosen = [x for x in lines if x.startswith("ERROR")] or lines
    return f"bpftrace: {chosen[0]}" if chosen else f"bpftrace exited with status {code}"
