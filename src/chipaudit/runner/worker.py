"""The checks run here, in a worker process, never in the CLI's own: a check that hangs inside a
driver call or crashes the interpreter then takes down only its worker; the parent's watchdog
records an error and starts a fresh worker for the remaining checks (OpenDCDiag runs each test in a
fresh process for the same reason). The worker inherits the caller's environment unchanged, but for
what the watchdog's wrappers change.

Protocol (process/child.py): the job is the one message on stdin; start, progress and result
messages go back to the tool, start and result with the time they were sent (which bounds each
check's window for the sensors around the worker more closely than the tool's reading of them).

The tool ends the worker's input after the job; a resident check (runner/resident.py) runs until
then, so the tool keeps the resident worker's input open for as long as the audit runs.

The job may name a scratch folder of the tool's (runner/watched.py): the worker's temporary files
go there (the behaviour harness's folders, its children's logs), so that the sensors around the
worker can tell the tool's own writes from the device stack's.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from chipaudit.checks import by_id
from chipaudit.checks.base import Check, CheckContext, NotApplicable, status_for
from chipaudit.process.child import SCRATCH, Channel, child_main
from chipaudit.report.model import CheckResult, Finding, Level, Status


def run_check(check: Check, check_id: str, seed: int, device: str, level: Level, params: dict[str, Any],
              progress: Callable[[int, int, str, float | None], None],
              stop: Callable[[float], bool] = lambda seconds: True) -> tuple[CheckResult, list[Finding]]:
    """One check, as the runner reports it: skipped with its reason, an exception as an error with its
    traceback in the measurements, or its status from its findings. The watcher's bursts
    (runner/watch) run through here too. `stop`: CheckContext.stop."""
    t0 = time.perf_counter()
    result = CheckResult(id=check_id, category=check.category, status=Status.skipped, seed=seed)
    findings: list[Finding] = []
    reason = check.is_supported(device)
    if reason is not None:
        result.reason = reason
    else:
        ctx = CheckContext(device=device, level=level, seed=seed, params=params, report_progress=progress, stop=stop)
        try:
            outcome = check.run(ctx)
        except NotApplicable as e:
            result.reason = str(e)
        except Exception as e:
            result.status = Status.error
            result.reason = f"{type(e).__name__}: {e}".splitlines()[0][:500]
            result.measurements["traceback"] = traceback.format_exc()[-4000:]
        else:
            findings = outcome.findings
            result.status = status_for(findings)
            result.coverage, result.measurements = outcome.coverage, outcome.measurements
    result.duration_s = round(time.perf_counter() - t0, 3)
    return result, findings


def run_job(job: dict[str, Any], channel: Channel) -> None:
    if job.get(SCRATCH):
        tempfile.tempdir = job[SCRATCH]
    registry = by_id()
    level = Level(job["level"])
    ended = threading.Event()
    threading.Thread(target=_until_closed, args=(channel, ended), daemon=True, name="input").start()
    for check_id, seed in job["checks"]:
        channel.send({"type": "start", "check": check_id, "time": time.time()})
        result, findings = run_check(
            registry[check_id], check_id, seed, job["device"], level, job.get("params", {}),
            lambda done, total, note, expect_s, cid=check_id: channel.send(
                {"type": "progress", "check": cid, "done": done, "total": total, "note": note, "expect_s": expect_s,
                 "time": time.time()}), ended.wait)
        channel.send({
            "type": "result", "check": check_id, "time": time.time(), "result": result.model_dump(mode="json"),
            "findings": [f.model_dump(mode="json") for f in findings],
        })
        if result.status is Status.error:
            # The device may be left unusable (a sticky driver error): hand back to the parent, which
            # starts a fresh worker for what is left.
            return


def _until_closed(channel: Channel, ended: threading.Event) -> None:
    """Set `ended` when the tool ends the worker's input (no message after the job is expected)."""
    for _ in channel:
        pass
    ended.set()


if __name__ == "__main__":
    sys.exit(child_main(run_job))
