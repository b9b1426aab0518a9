"""The one set of sensors around device processes that a process cannot detect from inside: used
by the behaviour harness for every workload and by the audit runner for its workers.

A device stack that can tell it is watched (TracerPid in /proc/self/status, a tracer as its parent,
a packet socket in /proc/net/packet) stays quiet while watched. So nothing here traces or sits in
the process's sight: each process runs in a network namespace of its own wired to the tool's
sinkhole (perturb/sinkhole.py: every packet answered and captured outside the namespace), its
process tree is sampled from outside through /proc (sensors/sockets.py), and, where the kernel
allows, an eBPF syscall tracer records its calls from the kernel (sensors/ebpf.py). A tracer such as
strace is not one of these: a caller that wants one runs it as a world of its own, compared with
the untraced ones.

Without root (no namespaces) a process runs in the host's network, unattached, and `statuses()`
says so: a report never claims a sensor that did not watch.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from chipaudit.perturb import sinkhole_end
from chipaudit.perturb.conditions import unshare_net
from chipaudit.perturb.sinkhole import NAMESERVER, Sinkhole, _netns
from chipaudit.process import isolation
from chipaudit.process.child import Wrapper
from chipaudit.process.isolation import Isolation
from chipaudit.sensors.events import Event, SensorStatus
from chipaudit.sensors.sockets import SAMPLE_INTERVAL_S, TreeSampler, become_subreaper

EBPF = "ebpf"
# bpftrace takes seconds to attach, so one tracer per audit watches the audit's workers.
NOT_HERE = ("not run for a probe's workloads (one eBPF tracer per audit watches its workers); the sinkhole, the "
            "socket sampler and, in the traced world, strace watch them")
PLAIN = Isolation()  # a container of the machine's own place, as every device process gets


def _syscall_tracer() -> tuple[Any, SensorStatus | None]:
    """The eBPF syscall tracer (sensors/ebpf.py: start(log) -> SensorStatus, abort(), events(netns
    inodes) -> events, stop()), to be started before any process it must see; None with the reason
    when this build has none."""
    try:
        from chipaudit.sensors.ebpf import SyscallTracer
    except ImportError:
        return None, SensorStatus(EBPF, False, "not run: this build has no eBPF syscall tracer")
    return SyscallTracer(), None


def _sinkhole_end(proc: psutil.Process) -> bool:
    """A sinkhole's end (perturb/sinkhole_end.py) in a network namespace of its own, as Sinkhole
    starts it: whatever runs under it has no way off the machine."""
    return proc.cmdline()[1:3] == ["-I", sinkhole_end.__file__] and _netns(proc.pid) != _netns(proc.ppid())


class Watch:
    """Sensors for one user (a behaviour harness, an audit run): start them, wrap each device
    process with `wrapper(name)` (its tree is sampled under `name` from its start), register any
    other process with `watch(name, pid)`, read `events(name)`."""

    def __init__(self, workdir: Path, syscalls: bool = True, why_not: str = NOT_HERE,
                 sample_s: float = SAMPLE_INTERVAL_S) -> None:
        """`syscalls`: also start the eBPF syscall tracer (seconds to attach, so one per audit, for
        its workers; a behaviour probe's own watch goes without, and says so: `why_not`). `sample_s`:
        how often the socket sampler looks (a long-running watcher looks less often)."""
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        # Started before the sampler: the sinkhole's process is the tool's own, never an orphan of a
        # watched tree, and the helpers it runs to wire namespaces are its children, out of the
        # sampler's sight.
        self.sinkhole = Sinkhole(workdir / "sinkhole")
        self.namespaces = unshare_net()
        self.tracer: Any = None
        self.tracer_status = SensorStatus(EBPF, False, why_not)
        self._attaching: threading.Thread | None = None
        self._pending: Any = None
        if syscalls:
            self._pending, unavailable = _syscall_tracer()
            self.tracer_status = unavailable or self.tracer_status
        if self._pending is not None:
            # Attaching takes seconds: it goes on while the caller prepares (the CLI's imports and an
            # audit's inventory), and every device process waits for it in `wrapper`.
            self._attaching = threading.Thread(target=self._attach_tracer, args=(workdir / "ebpf.log",),
                                               daemon=True, name="ebpf-attach")
            self._attaching.start()
        self.subreaper = become_subreaper()
        self._wrappers: set[int] = set()  # tool processes above a device process (a tracer world's strace)
        self._tool: set[tuple[int, float]] = set()  # processes of another watch's sinkhole end, by pid and start
        self._count = itertools.count()
        self._released: dict[int, float] = {}  # network namespace -> when its process was released
        self.sampler = TreeSampler(self._infrastructure, interval_s=sample_s)
        self.sampler.start()
        self._closed = False

    def _attach_tracer(self, log: Path) -> None:
        self.tracer_status = self._pending.start(log)
        self.tracer = self._pending if self.tracer_status.ran else None

    def _attached(self) -> None:
        """Wait until the eBPF tracer has attached, or said why it cannot."""
        if self._attaching is not None:
            self._attaching.join()

    def wrapper(self, name: str, iso: Isolation = PLAIN, online: bool = True, shares: tuple[Path, ...] = ()) -> Wrapper:
        """The layer that puts a device process into a container of its own (process/isolation.py;
        `iso` says what the world changes, `shares` the tool's folders it writes into), attached to
        the sinkhole under `name`: online (eth0 with an address and default routes) or offline (no
        route; its loopback traffic is still captured)."""
        self._attached()
        folder = self.workdir / "worlds" / str(next(self._count))
        iso = replace(iso, shares=(*iso.shares, *shares))

        def register(pid: int) -> None:
            # At once, before the process is wired and long before it says hello: until the sampler
            # knows it, it would take the new process for an orphan of unknown session. `pid` is
            # unshare's, which stays outside the namespaces as the device process's parent.
            self._wrappers.add(pid)
            self.sampler.watch(pid, name)

        if self.sinkhole.running:
            attach = self.sinkhole.attach(name, online)

            def configure(pid: int) -> None:
                register(pid)
                attach(pid)
                # From here on the namespace is the device process's: the shim's own steps (its
                # loopback socket) came before, while it waited for this wiring.
                self._released[_netns(pid)] = time.time()

            return isolation.wrapper(replace(iso, network=True), folder, configure)
        if not online and self.namespaces:
            raise RuntimeError(f"an offline world needs a network namespace: {self.namespaces}")
        if self.namespaces:
            # No namespaces to isolate it in (statuses() says so).
            return Wrapper(stays=False, started=lambda pid: self.sampler.watch(pid, name))
        return isolation.wrapper(replace(iso, network=not online), folder, register)

    def world(self) -> dict[str, Any]:
        """The kind of world device processes run in here, and what a stack can still see in it."""
        if self.namespaces:
            return {"kind": "host", "visible": [
                f"Device processes ran in the host's namespaces, unwatched by the sinkhole: {self.namespaces}"]}
        return {"kind": isolation.KIND, "visible": list(isolation.VISIBLE)}

    @property
    def nameserver(self) -> str | None:
        """The resolver a private world should name: the sinkhole's, when it runs."""
        return NAMESERVER if self.sinkhole.running else None

    def watch(self, name: str, pid: int, wrapper: bool = False) -> None:
        """Sample the process tree of `pid` under `name`. `wrapper`: `pid` is a tool process above
        the device process (a tracer), walked through but not reported."""
        if wrapper:
            self._wrappers.add(pid)
        self.sampler.watch(pid, name)

    def own_files(self, paths: Iterable[Path | str]) -> None:
        """The tool's own files around a device process (its log, a trace): not the device's writes."""
        self.sampler.ignore_paths.update(str(p) for p in paths)

    def names(self) -> list[str]:
        """Every name something was seen under, a detached process's unknown session included."""
        seen = [a.name for a in self.sinkhole.attachments] + [label for label, _ in self.sampler.events]
        return list(dict.fromkeys(seen))

    def events(self, name: str) -> list[Event]:
        """Everything every sensor saw of the processes watched or attached under `name`."""
        self._attached()
        out = self.sinkhole.events(name) + [e for label, e in self.sampler.events if label == name]
        if self.tracer is not None:
            # Not followed into namespaces a watched process makes: a behaviour harness in an audit
            # worker makes its workloads' and its own sinkhole's, and watches them itself; a device
            # process that moves is still seen moving, in the namespace it left.
            for ns in self.sinkhole.netns(name):
                out += self.tracer.events({ns}, since=self._released.get(ns, 0.0), follow=False)
        return out

    def statuses(self) -> list[SensorStatus]:
        """Which sensors ran, and what was not watched and why."""
        self._attached()
        return [self.sinkhole.status, self.sampler.status(), self.tracer_status]

    def close(self) -> None:
        """Stop every sensor; what they recorded stays readable through `events`."""
        if self._closed:
            return
        self._closed = True
        if self._attaching is not None and self._attaching.is_alive():
            self._pending.abort()  # closed before any device process ran: bad input, Ctrl-C
        self._attached()
        self.sampler.stop()
        if self.tracer is not None:
            with contextlib.suppress(Exception):
                self.tracer.stop()
        self.sinkhole.close()

    def _infrastructure(self, proc: psutil.Process) -> bool:
        """The tool's own processes in a watched tree, walked through but not reported: a wrapper
        above a device process, and another watch's sinkhole end with its capture and helpers (a
        behaviour harness's, inside an audit worker)."""
        if proc.pid in self._wrappers:
            return True
        # Decided once, while the process and its parents can be read: an end that is closing, or a
        # helper that is exiting, may no longer be (a process that is not yet one may still become
        # one by exec, so only a yes is kept).
        with contextlib.suppress(psutil.Error):
            key = (proc.pid, proc.create_time())
            if key not in self._tool:
                if not any(_sinkhole_end(p) for p in (proc, *proc.parents())):
                    return False
                self._tool.add(key)
            return True
        return False

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
