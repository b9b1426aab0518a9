"""One audit from start to report: plan the checks, run them under the watchdog, keep the report
current after every check so that Ctrl-C or a crash loses nothing already measured.
"""

from __future__ import annotations

import contextlib
import platform
import shlex
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

import chipaudit
from chipaudit.checks import select
from chipaudit.checks.base import derive_seed
from chipaudit.devices import torchdev
from chipaudit.devices.inventory import collect_isolated
from chipaudit.evidence.bundle import EVIDENCE_DIR_PARAM
from chipaudit.perf import passes
from chipaudit.process.child import Wrapper
from chipaudit.report.model import (
    Category,
    CheckResult,
    Environment,
    Finding,
    Level,
    Report,
    Status,
    ToolInfo,
)
from chipaudit.runner import levels
from chipaudit.runner.resident import Resident
from chipaudit.runner.watchdog import Events, PlannedCheck, run_plan
from chipaudit.runner.watched import WorkerSensors
from chipaudit.sensors.watch import Watch

# What no configuration of this tool can observe; the report always carries these.
STANDING_LIMITS = (
    "The device is judged only by what it observably does through PyTorch: returned values, timing and "
    "side effects visible to the operating system. A fault that never shows in those is invisible.",
    "Integrity checks exercise the inputs, shapes and formats they draw. A trigger on inputs never drawn, "
    "or on use longer than the audit lasts, does not fire during the audit.",
    "Errors smaller than a format's rounding-error bound cannot be told apart from honest rounding.",
)


@dataclass
class AuditConfig:
    device: str
    level: Level
    seed: int
    only: list[str] | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def recorded_params(self) -> dict[str, Any]:
        """The parameters that shape what the checks do, for the report (and so for replay); not the
        local plumbing such as where this run stages its evidence."""
        return {k: v for k, v in sorted(self.params.items()) if k != EVIDENCE_DIR_PARAM}


def environment() -> Environment:
    return Environment(
        os=platform.platform(), python=platform.python_version(), torch=torch.__version__,
        numpy=np.__version__, hostname=socket.gethostname(),
    )


def plan(config: AuditConfig) -> list[PlannedCheck]:
    return [
        PlannedCheck(c.id, c.category, derive_seed(config.seed, c.id), c.time_limit(config.level, config.params),
                     c.host_view, c.resident)
        for c in select(config.only)
        if config.level in c.levels
    ]


def not_at_level(config: AuditConfig) -> list[str]:
    """The selected checks the level leaves out, by family: the audit did not run them, and says so
    (they are in no result, so nothing else would name them)."""
    left: dict[str, list[str]] = {}
    for c in select(config.only):
        if config.level not in c.levels:
            left.setdefault(c.id.split(".")[0], []).append(c.id)
    return [f"Not run at level {config.level.value}: {', '.join(ids)}." for ids in left.values()]


def replay_command(config: AuditConfig) -> str:
    only = "".join(f" --only {p}" for p in config.only or [])
    baseline = f" --baseline {config.params['baseline']}" if config.params.get("baseline") else ""
    burn = f" --burn-in-seconds {config.params['burn_in_seconds']:g}" if config.params.get("burn_in_seconds") else ""
    formats = f" --burn-in-formats {','.join(config.params['burn_in_formats'])}" \
        if config.params.get("burn_in_formats") else ""
    share = f" --memory-share {config.params['memory_share']:g}" if "memory_share" in config.params else ""
    weights = f" --weights {shlex.quote(config.params['weights'])}" if config.params.get("weights") else ""
    return (f"chipaudit run --device {config.device} --level {config.level.value} --seed {config.seed}"
            f"{only}{baseline}{burn}{formats}{share}{weights}")


def new_report(config: AuditConfig) -> Report:
    return Report(
        tool=ToolInfo(version=chipaudit.__version__), level=config.level, seed=config.seed,
        started=datetime.now(timezone.utc), device=torchdev.describe(config.device), environment=environment(),
        replay=replay_command(config), params=config.recorded_params(), limits=list(STANDING_LIMITS),
        inventory=collect_isolated(),
    )


def finalize_limits(report: Report) -> None:
    """Name every check that did not run, and every category that nothing observed."""
    # A check that ran but could not look everywhere (a sensor missing, a world not applied) lists
    # what it missed in coverage["limits"]; a note several checks share is stated once.
    notes: dict[str, list[str]] = {}
    for check in report.checks:
        if check.status in (Status.skipped, Status.error):
            report.limits.append(f"{check.id} did not run to completion: {check.reason}")
        for note in check.coverage.get("limits", []):
            notes.setdefault(note, []).append(check.id)
    report.limits.extend(f"{', '.join(ids)}: {note}" for note, ids in notes.items())
    observed = {c.category for c in report.checks if c.status in (Status.passed, Status.warning, Status.failed)}
    for category in Category:
        if category not in observed:
            report.limits.append(f"No {category.value} check ran in this audit; that category was not observed.")


def run_audit(
    config: AuditConfig,
    events: Events,
    on_update: Callable[[Report], None] = lambda report: None,
    wrappers: Sequence[Wrapper] = (),
    watch: Watch | None = None,
) -> Report:
    """Run the audit, every worker under one set of sensors (runner/watched.py), ended with it: the
    `watch` given (from levels.audit_watch, started early by the CLI), else one of its own. On
    Ctrl-C the report is finished as incomplete and KeyboardInterrupt propagates."""
    with contextlib.ExitStack() as stack:
        watch = stack.enter_context(contextlib.closing(watch) if watch else levels.audit_watch(config.level))
        # The inventory is taken while the sensors attach.
        report = new_report(config)
        report.limits.append(f"Level {config.level.value}: {levels.DESCRIPTION[config.level]}.")
        report.limits.extend(not_at_level(config))
        on_update(report)

        def finished(result: CheckResult, findings: list[Finding]) -> None:
            report.add(result, findings)
            events.finished(result, findings)
            on_update(report)

        try:
            sensors = WorkerSensors(watch, watch.workdir.parent / "workers", config.params)
            planned = plan(config)
            # Resident checks start before the first other check and end after the last.
            residents = [stack.enter_context(Resident(c, job(config), wrappers, sensors))
                         for c in planned if c.resident]
            for resident in residents:
                events.started(resident.check.id)
            run_passes(config, Events(events.started, events.progress, finished), wrappers, sensors,
                       [c for c in planned if not c.resident])
            for resident in residents:
                finished(*resident.finish())
        except KeyboardInterrupt:
            report.limits.append("The audit was interrupted before every check ran.")
            finalize_limits(report)
            report.finish(complete=False)
            on_update(report)
            raise
    finalize_limits(report)
    report.finish(complete=True)
    on_update(report)
    return report


def job(config: AuditConfig) -> dict[str, Any]:
    """What every worker is told besides its checks; the run's seed, for the replay command of a finding
    made outside the worker (runner/watchdog.py)."""
    return {"device": config.device, "level": config.level.value, "params": config.params, "seed": config.seed}


def run_passes(config: AuditConfig, events: Events, wrappers: Sequence[Wrapper], sensors: WorkerSensors,
               planned: list[PlannedCheck]) -> None:
    """Every planned check once; where the parameters ask for several passes (perf/passes.py), the
    performance checks after the others, once per pass in fresh workers with the pass's share of
    the budget, each check reported once, its passes merged. On Ctrl-C the passes measured so far
    are reported."""
    count = passes.count(config.params)
    measured = [c for c in planned if c.category is Category.performance] if count > 1 else []
    others = [c for c in planned if c not in measured]
    if others:
        run_plan(others, job(config), events, wrappers, sensors)
    held: dict[str, list[tuple[CheckResult, list[Finding]]]] = {}

    def hold(result: CheckResult, findings: list[Finding]) -> None:
        held.setdefault(result.id, []).append((result, findings))
        if len(held[result.id]) == count:
            events.finished(*passes.merge(held.pop(result.id)))

    one_pass = {**job(config), "params": passes.pass_params(config.params)}
    try:
        for _ in range(count if measured else 0):
            run_plan(measured, one_pass, Events(events.started, events.progress, hold), wrappers, sensors)
    finally:
        for check_id in list(held):
            events.finished(*passes.merge(held.pop(check_id)))
