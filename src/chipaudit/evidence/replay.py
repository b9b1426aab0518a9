"""Replay: run a recorded audit's checks again, here, with its seeds, level and device, and compare.

This is how a third party reproduces an audit on its own hardware. The run seed determines every
check's seed (checks.base.derive_seed), so the same checks draw the same inputs.

A check agrees when its reproduced status equals the recorded one and, for a failed check, the same
failing findings come back. Key figures are shown side by side with their relative difference:
figures of accuracy are marked within or outside FIGURE_RTOL; timing figures (rates, durations) are
shown only, because they measure the machine and its load rather than the device's correctness.
Figures never decide agreement: a check sizes its work to its time budget, so even accuracy figures
such as a worst error over the cases drawn shift a little with load, while the status does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chipaudit.checks import by_id
from chipaudit.checks.base import derive_seed
from chipaudit.report.figures import is_timing, scalar_figures
from chipaudit.report.model import FAILING_SEVERITY, Report, Status
from chipaudit.runner.audit import AuditConfig

# Relative difference within which a reproduced accuracy figure counts as the recorded one.
FIGURE_RTOL = 0.10


@dataclass
class FigureComparison:
    name: str
    recorded: float
    reproduced: float | None
    timing: bool

    @property
    def relative_difference(self) -> float | None:
        if self.reproduced is None:
            return None
        scale = max(abs(self.recorded), abs(self.reproduced))
        return 0.0 if scale == 0 else abs(self.reproduced - self.recorded) / scale

    @property
    def within(self) -> bool | None:
        """None for timing figures, which are shown but not judged."""
        diff = self.relative_difference
        return None if self.timing or diff is None else diff <= FIGURE_RTOL


@dataclass
class Agreement:
    check: str
    recorded: Status
    reproduced: Status | None
    agrees: bool
    note: str = ""
    figures: list[FigureComparison] = field(default_factory=list)


def config_for(report: Report, device: str, baseline: str | None = None) -> AuditConfig:
    """The recorded checks this version of chipaudit can run, with the recorded seed, level and
    parameters; `baseline` stands in for a recorded stack baseline that lies elsewhere on this machine."""
    known = by_id()
    runnable = [c.id for c in report.checks if c.id in known and report.level in known[c.id].levels]
    params = {**report.params, **({"baseline": baseline} if baseline else {})}
    return AuditConfig(device=device, level=report.level, seed=report.seed, only=runnable, params=params)


def _failing(report: Report, check_id: str) -> set[tuple[str, str]]:
    return {(f.severity.value, f.title) for f in report.findings
            if f.check == check_id and f.severity.rank >= FAILING_SEVERITY.rank}


def compare(recorded: Report, reproduced: Report | None) -> list[Agreement]:
    again = {c.id: c for c in reproduced.checks} if reproduced else {}
    rows: list[Agreement] = []
    for check in recorded.checks:
        new = again.get(check.id)
        if new is None:
            rows.append(Agreement(check.id, check.status, None, False,
                                  "not reproduced: this version of chipaudit cannot run it at this level"))
            continue
        assert reproduced is not None
        notes: list[str] = []
        if check.seed is not None and check.seed != derive_seed(recorded.seed, check.id):
            notes.append("the recorded seed does not follow from the run seed")
        before, after = _failing(recorded, check.id), _failing(reproduced, check.id)
        if new.status is not check.status or before != after:
            notes += [f"not reproduced: {title}" for _, title in sorted(before - after)]
            notes += [f"new: {title}" for _, title in sorted(after - before)]
            if new.reason and new.status is not check.status:
                notes.append(new.reason)
            if not notes:
                notes.append("status differs")
        measured = scalar_figures(new)
        figures = [FigureComparison(name, value, measured.get(name), is_timing(name))
                   for name, value in scalar_figures(check).items()]
        rows.append(Agreement(check.id, check.status, new.status, not notes, "; ".join(notes), figures))
    return rows
