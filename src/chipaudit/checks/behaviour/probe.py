"""The shared course of a behaviour probe: start the worlds, verify, time them interleaved, verify
again, then turn what was seen into findings, coverage and measurements.

Every world runs untraced, under sensors its processes cannot see (sensors/watch.py); each probe
also runs one traced world (`traced_world`: its first world again, under strace), so that a stack
that behaves differently when it sees a tracer differs in bits, refusals or side effects. The traced
world is not timed against the others: a tracer stops the process at every system call, so an
honest runtime that makes calls per product (a GPU driver's ioctls and futex waits) is slower under
it by design, and a speed difference there is no evidence."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipaudit.checks.base import Check, CheckContext, NotApplicable, Outcome
from chipaudit.checks.behaviour import allowlist, findings
from chipaudit.checks.behaviour.session import Comparison, Harness, Session, calibrate, retest, run_rounds
from chipaudit.checks.behaviour.tasks import probe_tasks
from chipaudit.checks.behaviour.workload import TaskSpec
from chipaudit.perturb import conditions as cond
from chipaudit.perturb.conditions import Condition
from chipaudit.report.model import Level

# (at least, at most) interleaved rounds; the sign test needs 8 pairs for a 99% interval.
# More rounds are run only while a comparison stays undecided (a median past stats.UNDECIDED).
ROUNDS = {Level.quick: (8, 24), Level.standard: (10, 32), Level.deep: (12, 40)}

# What every probe cannot see, whatever ran.
PROBE_LIMITS = (
    "Behaviour probes watch the workload processes they start, for seconds to minutes: a trigger that needs "
    "longer use, other inputs, or a world not tried does not fire.",
    "A device's own network port, a baseboard management controller, or firmware acting without a host syscall "
    "is invisible to host sensors.",
    "A device stack that recognises the audit by signs a container of the same machine does not show (the "
    "sinkhole's answers, the mirror on its loopback, the tool's module layout) can behave while audited.",
)


# What a world's coverage shows of what its workload saw (and of its routes, which the tool read).
SEEN = ("time", "gmtoff", "env", "locale_installed", "interfaces", "routes", "system")


@dataclass
class World:
    label: str
    condition: Condition
    tasks: Sequence[TaskSpec]


@dataclass
class ProbeRun:
    sessions: list[Session] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    rounds: int = 0


def traced_world(world: World) -> World:
    """`world` again, under strace: the one world per probe whose processes see a tracer."""
    return World(f"{world.label}, traced", cond.traced(world.condition), world.tasks)


def available_worlds(worlds: Sequence[World]) -> tuple[list[World], dict[str, str]]:
    usable, skipped = [], {}
    for w in worlds:
        reason = cond.unavailable(w.condition)
        if reason:
            skipped[w.label] = reason
        else:
            usable.append(w)
    return usable, skipped


def run_worlds(
    check: Check, ctx: CheckContext, worlds: Sequence[World],
    compare: Callable[[list[Session]], list[Comparison]] = lambda sessions: [],
    speed_what: str = "", skipped: dict[str, str] | None = None,
) -> Outcome:
    """Run the worlds (the first is the reference) and judge them. `compare` pairs the sessions'
    tasks for the speed comparisons."""
    allow = allowlist.load(ctx.params)
    run = ProbeRun()
    with tempfile.TemporaryDirectory() as tmp:
        harness = Harness(ctx.device, ctx.level, Path(tmp))
        try:
            _course(harness, ctx, worlds, compare, run)
        finally:
            observations = harness.close()
    sessions = run.sessions
    if sessions and not any(s.hello is not None for s in sessions):
        raise RuntimeError(f"no workload process started: {sessions[0].dead}")
    out = Outcome()
    out.findings += findings.session_findings(check, sessions, sessions[0], ctx.device)
    out.findings += findings.speed_findings(check, run.comparisons, speed_what)
    out.findings += findings.sensor_findings(check, observations, allow)
    out.coverage = {
        "worlds": [_world_coverage(s) for s in sessions],
        "worlds_not_run": skipped or {},
        "tasks": sorted({t.label for s in sessions for t in s.tasks}),
        "not_computed": findings.not_computed(sessions, ctx.device),
        "rounds": run.rounds,
        "comparisons": len(run.comparisons),
        "sensors": findings.sensor_coverage(observations),
        "allowlist": allow.source,
        "limits": list(dict.fromkeys([
            *(f"world '{k}' not run: {v}" for k, v in (skipped or {}).items()),
            *(f"world '{s.label}' not applied: {s.not_applied}" for s in sessions if s.not_applied),
            *(n for s in sessions for n in s.notes), *findings.sensor_limits(observations), *PROBE_LIMITS])),
    }
    out.measurements = {"speed": {c.name: c.as_dict() for c in run.comparisons}}
    return out


def _world_coverage(s: Session) -> dict[str, Any]:
    out = {**s.condition.describe(), "label": s.label, "world_kind": s.world_kind, "tells": s.condition.tells(),
           "started": s.hello is not None,
           "applied": s.hello is not None and not s.not_applied}
    if s.dead:
        out["stopped"] = s.dead
    if s.hello is not None:
        out["seen"] = {k: s.hello.get(k) for k in SEEN}
    return out


def _course(harness: Harness, ctx: CheckContext, worlds: Sequence[World],
            compare: Callable[[list[Session]], list[Comparison]], run: ProbeRun) -> None:
    ctx.progress(0, 4, "starting the workloads")
    run.sessions = harness.start([(w.label, w.condition, w.tasks) for w in worlds])
    ctx.progress(1, 4, "verifying")
    _verify_all(harness, run.sessions)
    run.comparisons = compare([s for s in run.sessions if s.usable and not s.not_applied])
    if run.comparisons:
        arms = [c.ref for c in run.comparisons] + [c.cond for c in run.comparisons]
        plan = calibrate(harness, arms)
        low, high = ROUNDS[ctx.level]
        run.rounds = run_rounds(harness, run.comparisons, plan, (low, high), ctx.seed,
                                lambda done, total: ctx.progress(2, 4, f"timing round {done}"))
        ctx.progress(2, 4, "re-testing what differs")
        retest(harness, run.comparisons, plan, (low, high), ctx.seed)
    ctx.progress(3, 4, "verifying again")
    _verify_all(harness, run.sessions)
    ctx.progress(4, 4, "done")


def _verify_all(harness: Harness, sessions: list[Session]) -> None:
    for s in sessions:
        for task in range(len(s.tasks)):
            if s.usable and task not in s.errors:
                harness.verify(s, task)


def same_task_comparisons(sessions: list[Session]) -> list[Comparison]:
    """Each untraced world against the reference (the first session), task by task."""
    if not sessions or sessions[0].condition.kind != cond.REFERENCE:
        return []
    ref = sessions[0]
    return [Comparison(f"{t.label} in the world '{s.label}'", (ref, i), (s, i))
            for s in sessions[1:] if not s.condition.traced for i, t in enumerate(s.tasks)]


class ConditionProbe(Check):
    """A probe that runs the same verified workload in the reference world and in changed ones."""

    def worlds(self, level: Level) -> list[Condition]:
        raise NotImplementedError

    def run(self, ctx: CheckContext) -> Outcome:
        tasks = probe_tasks(ctx)
        reference = World("reference", cond.reference(), tasks)
        changed, skipped = available_worlds([World(c.name, c, tasks) for c in self.worlds(ctx.level)])
        if not changed:
            raise NotApplicable("; ".join(f"{k}: {v}" for k, v in skipped.items()))
        traced, not_traced = available_worlds([traced_world(reference)])
        worlds = [reference, *changed, *traced]
        skipped.update(not_traced)
        return run_worlds(self, ctx, worlds, same_task_comparisons, "than in the reference world", skipped)
