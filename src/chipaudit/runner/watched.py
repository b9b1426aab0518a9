"""Sensors around the audit's workers, which no tracer watches.

Threat: a device stack that knows it is audited stays quiet while it sees a tracer (TracerPid, a
tracer as its parent) and reports home from the processes that do the audit's integrity, burn-in,
memory and performance work. So every worker starts inside the audit's `Watch` (sensors/watch.py):
a network namespace of its own wired to the sinkhole, which answers and captures every packet with
its first bytes, and a sampler of the worker's process tree (sockets, files open for writing).
Neither is in the process's sight as a tracer is. Whatever the worker starts (the stack probe, a
behaviour harness and its workloads) is in its tree, and in its namespace unless given one of its own.

Attribution: the worker's start and result messages bound each check's window (at the times the
worker says it sent them, never later than the tool received them: a worker's word can move an
event between its checks, never out of the audit). An event belongs to the check whose window holds
its time; what came before the first start (importing torch, a sitecustomize at start-up) goes to
the first check, what came after the last result (the worker's teardown) to the last, and an event
seen only after its check was reported to the next one, saying when it happened: nothing is lost.
It becomes a finding of that check in category behaviour, judged and grouped as every sensor event
is (checks/behaviour/findings.py), added before the check's result is reported, so that the live
report and the final one agree.

Not the device's: the worker's log, the evidence staging folder, and the worker's scratch folder
(Python's temporary folder in the worker: the behaviour harness's folders, its children's logs);
libfaketime's shared memory in a clock world's workload. During a behaviour probe only the worker
process's own events count here: the probe's workloads, shims, tracer and sinkhole are its children
in namespaces it makes, watched by the probe's own sensors. Cannot see: what a stack writes into that
scratch folder (removed with the audit); what the sampler alone saw within one sampling interval of
a check's boundary may be attributed to the neighbouring check.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from chipaudit.checks.base import Check, status_for
from chipaudit.checks.behaviour import allowlist
from chipaudit.checks.behaviour.findings import sensor_findings
from chipaudit.evidence.bundle import EVIDENCE_DIR_PARAM
from chipaudit.perturb.conditions import without_faketime_artefacts
from chipaudit.process.child import SCRATCH, Wrapper
from chipaudit.report.model import Category, CheckResult, Finding, Severity, Status
from chipaudit.sensors.events import FILE, PROCESS, Event, Observation, SensorStatus
from chipaudit.sensors.sockets import SAMPLE_INTERVAL_S
from chipaudit.sensors.watch import Watch

# After a result, how long the sensors get to record what came just before it before the check is
# reported: one sampling interval, so that a socket still open at the result is sampled (a packet
# reaches the capture within milliseconds).
DRAIN_S = SAMPLE_INTERVAL_S
SAMPLER = "sockets"  # the socket sampler's name on its events (sensors/sockets.py)
WORKER = "the audit worker"
STARTING = "while the worker started"
ENDING = "after the worker's last result"
NAMESPACE = "net:["  # the target of a move into another network namespace (sensors/ebpf.py)


@dataclass(frozen=True)
class _Attributed:
    """Makes findings as the check `id` does, but in category behaviour: what a worker does besides
    computing is the device stack's behaviour, whichever check it was computing for."""

    id: str
    who: str = WORKER

    def finding(self, severity: Severity, title: str, detail: str = "", **evidence: Any) -> Finding:
        return Finding(check=self.id, category=Category.behaviour, severity=severity,
                       title=f"{self.who}: {title}", detail=detail, evidence=evidence)


class WorkerSensors:
    """The audit's sensors for its workers: one `Watch` for the whole audit, a name and a scratch
    folder per worker (`folder` is the tool's own and private)."""

    def __init__(self, watch: Watch, folder: Path, params: dict[str, Any]) -> None:
        self.watch, self.folder = watch, folder
        self.allow = allowlist.load(params)
        # The tool's own folders: its workers' logs and scratch, the sensors' records, the evidence staging.
        # The evidence staging is also the one folder a worker writes for the tool to read: shared into
        # its container (its root's own writes never reach the machine).
        self.shares = (Path(params[EVIDENCE_DIR_PARAM]),) if params.get(EVIDENCE_DIR_PARAM) else ()
        self.own = [folder, watch.workdir, *self.shares]
        self.names: list[str] = []
        # What has been attributed, by name and event, over every worker: a stray is read by each.
        self.taken: Counter[tuple[object, ...]] = Counter()

    def worker(self, name: str = "", who: str = WORKER) -> WatchedWorker:
        """A worker's sensors, under `name` (by default the next worker's number); `who` names it in
        its findings."""
        name = name or f"worker {len(self.names) + 1}"
        self.names.append(name)
        scratch = self.folder / name.replace(" ", "-")
        scratch.mkdir(mode=0o700, parents=True)
        return WatchedWorker(self, name, scratch, who)

    def strays(self) -> list[str]:
        """Names the watch saw things under that are no worker's: a detached process whose session
        the sampler did not see. Workers run one at a time, so it is the current one's."""
        return [n for n in self.watch.names() if n not in self.names]


class WatchedWorker:
    """One worker under the audit's sensors: the wrapper it starts in (which has its tree sampled
    from its start), and its checks' windows."""

    def __init__(self, sensors: WorkerSensors, name: str, scratch: Path, who: str = WORKER) -> None:
        self.sensors, self.name, self.who = sensors, name, who
        self.wrapper: Wrapper = sensors.watch.wrapper(name, shares=sensors.shares)
        self.job = {SCRATCH: str(scratch)}
        # The worker's output, in the tool's folder and known to the sampler before the worker starts.
        self.log = scratch.with_suffix(".log")
        sensors.watch.own_files([self.log])
        self.windows: list[tuple[str, float, float]] = []  # check id, start, result (inf while it runs)
        self.pid = 0  # the worker process's, once started

    def started(self, check_id: str, at: float) -> None:
        self.windows.append((check_id, at, float("inf")))

    def settle(self, result: CheckResult, findings: list[Finding], ended: float,
               last: bool) -> tuple[CheckResult, list[Finding]]:
        """`result` (sent at `ended`) and `findings` with what the sensors saw while the check ran,
        and the sensors in its coverage. `last`: the worker has ended, and everything not yet
        attributed is this check's."""
        if self.windows and self.windows[-1][0] == result.id:
            self.windows[-1] = (result.id, self.windows[-1][1], ended)
        time.sleep(DRAIN_S)
        by_when: dict[str, list[Event]] = {}
        events = self._new(None if last else ended)
        if result.category is Category.behaviour:
            events = [e for e in events if self._device_side(e)]
        for event in events:
            by_when.setdefault(self._when(_time(event, ended), result.id, ended, last), []).append(event)
        observations = {f"{self.who} ({when})" if when else self.who: Observation(events)
                        for when, events in by_when.items()}
        found = sensor_findings(cast(Check, _Attributed(result.id, self.who)), observations, self.sensors.allow)
        amended = _amend(result, findings, found, self.sensors.watch.statuses(), self.sensors.watch.world())
        return amended, [*findings, *found]

    def _new(self, until: float | None) -> list[Event]:
        """Events not yet attributed that happened by `until` (None: all), less the tool's own. An
        event is known by what it is and when it began: a conversation the capture keeps adding
        packets to is one event."""
        taken = Counter(self.sensors.taken)
        out: list[Event] = []
        for name in [self.name, *self.sensors.strays()]:
            for event in self.sensors.watch.events(name):
                key = (name, event.sensor, event.kind, event.action, event.target, event.pid, event.time)
                if taken[key]:
                    taken[key] -= 1
                elif until is None or _time(event, until) <= until:
                    self.sensors.taken[key] += 1
                    out.append(event)
        return without_faketime_artefacts([e for e in out if not self._own(e)], set())

    def _device_side(self, event: Event) -> bool:
        """During a behaviour probe, whether an event may be the device stack's: the probe runs its
        workloads (and its own sinkhole, shims and tracer) as children of the worker, in namespaces
        it makes, and watches them itself; what stays for these sensors is the worker process's own,
        less what the probe does there by design: moving its children into new namespaces, and
        removing its folders with calls relative to a folder's descriptor, which no path places."""
        if event.pid != self.pid:
            return False
        if event.kind == PROCESS and event.target.startswith(NAMESPACE):
            return False
        return not (event.kind == FILE and not os.path.isabs(event.target))

    def _own(self, event: Event) -> bool:
        return event.kind == FILE and any(_under(event.target, folder) for folder in self.sensors.own)

    def _when(self, t: float, check_id: str, ended: float, last: bool) -> str:
        """When, relative to the checks, an event attributed to `check_id` happened ('' while it ran)."""
        if not self.windows or t < self.windows[0][1]:
            return STARTING
        if last and t > ended:
            return ENDING
        earlier = next((c for c, start, end in self.windows if start <= t <= end and c != check_id), None)
        return f"during {earlier}, seen after its result" if earlier else ""


def _time(event: Event, default: float) -> float:
    """The earliest an event may have happened: the sampler sees a socket or a file up to one
    interval after it was opened; the capture and a syscall tracer time it as it happens."""
    if not event.time:
        return default
    return event.time - SAMPLE_INTERVAL_S if event.sensor == SAMPLER else event.time


def _under(path: str, folder: Path) -> bool:
    return os.path.commonpath([path, str(folder)]) == str(folder) if os.path.isabs(path) else False


def _amend(result: CheckResult, findings: list[Finding], found: list[Finding],
           statuses: list[SensorStatus], world: dict[str, Any]) -> CheckResult:
    """The result with the worker's sensors and world in its coverage (and what they could not watch,
    and what a stack could still see, in its limits), its status from every finding; a check that
    errored stays an error, and one skipped stays skipped unless the sensors found something."""
    out = result.model_copy(deep=True)
    out.coverage["world"] = {"kind": world["kind"], "tells": []}
    sensors = out.coverage.get("sensors")
    out.coverage["sensors"] = {**(sensors if isinstance(sensors, dict) else {}),
                               **{f"worker {s.name}": s.as_dict() for s in statuses}}
    missed = [f"the worker was not watched by {s.name}: {s.detail}" for s in statuses if not s.ran]
    missed += world["visible"]
    if missed:
        out.coverage["limits"] = [*out.coverage.get("limits", []), *missed]
    if found and out.status in (Status.passed, Status.warning):
        out.status = status_for([*findings, *found])
    elif found and out.status is Status.skipped and status_for(found) is not Status.passed:
        out.status = status_for(found)
    return out
