"""The audit's watchdog. A device under audit may hang in a driver call or crash the interpreter,
and either must cost one check, not the audit: each check gets a time limit of its own, a hang or a
crash becomes that check's `error` result, and the checks left run on in a fresh worker (a device
may be left unusable by the error, so the worker that saw it is not reused).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from chipaudit.report.model import Category, CheckResult, Finding, Status
from chipaudit.runner.child import Child, Wrapper

# Importing torch and initialising a device driver can take a while on a cold machine.
STARTUP_TIMEOUT_S = 180.0
# After its last result a worker only tears down; give wrappers time to flush their logs.
WORKER_EXIT_GRACE_S = 10.0


@dataclass
class PlannedCheck:
    id: str
    category: Category
    seed: int
    timeout_s: float


@dataclass
class Events:
    started: Callable[[str], None] = lambda check_id: None
    progress: Callable[[str, int, int, str], None] = lambda check_id, done, total, note: None
    finished: Callable[[CheckResult, list[Finding]], None] = lambda result, findings: None


# The worker's command; `Child` appends its result descriptor.
WORKER = (sys.executable, "-m", "chipaudit.runner.worker")
# How much of a dead worker's output to search for its last line (its traceback's last line).
LOG_TAIL_BYTES = 600


def run_plan(
    plan: list[PlannedCheck], job: dict[str, Any], events: Events, wrappers: Sequence[Wrapper] = ()
) -> None:
    """Run every planned check, each once, in as few workers as hangs and crashes allow; each worker
    runs inside `wrappers` (outermost first)."""
    pending = list(plan)
    while pending:
        pending = _run_worker(pending, job, events, wrappers)


def _error(check: PlannedCheck, reason: str) -> CheckResult:
    return CheckResult(id=check.id, category=check.category, status=Status.error, seed=check.seed, reason=reason)


def _run_worker(
    pending: list[PlannedCheck], job: dict[str, Any], events: Events, wrappers: Sequence[Wrapper]
) -> list[PlannedCheck]:
    """Start one worker on `pending`; return what is left when it ends. On any exception, Ctrl-C
    included, the worker is killed on the way out: never leave a worker running on the device."""
    with Child(WORKER, wrappers) as child:
        # A worker that died at once is seen by _supervise.
        child.send({**job, "checks": [[c.id, c.seed] for c in pending]})
        child.close_input()
        left = _supervise(child, pending, events)
        child.stop(grace_s=WORKER_EXIT_GRACE_S)
    return left


def _supervise(child: Child, pending: list[PlannedCheck], events: Events) -> list[PlannedCheck]:
    by_id = {c.id: c for c in pending}
    left = list(pending)
    current: PlannedCheck | None = None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while left:
        message = child.receive(max(0.0, deadline - time.monotonic()))
        if message is None:
            status = child.stop()
            if not child.eof:
                what = (f"did not finish within {current.timeout_s:.0f} s (watchdog)" if current
                        else f"the worker did not start within {STARTUP_TIMEOUT_S:.0f} s")
            else:
                what = f"the worker process died (exit status {status})"
            detail = child.last_line(LOG_TAIL_BYTES)
            reason = what + (f": {detail}" if detail else "")
            # A worker that dies before starting anything cannot be retried usefully: every check
            # it was given errors with the same reason, so the run still ends.
            failed = [current] if current else left
            for check in failed:
                events.finished(_error(check, reason), [])
            return [c for c in left if c not in failed]
        check = by_id[message["check"]]
        if message["type"] == "start":
            current = check
            deadline = time.monotonic() + check.timeout_s
            events.started(check.id)
        elif message["type"] == "progress":
            events.progress(check.id, message["done"], message["total"], message["note"])
        elif message["type"] == "result":
            result = CheckResult.model_validate(message["result"])
            findings = [Finding.model_validate(f) for f in message["findings"]]
            events.finished(result, findings)
            left.remove(check)
            current = None
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            if result.status is Status.error:
                return left
    return left
