"""behaviour.drift: does the device degrade under sustained use?

Threat: usage-pattern triggers: a device that throttles, refuses or corrupts results once it has
been used for a while or for many products (a hash-rate limiter that waits, a licence counting
operations), and honest degradation that its own telemetry does not explain.

Method: a seeded, host-verified workload runs back to back in one process for a sustained period
(quick 6 s, standard 45 s, deep 5 min), timed request by request with the tool's clock and verified
every few seconds, while the device's telemetry is read: NVML clock-event reasons, temperature and
SM clock on NVIDIA when the optional binding is present, CPU temperature and clock on a CPU where the
platform reports them, and on a CPU the share of the host other processes use. The first and the
last requests are compared (ratio of medians, 99% bootstrap interval, Mann-Whitney test). Then the
used process is timed interleaved (A B A B) against a fresh process started at the same time and
left idle: other tenants' load hits both alike, so only the device's own memory of use separates them.

Pass: throughput holds (or a fall is explained by reported throttling, clocks or host load, which
is reported as information) and every verification is correct.
Fail: a late/early slowdown of 1.5x or more, significant, that no reported reason explains (high);
the used process 1.5x or more slower than the fresh one, significant (high); any refusal, crash or
wrong result during the run (high); side effects, as for every probe.
A product refused in every world, the reference included, is weighed by what the device declares of
its format (findings.py): high, medium or low, never a skip.

Cannot see: triggers beyond the run's length or product count, or on cumulative use across
processes and reboots; throttling that the device reports as an honest reason.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import psutil

from chipaudit.checks.base import Check, CheckContext, Outcome
from chipaudit.checks.behaviour import allowlist, findings, stats
from chipaudit.checks.behaviour.probe import PROBE_LIMITS, ROUNDS
from chipaudit.checks.behaviour.session import (
    HANG_FACTOR,
    TIME_FLOOR_S,
    Comparison,
    Harness,
    Session,
    calibrate,
    run_rounds,
)
from chipaudit.checks.behaviour.tasks import probe_tasks
from chipaudit.perturb import conditions as cond
from chipaudit.report.model import Category, Finding, Level, Severity
from chipaudit.sensors.telemetry import SLOWDOWN_REASONS, Reading, Telemetry

DURATION_S = {Level.quick: 6.0, Level.standard: 45.0, Level.deep: 300.0}
VERIFY_EVERY_S = {Level.quick: 3.0, Level.standard: 10.0, Level.deep: 30.0}
READ_EVERY_S = 0.5
# Tasks taken from the probe workload: a large linear layer and small attention products, so that
# both a slowdown per product and one per unit of time meet something.
DRIFT_TASKS = 2
# "Early" is the first few requests of each task and "late" the last few: a trigger that counts
# products fires within seconds of a busy start, and one that waits may fire late in the run; wider
# windows would put either in both halves of the comparison.
WINDOW_REQUESTS = 8
# A fall in clock frequency accounts for a slowdown when it covers at least this share of it.
CLOCK_EXPLAINS_SHARE = 0.5
# Other tenants' load explains a slowdown on a CPU when it grew by at least this many cores.
CONTENTION_EXPLAINS_CORES = 0.5


class DriftProbe(Check):
    id = "behaviour.drift"
    category = Category.behaviour
    timeout_s: ClassVar[dict[Level, float]] = {Level.quick: 150.0, Level.standard: 400.0, Level.deep: 1200.0}

    def run(self, ctx: CheckContext) -> Outcome:
        allow = allowlist.load(ctx.params)
        tasks = probe_tasks(ctx)[:DRIFT_TASKS]
        series: list[tuple[float, int, float]] = []  # (seconds since start, task, seconds per product)
        comparisons: list[Comparison] = []
        with tempfile.TemporaryDirectory() as tmp:
            harness = Harness(ctx.device, ctx.level, Path(tmp))
            telemetry = Telemetry(ctx.device, lambda: _own_pids(harness))
            try:
                sessions = harness.start([("sustained use", cond.reference(), tasks),
                                          ("fresh process", cond.reference(), tasks)])
                if sessions[0].usable:
                    comparisons = self._course(ctx, harness, telemetry, sessions, series)
            finally:
                observations = harness.close()
                telemetry.close()
        sustained = harness.sessions[0]
        if sustained.hello is None:
            raise RuntimeError(f"the workload did not start: {sustained.dead}")
        out = Outcome()
        out.findings += findings.session_findings(self, harness.sessions, sustained, ctx.device)
        trends = {t.label: self._trend(ctx, series, i, telemetry.readings) for i, t in enumerate(tasks)}

        def slowed_in_use(c: Comparison) -> bool:
            """A used process slower than a fresh one counts when it also slowed down while it was
            being used: one that was slower from its start differs as a process, not by its use."""
            trend = trends[tasks[c.cond[1]].label][0]
            return c.verdict().flagged and trend.get("ratio", 0.0) >= stats.UNDECIDED

        out.findings += findings.speed_findings(self, comparisons, "after sustained use than in a fresh process",
                                                slowed_in_use)
        out.findings += [f for _, f in trends.values() if f is not None]
        out.findings += findings.sensor_findings(self, observations, allow)
        out.coverage = {
            "sustained_s": round(series[-1][0], 1) if series else 0.0, "products": len(series),
            "tasks": [t.label for t in tasks], "device_telemetry": telemetry.status.as_dict(),
            "sensors": findings.sensor_coverage(observations), "allowlist": allow.source,
            "limits": [*findings.sensor_limits(observations), *PROBE_LIMITS,
                       *([f"device telemetry {telemetry.status.detail}"] if not telemetry.status.ran else [])],
        }
        out.measurements = {
            "trend": {label: v for label, (v, _) in trends.items()},
            "used_vs_fresh": {c.name: c.verdict().as_dict() for c in comparisons},
            "telemetry": [r.as_dict() for r in telemetry.readings[:: max(1, len(telemetry.readings) // 50)]],
        }
        return out

    def _course(self, ctx: CheckContext, harness: Harness, telemetry: Telemetry, sessions: list[Session],
                series: list[tuple[float, int, float]]) -> list[Comparison]:
        sustained, fresh = sessions
        for task in range(len(sustained.tasks)):
            harness.verify(sustained, task)
        plan = calibrate(harness, [(sustained, i) for i in range(len(sustained.tasks))])
        duration, verify_every = DURATION_S[ctx.level], VERIFY_EVERY_S[ctx.level]
        start = time.monotonic()
        next_read, next_verify = start, start + verify_every
        telemetry.read()
        while sustained.usable and time.monotonic() - start < duration:
            for task, (reps, single) in plan.items():
                t = harness.time(sustained, task, reps, max(TIME_FLOOR_S, HANG_FACTOR * reps * single))
                if t is not None:
                    series.append((time.monotonic() - start, task, t / reps))
            now = time.monotonic()
            if now >= next_read:
                telemetry.read()
                next_read = now + READ_EVERY_S
            if now >= next_verify:
                for task in plan:
                    harness.verify(sustained, task)
                next_verify = now + verify_every
            ctx.progress(int(now - start), int(duration), "sustained use")
        telemetry.read()
        for task in plan:
            harness.verify(fresh, task)  # also its warm-up
        comparisons = [Comparison(f"{sustained.tasks[i].label}: used process against a fresh one", (fresh, i),
                                  (sustained, i), two_sided=False) for i in plan]
        run_rounds(harness, comparisons, plan, ROUNDS[ctx.level], ctx.seed,
                   lambda done, total: ctx.progress(done, total, "used against fresh"))
        for s in sessions:
            for task in plan:
                harness.verify(s, task)
        return comparisons

    def _trend(self, ctx: CheckContext, series: list[tuple[float, int, float]], task: int,
               readings: list[Reading]) -> tuple[dict[str, Any], Finding | None]:
        points = [(t, s) for t, i, s in series if i == task]
        if len(points) < 2 * WINDOW_REQUESTS:
            return {"points": len(points), "judged": False}, None
        early, late = points[:WINDOW_REQUESTS], points[-WINDOW_REQUESTS:]
        v = stats.unpaired([s for _, s in early], [s for _, s in late], ctx.seed + task)
        record: dict[str, Any] = {"points": len(points), **v.as_dict()}
        if not v.flagged:
            return record, None
        reasons = _explanations(readings, (early[0][0], early[-1][0]), (late[0][0], late[-1][0]), v.ratio)
        record["explained_by"] = reasons
        label = ctx.level.value
        if reasons:
            return record, self.finding(
                Severity.info, f"throughput fell {v.ratio:.2f}x under sustained use, with a reported reason",
                f"Explained by: {'; '.join(reasons)}.", level=label, **record)
        return record, self.finding(
            Severity.high, f"throughput fell {v.ratio:.2f}x under sustained use, unexplained",
            f"Late products took {v.ratio:.2f}x as long as early ones (99% interval {v.low:.2f} to {v.high:.2f}, "
            f"Mann-Whitney p={v.p_value:.2g}), and neither throttle reasons, clocks nor other processes' load "
            "explain it.", level=label, **record)


def _window(readings: list[Reading], start: float, span: tuple[float, float]) -> list[Reading]:
    return [r for r in readings if span[0] <= r.t - start <= span[1]]


def _explanations(readings: list[Reading], early_span: tuple[float, float], late_span: tuple[float, float],
                  ratio: float) -> list[str]:
    if not readings:
        return []
    start = readings[0].t
    early = _window(readings, start, early_span) or readings[:1]
    late = _window(readings, start, late_span) or readings[-1:]
    out = []
    held = sorted({x for r in late for x in r.reasons} & SLOWDOWN_REASONS)
    if held:
        out.append(f"the device reported clock-event reasons {held}")
    clocks = [r.clock_mhz for r in early if r.clock_mhz], [r.clock_mhz for r in late if r.clock_mhz]
    if all(clocks):
        drop = (sum(clocks[0]) / len(clocks[0])) / (sum(clocks[1]) / len(clocks[1]))
        if drop - 1 >= CLOCK_EXPLAINS_SHARE * (ratio - 1):
            out.append(f"its clock fell {drop:.2f}x")
    load = ([r.foreign_cores for r in early if r.foreign_cores is not None],
            [r.foreign_cores for r in late if r.foreign_cores is not None])
    if all(load):
        grew = sum(load[1]) / len(load[1]) - sum(load[0]) / len(load[0])
        if grew >= CONTENTION_EXPLAINS_CORES:
            out.append(f"other processes used {grew:.1f} more CPU cores late than early")
    return out


def _own_pids(harness: Harness) -> list[int]:
    pids = [psutil.Process().pid]
    for s in harness.sessions:
        with contextlib.suppress(psutil.Error):
            top = psutil.Process(s.child.pid)
            pids += [top.pid, *(c.pid for c in top.children(recursive=True))]
    return pids


CHECKS = [DriftProbe()]
