"""The worker process: runs checks on the device and streams results back as JSON lines.

Device work never runs in the CLI's own process. A check that hangs inside a driver call or crashes
the interpreter takes down only its worker; the parent's watchdog records an error and starts a
fresh worker for the remaining checks (OpenDCDiag runs each test in a fresh process for the same
reason). The worker inherits the caller's environment unchanged.

Protocol: the job (JSON) arrives on stdin; messages leave on the file descriptor named by
--result-fd, one JSON object per line: start, progress, result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import IO, Any

from chipaudit.checks import by_id
from chipaudit.checks.base import CheckContext, NotApplicable, status_for
from chipaudit.report.model import CheckResult, Level, Status


def send(channel: IO[str], message: dict[str, Any]) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def run_job(job: dict[str, Any], channel: IO[str]) -> None:
    registry = by_id()
    level = Level(job["level"])
    for check_id, seed in job["checks"]:
        check = registry[check_id]
        send(channel, {"type": "start", "check": check_id})
        t0 = time.perf_counter()
        result = CheckResult(id=check_id, category=check.category, status=Status.skipped, seed=seed)
        findings = []
        reason = check.is_supported(job["device"])
        if reason is not None:
            result.reason = reason
        else:
            ctx = CheckContext(
                device=job["device"], level=level, seed=seed, params=job.get("params", {}),
                report_progress=lambda done, total, note, cid=check_id: send(
                    channel, {"type": "progress", "check": cid, "done": done, "total": total, "note": note}),
            )
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
        send(channel, {
            "type": "result", "check": check_id, "result": result.model_dump(mode="json"),
            "findings": [f.model_dump(mode="json") for f in findings],
        })
        if result.status is Status.error:
            # The device may be left unusable (a sticky driver error): hand back to the parent, which
            # starts a fresh worker for what is left.
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chipaudit.runner.worker")
    parser.add_argument("--result-fd", type=int, required=True)
    args = parser.parse_args(argv)
    job = json.load(sys.stdin)
    with os.fdopen(args.result_fd, "w", buffering=1) as channel:
        run_job(job, channel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
