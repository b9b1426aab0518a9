"""The audit report: the one data model every output (terminal, JSON, and later HTML, JUnit, bundles) is drawn from.

The verdict is derived from the checks and findings, never stored independently of them, so that a
report cannot claim more than its own contents support.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "chipaudit.report/1"


class Category(str, Enum):
    integrity = "integrity"
    behaviour = "behaviour"
    stack = "stack"
    performance = "performance"


class Level(str, Enum):
    smoke = "smoke"
    quick = "quick"
    standard = "standard"
    deep = "deep"


class Status(str, Enum):
    passed = "passed"
    failed = "failed"
    warning = "warning"
    skipped = "skipped"
    error = "error"


class Severity(str, Enum):
    info = "info"
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


# A finding at or above this severity fails the audit (exit 1); below it, it is reported only.
FAILING_SEVERITY = Severity.medium


class Verdict(str, Enum):
    pass_ = "pass"
    fail = "fail"
    inconclusive = "inconclusive"


class _Model(BaseModel):
    model_config = ConfigDict(use_enum_values=False, extra="forbid")


class Finding(_Model):
    check: str
    category: Category
    severity: Severity
    title: str
    detail: str = ""
    evidence: dict[str, Any] = Field(
        default_factory=dict, description="Enough to reproduce: seed, shape, dtype, observed vs expected."
    )


class CheckResult(_Model):
    id: str
    category: Category
    status: Status
    duration_s: float = 0.0
    seed: int | None = None
    coverage: dict[str, Any] = Field(default_factory=dict, description="What was exercised.")
    reason: str | None = Field(default=None, description="Why the check was skipped or errored.")
    measurements: dict[str, Any] = Field(default_factory=dict)


class DeviceInfo(_Model):
    spec: str = Field(description="The device string the audit ran on, e.g. 'cuda:0' or 'cpu'.")
    type: str
    index: int | None = None
    name: str = ""
    memory_bytes: int | None = None
    torch_version: str = ""
    driver: dict[str, str] = Field(default_factory=dict)
    properties: dict[str, Any] = Field(default_factory=dict)


class Environment(_Model):
    os: str
    python: str
    torch: str
    numpy: str
    hostname: str = ""


class ToolInfo(_Model):
    name: str = "chipaudit"
    version: str


class Report(_Model):
    schema_: str = Field(default=SCHEMA_VERSION, alias="schema")
    tool: ToolInfo
    verdict: Verdict = Verdict.inconclusive
    complete: bool = Field(default=False, description="False while running, and for interrupted audits.")
    level: Level
    seed: int
    started: datetime
    finished: datetime | None = None
    device: DeviceInfo
    environment: Environment
    checks: list[CheckResult] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    limits: list[str] = Field(default_factory=list, description="What this audit cannot observe.")
    replay: str = Field(default="", description="The command line that repeats this audit.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Audit parameters beyond level and seed that shaped the checks "
        "(baseline, burn_in_seconds, ...); replay runs with the same.")
    inventory: dict[str, Any] | None = Field(
        default=None, description="The host, its CPU and every accelerator present, as the vendor libraries and "
        "the PCI bus report them (chipaudit.inventory/1).")

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    def add(self, result: CheckResult, findings: list[Finding]) -> None:
        self.checks.append(result)
        self.findings.extend(findings)
        self.verdict = self.derive_verdict()

    def derive_verdict(self) -> Verdict:
        """fail beats everything: a proven fault stands even in an interrupted audit.

        Otherwise an audit is inconclusive when it did not finish, when any check errored, or when
        no check at all produced a result (everything skipped): nothing observed is not a pass.
        """
        if any(f.severity.rank >= FAILING_SEVERITY.rank for f in self.findings):
            return Verdict.fail
        if not self.complete or any(c.status is Status.error for c in self.checks):
            return Verdict.inconclusive
        if not any(c.status in (Status.passed, Status.warning) for c in self.checks):
            return Verdict.inconclusive
        return Verdict.pass_

    def finish(self, complete: bool) -> None:
        self.complete = complete
        self.finished = datetime.now(timezone.utc)
        self.verdict = self.derive_verdict()

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)

    def write_json(self, path: Path) -> None:
        """Atomic replace, so that a crash or Ctrl-C mid-write never leaves a torn report behind."""
        write_atomic(path, self.to_json() + "\n")


# For outputs other users read: a web server, CI, node_exporter (which runs as its own user).
SHARED_MODE = 0o644


def write_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """`mode`: the file's permissions (mkstemp's are 0600), for files other users must read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


EXIT_CODES = {Verdict.pass_: 0, Verdict.fail: 1, Verdict.inconclusive: 3}
EXIT_USAGE = 2
