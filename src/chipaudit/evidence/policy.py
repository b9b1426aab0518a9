"""Verification policies: what a relying party requires of an audit beyond its being authentic.

A policy is a JSON file, for example:

    {
      "required_checks": ["integrity.gemm.fp32", "integrity.gemm.bf16"],
      "min_level": "standard",
      "max_age_days": 30,
      "verdicts": ["pass"]
    }

- required_checks: check ids or id prefixes ('integrity' means every integrity check). Each must have
  run and not failed: at least one matching check passed (a warning counts as passed) and none failed
  or errored. A skipped check does not meet a requirement: it observed nothing.
- min_level: the audit ran at this level or a deeper one (smoke < quick < standard < deep).
- max_age_days: the audit finished at most this long ago, and not in the future.
- verdicts: the audit's verdict is one of these.

Every key is optional; unknown keys are refused, so that a misspelt requirement is never silently
ignored.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chipaudit.report.model import Level, Report, Status, Verdict

LEVEL_ORDER = (Level.smoke, Level.quick, Level.standard, Level.deep)
# Clocks of the auditor and the verifier differ; a report this far in the future is still accepted.
CLOCK_SKEW = timedelta(minutes=5)
MAX_POLICY_BYTES = 1 << 20


class PolicyProblem(ValueError):
    """A policy file that cannot be used: a usage error."""


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    required_checks: list[str] = Field(default_factory=list)
    min_level: Level | None = None
    max_age_days: float | None = Field(default=None, gt=0)
    verdicts: list[Verdict] | None = None


def load(path: Path) -> Policy:
    try:
        if path.stat().st_size > MAX_POLICY_BYTES:
            raise PolicyProblem(f"--policy {path}: larger than {MAX_POLICY_BYTES:,} bytes")
        return Policy.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise PolicyProblem(f"--policy {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyProblem(f"--policy {path}: cannot read it: {e}") from None
    except json.JSONDecodeError as e:
        raise PolicyProblem(f"--policy {path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise PolicyProblem(f"--policy {path}: {where}: {first['msg']}") from None


def _matches(check_id: str, pattern: str) -> bool:
    return check_id == pattern or check_id.startswith(pattern + ".")


def violations(policy: Policy, report: Report, now: datetime | None = None) -> list[str]:
    """Each way the report falls short of the policy; empty when it meets it."""
    now = now or datetime.now(timezone.utc)
    found: list[str] = []
    for pattern in policy.required_checks:
        matching = [c for c in report.checks if _matches(c.id, pattern)]
        bad = [c for c in matching if c.status in (Status.failed, Status.error)]
        ran = [c for c in matching if c.status in (Status.passed, Status.warning)]
        if bad:
            found.append(f"required check {pattern}: " + ", ".join(f"{c.id} {c.status.value}" for c in bad))
        elif not ran:
            why = ", ".join(f"{c.id} skipped ({c.reason})" for c in matching) or "not in this audit"
            found.append(f"required check {pattern} did not run: {why}")
    if policy.min_level is not None and LEVEL_ORDER.index(report.level) < LEVEL_ORDER.index(policy.min_level):
        found.append(f"level {report.level.value} is below the required {policy.min_level.value}")
    if policy.max_age_days is not None:
        when = report.finished or report.started
        if when.tzinfo is None:  # a report without a zone is read as UTC, as chipaudit writes them
            when = when.replace(tzinfo=timezone.utc)
        age = now - when
        if age < -CLOCK_SKEW:
            found.append(f"the audit claims to have finished in the future ({when.isoformat()})")
        elif age > timedelta(days=policy.max_age_days):
            found.append(f"the audit is {age.total_seconds() / 86400:.1f} days old, over the maximum "
                         f"of {policy.max_age_days:g}")
    if policy.verdicts is not None and report.verdict not in policy.verdicts:
        found.append(f"verdict {report.verdict.value} is not one of "
                     + ", ".join(v.value for v in policy.verdicts))
    return found
