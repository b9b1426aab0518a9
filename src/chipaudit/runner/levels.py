"""The run-level ladder, after DCGM's: seconds, minutes, a quarter hour and more.

Budgets are the wall-clock targets of a whole audit on a 2-core CPU machine; checks size their
work to them and the watchdog enforces each check's own limit. A check runs at the levels it
names (`Check.levels`); smoke is opt-in, so a new check stays out of a job's prolog until it says
it fits there.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from chipaudit.report.model import Level

if TYPE_CHECKING:
    from chipaudit.sensors.watch import Watch

BUDGET_S: dict[Level, float] = {Level.smoke: 15.0, Level.quick: 120.0, Level.standard: 600.0, Level.deep: 1800.0}

DESCRIPTION: dict[Level, str] = {
    Level.smoke: "seconds, for a job's prolog or a readiness probe: verified fp32 and bf16 products on a few "
                 "small shapes, a slice of memory, the stack against --baseline when one is given and the "
                 "device's own health counters; no behaviour probe, burn-in, operator or performance check",
    Level.quick: "under three minutes on a 2-core CPU: every format on representative shapes, the most telling probes",
    Level.standard: "minutes: adds more shapes and model widths, and full probe sweeps",
    Level.deep: "half an hour: adds the largest products and long sustained runs",
}

# Levels whose workers go without the eBPF syscall tracer, and why: compiling and attaching its
# probes costs about 3 s of CPU and 4 to 8 s of wall time on a 2-core host (sensors/ebpf.py), up to
# half of a smoke audit's 15 s, on top of everything else it starts. Their workers stay in the
# sinkhole's network namespace and under the socket sampler, which a process cannot see either; the
# report lists the tracer as not run.
WITHOUT_SYSCALL_TRACER: dict[Level, str] = {
    Level.smoke: "not run at level smoke: attaching it takes seconds of a budget of seconds; the sinkhole "
                 "and the socket sampler watched the workers",
}


@contextlib.contextmanager
def audit_watch(level: Level) -> Iterator[Watch]:
    """The sensors every worker of an audit at `level` runs under, in a scratch folder that goes
    with them. The CLI starts them before it imports torch, so that the eBPF tracer compiles and
    attaches meanwhile; torch is not imported here."""
    from chipaudit.process import neutral
    from chipaudit.sensors.watch import Watch

    neutral.prepare()  # the workers' stage is copied and compiled meanwhile too
    without = WITHOUT_SYSCALL_TRACER.get(level)
    with tempfile.TemporaryDirectory() as tmp, \
            Watch(Path(tmp) / "watch", syscalls=without is None, why_not=without or "") as watch:
        yield watch
