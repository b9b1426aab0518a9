"""Checks with known behaviour, for testing the runner and the CLI (loaded via CHIPAUDIT_CHECK_MODULES)."""

from __future__ import annotations

import os
import signal
import time
from typing import ClassVar

from chipaudit.checks.base import Check, CheckContext, NotApplicable, Outcome
from chipaudit.report.model import Category, Level, Severity


class Fake(Check):
    category = Category.integrity
    timeout_s: ClassVar[dict[Level, float]] = {Level.quick: 3.0, Level.standard: 3.0, Level.deep: 3.0}

    def __init__(self, name: str, behaviour: str):
        self.id, self.behaviour = f"fake.{name}", behaviour

    def is_supported(self, device: str) -> str | None:
        return "this fake check never applies" if self.behaviour == "unsupported" else None

    def run(self, ctx: CheckContext) -> Outcome:
        if self.behaviour == "hang":
            time.sleep(3600)
        if self.behaviour == "raise":
            raise RuntimeError("the device fell over")
        if self.behaviour == "crash":
            os._exit(7)
        if self.behaviour == "killed":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.behaviour == "not_applicable":
            raise NotApplicable("the device lacks this format")
        if self.behaviour == "fail":
            return Outcome(findings=[self.finding(Severity.high, "wrong answer", seed=ctx.seed)])
        if self.behaviour == "warn":
            return Outcome(findings=[self.finding(Severity.low, "odd but harmless")])
        return Outcome(coverage={"seed_seen": ctx.seed})


CHECKS = [
    Fake(name, name)
    for name in ("ok", "hang", "raise", "crash", "killed", "not_applicable", "unsupported", "fail", "warn")
]
