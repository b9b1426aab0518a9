"""What the processes that hold the device do, between two intervals of `chipaudit watch`.

Threat: a device stack that behaves through every audit and starts talking to the network, listening
for connections, starting programs or writing files once it runs real work, for long, with no auditor
in sight. It can see a tracer (TracerPid, a packet socket), so nothing here traces: every sample reads
what any process may read of another in /proc (descriptors, socket tables, the process tree) through
psutil, which the watched process cannot tell from any other reader of /proc.

Method: the holders are the processes NVML lists on the device (compute and graphics contexts), the
processes holding its device files open (sensors/holders.py), and the processes named with
--watch-pid or in the cgroups named with --watch-cgroup (their cgroup.procs, child cgroups included),
with all their descendants, less the watcher's own processes. For each, one sample reads its sockets
of every family and the files it holds open for writing (sensors/sockets.py `descriptors`), and its
children. What was not there at the previous sample is an event: a connection or a listening socket,
a socket of any family, a file open for writing, a child a watched process started. A process that
appears or leaves is not an event by itself. What a holder holds when it is first seen is its
baseline, not an event: a job's own log files and its peers' connections, opened before the watch
or as the job began, would otherwise be an alarm at every start; only what it opens after is new.
A child that a watched process started since the last sample is new whole: all it holds is reported.
Events mean what they mean
to the behaviour probes: one allow-list (checks/behaviour/allowlist.py) and one set of severities and
grouping (checks/behaviour/findings.py `sensor_findings`), so an outbound connection to a destination
the list does not name is high or worse; the findings add each process's name and command line.

Cannot see: what a holder already held when first seen (at the watch's start, or up to an interval
after a new job began); a socket, file or child opened and gone between two samples (an interval apart); what is
sent; a process in another PID namespace than the watcher's (NVML's PIDs are the host's: run the
watcher in the host's PID namespace); processes of other users without privilege (counted in
`metrics`, as are processes that ended while being read).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from chipaudit.checks.behaviour.allowlist import Allowlist
from chipaudit.checks.behaviour.findings import sensor_findings
from chipaudit.errors import InputError
from chipaudit.report.model import Category, Finding, Severity
from chipaudit.sensors import holders
from chipaudit.sensors.events import PROCESS, Event, Observation, SensorStatus
from chipaudit.sensors.sockets import children_map, descendants, descriptors

CHECK = "watch.holders"
WORLD = "production (chipaudit watch)"
SENSOR = "procwatch"
NVML, DEVICE_FILE, NAMED_PID, CGROUP = "nvml", "device file", "--watch-pid", "--watch-cgroup"
# Processes listed in one finding's evidence, at most.
MAX_PROCESSES = 10


@dataclass
class Seen:
    pid: int
    created: float
    name: str
    exe: str
    cmdline: str
    found_by: str

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "name": self.name, "exe": self.exe, "cmdline": self.cmdline,
                "found_by": self.found_by}


class _Origin:
    """Findings in the watch's name: what a device's holder does besides computing is the device
    stack's behaviour."""

    def finding(self, severity: Severity, title: str, detail: str = "", **evidence: Any) -> Finding:
        return Finding(check=CHECK, category=Category.behaviour, severity=severity, title=title, detail=detail,
                       evidence=evidence)


def cgroup_pids(path: Path) -> set[int]:
    """The processes of a cgroup v2 and of its child cgroups (each cgroup.procs lists only its own)."""
    out: set[int] = set()
    for folder, _, files in os.walk(path):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError, ValueError), open(os.path.join(folder, "cgroup.procs")) as f:
                out |= {int(line) for line in f if line.strip()}
    return out


def check_targets(pids: list[int], cgroups: list[Path]) -> None:
    """Refuses (exit 2) a --watch-pid that is not running or a --watch-cgroup that is not a cgroup v2
    folder: watching nothing while saying it watches would mislead."""
    for pid in pids:
        if not psutil.pid_exists(pid):
            raise InputError(f"--watch-pid {pid}: no such process")
    for path in cgroups:
        if not (Path(path) / "cgroup.procs").is_file():
            raise InputError(f"--watch-cgroup {path}: not a cgroup v2 folder (it has no cgroup.procs)")


def own_processes() -> set[int]:
    """The watcher and its descendants (its burst workers)."""
    return set(descendants(os.getpid(), children_map()))


class HolderSampler:
    """The device's holders and what each newly holds; `nvml_pids` gives NVML's process list (None
    when NVML gave none), `own` the watcher's own processes (`own_processes` unless given)."""

    def __init__(self, device: str, pids: list[int], cgroups: list[Path], allow: Allowlist,
                 nvml_pids: Callable[[], set[int] | None] | None = None,
                 own: Callable[[], set[int]] | None = None):
        self.device, self.pids, self.cgroups, self.allow = device, list(pids), [Path(c) for c in cgroups], allow
        self.nvml_pids = nvml_pids
        self.own = own or own_processes
        self.patterns = holders.DEVICE_FILES.get(device.split(":", 1)[0], ())
        self.seen: dict[tuple[int, float], Seen] = {}
        self._reported: set[tuple[tuple[int, float], str, str, str]] = set()
        self._previous: dict[int, float] = {}  # pid -> start time, of every process watched at the last sample
        self._checked: dict[tuple[int, int, str], bool] = {}
        self._counts = {"denied": 0, "vanished": 0, "events": 0, "samples": 0}
        self._last: dict[str, float] = {}
        self._nvml_available = nvml_pids is not None

    def status(self) -> SensorStatus:
        sources = ([NVML] if self.nvml_pids else []) + ([DEVICE_FILE] if self.patterns else []) + \
            ([NAMED_PID] if self.pids else []) + ([CGROUP] if self.cgroups else [])
        if not sources:
            return SensorStatus("device_holders", False, "not available: no way to find this device's holders "
                                "(no NVML, no device files known; name processes with --watch-pid or --watch-cgroup)")
        return SensorStatus("device_holders", True, f"holders from {', '.join(sources)} and their descendants: "
                            "sockets of every family, listening ports, children and files open for writing, "
                            "read from /proc without a tracer")

    def roots(self) -> dict[int, str]:
        """pid -> how it was found, for every holder now."""
        out: dict[int, str] = {}
        for pid in self.pids:
            out.setdefault(pid, NAMED_PID)
        for path in self.cgroups:
            for pid in cgroup_pids(path):
                out.setdefault(pid, f"{CGROUP} {path}")
        if self.nvml_pids is not None:
            listed = self.nvml_pids()
            self._nvml_available = listed is not None
            for pid in listed or ():
                out.setdefault(pid, NVML)
        if self.patterns:
            scan = holders.scan(self.patterns, set(), daemons=())
            self._last["holder_scan_denied"] = float(scan.denied)
            for h in scan.holders:
                if h.files:
                    out.setdefault(h.pid, DEVICE_FILE)
        return out

    def sample(self) -> list[Finding]:
        started = time.perf_counter()
        self._counts["samples"] += 1
        children = children_map()
        # The watcher's own processes (its bursts hold the device too) are no holders, unless named.
        own = self.own() | {os.getpid()}
        roots = {pid: how for pid, how in self.roots().items()
                 if pid != os.getpid() and (pid not in own or how.startswith((NAMED_PID, CGROUP)))}
        tree: dict[int, str] = {}
        for pid, how in roots.items():
            named = how.startswith((NAMED_PID, CGROUP))
            for p in descendants(pid, children):
                if p != os.getpid() and (named or p not in own):
                    tree.setdefault(p, how if p == pid else f"descendant of {pid} ({how})")
        events: list[Event] = []
        now: dict[int, float] = {}
        for pid, how in tree.items():
            try:
                proc = psutil.Process(pid)
                ident = (pid, proc.create_time())
                first_sight = ident not in self.seen
                seen = self.seen.get(ident) or self._remember(proc, ident, how)
                now[pid] = ident[1]
                started = self._started_since_last(proc, ident)
                if started:
                    events.append(Event(SENSOR, PROCESS, "started", seen.exe or seen.name, pid, time.time(),
                                        detail=seen.cmdline))
                baseline = first_sight and not started
                for _, event in descriptors(proc, self._checked):
                    if self._new(ident, event) and not baseline:
                        events.append(event)
            except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                self._counts["vanished"] += 1
            except (psutil.AccessDenied, PermissionError):
                self._counts["denied"] += 1
            except OSError:
                self._counts["vanished"] += 1
        self._previous = now
        self._forget(now)
        self._counts["events"] += len(events)
        self._last.update({"holders": float(len(roots)), "holder_processes": float(len(now)),
                           "holder_sample_seconds": time.perf_counter() - started})
        return self._findings(events, now)

    def _remember(self, proc: psutil.Process, ident: tuple[int, float], how: str) -> Seen:
        name, exe, cmdline = proc.name(), "", ""
        with contextlib.suppress(psutil.AccessDenied):  # another user's, without privilege: its name only
            exe, cmdline = proc.exe(), " ".join(proc.cmdline())[:300]
        seen = self.seen[ident] = Seen(ident[0], ident[1], name, exe, cmdline, how)
        return seen

    def _started_since_last(self, proc: psutil.Process, ident: tuple[int, float]) -> bool:
        """A child that a process watched at the last sample started since: the parent was there then,
        the child was not."""
        if not self._previous or self._previous.get(ident[0]) == ident[1]:
            return False
        parent = proc.ppid()
        with contextlib.suppress(psutil.Error):
            return self._previous.get(parent) == psutil.Process(parent).create_time()
        return False

    def _new(self, ident: tuple[int, float], event: Event) -> bool:
        key = (ident, event.kind, event.action, event.target)
        if key in self._reported:
            return False
        self._reported.add(key)
        return True

    def _forget(self, alive: dict[int, float]) -> None:
        """What was kept of processes that ended: a long watch sees many come and go."""
        self.seen = {k: v for k, v in self.seen.items() if alive.get(k[0]) == k[1]}
        self._reported = {k for k in self._reported if alive.get(k[0][0]) == k[0][1]}
        self._checked = {k: v for k, v in self._checked.items() if k[0] in alive}

    def _findings(self, events: list[Event], alive: dict[int, float]) -> list[Finding]:
        if not events:
            return []
        found = sensor_findings(_Origin(), {WORLD: Observation(events)}, self.allow)
        for f in found:
            pids = f.evidence.get("pids") or []
            f.evidence["processes"] = [s.as_dict() for (pid, created), s in self.seen.items()
                                       if pid in pids and alive.get(pid, created) == created][:MAX_PROCESSES]
        return found

    def metrics(self) -> dict[str, float]:
        out = {**self._last, "holder_samples_total": float(self._counts["samples"]),
               "holder_events_total": float(self._counts["events"]),
               "holder_reads_denied_total": float(self._counts["denied"]),
               "holder_processes_vanished_total": float(self._counts["vanished"])}
        if self.nvml_pids is not None:
            out["nvml_process_list_available"] = float(self._nvml_available)
        return out

    def close(self) -> None:
        pass
