"""What the behaviour probes' observations mean: severities and findings, shared by every probe.

Severities (issue #3):
- A network call or a packet (captured by the sinkhole, sensors/watch.py) with a destination off the
  machine: critical. With a destination on it (loopback, a UNIX socket path): high; a UNIX socket
  that no process serves, where every call failed (ENOENT, ECONNREFUSED): info. A socket made without a
  destination seen (socket(), netlink, a socket the sampler could not place): medium. A socket listening
  for connections, or a packet socket (raw frames): high. A UNIX socket the allow-list names (a
  driver's own), or an internet destination it names (an operator's own service): info.
- A file created, written, renamed or removed by the workload: high, unless allow-listed (info).
- A program started by the workload, or a workload process still running after the workload exited:
  medium (info when the program is allow-listed).
- A refusal, a crash, a hang or a wrong result in one world: high. Answers that differ bit for bit
  between worlds, on a device that repeats itself bit for bit within each: medium.
- A task refused in every world, the reference included: weighed by what the device declares of the
  task's format (checks/refusal.py, devices/capability.py): high when it declares the format, medium
  when only its torch backend implements it, low when nothing declares it either way. Only a format
  the device declares that it lacks is listed as not computed, with that declaration.
- A speed difference between worlds that is large and significant (stats.py): high.

Sensor findings are made per cause, not per target, so that a reader sees one thing to look at where
one thing happened: the targets of one kind and severity that share a cause (a folder, the allow-list
entry that admits them, a socket name up to its numbers, a host up to its port) make one finding
that lists them all in its evidence.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from chipaudit.checks.base import Check
from chipaudit.checks.behaviour import stats
from chipaudit.checks.behaviour.allowlist import Allowlist
from chipaudit.checks.behaviour.session import NOT_APPLICABLE, Comparison, Session
from chipaudit.checks.refusal import refusal
from chipaudit.devices import capability
from chipaudit.report.model import Finding, Severity
from chipaudit.sensors.events import FILE, NETWORK, Event, Observation
from chipaudit.sensors.sockets import LISTENING
from chipaudit.sensors.strace import is_loopback

# Beyond this many distinct sensor findings in one check, the rest are summarised in one.
MAX_SENSOR_FINDINGS = 25
EXAMPLES = 3
# Instances of one cause listed in its finding; instance_count says how many there were in all.
MAX_INSTANCES = 20
REAPER = "reaper"
# A UNIX socket address that no process serves: nothing was reached, and no byte left the workload.
# The C library tries such sockets on its own: every user or host lookup asks nscd's first
# (/var/run/nscd/socket), and a machine without nscd answers ENOENT. A connection that succeeds stays
# a finding, nscd's too: it resolves names for the caller outside the sinkhole.
NO_LISTENER = frozenset({"ENOENT", "ECONNREFUSED"})
MKDIR = {"mkdir", "mkdirat"}


@dataclass
class _Group:
    kind: str
    target: str
    family: str = ""
    actions: set[str] = field(default_factory=set)
    sensors: set[str] = field(default_factory=set)
    worlds: set[str] = field(default_factory=set)
    pids: set[int] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    reached: bool = False  # one of its calls succeeded (or a sampler saw the socket in use)
    first: float = 0.0
    examples: list[str] = field(default_factory=list)
    lingering: bool = False
    instances: list[str] = field(default_factory=list)  # the targets grouped under one cause
    cause: str = ""

    @property
    def subject(self) -> str:
        """What a title names: the one target, or the cause that several targets share."""
        return self.cause if len(self.instances) > 1 else self.target

    def absorb(self, other: _Group) -> None:
        self.actions |= other.actions
        self.sensors |= other.sensors
        self.worlds |= other.worlds
        self.pids |= other.pids
        self.failed |= other.failed
        self.reached |= other.reached
        self.lingering |= other.lingering
        self.first = min((t for t in (self.first, other.first) if t), default=0.0)
        self.examples = (self.examples + other.examples)[:EXAMPLES]
        self.instances += other.instances

    def add(self, world: str, e: Event) -> None:
        self.actions.add(e.action)
        self.sensors.add(e.sensor)
        self.worlds.add(world)
        self.lingering |= e.sensor == REAPER
        if e.pid:
            self.pids.add(e.pid)
        if e.failed:
            self.failed.add(e.failed)
        else:
            self.reached = True
        if e.time and (not self.first or e.time < self.first):
            self.first = e.time
        if e.detail and len(self.examples) < EXAMPLES:
            self.examples.append(e.detail)


UNREADABLE = "socket (address not readable)"


def _destination(target: str) -> str:
    """The address part of a network target ('' when the event carries none)."""
    parts = target.split(" ", 1)
    return parts[1] if len(parts) == 2 and parts[0].startswith("AF_") else ""


def _group_key(e: Event) -> tuple[str, str]:
    if e.kind == NETWORK and e.target.startswith("socket "):
        return e.kind, UNREADABLE
    return e.kind, e.target


def _groups(observations: dict[str, Observation]) -> list[_Group]:
    groups: dict[tuple[str, str], _Group] = {}
    for world, o in observations.items():
        for e in o.events:
            key = _group_key(e)
            g = groups.setdefault(key, _Group(e.kind, key[1], e.family, instances=[key[1]]))
            g.add(world, e)
    # A bare socket() of a family folds into that family's calls with a destination, if any.
    for key, g in list(groups.items()):
        if g.kind == NETWORK and not _destination(g.target) and g.target.startswith("AF_"):
            family = g.target.split(" ")[0]
            richer = [h for h in groups.values() if h is not g and h.kind == NETWORK
                      and h.target.startswith(family + " ") and _destination(h.target)]
            if richer:
                richer[0].actions |= g.actions
                richer[0].worlds |= g.worlds
                del groups[key]
    # A socket whose address no table listed when it was sampled (a race with its connect or close)
    # folds into what the same processes' sockets showed with a destination: one beacon, not two.
    unreadable = groups.get((NETWORK, UNREADABLE))
    if unreadable is not None:
        richer = [h for h in groups.values() if h is not unreadable and h.kind == NETWORK
                  and _destination(h.target) and h.pids & unreadable.pids]
        if richer:
            richer[0].actions |= unreadable.actions
            richer[0].worlds |= unreadable.worlds
            richer[0].sensors |= unreadable.sensors
            del groups[(NETWORK, UNREADABLE)]
    return list(groups.values())


def _judge(g: _Group, allow: Allowlist) -> tuple[Severity, str]:
    """Severity from the group's own (first) target; the title names its subject, so that a grouped
    finding reads as its cause rather than as one arbitrary instance."""
    actions = ", ".join(sorted(g.actions))
    if g.kind == NETWORK:
        dest = _destination(g.target)
        if "packet" in g.actions:
            return (Severity.critical if dest and not is_loopback(dest) else Severity.high,
                    f"packets sent to {g.subject} from the workload's network namespace")
        if g.target.startswith("AF_UNIX ") and dest and not g.reached and g.failed <= NO_LISTENER:
            return Severity.info, f"the workload tried to reach a local socket that no process serves ({actions}): " \
                                  f"{g.subject}"
        if g.target.startswith("AF_UNIX ") and allow.local_socket_allowed(dest):
            return Severity.info, f"the workload held a driver's local socket ({actions}): {g.subject}"
        if g.target.startswith(("AF_INET ", "AF_INET6 ")) and allow.destination_allowed(dest):
            return Severity.info, f"the workload made network calls ({actions}) to an allowed {g.subject}"
        if g.target.startswith("AF_NETLINK "):
            return Severity.medium, f"the workload opened a netlink socket to the kernel: {g.subject}"
        if g.actions == {LISTENING} and dest:
            return (Severity.high, f"the workload listens on {g.subject}")
        if dest and dest != "(unnamed)":
            inet = g.target.startswith(("AF_INET ", "AF_INET6 "))
            sev = Severity.critical if inet and not is_loopback(dest) and not dest.startswith(("0.0.0.0", "[::]")) \
                else Severity.high
            return sev, f"the workload made network calls ({actions}) to {g.subject}"
        return Severity.medium, f"the workload opened a network socket: {g.subject}"
    if g.kind == FILE:
        sev = Severity.info if _file_rule(g, allow) else Severity.high
        return sev, f"the workload wrote to the file system: {g.subject} ({actions})"
    if g.lingering:
        return Severity.medium, f"a workload process kept running after the workload exited: {g.subject}"
    sev = Severity.info if allow.program_allowed(g.target) else Severity.medium
    return sev, f"the workload started a program: {g.subject}"


def _file_rule(g: _Group, allow: Allowlist) -> str:
    """The allow-list entry that admits a file group: its own, or, for folders made, the entry they
    lead to."""
    return allow.file_rule(g.target) or (allow.folder_rule(g.target) if g.actions <= MKDIR else "")


def _cause(g: _Group, allow: Allowlist) -> str:
    """What many targets have in common when one thing made them all: the allow-list entry that
    admits them; for a file, its folder (for a folder made, itself); for a UNIX socket, its name
    with the numbers (pids, namespace inodes) masked; for an internet address, the host whatever
    the port."""
    if g.kind == FILE:
        # A folder the workload made belongs with what it then wrote into it.
        folder = g.target if g.actions & MKDIR else os.path.dirname(g.target)
        return _file_rule(g, allow) or os.path.join(folder, "*")
    dest = _destination(g.target)
    if g.kind != NETWORK or not dest:
        return g.target
    family = g.target.split(" ", 1)[0]
    if family == "AF_UNIX":
        return f"{family} {allow.local_socket_rule(dest) or re.sub(r'[0-9]+', '*', dest)}"
    host, sep, port = dest.rpartition(":")
    return f"{family} {host}:*" if sep and port.isdigit() else g.target


def _by_cause(groups: list[_Group], allow: Allowlist) -> list[tuple[Severity, _Group]]:
    """Targets of one kind, severity and cause folded into one group; the first seen leads it.
    Severity is part of the key, so folding never hides a worse instance behind a milder one; so is
    whether packets were captured, so that what was on the wire never reads as a mere system call, and
    whether a socket only listens, so that a listener never reads as a connection."""
    merged: dict[tuple[Severity, str, str, str], _Group] = {}
    for g in groups:
        mode = "packet" if "packet" in g.actions else "listen" if g.actions == {LISTENING} else ""
        key = (_judge(g, allow)[0], g.kind, mode, _cause(g, allow))
        if key in merged:
            merged[key].absorb(g)
        else:
            g.cause = key[3]
            merged[key] = g
    return [(key[0], g) for key, g in merged.items()]


class Finder(Protocol):
    """What makes findings in someone's name: a check, or a watcher (sensors/procwatch.py)."""

    def finding(self, severity: Severity, title: str, detail: str = "", **evidence: Any) -> Finding: ...


def sensor_findings(check: Finder, observations: dict[str, Observation], allow: Allowlist) -> list[Finding]:
    """One finding per cause of what the workload did besides computing, in any world: 145 files
    written into one hidden folder are one thing for a reader to look at, with 145 instances."""
    judged = sorted(_by_cause(_groups(observations), allow), key=lambda x: -x[0].rank)
    out = []
    for severity, g in judged[:MAX_SENSOR_FINDINGS]:
        failed = f" (attempted; failed with {', '.join(sorted(g.failed))})" if g.failed else ""
        count = len(g.instances)
        several = f" {count} instances of {g.cause}, listed in the evidence." if count > 1 else ""
        out.append(check.finding(
            severity, _judge(g, allow)[1],
            f"Seen by {', '.join(sorted(g.sensors))} in the world(s) {', '.join(sorted(g.worlds))}{failed}. A device "
            f"workload has no business talking to anyone or writing anything besides its result.{several}",
            event=g.kind, target=g.target, cause=g.cause, instance_count=count,
            instances=g.instances[:MAX_INSTANCES], actions=sorted(g.actions), sensors=sorted(g.sensors),
            worlds=sorted(g.worlds), pids=sorted(g.pids)[:10], failed=sorted(g.failed),
            first_seen=_iso(g.first), examples=g.examples))
    rest = judged[MAX_SENSOR_FINDINGS:]
    if rest:
        worst = max((s for s, _ in rest), key=lambda s: s.rank)
        out.append(check.finding(worst, f"{len(rest)} more distinct side effects of the workload",
                                 "Further causes beyond the first ones reported.",
                                 targets=[g.subject for _, g in rest][:100]))
    return out


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat() if t else ""


def sensor_coverage(observations: dict[str, Observation]) -> dict[str, Any]:
    statuses = next((o.sensors for o in observations.values() if o.sensors), [])
    return {s.name: s.as_dict() for s in statuses}


def sensor_limits(observations: dict[str, Observation]) -> list[str]:
    statuses = next((o.sensors for o in observations.values() if o.sensors), [])
    return [f"sensor {s.name} {s.detail}" for s in statuses if not s.ran and not s.detail.startswith(NOT_APPLICABLE)]


def _task_label(s: Session, task: int) -> str:
    return s.tasks[task].label if task < len(s.tasks) else f"task {task}"


def refused_everywhere(sessions: list[Session], reference: Session) -> dict[int, str]:
    """Tasks the reference refused and no world computed: refused outright, not as a reaction to a
    world (task -> the reference's error)."""
    return {task: error for task, error in reference.errors.items()
            if not any(task in s.verifications for s in sessions)}


def session_findings(check: Check, sessions: list[Session], reference: Session, device: str) -> list[Finding]:
    """Worlds in which the device refused, crashed, hung or computed wrongly, or answered
    differently from the reference; and tasks it refused in every world, weighed by what the device
    declares of their format."""
    out: list[Finding] = []
    started = [s for s in sessions if s.hello is not None]
    outright = refused_everywhere(sessions, reference)
    for task, error in sorted(outright.items()):
        spec = reference.tasks[task]
        declared = capability.of_format(device, spec.format)
        if not declared.lacking:
            refusers = [s.label for s in sessions if task in s.errors]
            out.append(refusal(check, f"{spec.label} in every world", error, declared,
                               where=f"refused in {', '.join(refusers)}", task=spec.as_dict(), worlds=refusers))
    for s in sessions:
        evidence: dict[str, Any] = {"world": s.condition.describe()}
        if s.not_applied:
            evidence["world_not_applied"] = s.not_applied
        if s.hello is None and started:
            out.append(check.finding(
                Severity.high, f"the device stack did not start in the world '{s.label}'",
                f"{s.dead or 'no answer'}; it started in: {', '.join(x.label for x in started)}.", **evidence))
        elif s.dead:
            out.append(check.finding(
                Severity.high, f"the workload stopped answering in the world '{s.label}'", s.dead, **evidence))
        for task, error in sorted(s.errors.items()):
            fine = [x.label for x in sessions if x is not s and task in x.verifications and task not in x.errors]
            if not fine:
                continue  # no world computed it: refused outright (above), not a reaction to this world
            out.append(check.finding(
                Severity.high, f"the device refused {_task_label(s, task)} in the world '{s.label}'",
                f"{error}; the same request succeeded in: {', '.join(fine)}.", task=s.tasks[task].as_dict(),
                error=error, **evidence))
        for task, answers in sorted(s.verifications.items()):
            wrong = [a for a in answers if not a["ok"]]
            if wrong:
                out.append(check.finding(
                    Severity.high, f"wrong results for {_task_label(s, task)} in the world '{s.label}'",
                    f"{wrong[0]['bad']} of {wrong[0]['checked']} checked values outside the error bound "
                    f"({wrong[0]['method']} check) in {len(wrong)} of {len(answers)} verifications.",
                    task=s.tasks[task].as_dict(), worst=wrong[0]["worst"], **evidence))
    out += _answer_changes(check, sessions, reference)
    return out


def _digests(s: Session, task: int) -> set[str]:
    return {a["digest"] for a in s.verifications.get(task, []) if a["ok"]}


def _answer_changes(check: Check, sessions: list[Session], reference: Session) -> list[Finding]:
    out = []
    for s in sessions:
        if s is reference:
            continue
        for task in s.verifications:
            ref, here = _digests(reference, task), _digests(s, task)
            # Only a device that repeats itself bit for bit in both worlds is held to identical bits.
            if len(ref) == 1 and len(here) == 1 and ref != here and s.tasks[task] == reference.tasks[task]:
                out.append(check.finding(
                    Severity.medium, f"answers change in the world '{s.label}' ({_task_label(s, task)})",
                    "Both worlds' results are within the error bound, and each world repeats its own bits "
                    "exactly, but the bits differ between the worlds: the computation depends on the world.",
                    task=s.tasks[task].as_dict(), reference_digest=ref.pop(), digest=here.pop(),
                    world=s.condition.describe()))
    return out


def speed_findings(check: Check, comparisons: Iterable[Comparison], what: str,
                   confirmed: Callable[[Comparison], bool] = Comparison.confirmed) -> list[Finding]:
    out = []
    for c in comparisons:
        v = c.verdict()
        if not confirmed(c):
            continue
        slower = v.ratio > 1
        direction = f"{v.ratio:.2f}x slower" if slower else f"{1 / v.ratio:.2f}x faster"
        out.append(check.finding(
            Severity.high, f"{c.name}: {direction} {what}",
            f"Median of {v.pairs} interleaved paired ratios {v.ratio:.3f} (99% interval {v.low:.3f} to "
            f"{v.high:.3f}); flagged at {stats.SPEED_FLAG:.1f}x or more when the whole interval excludes 1"
            + (f", and again between new processes ({c.retest.verdict().ratio:.3f})." if c.retest else "."),
            **c.as_dict(), task=c.cond[0].tasks[c.cond[1]].as_dict(), world=c.cond[0].condition.describe()))
    return out


def not_computed(sessions: list[Session], device: str) -> dict[str, str]:
    """Tasks refused in every world whose format the device declares that it lacks: what it lacks, not
    how it reacts (task -> its error and the declaration)."""
    out = {}
    for s in sessions[:1]:
        for task, error in refused_everywhere(sessions, s).items():
            declared = capability.of_format(device, s.tasks[task].format)
            if declared.lacking:
                out[_task_label(s, task)] = f"{error} ({declared.reason})"
    return out
