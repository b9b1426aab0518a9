"""The audit's watchdog. A device under audit may hang in a driver call or crash the interpreter,
and either must cost one check, not the audit: each check gets a time limit of its own, and the
checks left run on in a fresh worker (a device may be left unusable, so the worker that saw it is
not reused).

A device that stops answering in the middle of a check is a finding, not an error
(checks/stopped.py): each progress point a check reports may say how long its next step should take,
from the device's own measured time for that format, which also says that the format answered
before. A step silent past `stopped.limit_s` of it is re-run in a fresh worker with the same seed
(`_retest`, bounded by `stopped.retest_limit_s`); stopping again at the same point, on a host whose
load explains neither silence (sensors/hostload.py), makes the check's high finding "the device
stopped answering". A hang that does not repeat there, or that a loaded host explains, and a check
that runs past its whole time limit, stay the check's `error`.

A crash while a check computes on the device is a finding, not an error: a process that asked the
device for work and was ended from inside (a driver's abort, a segfault, an exit) is a refusal by
crashing (checks/refusal.py), which a kill switch may choose over an error. Only a death by SIGKILL,
which comes from outside (the kernel's out-of-memory killer, an operator), stays an error.

Given the audit's sensors (runner/watched.py), every worker runs inside them, and each check's
result is reported with what they saw of its worker while it ran.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from chipaudit.checks import by_id, stopped
from chipaudit.process.child import STARTUP_TIMEOUT_S, Child, Wrapper
from chipaudit.report.model import Category, CheckResult, Finding, Level, Severity, Status
from chipaudit.runner.watched import WatchedWorker, WorkerSensors
from chipaudit.runner.worker import run_check
from chipaudit.sensors.hostload import Sample, Window

# After its last result a worker only tears down; give wrappers time to flush their logs.
WORKER_EXIT_GRACE_S = 10.0


@dataclass
class PlannedCheck:
    id: str
    category: Category
    seed: int
    timeout_s: float
    host_view: bool = False  # runs in the tool's own process (Check.host_view)
    resident: bool = False  # Check.resident: runs beside the others (runner/resident.py), not in run_plan


@dataclass
class Events:
    started: Callable[[str], None] = lambda check_id: None
    progress: Callable[[str, int, int, str], None] = lambda check_id, done, total, note: None
    finished: Callable[[CheckResult, list[Finding]], None] = lambda result, findings: None


# The worker's module (`Child` starts it from the stage, process/neutral.py).
WORKER = (sys.executable, "-m", "chipaudit.runner.worker")
# How much of a dead worker's output to search for its last line (its traceback's last line).
LOG_TAIL_BYTES = 600
# Checks whose worker computes on the device the whole time (behaviour probes run their workloads in
# processes of their own and judge those crashes themselves; stack checks compute nothing).
DEVICE_WORK = frozenset({Category.integrity, Category.performance})
# A worker's status when SIGKILL ended it: as the process itself, or as a wrapper that reports it.
KILLED = frozenset({-signal.SIGKILL, 128 + signal.SIGKILL})


def run_plan(
    plan: list[PlannedCheck], job: dict[str, Any], events: Events, wrappers: Sequence[Wrapper] = (),
    sensors: WorkerSensors | None = None,
) -> None:
    """Run every planned check, each once, in as few workers as hangs and crashes allow; each worker
    runs inside `sensors` (when given), then `wrappers` (outermost first)."""
    pending = [c for c in plan if not c.host_view]
    for check in plan:
        if check.host_view:
            events.started(check.id)
            events.finished(*run_check(by_id()[check.id], check.id, check.seed, job["device"], Level(job["level"]),
                                       job.get("params", {}), lambda done, total, note, _expect_s, cid=check.id:
                                       events.progress(cid, done, total, note)))

    def on_stall(check: PlannedCheck, stall: stopped.Stall) -> tuple[CheckResult, list[Finding]]:
        return _retest(check, stall, job, events, wrappers, sensors)

    while pending:
        pending = _run_worker(pending, job, events, wrappers, sensors, on_stall)


# What the supervisor does with a check that stopped answering: its result and findings.
OnStall = Callable[[PlannedCheck, stopped.Stall], tuple[CheckResult, list[Finding]]]


def _error(check: PlannedCheck, reason: str) -> CheckResult:
    return CheckResult(id=check.id, category=check.category, status=Status.error, seed=check.seed, reason=reason)


def died(check: PlannedCheck, reason: str, status: int | None) -> tuple[CheckResult, list[Finding]]:
    """The result of a check whose worker died while it ran: a refusal by crashing where the device
    was at work and nothing outside ended the process, else an error."""
    if check.category not in DEVICE_WORK or status is None or status in KILLED:
        return _error(check, reason), []
    finding = Finding(
        check=check.id, category=check.category, severity=Severity.high,
        title=f"the device's stack ended the process computing {check.id}",
        detail=f"{reason}. A device stack that crashes the process asking for work refuses that work; "
               "replay the check's seed to see it again.",
        evidence={"exit_status": status, "seed": check.seed})
    return CheckResult(id=check.id, category=check.category, status=Status.failed, seed=check.seed,
                       reason=reason), [finding]


def _retest(check: PlannedCheck, first: stopped.Stall, job: dict[str, Any], events: Events,
            wrappers: Sequence[Wrapper], sensors: WorkerSensors | None) -> tuple[CheckResult, list[Finding]]:
    """Run `check` again with its seed in a fresh worker, alone, within `stopped.retest_limit_s`, and
    judge the first stop by whether it stops again at the same point. What the fresh worker's
    sensors saw, and the findings of a re-test that ran to its end, are kept."""
    events.progress(check.id, int(first.point.get("done", 0)), int(first.point.get("total", 0)),
                    "no answer: re-testing in a fresh worker")
    again: list[stopped.Stall] = []
    ran: list[tuple[CheckResult, list[Finding]]] = []

    def stalled(c: PlannedCheck, stall: stopped.Stall) -> tuple[CheckResult, list[Finding]]:
        again.append(stall)
        return _error(c, "stopped again"), []

    bounded = replace(check, timeout_s=stopped.retest_limit_s(first.reached_s, first.limit_s, check.timeout_s))
    _run_worker([bounded], job, Events(finished=lambda r, f: ran.append((r, f))), wrappers, sensors, stalled,
                first)
    result, findings = ran[0] if ran else (_error(check, "the re-test reported nothing"), [])
    retest = (f"it ended {result.status.value}" + (f" ({result.reason})" if result.reason else "")
              + f" within {bounded.timeout_s:.0f} s")
    seed = job.get("seed")
    replay = f"chipaudit run --device {job['device']} --level {job['level']} --only {check.id} --seed {seed}" \
        if seed is not None else ""
    finding, reason = stopped.judge(check.id, check.category, check.seed, first, again[0] if again else None,
                                    retest, replay)
    # The check's own time until it was given up on; the re-test's is in its evidence.
    took = round(first.reached_s + first.silent_s, 3)
    if finding is None:
        return _error(check, reason).model_copy(update={"duration_s": took}), findings
    return CheckResult(id=check.id, category=check.category, status=Status.failed, seed=check.seed,
                       reason=finding.title, duration_s=took), [finding, *findings]


def _run_worker(
    pending: list[PlannedCheck], job: dict[str, Any], events: Events, wrappers: Sequence[Wrapper],
    sensors: WorkerSensors | None, on_stall: OnStall, retesting: stopped.Stall | None = None,
) -> list[PlannedCheck]:
    """Start one worker on `pending`; return what is left when it ends. On any exception, Ctrl-C
    included, the worker is killed on the way out: never leave a worker running on the device."""
    watched = sensors.worker() if sensors else None
    outer = [watched.wrapper] if watched else []
    try:
        child = Child(WORKER, [*outer, *wrappers], log=watched.log if watched else None)
    except (RuntimeError, OSError) as e:
        if watched is None:
            raise
        # Its world could not be made (the namespace not wired to the sinkhole): no check runs
        # outside its sensors, and none passes for it.
        for check in pending:
            events.finished(_error(check, f"the worker could not be started under its sensors: {e}"), [])
        return []
    if watched is not None:
        watched.pid = child.innermost()
    with child:
        # A worker that died at once is seen by _supervise.
        child.send({**job, **(watched.job if watched else {}), "checks": [[c.id, c.seed] for c in pending]})
        child.close_input()
        left = _supervise(child, pending, events, watched, on_stall, retesting)
        child.stop(grace_s=WORKER_EXIT_GRACE_S)
    return left


def _sent(message: dict[str, Any] | None, received: float) -> float:
    """When the worker sent `message`, by its own word where it gives one that is not later than
    its arrival (a busy tool reads late; a worker's word cannot move an event out of the audit,
    only between its checks)."""
    stamp = (message or {}).get("time")
    return min(float(stamp), received) if isinstance(stamp, (int, float)) and math.isfinite(stamp) else received


class _Pace:
    """Where the current check stands for the stop rule: its last progress point with an expected
    time, when that point's step counts as stopped, and the host as it was while the device answered.
    A re-test holds the point where the first run stopped to the first run's limit, so that its own
    estimate, measured anew, cannot carry that limit past the re-test's bound."""

    def __init__(self, retesting: stopped.Stall | None = None) -> None:
        self.retesting = retesting
        self.began = time.monotonic()
        self.point: dict[str, Any] = {}
        self.answers = 0
        self.expect_s = 0.0
        self.stall_at = math.inf
        self.mark: Sample | None = None  # the host at the last point
        self.before: Sample | None = None  # with the control timed, at the first point

    def progress(self, message: dict[str, Any]) -> None:
        expect = message.get("expect_s")
        if not isinstance(expect, (int, float)) or not math.isfinite(expect) or expect < 0:
            self.stall_at = math.inf  # a step with no estimate: only the check's own limit holds
            return
        self.answers += 1
        self.point = {"done": message.get("done"), "total": message.get("total"), "note": message.get("note")}
        self.expect_s = float(expect)
        self.mark = Sample.take()
        self.before = self.before or Sample.take(control=True)
        self.stall_at = self.mark.at + self.limit_s()

    def limit_s(self) -> float:
        if self.retesting is not None and self.retesting.point == self.point:
            return self.retesting.limit_s
        return stopped.limit_s(self.expect_s)

    def stall(self) -> stopped.Stall:
        assert self.mark is not None and self.before is not None
        end = Sample.take(control=True)
        return stopped.Stall(point=self.point, answers=self.answers - 1, expect_s=self.expect_s,
                             limit_s=self.limit_s(), silent_s=end.at - self.mark.at,
                             reached_s=self.mark.at - self.began, host=Window(self.before, self.mark, end))


def _supervise(child: Child, pending: list[PlannedCheck], events: Events,
               watched: WatchedWorker | None, on_stall: OnStall,
               retesting: stopped.Stall | None = None) -> list[PlannedCheck]:
    def finished(result: CheckResult, findings: list[Finding], sent: float, last: bool) -> None:
        if watched:
            if last:  # its teardown is the last check's too: wait for it, within limits
                child.stop(grace_s=WORKER_EXIT_GRACE_S)
            result, findings = watched.settle(result, findings, sent, last)
        events.finished(result, findings)

    by_id = {c.id: c for c in pending}
    left = list(pending)
    current: PlannedCheck | None = None
    pace = _Pace(retesting)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while left:
        message = child.receive(max(0.0, min(deadline, pace.stall_at) - time.monotonic()))
        sent = _sent(message, time.time())
        if message is None and current is not None and not child.eof and time.monotonic() >= pace.stall_at:
            # Stopped after answering: the host is read before the worker goes, then the re-test judges.
            stall = pace.stall()
            child.stop()
            finished(*on_stall(current, stall), sent, True)
            return [c for c in left if c is not current]
        if message is None:
            status = child.stop()
            if not child.eof:
                what = (f"did not finish within {current.timeout_s:.0f} s (watchdog)" if current
                        else f"the worker did not start within {STARTUP_TIMEOUT_S:.0f} s")
            else:
                what = f"the worker process died (exit status {status})"
            detail = child.last_line(LOG_TAIL_BYTES)
            reason = what + (f": {detail}" if detail else "")
            if current is not None:
                ending = died(current, reason, status) if child.eof else (_error(current, reason), [])
                finished(*ending, sent, True)
                return [c for c in left if c is not current]
            # A worker that dies before starting anything cannot be retried usefully: every check
            # it was given errors with the same reason, so the run still ends.
            for check in left:
                finished(_error(check, reason), [], sent, True)
            return []
        check = by_id[message["check"]]
        if message["type"] == "start":
            current = check
            pace = _Pace(retesting)
            deadline = time.monotonic() + check.timeout_s
            if watched:
                watched.started(check.id, sent)
            events.started(check.id)
        elif message["type"] == "progress":
            pace.progress(message)
            events.progress(check.id, message["done"], message["total"], message["note"])
        elif message["type"] == "result":
            result = CheckResult.model_validate(message["result"])
            findings = [Finding.model_validate(f) for f in message["findings"]]
            left.remove(check)
            last = not left or result.status is Status.error
            finished(result, findings, sent, last)
            current = None
            pace = _Pace(retesting)
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            if result.status is Status.error:
                return left
    return left
