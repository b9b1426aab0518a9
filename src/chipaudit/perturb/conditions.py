"""The worlds a workload is run in: the reference, and changed ones.

A condition is applied to the workload process only (its environment, its namespace, the clock its
libc reports), never to the tool. Each one can be unavailable here (no privilege, a tool missing),
and each one that ran is checked (`applied`), from what the workload saw and what the tool read of
its namespace: a clock that did not move or an offline namespace that still has a route is
reported as not applied, never as coverage.

Every world's processes run in a network namespace of their own wired to the tool's sinkhole
(sensors/watch.py), untraced: a device stack that stays quiet while it sees a tracer has none to
see. A traced world (`traced`) is an extra world, the same as its base but under strace, compared
with the untraced ones like any other, so that a stack that behaves differently when traced shows
up as a difference.

The reference is neutral rather than inherited: UTC and the C.UTF-8 locale, whatever the machine's
own settings, so that a machine that already looks Chinese is still compared with one that does
not. Everything else of the caller's environment is inherited unchanged. The same holds for what
the machine's own configuration says about where it is (perturb/place.py): every world gets a
private /etc and private host names (`Condition.isolation`), neutral unless the world changes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import re
import shutil
import subprocess
import tempfile
import zoneinfo
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from chipaudit.perturb import place
from chipaudit.perturb.place import ZONEINFO, Place
from chipaudit.process import isolation
from chipaudit.process.isolation import Isolation
from chipaudit.sensors import strace
from chipaudit.sensors.events import FILE, Event

REFERENCE, NETWORK, CLOCK, LOCATION = "reference", "network", "clock", "location"
NEUTRAL_TZ, NEUTRAL_LOCALE = "UTC", "C.UTF-8"
LOCALE_VARS = (
    "LC_ALL", "LC_CTYPE", "LC_NUMERIC", "LC_TIME", "LC_COLLATE", "LC_MONETARY", "LC_MESSAGES", "LC_PAPER",
    "LC_NAME", "LC_ADDRESS", "LC_TELEPHONE", "LC_MEASUREMENT", "LC_IDENTIFICATION", "LANGUAGE",
)
# The zone comes from the world's /etc/localtime (UTC in a neutral place), as on a machine, not from
# TZ, which a user's job seldom has: a variable it lacks would tell a device stack it is audited.
NEUTRAL_ENV: dict[str, str | None] = {"TZ": None, "LANG": NEUTRAL_LOCALE, **dict.fromkeys(LOCALE_VARS)}
# Where Debian, Fedora and upstream builds put libfaketime.
FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib64/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)
# A shifted clock must read within this of its target (plus the time since launch) inside the workload.
CLOCK_SLACK_S = 3600.0
PROBE_TIMEOUT_S = 20.0
DAY_S = 86400.0
# libfaketime keeps its state in POSIX shared memory named after the first process that loads it
# (libfaketime 0.9.x, ft_shm_create): /dev/shm/faketime_shm_<pid> and the semaphore
# /dev/shm/sem.faketime_sem_<pid>, which glibc's sem_open creates as a temporary file and links.
_FAKETIME_SHM = re.compile(r"^/dev/shm/(?:sem\.faketime_sem_|faketime_shm_)(\d+)$")
# What a kind of world cannot reach however well it applied; the report lists it with the coverage.
LIMITS: dict[str, tuple[str, ...]] = {
    CLOCK: (
        "libfaketime shifts the clock as the C library serves it: a raw clock_gettime or gettimeofday system "
        "call (statically linked code, a runtime that bypasses the C library and the vDSO), the device's own "
        "timer and a date fetched over the network read the real date",
        "the kernel's own timestamps stay real: file times (mtime, ctime), SO_TIMESTAMP on packets, /proc and "
        "/sys times, and anything judged against them",
    ),
    LOCATION: (
        "location signals not tried: the public IP address and its geolocation, GPS or a device's own GNSS "
        "receiver and real-time clock, nearby Wi-Fi networks and cell towers, the keyboard layout "
        "(/etc/default/keyboard, /etc/vconsole.conf), the nameserver's address (the same in every world), the "
        "device's own region codes, and regions other than those tried",
        "a location world is a container of the machine (process/isolation.py) whose clock, names and /etc "
        "files say another place; a stack that trusts only signals outside the machine (its public address, "
        "radio, the device's own clock) is not shown a foreign place",
    ),
}


@dataclass(frozen=True)
class Condition:
    name: str
    kind: str
    env: dict[str, str | None] = field(default_factory=dict)  # over NEUTRAL_ENV; None removes a variable
    sealed: bool = False  # offline: a namespace with no route, only its loopback captured
    traced: bool = False  # under strace: the world's processes see a tracer
    clock_shift_days: float | None = None
    tz: str | None = None
    locale: str | None = None
    place: Place = field(default_factory=Place)  # what the machine's own configuration says

    def workload_env(self, now: float) -> dict[str, str | None]:
        env = {**NEUTRAL_ENV, **self.env}
        if self.clock_shift_days is not None:
            lib = faketime_library()
            if lib is not None:
                env.update({
                    "LD_PRELOAD": " ".join(filter(None, [lib, os.environ.get("LD_PRELOAD")])),
                    "FAKETIME": f"@{int(self.target_time(now))}", "FAKETIME_FMT": "%s",
                    # Timing is taken by the tool, never inside the workload, and monotonic clocks are
                    # no date: leave them alone rather than disturb the runtime's timers.
                    "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                })
        return env

    @property
    def zone(self) -> str:
        """The zone the workload's C library uses: TZ, or where TZ is removed, /etc/localtime."""
        return self.tz or (self.place.zone if self.place.zone != place.NEUTRAL_ZONE else NEUTRAL_TZ)

    def isolation(self, nameserver: str | None = None) -> Isolation:
        """The private world this condition's workload runs in: its own network namespace (wired by
        whoever runs it), and the /etc and host names of its place, neutral unless the condition
        changes them. resolv.conf names `nameserver`, or without one the machine's own nameservers."""
        servers = [nameserver] if nameserver else place.host_nameservers()
        return Isolation(etc=self.place.files(servers), hostname=self.place.hostname, domainname=self.place.domain)

    def target_time(self, now: float) -> float:
        return now + (self.clock_shift_days or 0.0) * DAY_S

    def tells(self) -> list[str]:
        """What this world leaves for a device stack to see by design: the mechanism that makes it."""
        out = []
        if self.clock_shift_days is not None:
            out.append("libfaketime: LD_PRELOAD and the FAKETIME variables in the workload's environment")
        if self.traced:
            out.append("strace: a tracer (TracerPid) and slower system calls, the traced world's purpose")
        return out

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.sealed:
            out["network"] = "offline: a network namespace with no route (its loopback captured by the sinkhole)"
        if self.traced:
            out["tracer"] = "strace"
        if self.clock_shift_days is not None:
            out["clock_shift_days"] = self.clock_shift_days
        if self.tz:
            out["tz"] = self.tz
        if self.locale:
            out["locale"] = self.locale
        if self.place.changes():
            out["system"] = self.place.changes()
        return out


def reference() -> Condition:
    return Condition("reference", REFERENCE)


def sealed() -> Condition:
    return Condition("sealed", NETWORK, sealed=True)


def traced(base: Condition) -> Condition:
    return dataclasses.replace(base, name=f"{base.name}, traced", traced=True)


def clock(days: float, label: str) -> Condition:
    return Condition(f"clock {label}", CLOCK, clock_shift_days=days)


def location(name: str, tz: str | None = None, locale: str | None = None, system: Place | None = None) -> Condition:
    """A world in another place: through the environment (`tz`, `locale`), through the machine's
    own configuration (`system`), or both."""
    env: dict[str, str | None] = {}
    if tz:
        env["TZ"] = tz
    if locale:
        language = locale.split(".")[0]
        env.update(dict.fromkeys(("LANG", *LOCALE_VARS[:-1]), locale))
        env["LANGUAGE"] = f"{language}:{language.split('_')[0]}"
    return Condition(name, LOCATION, env=env, tz=tz, locale=locale, place=system or Place())


@cache
def faketime_library() -> str | None:
    return next((p for p in FAKETIME_LIBS if os.path.exists(p)), None)


@cache
def unshare_net() -> str:
    """'' when an empty network namespace can be made here, else why not."""
    exe = shutil.which("unshare")
    if exe is None:
        return "unshare is not installed (Debian package util-linux)"
    try:
        run = subprocess.run([exe, "--net", "--", "true"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare --net failed: {e}"
    if run.returncode != 0:
        text = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
        return f"unshare --net failed: {text} (creating a network namespace needs root or CAP_SYS_ADMIN)"
    return ""


@cache
def isolation_unavailable() -> str:
    """'' when a world's private /etc and host names can be made here, else why not: made for real,
    as every world is made (process/isolation.py), around a command that does nothing."""
    exe = shutil.which("unshare")
    if exe is None:
        return "unshare is not installed (Debian package util-linux)"
    with tempfile.TemporaryDirectory() as tmp:
        layer = isolation.wrapper(reference().isolation(), Path(tmp))
        try:
            run = subprocess.run([*layer.prefix, "true"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"a private /etc and host names could not be made: {e}"
    if run.returncode != 0:
        text = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
        return (f"a private /etc and host names could not be made: {text} (private mount and UTS namespaces "
                "need root or CAP_SYS_ADMIN, and overlayfs)")
    return ""


def unavailable(condition: Condition) -> str:
    """'' when the condition can be applied on this machine, else why not."""
    if condition.sealed and unshare_net():
        return unshare_net()
    if condition.traced and strace.probe()[0] is None:
        return f"strace {strace.probe()[1].detail.removeprefix('not run: ')}"
    if condition.clock_shift_days is not None and faketime_library() is None:
        return "libfaketime is not installed (Debian package faketime)"
    for zone in filter(None, (condition.tz, condition.place.zone)):
        if not (ZONEINFO / zone).exists():
            return f"the time zone {zone} is not in {ZONEINFO} (Debian package tzdata)"
    if condition.place.changes():
        return isolation_unavailable()
    return ""


def expected_offset_s(tz: str, at: float) -> int | None:
    with contextlib.suppress(zoneinfo.ZoneInfoNotFoundError, ValueError):
        offset = dt.datetime.fromtimestamp(at, zoneinfo.ZoneInfo(tz)).utcoffset()
        return int(offset.total_seconds()) if offset is not None else None
    return None


def applied(condition: Condition, hello: dict[str, Any], launched: float, answered: float) -> tuple[str, list[str]]:
    """('' or why the condition did not take effect, notes on how far it reached), judged from what
    the workload itself saw when it started."""
    notes: list[str] = list(LIMITS.get(condition.kind, ()))
    if condition.sealed:
        # Read by the tool from the workload's namespace (sinkhole.routes): an offline world has no way out.
        routes = hello.get("routes")
        if routes is None:
            return "the tool could not read the workload's routes", notes
        if routes:
            return f"the workload's network namespace still had routes {routes}", notes
    if condition.clock_shift_days is not None:
        seen = float(hello.get("time", 0.0))
        low, high = condition.target_time(launched) - CLOCK_SLACK_S, condition.target_time(answered) + CLOCK_SLACK_S
        if not low <= seen <= high:
            return (f"the workload's clock read {dt.datetime.fromtimestamp(seen, dt.timezone.utc):%Y-%m-%d}, not "
                    f"the shifted date"), notes
    tz = condition.zone
    want = expected_offset_s(tz, float(hello.get("time", answered)))
    if want is not None and hello.get("gmtoff") != want:
        return f"the workload's local time offset was {hello.get('gmtoff')} s, not {want} s for {tz}", notes
    not_isolated = isolation_unavailable()
    if not not_isolated:
        wrong = place.mismatches(condition.place.expected(), hello.get("system"))
        if wrong:
            return f"the workload saw the system's {'; '.join(wrong)}", notes
    else:
        notes.append(f"the machine's own location signals (zone and locale files, host and domain names, DNS "
                     f"search domain) were not replaced: {not_isolated}; a device stack that reads them saw the "
                     "machine's own in every world")
    if hello.get("sleep_repaired"):
        notes.append("this libfaketime cannot serve absolute monotonic sleeps (libfaketime issue #426, fixed after "
                     "0.9.10): the workload's time.sleep waited through a relative wait instead; a native library "
                     "sleeping that way would fail with EINVAL under the shifted clock")
    if condition.locale and not hello.get("locale_installed"):
        notes.append(f"the locale {condition.locale} is not installed here: the environment variables were set, "
                     "but a C library asked for it fell back to C")
    return "", notes


def without_own_artefacts(condition: Condition, events: list[Event], pids: set[int]) -> list[Event]:
    """The events minus the files the perturbation itself makes in the workload (libfaketime's
    shared memory, named after a pid of the workload's own tree); everything else stays."""
    if condition.clock_shift_days is None:
        return events
    return without_faketime_artefacts(events, pids)


def without_faketime_artefacts(events: list[Event], pids: set[int]) -> list[Event]:
    """The events minus libfaketime's shared memory named after a pid of the tree (`pids` and the
    events' own): what a clock world leaves in any tree that holds one, such as an audit worker
    running a behaviour probe."""
    # PID 1 too: a world's process is PID 1 of its container (process/isolation.py) and names the
    # memory so.
    tree = pids | {e.pid for e in events} | {1}
    own: set[str] = set()
    for e in events:
        m = _FAKETIME_SHM.match(e.target) if e.kind == FILE else None
        if m and int(m.group(1)) in tree:
            own.add(e.target)
    # The temporary name sem_open links to the semaphore's final name: the same strace line.
    linked = {e.detail for e in events if e.kind == FILE and e.action == "link" and e.target in own}
    own |= {e.target for e in events if e.kind == FILE and e.action == "link" and e.detail in linked}
    return [e for e in events if not (e.kind == FILE and e.target in own)]
