"""The parent side of the worker protocol: start workers, enforce each check's time limit, and turn
hangs and crashes into `error` results so that the run goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chipaudit.report.model import Category, CheckResult, Finding, Status

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


@dataclass
class WorkerSpec:
    """How to start a worker. Behaviour probes wrap the same worker in tracers and perturbations."""

    prefix: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None


def worker_command(result_fd: int) -> list[str]:
    return [sys.executable, "-m", "chipaudit.runner.worker", "--result-fd", str(result_fd)]


class _Lines:
    """Whole lines from a pipe, with a timeout, without blocking on a partial line."""

    def __init__(self, fd: int):
        self.fd, self.buffer = fd, b""

    def read(self, timeout: float) -> str | None:
        """A line; '' at end of stream; None on timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return ""
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def _kill(proc: subprocess.Popen[bytes], grace_s: float = 0.0) -> None:
    """Stop the worker's whole process group (wrappers such as strace included)."""
    if grace_s:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.wait()


def _tail(path: str, limit: int = 600) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            text = f.read().decode(errors="replace").strip()
    except OSError:
        return ""
    return text.splitlines()[-1] if text else ""


def run_plan(
    plan: list[PlannedCheck], job: dict[str, Any], events: Events, spec: WorkerSpec | None = None
) -> None:
    """Run every planned check, each once, in as few workers as hangs and crashes allow."""
    spec = spec or WorkerSpec()
    pending = list(plan)
    while pending:
        pending = _run_worker(pending, job, events, spec)


def _error(check: PlannedCheck, reason: str) -> CheckResult:
    return CheckResult(id=check.id, category=check.category, status=Status.error, seed=check.seed, reason=reason)


def _run_worker(
    pending: list[PlannedCheck], job: dict[str, Any], events: Events, spec: WorkerSpec
) -> list[PlannedCheck]:
    """Start one worker on `pending`; return what is left when it ends."""
    read_fd, write_fd = os.pipe()
    with tempfile.NamedTemporaryFile(prefix="chipaudit-worker-", suffix=".log", delete=False) as log:
        log_path = log.name
    try:
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [*spec.prefix, *worker_command(write_fd)], stdin=subprocess.PIPE, stdout=log_file,
                stderr=log_file, pass_fds=(write_fd,), env=spec.env, start_new_session=True,
            )
        os.close(write_fd)
        write_fd = -1
        try:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # a worker that died at once is seen below
                proc.stdin.write(json.dumps({**job, "checks": [[c.id, c.seed] for c in pending]}).encode())
                proc.stdin.close()
            left = _supervise(proc, _Lines(read_fd), pending, events, log_path)
        except BaseException:  # Ctrl-C included: never leave a worker running on the device
            _kill(proc)
            raise
        _kill(proc, grace_s=WORKER_EXIT_GRACE_S)
        return left
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
        os.unlink(log_path)


def _supervise(
    proc: subprocess.Popen[bytes], lines: _Lines, pending: list[PlannedCheck], events: Events, log_path: str
) -> list[PlannedCheck]:
    by_id = {c.id: c for c in pending}
    left = list(pending)
    current: PlannedCheck | None = None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while left:
        line = lines.read(max(0.0, deadline - time.monotonic()))
        if line is None or line == "":
            _kill(proc)
            if line is None:
                what = (f"did not finish within {current.timeout_s:.0f} s (watchdog)" if current
                        else f"the worker did not start within {STARTUP_TIMEOUT_S:.0f} s")
            else:
                what = f"the worker process died (exit status {proc.returncode})"
            detail = _tail(log_path)
            reason = what + (f": {detail}" if detail else "")
            # A worker that dies before starting anything cannot be retried usefully: every check
            # it was given errors with the same reason, so the run still ends.
            failed = [current] if current else left
            for check in failed:
                events.finished(_error(check, reason), [])
            return [c for c in left if c not in failed]
        message = json.loads(line)
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
