"""The check interface, after CHIPSEC's modules: each check says whether it applies, then runs.

A check never decides its own status. It returns findings, coverage and measurements; the status
follows from the worst finding (`status_for`). It cannot report "passed" without having run,
because skipping is an exception (`NotApplicable`) and a crash or a hang is turned into `error`
by the runner.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from chipaudit.report.model import FAILING_SEVERITY, Category, Finding, Level, Severity, Status

# A check runs at these levels unless it names its own; smoke (seconds, runner/levels.py) is opt-in.
ALL_LEVELS: tuple[Level, ...] = (Level.quick, Level.standard, Level.deep)


class NotApplicable(Exception):
    """Raised by a check that cannot run on this device; the message is the reason shown to users."""


def derive_seed(run_seed: int, check_id: str) -> int:
    """Each check gets its own stable seed, so one check can be replayed alone with the run seed."""
    digest = hashlib.blake2b(f"{run_seed}:{check_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass
class CheckContext:
    device: str
    level: Level
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    report_progress: Callable[[int, int, str, float | None], None] = lambda done, total, note, expect_s: None
    # Waits up to the seconds given for the caller to ask the check to end; True once it has (an
    # Event's wait). A resident check (Check.resident) runs until then; a check run alone, as every
    # other check is, has been asked from the start.
    stop: Callable[[float], bool] = lambda seconds: True
    _rng: np.random.Generator | None = None

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:
            self._rng = np.random.default_rng(self.seed)
        return self._rng

    def progress(self, done: int, total: int, note: str = "", expect_s: float | None = None) -> None:
        """Where the check stands. `expect_s`: how long the step it starts should take, from the time
        the device took for the same format's products in this check; giving it says that the format
        answered before, and lets the watchdog judge a silence past it as the device stopping
        (checks/stopped.py)."""
        self.report_progress(done, total, note, expect_s)


@dataclass
class Outcome:
    findings: list[Finding] = field(default_factory=list)
    coverage: dict[str, Any] = field(default_factory=dict)
    measurements: dict[str, Any] = field(default_factory=dict)


class Check(ABC):
    id: ClassVar[str]
    category: ClassVar[Category]
    levels: ClassVar[tuple[Level, ...]] = ALL_LEVELS
    # A check that inspects the machine and computes nothing on the device (who else holds it) runs in
    # the tool's own process: a device process's container shows it only its own processes.
    host_view: ClassVar[bool] = False
    # A resident check runs beside the others for the whole audit, in a process of its own, until the
    # runner asks it to end (runner/resident.py); its per-level timeout_s bounds it when run alone.
    resident: ClassVar[bool] = False
    # Wall-clock limit per level, enforced by the runner's watchdog; generous against honest devices.
    # At smoke a check that takes longer has hung as far as a job's prolog is concerned.
    timeout_s: ClassVar[dict[Level, float]] = {Level.smoke: 20.0, Level.quick: 60.0, Level.standard: 300.0,
                                               Level.deep: 1800.0}

    def is_supported(self, device: str) -> str | None:
        """None when the check applies to this device, else the reason it does not."""
        return None

    def time_limit(self, level: Level, params: dict[str, Any]) -> float:
        """The watchdog's limit for this run; a check whose work a parameter sizes (the burn-in's
        duration) stretches it to fit."""
        return self.timeout_s[level]

    @abstractmethod
    def run(self, ctx: CheckContext) -> Outcome: ...

    def finding(self, severity: Severity, title: str, detail: str = "", **evidence: Any) -> Finding:
        return Finding(
            check=self.id, category=self.category, severity=severity, title=title, detail=detail,
            evidence=evidence,
        )


def status_for(findings: list[Finding]) -> Status:
    worst = max((f.severity.rank for f in findings), default=-1)
    if worst >= FAILING_SEVERITY.rank:
        return Status.failed
    if worst >= Severity.low.rank:
        return Status.warning
    return Status.passed

