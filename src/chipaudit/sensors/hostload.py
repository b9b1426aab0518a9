"""Whether the host's own load can explain a process that stopped answering.

A device process that goes silent may be starved rather than stopped: other tenants holding the
CPUs, a hypervisor stealing them, memory being swapped. Its own CPU use says nothing (a hung driver
call sleeps, a spinning one burns CPU), and on a CPU device its CPUs are the host's. So the host is
asked two things that a device process cannot move (checks/stopped.py judges them):

- a control: a fixed pure-Python workload timed in the tool's own process, once while the device
  still answered and once while it was silent. Whatever starves a process (other tenants, steal, a
  host thrashing) slows it as much; a device process that spins its own threads slows it only by
  its share of the cores (about 1.5x on 2 cores).
- pressure stall information (/proc/pressure, Linux 4.20+): the share of the silence during which
  every non-idle task waited for memory or IO ("full"), which can stall any process for any time
  without slowing a CPU-bound control.

The load average and the CPUs' steal time go into the evidence for a reader.

Cannot see: a load the device's stack makes itself from a process outside the device process's tree
is counted as the host's (the behaviour sensors report such a process); a host busy only between
two samples of the control.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The control: this many loop turns take about 3 ms on a 2-core x86 host; the median of a few runs
# is its time, so that one preemption does not count as load.
CONTROL_TURNS = 50_000
CONTROL_RUNS = 5
PRESSURE = Path("/proc/pressure")
PRESSURE_KINDS = ("memory", "io")


def control_s() -> float:
    """Seconds of the fixed control workload, the median of CONTROL_RUNS runs."""
    times = []
    for _ in range(CONTROL_RUNS):
        t0 = time.perf_counter()
        x = 0
        for i in range(CONTROL_TURNS):
            x += i & 7
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _full_stall_us(kind: str) -> int | None:
    """Microseconds every non-idle task has waited for `kind` since boot; None without PSI."""
    try:
        for line in (PRESSURE / kind).read_text().splitlines():
            if line.startswith("full "):
                return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _steal_ticks() -> int:
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) if len(fields) > 8 else 0
    except (OSError, ValueError):
        return 0


@dataclass
class Sample:
    """The host at one moment; `control` only where it was timed (it costs about 15 ms of CPU)."""

    at: float = field(default_factory=time.monotonic)
    control: float | None = None
    stalls_us: dict[str, int | None] = field(default_factory=dict)
    steal_ticks: int = 0
    loadavg: float = 0.0

    @classmethod
    def take(cls, control: bool = False) -> Sample:
        return cls(control=control_s() if control else None,
                   stalls_us={k: _full_stall_us(k) for k in PRESSURE_KINDS}, steal_ticks=_steal_ticks(),
                   loadavg=os.getloadavg()[0])


@dataclass
class Window:
    """The host over a silence: from its start (the last answer) to its end, against a control
    timed while the device still answered."""

    before: Sample
    start: Sample
    end: Sample

    def control_ratio(self) -> float | None:
        if self.before.control is None or self.end.control is None:
            return None
        return self.end.control / max(self.before.control, 1e-9)

    def full_stall_share(self) -> dict[str, float]:
        """Share of the window during which every non-idle task waited for memory, and for IO."""
        seconds = max(self.end.at - self.start.at, 1e-9)
        out = {}
        for kind in PRESSURE_KINDS:
            a, b = self.start.stalls_us.get(kind), self.end.stalls_us.get(kind)
            if a is not None and b is not None:
                out[kind] = (b - a) / 1e6 / seconds
        return out

    def steal_share(self) -> float:
        seconds = max(self.end.at - self.start.at, 1e-9)
        ticks = os.sysconf("SC_CLK_TCK") * seconds * (os.cpu_count() or 1)
        return (self.end.steal_ticks - self.start.steal_ticks) / ticks

    def as_dict(self) -> dict[str, Any]:
        ratio = self.control_ratio()
        return {
            "seconds": round(self.end.at - self.start.at, 2),
            "control_s_before": self.before.control, "control_s_during": self.end.control,
            "control_slowdown": None if ratio is None else round(ratio, 2),
            "full_stall_share": {k: round(v, 3) for k, v in self.full_stall_share().items()},
            "steal_share": round(self.steal_share(), 3),
            "loadavg_before": self.before.loadavg, "loadavg_during": self.end.loadavg,
        }
