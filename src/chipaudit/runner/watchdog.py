"""The audit's watchdog. A device under audit may hang in a driver call or crash the interpreter,
and either must cost one check, not the audit: each check gets a time limit of its own, a hang
becomes that check's `error` result, and the checks left run on in a fresh worker (a device may be
left unusable by the error, so the worker that saw it is not reused).

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
from dataclasses import dataclass
from typing import Any

from chipaudit.process.child import STARTUP_TIMEOUT_S, Child, Wrapper
from chipaudit.report.model import Category, CheckResult, Finding, Severity, Status
from chipaudit.runner.watched import WatchedWorker, WorkerSensors

# After its last result a worker only tears down; give wrappers time to flush their logs.
WORKER_EXIT_GRACE_S = 10.0


@dataclass
class PlannedCheck:
    id: str
    category: Category
    seed: int
    timeout_s: float
    resident: bool = False  # Check.resident: runs beside the others (runner/resident.py), not in run_plan


@dataclass
class Events:
    started: Callable[[str], None] = lambda check_id: None
    progress: Callable[[str, int, int, str], None] = lambda check_id, done, total, note: None
    finished: Callable[[CheckResult, list[Finding]], None] = lambda result, findings: None


# The worker's command; `Child` appends its result descriptor.
WORKER = (sys.executable, "-m", "chipaudit.runner.worker")
# The host's BLAS (NumPy's OpenBLAS: the oracle, the burn-in's host control) keeps its threads spinning for
# 2^28 cycles, about 0.1 s, after each call, by default. On a CPU device those are the device's cores: a
# product of torch's right after a host check ran at half speed (38 ms against 13 ms at 1024^3 on a 2-core
# host, measured). 2^4 cycles, OpenBLAS's least, hands the cores back at once.
HOST_BLAS = Wrapper(env={"OPENBLAS_THREAD_TIMEOUT": "4", "GOTO_THREAD_TIMEOUT": "4"})
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
    pending = list(plan)
    while pending:
        pending = _run_worker(pending, job, events, wrappers, sensors.worker() if sensors else None)


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


def _run_worker(
    pending: list[PlannedCheck], job: dict[str, Any], events: Events, wrappers: Sequence[Wrapper],
    watched: WatchedWorker | None,
) -> list[PlannedCheck]:
    """Start one worker on `pending`; return what is left when it ends. On any exception, Ctrl-C
    included, the worker is killed on the way out: never leave a worker running on the device."""
    outer = [watched.wrapper] if watched else []
    try:
        child = Child(WORKER, [*outer, *wrappers, HOST_BLAS], log=watched.log if watched else None)
    except (RuntimeError, OSError) as e:
        if watched is None:
            raise
        # Its world could not be made (the namespace not wired to the sinkhole): no check runs
        # outside its sensors, and none passes for it.
        for check in pending:
            events.finished(_error(check, f"the worker could not be started under its sensors: {e}"), [])
        return []
    if watched is not None:
        watched.pid = child.pid  # the wrappers execute the worker in their own place
    with child:
        # A worker that died at once is seen by _supervise.
        child.send({**job, **(watched.job if watched else {}), "checks": [[c.id, c.seed] for c in pending]})
        child.close_input()
        left = _supervise(child, pending, events, watched)
        child.stop(grace_s=WORKER_EXIT_GRACE_S)
    return left


def _sent(message: dict[str, Any] | None, received: float) -> float:
    """When the worker sent `message`, by its own word where it gives one that is not later than
    its arrival (a busy tool reads late; a worker's word cannot move an event out of the audit,
    only between its checks)."""
    stamp = (message or {}).get("time")
    return min(float(stamp), received) if isinstance(stamp, (int, float)) and math.isfinite(stamp) else received


def _supervise(child: Child, pending: list[PlannedCheck], events: Events,
               watched: WatchedWorker | None) -> list[PlannedCheck]:
    def finished(result: CheckResult, findings: list[Finding], sent: float, last: bool) -> None:
        if watched:
            if last:  # its teardown is the last check's too: wait for it, within limits
                child.stop(grace_s=WORKER_EXIT_GRACE_S)
            result, findings = watched.settle(result, findings, sent, last)
        events.finished(result, findings)

    by_id = {c.id: c for c in pending}
    left = list(pending)
    current: PlannedCheck | None = None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while left:
        message = child.receive(max(0.0, deadline - time.monotonic()))
        sent = _sent(message, time.time())
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
            deadline = time.monotonic() + check.timeout_s
            if watched:
                watched.started(check.id, sent)
            events.started(check.id)
        elif message["type"] == "progress":
            events.progress(check.id, message["done"], message["total"], message["note"])
        elif message["type"] == "result":
            result = CheckResult.model_validate(message["result"])
            findings = [Finding.model_validate(f) for f in message["findings"]]
            left.remove(check)
            last = not left or result.status is Status.error
            finished(result, findings, sent, last)
            current = None
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            if result.status is Status.error:
                return left
    return left
