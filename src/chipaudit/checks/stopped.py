"""A device that stops answering in the middle of a job: a finding, not an error.

A device that answers a format's first products and then never returns is the kill switch a buyer
fears most. A hang at the first answer is a refusal, judged where it happens (checks/refusal.py
`answer_within`); this module judges the later ones, for every place that supervises device work
(the audit's watchdog, runner/watchdog.py, and any other loop that can name where it stands).

The supervisor needs to know where the work stands and how long its next step should take: a check
reports it with each progress point (`CheckContext.progress(..., expect_s=...)`), from the time the
device took for that format's own products (`Pace` keeps it for checks that time their steps). A
point with `expect_s` also says that the format has answered before it. A step silent past
`limit_s(expect_s)` has stopped. It is a high finding ("the device stopped answering") only when
all of these hold (`judge`):
- it stopped after the format's first answers, past the limit from its own measured time;
- re-run with the same seed in a fresh process (as OpenDCDiag re-tests a failure), it stops again at
  the same point: the same check, the same progress point;
- the host's load explains neither silence (sensors/hostload.py): a control workload in the tool's
  process ran at most CONTROL_EXPLAINS times slower than while the device answered, tasks did not
  wait on memory or IO for FULL_STALL_EXPLAINS of the silence, the hypervisor did not steal
  STEAL_EXPLAINS of the CPUs.
Anything else (a hang that does not repeat, or repeats elsewhere, or a loaded host) stays an error,
with what was seen as its reason: a busy, noisy machine never fails a device.

Cannot see: a trigger keyed on what the process did before the check (its age, products of other
checks) fires in the audit but not in the fresh process, which runs the check alone: an error, not a
finding; a stop later in a check than its outer limit (the check's timeout_s) allows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from chipaudit.report.model import Category, Finding, Severity
from chipaudit.sensors.hostload import Window

# A step may take FACTOR times its expected time, and never less than FLOOR_S, before it has
# stopped. The expected time comes from the fastest warm product of the format, taken at a quiet
# moment; on a busy 2-core machine a multi-threaded product stalls at every barrier (about 10x,
# measured: checks/behaviour/session.py CPU_THREADS), and a path's first call chooses its kernel. 50
# leaves five times more than both. The floor covers what an estimate leaves out (drawing operands,
# copying them, a step of milliseconds preempted for seconds), and stays low enough that a stop in
# the first half of a check (gemm draws cases only while half its limit is left) is seen within it.
FACTOR = 50.0
FLOOR_S = 15.0
# The re-test gets this many times the first run's time to reach the point, plus the step's limit
# and a start allowance, within the check's own limit: it costs at most about the first run's time.
RETEST_REACH_FACTOR = 3.0
RETEST_START_S = 10.0
# What explains a silence on the host's side (sensors/hostload.py): the control workload this many
# times slower than while the device answered (a device process spinning every core of a 2-core host
# slows it about 1.5x; a host that starves processes by FACTOR slows it by much more than 5), tasks
# stalled on memory or IO for this share of the silence, or this share of the CPUs stolen.
CONTROL_EXPLAINS = 5.0
FULL_STALL_EXPLAINS = 0.10
STEAL_EXPLAINS = 0.25


def limit_s(expect_s: float) -> float:
    """How long a step expected to take `expect_s` may stay silent before it has stopped."""
    return max(FLOOR_S, FACTOR * expect_s)


def retest_limit_s(reached_s: float, step_limit_s: float, outer_s: float) -> float:
    """The re-test's own limit: enough to reach the point again and stop there, within `outer_s`."""
    return min(outer_s, RETEST_REACH_FACTOR * reached_s + step_limit_s + RETEST_START_S)


class Pace:
    """The longest step so far of each key (a format), for checks that time no products themselves:
    `step(key)` starts a step and returns its expected time (None until that key has answered once)."""

    def __init__(self) -> None:
        self.longest: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def step(self, key: str | None) -> float | None:
        now = time.perf_counter()
        if self._current is not None:
            name, started = self._current
            self.longest[name] = max(self.longest.get(name, 0.0), now - started)
        self._current = (key, now) if key is not None else None
        return self.longest.get(key) if key is not None else None


@dataclass
class Stall:
    """Where a supervised job went silent, and for how long."""

    point: dict[str, Any]  # the last progress point: done, total, note
    answers: int  # progress points with an expected time passed before it: the device's answers
    expect_s: float
    limit_s: float
    silent_s: float
    reached_s: float  # from the check's start to the point
    host: Window

    def same_point(self, other: Stall) -> bool:
        return self.point == other.point

    def as_dict(self) -> dict[str, Any]:
        return {"point": self.point, "answers_before": self.answers, "expected_s": round(self.expect_s, 4),
                "limit_s": round(self.limit_s, 1), "silent_s": round(self.silent_s, 1),
                "reached_after_s": round(self.reached_s, 2), "host": self.host.as_dict()}


def host_explains(host: Window) -> str:
    """Why the host's own load explains a silence, or '' when it does not."""
    ratio = host.control_ratio()
    if ratio is not None and ratio >= CONTROL_EXPLAINS:
        return f"the host ran a fixed control workload {ratio:.1f}x slower during the silence"
    for kind, share in host.full_stall_share().items():
        if share >= FULL_STALL_EXPLAINS:
            return f"every task on the host waited for {kind} {share:.0%} of the silence"
    steal = host.steal_share()
    if steal >= STEAL_EXPLAINS:
        return f"the hypervisor took {steal:.0%} of the CPUs during the silence"
    return ""


def _where(stall: Stall) -> str:
    p = stall.point
    return f"step {p.get('done')} of {p.get('total')} ({p.get('note') or 'no label'})"


def judge(check_id: str, category: Category, seed: int, first: Stall, again: Stall | None, retest: str,
          replay: str = "") -> tuple[Finding | None, str]:
    """The finding for a job that stopped answering, or (None, the error's reason) when the stop
    did not repeat at the same point in a fresh process (`again`; `retest` says what that process
    did otherwise) or the host's load explains it."""
    head = (f"no answer for {first.silent_s:.0f} s at {_where(first)}, after {first.answers} answers, past the "
            f"limit of {first.limit_s:.0f} s (max({FLOOR_S:.0f} s, {FACTOR:.0f} x the {first.expect_s:.3g} s "
            "measured for that step))")
    if again is None:
        return None, f"{head}; a fresh process with the same seed did not stop there: {retest}"
    if not first.same_point(again):
        return None, f"{head}; a fresh process with the same seed stopped elsewhere, at {_where(again)}"
    explained = host_explains(first.host) or host_explains(again.host)
    if explained:
        return None, f"{head}, again in a fresh process; the host's load explains it: {explained}"
    finding = Finding(
        check=check_id, category=category, severity=Severity.high,
        title=f"the device stopped answering in {check_id}",
        detail=f"The device answered and then gave {head}. A fresh process with the same seed stopped at the same "
               f"point (silent {again.silent_s:.0f} s), and the host's load explains neither silence. A device that "
               "stops answering in the middle of a job is a kill switch's payload.",
        evidence={"seed": seed, "stopped": first.as_dict(), "retest": again.as_dict(),
                  **({"replay": replay} if replay else {})})
    return finding, ""
