"""behaviour.clock: does the device react to the date?

Threat: time bombs and expiring entitlements: a device that refuses, slows down or computes wrongly
after (or before) some date.

Method: the same seeded, host-verified workload runs in the reference world and with the wall clock
shifted through libfaketime (LD_PRELOAD, applied to the workload only; monotonic clocks untouched):
at quick, two and ten years ahead; at standard and deep, three weeks, six months, one, two, five and
ten years ahead and one year back. Every world runs interleaved with the reference (A B A B), timed
by the tool's own clock, and is verified before and after. The workload reports the date it sees;
a world whose clock did not move is reported as not applied, never as coverage. No world is traced:
each runs under sensors it cannot see (the sinkhole, the socket sampler); the reference runs again
under strace as an extra world, compared by bits, refusals and side effects (not by speed: a tracer
slows every system call by design).

Pass: every date computes every product correctly, with the reference's bits, at its speed, without
network calls or file writes.
Fail: a refusal, crash, hang or wrong result at some date (high); different bits (medium); a speed
ratio of 1.5x or more with a 99% interval excluding 1 (high); any side effect, as for every probe.
A product refused in every world, the reference included, is weighed by what the device declares of
its format (findings.py): high, medium or low, never a skip.
Not run: without libfaketime (Debian package faketime).

Cannot see: dates between and beyond those tried; clocks the libc does not serve: libfaketime
shifts only what the C library returns, so a raw clock_gettime or gettimeofday system call (a
statically linked helper, a runtime that bypasses the C library and the vDSO), the device's own
timer and a date fetched over the network (see behaviour.sealed) read the real date; and the
kernel's own timestamps (file times, SO_TIMESTAMP on packets, /proc and /sys), which stay real.
The shift's mechanism is itself a tell: a stack that reads LD_PRELOAD or the FAKETIME variables in
its environment, or finds libfaketime mapped, knows it is in a shifted world (every other world of
the audit shows no such sign: process/isolation.py). The report lists these limits with the coverage.
"""

from __future__ import annotations

from typing import ClassVar

from chipaudit.checks.behaviour.probe import ConditionProbe
from chipaudit.perturb import conditions as cond
from chipaudit.perturb.conditions import Condition
from chipaudit.report.model import Category, Level

YEAR_DAYS = 365.25
QUICK_SHIFTS = ((2 * YEAR_DAYS, "+2 years"), (10 * YEAR_DAYS, "+10 years"))
FULL_SHIFTS = (
    (21.0, "+3 weeks"), (YEAR_DAYS / 2, "+6 months"), (YEAR_DAYS, "+1 year"), (2 * YEAR_DAYS, "+2 years"),
    (5 * YEAR_DAYS, "+5 years"), (10 * YEAR_DAYS, "+10 years"), (-YEAR_DAYS, "-1 year"),
)


class ClockProbe(ConditionProbe):
    id = "behaviour.clock"
    category = Category.behaviour
    # An honest device takes about 15 s at quick; a world that throttles the device (a time bomb) makes
    # every one of its timed rounds and its re-test that much slower, and must still be judged.
    timeout_s: ClassVar[dict[Level, float]] = {Level.quick: 300.0, Level.standard: 600.0, Level.deep: 900.0}

    def worlds(self, level: Level) -> list[Condition]:
        shifts = QUICK_SHIFTS if level is Level.quick else FULL_SHIFTS
        return [cond.clock(days, label) for days, label in shifts]


CHECKS = [ClockProbe()]
