"""The baseline sensor: `strace -f` around a workload, and a parser for what it wrote.

strace follows every thread and child, detached ones included (a process that double-forks and
calls setsid() is still traced), and records each network syscall on any address family, each
open for writing and each change to the file system, and each program started. With
--seccomp-bpf (strace >= 5.3) only those syscalls stop the tracee, so the workload runs at full
speed; without it strace still works, more slowly.

The workload's own channel to the tool is a pipe it inherited, which needs none of these syscalls,
so nothing is excluded here: every recorded event is handed on.

Cannot see: what a device does without a syscall of the host (its own network port, a BMC, DMA to
a peer), and syscalls made by processes outside the traced tree (a daemon the workload talks to
through an already-open channel it did not open).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from chipaudit.sensors.events import FILE, NETWORK, PROCESS, Event, SensorStatus

NETWORK_CALLS = frozenset({
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "sendto", "sendmsg",
    "sendmmsg", "recvfrom", "recvmsg", "recvmmsg",
})
OPEN_CALLS = frozenset({"open", "openat", "openat2", "creat"})
CHANGE_CALLS = frozenset({
    "truncate", "rename", "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat", "mkdir",
    "mkdirat", "unlink", "unlinkat", "rmdir", "mknod", "mknodat",
})
# symlink(target, linkpath): only the link is written; its target is any text, often a relative path.
LINK_CALLS = frozenset({"symlink", "symlinkat"})
EXEC_CALLS = frozenset({"execve", "execveat"})
FORK_CALLS = frozenset({"clone", "clone3", "fork", "vfork"})
# Traced, not reported: socket bookkeeping that needs a socket made by a reported call first.
TRACE = ",".join(sorted(NETWORK_CALLS | OPEN_CALLS | CHANGE_CALLS | EXEC_CALLS | FORK_CALLS))
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
# Errors that mean "under way", not "refused": a non-blocking connect or send still went out.
IN_PROGRESS = frozenset({"EINPROGRESS", "EAGAIN", "EWOULDBLOCK", "EALREADY"})
# Paths long enough for any real file name; strace truncates strings beyond this.
STRING_LIMIT = 4096
PROBE_TIMEOUT_S = 20.0

_LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(.*)$")
_RETURN_FD_PATH = re.compile(r"^-?\d+<(.*)>$")
_ERRNO = re.compile(r"^-1 (E[A-Z0-9]+)")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_DIRFD = re.compile(r"(?:AT_FDCWD|\d+)<([^>]*)>,\s*\"")
_FAMILY = re.compile(r"sa_family=(AF_\w+)")
_PORT = re.compile(r"sin6?_port=htons\((\d+)\)")
_INET = re.compile(r'inet_addr\("([^"]+)"\)')
_INET6 = re.compile(r'inet_pton\(AF_INET6, "([^"]+)"')
_UNIX = re.compile(r'sun_path=(@?"(?:[^"\\]|\\.)*")')
_SOCKET_FAMILY = re.compile(r"^(AF_\w+|PF_\w+)")
# -yy annotates a socket descriptor with its protocol and endpoints: 3<TCP:[10.0.0.1:5->10.0.0.2:80]>
_FD_SOCKET = re.compile(r"^\d+<(\w+):\[(.*)\]>")


@cache
def probe() -> tuple[tuple[str, ...] | None, SensorStatus]:
    """How to run strace here: the base options, or None with the reason it cannot run."""
    exe = shutil.which("strace")
    if exe is None:
        return None, SensorStatus("strace", False, "not run: strace is not installed (Debian package strace)")
    base = (exe, "-f", "-qq", "-ttt", "-yy", "-s", str(STRING_LIMIT), "-e", f"trace={TRACE}", "-e", "signal=none")
    last = ""
    for extra in (("--seccomp-bpf",), ()):
        try:
            run = subprocess.run([*base, *extra, "-o", os.devnull, "--", "true"], capture_output=True,
                                 text=True, timeout=PROBE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            last = str(e)
            continue
        if run.returncode == 0:
            mode = "seccomp-bpf filtered" if extra else "unfiltered (slower)"
            return (*base, *extra), SensorStatus(
                "strace", True, f"strace -f, {mode}: network syscalls on every address family, opens for "
                "writing and file-system changes, programs started, in every thread and child process")
        last = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
    return None, SensorStatus("strace", False, f"not run: strace cannot trace here: {last}")


def prefix(base: tuple[str, ...], output: Path, env: dict[str, str | None]) -> list[str]:
    """The strace command that wraps a workload; `env` is applied to the traced program only, so
    that strace itself runs unperturbed (None removes a variable)."""
    args = [*base, "-o", str(output)]
    for key, value in env.items():
        args += ["-E", key if value is None else f"{key}={value}"]
    return [*args, "--"]


def _merged(lines: Iterator[str]) -> Iterator[tuple[int, float, str]]:
    """(pid, time, 'call(args) = result') with interrupted calls joined to their resumption."""
    pending: dict[int, str] = {}
    for raw in lines:
        m = _LINE.match(raw.rstrip("\n"))
        if not m:
            continue
        pid, t, rest = int(m.group(1)), float(m.group(2)), m.group(3)
        resumed = _RESUMED.match(rest)
        if resumed:
            start = pending.pop(pid, None)
            if start is None:
                continue
            rest = start + resumed.group(2)
        elif rest.endswith("<unfinished ...>"):
            pending[pid] = rest[: -len("<unfinished ...>")].rstrip()
            continue
        yield pid, t, rest


def _unescape(s: str) -> str:
    try:
        return s.encode("latin-1", "backslashreplace").decode("unicode_escape").encode("latin-1").decode(
            "utf-8", "replace")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return s


def _paths(args: str) -> list[str]:
    """Every path argument, made absolute with the directory descriptor -yy printed before it."""
    dirs = {m.end() - 1: m.group(1) for m in _DIRFD.finditer(args)}
    out = []
    for m in _QUOTED.finditer(args):
        path = _unescape(m.group(1))
        base = dirs.get(m.start())
        if not path.startswith("/") and base:
            path = os.path.normpath(os.path.join(base, path))
        out.append(path)
    return out


def _address(args: str) -> tuple[str, str]:
    """(family, 'host:port' or path) of the first socket address in the arguments, else of the
    connected socket named by the descriptor annotation."""
    fam = _FAMILY.search(args)
    if fam:
        family = fam.group(1)
        port = _PORT.search(args)
        if family == "AF_INET":
            host = _INET.search(args)
            return family, f"{host.group(1) if host else '?'}:{port.group(1) if port else '?'}"
        if family == "AF_INET6":
            host = _INET6.search(args)
            return family, f"[{host.group(1) if host else '?'}]:{port.group(1) if port else '?'}"
        if family == "AF_UNIX":
            path = _UNIX.search(args)
            return family, _unescape(path.group(1).replace('"', "")) if path else "(unnamed)"
        return family, ""
    sock = _FD_SOCKET.match(args)
    if sock:
        proto, ends = sock.group(1), sock.group(2)
        family = "AF_INET6" if proto.endswith("v6") else "AF_UNIX" if proto == "UNIX" else (
            "AF_INET" if proto in ("TCP", "UDP", "UDPLITE", "RAW", "SCTP") else proto)
        peer = ends.split("->", 1)[1] if "->" in ends else ends
        if proto == "UNIX":  # inode, or 'inode,"path"' (@"name" when abstract) once bound
            inode, _, name = peer.partition(",")
            return family, _unescape(name.replace('"', "")) if name else inode
        return family, peer
    return "", ""


def is_loopback(target: str) -> bool:
    host = target.rsplit(":", 1)[0].strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def parse(path: Path) -> tuple[list[Event], set[int]]:
    """Events and the pids of every traced process, from a strace -f -ttt -yy output file."""
    events: list[Event] = []
    pids: set[int] = set()
    root: int | None = None
    try:
        with open(path, errors="replace") as handle:
            lines = handle.readlines()
    except OSError:
        return events, pids
    for pid, t, text in _merged(iter(lines)):
        pids.add(pid)
        m = _CALL.match(text)
        if not m:
            continue
        call, args, result = m.group(1), m.group(2), m.group(3)
        err = _ERRNO.match(result)
        failed = err.group(1) if err and err.group(1) not in IN_PROGRESS else ""
        line = f"{pid} {text}"[:400]
        if call in EXEC_CALLS:
            if root is None:
                root = pid  # the workload itself, started by the tool
                continue
            program = (_paths(args) or ["?"])[0]
            events.append(Event("strace", PROCESS, call, program, pid, t, failed, detail=line))
        elif call in FORK_CALLS:
            child = result.split()[0]
            if child.isdigit() and "CLONE_THREAD" not in args:
                pids.add(int(child))
        elif call in NETWORK_CALLS:
            if call in ("socket", "socketpair"):
                fam = _SOCKET_FAMILY.match(args)
                family, target = (fam.group(1).replace("PF_", "AF_") if fam else "?"), ""
            else:
                family, target = _address(args)
            events.append(Event("strace", NETWORK, call, f"{family} {target}".strip(), pid, t, failed,
                                family=family, detail=line))
        elif call in OPEN_CALLS:
            if call != "creat" and not any(flag in args for flag in WRITE_FLAGS):
                continue
            opened = _RETURN_FD_PATH.match(result)
            target = opened.group(1) if opened else (_paths(args) or ["?"])[0]
            if is_device_node(target):
                continue
            events.append(Event("strace", FILE, call, target.split("<", 1)[0], pid, t, failed,
                                detail=line))
        elif call in CHANGE_CALLS:
            paths = _paths(args)[-1:] if call in LINK_CALLS else _paths(args)
            for target in filter(None, paths):  # an empty path names no file (ENOENT)
                events.append(Event("strace", FILE, call, target, pid, t, failed, detail=line))
    return events, pids


def is_device_node(target: str) -> bool:
    """Opening a device node read-write is how every driver is reached (/dev/nvidia0, /dev/kfd);
    /dev/shm and /dev/mqueue hold files another process can read, and stay events."""
    if "<char " in target or "<block " in target:
        return True
    return target.startswith("/dev/") and not target.startswith(("/dev/shm/", "/dev/mqueue/"))
