"""The tool's side of a resident check (Check.resident; checks/integrity/resident.py is the contract):
one device process started before the audit's first other check and asked to end after its last.

The process is an audit worker (runner/worker.py) given the resident check alone, started as every
worker is, through process/child.py under the audit's sensors (runner/watched.py) with the same
wrappers, so that it is watched as they are: what it does besides computing becomes behaviour
findings of its own check, judged by checks/behaviour/findings.py as the workers' are, over one
window that is the whole audit. The tool keeps its input open; ending the input asks the check to end
(CheckContext.stop), and the check then sends its result.

A device that stops answering in the middle of a job is what a kill switch looks like, so silence is
a finding here, never an error: the job reports after every step, and no word for STEP_DEADLINE_S, or
for STALL_FACTOR times its longest gap between reports so far when that is longer, ends the process
and fails the check (high). Its steps take milliseconds to a second, so the deadline leaves a busy host
a wide margin. A process that dies is judged as a worker dying while it computes
(runner/watchdog.died): a high finding, unless SIGKILL came from outside.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from chipaudit.process import launch
from chipaudit.process.child import STARTUP_TIMEOUT_S, Child, Wrapper
from chipaudit.report.model import CheckResult, Finding, Severity, Status
from chipaudit.runner.watchdog import LOG_TAIL_BYTES, WORKER, WORKER_EXIT_GRACE_S, PlannedCheck, died
from chipaudit.runner.watched import WatchedWorker, WorkerSensors

STEP_DEADLINE_S = 60.0
STALL_FACTOR = 10.0
# One thread for torch's work and the host BLAS's, as torchrun gives every process of a job: on a CPU
# device the job's share is then a share of one core, and its host checks never spin threads against
# the audit's (OpenBLAS's threads on a loaded 2-core host made a window's check 10-30x slower, measured).
# Set from inside as the job starts (process/launch.py): OMP_NUM_THREADS in its environment was the one
# tell world_tells found in it.
ONE_THREAD = Wrapper(env={launch.THREADS: "1"})
NAME = "resident job"  # its name under the sensors
WHO = "the resident job"  # its name in its behaviour findings


class Resident:
    """One resident check's process, from its start to its result (`finish`); a context manager that
    kills the process on the way out (Ctrl-C included)."""

    def __init__(self, check: PlannedCheck, job: dict[str, Any], wrappers: Sequence[Wrapper],
                 sensors: WorkerSensors) -> None:
        self.check = check
        self.watched: WatchedWorker = sensors.worker(NAME, WHO)
        self.child: Child | None = None
        self.failed_start = ""
        self.last: dict[str, Any] = {}  # the job's last report
        self.result: dict[str, Any] | None = None
        self.silent_s = 0.0  # how long it had been silent when it was ended; 0 while it answered
        self.deadline_s = STARTUP_TIMEOUT_S
        self.ended = 0.0
        try:
            self.child = Child(WORKER, [self.watched.wrapper, *wrappers, ONE_THREAD],
                               log=self.watched.log)
        except (RuntimeError, OSError) as e:
            self.failed_start = f"the resident job could not be started under its sensors: {e}"
            return
        self.watched.pid = self.child.innermost()
        self.child.send({**job, **self.watched.job, "checks": [[check.id, check.seed]]})
        self._reader = threading.Thread(target=self._follow, daemon=True, name="resident")
        self._reader.start()

    def _follow(self) -> None:
        """Read the job's reports until its result, its end, or its silence past the deadline."""
        assert self.child is not None
        longest = 0.0
        heard = time.monotonic()
        while True:
            message = self.child.receive(max(0.0, heard + self.deadline_s - time.monotonic()))
            now = time.monotonic()
            if message is None:
                if not self.child.eof:
                    self.silent_s = now - heard
                    self.child.stop(wait_s=0)
                break
            if message.get("type") == "start":
                self.watched.started(self.check.id, min(float(message.get("time", time.time())), time.time()))
            elif message.get("type") == "progress":
                # Until its first step the job imports torch and draws its weights: the start-up's limit.
                if self.last:
                    longest = max(longest, now - heard)
                self.deadline_s = max(STEP_DEADLINE_S, STALL_FACTOR * longest)
                self.last = message
            elif message.get("type") == "result":
                self.result = message
                break
            heard = now
        self.ended = time.time()

    def finish(self) -> tuple[CheckResult, list[Finding]]:
        """Ask the job to end and judge what it returns, or how it stopped, with what the sensors saw."""
        if self.child is None:
            return CheckResult(id=self.check.id, category=self.check.category, status=Status.error,
                               seed=self.check.seed, reason=self.failed_start), []
        self.child.close_input()
        self._reader.join()
        status = self.child.stop(grace_s=WORKER_EXIT_GRACE_S)
        if self.result is not None:
            outcome = (CheckResult.model_validate(self.result["result"]),
                       [Finding.model_validate(f) for f in self.result["findings"]])
            ended = min(float(self.result.get("time", self.ended)), self.ended)
        else:
            ended = self.ended
            tail = self.child.last_line(LOG_TAIL_BYTES)
            outcome = self._stopped(tail) if self.silent_s else died(
                self.check, f"the resident job's process died (exit status {status}) after {self._done()}"
                + (f": {tail}" if tail else ""), status)
        return self.watched.settle(*outcome, ended, last=True)

    def _done(self) -> str:
        return f"{self.last.get('done', 0)} steps ({self.last.get('note', 'none reported')})"

    def _stopped(self, tail: str) -> tuple[CheckResult, list[Finding]]:
        reason = (f"the resident job stopped answering: no word for {self.silent_s:.0f} s (its deadline) after "
                  f"{self._done()}")
        finding = Finding(
            check=self.check.id, category=self.check.category, severity=Severity.high,
            title="the device stopped answering in the resident job",
            detail=f"{reason}. A device that stops answering in the middle of a job refuses it by hanging; its "
                   "process was ended. Replay the audit's seed to repeat the job step for step.",
            evidence={"seed": self.check.seed, "steps": self.last.get("done", 0), "last_report": self.last.get("note"),
                      "silent_s": round(self.silent_s, 1), "deadline_s": round(self.deadline_s, 1),
                      "log_tail": tail})
        return CheckResult(id=self.check.id, category=self.check.category, status=Status.failed,
                           seed=self.check.seed, reason=reason), [finding]

    def __enter__(self) -> Resident:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.child is not None:
            self.child.stop()
            self._reader.join()
            self.child.close()
