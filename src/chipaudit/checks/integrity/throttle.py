"""How a fall of the burn-in's throughput is judged: a throttle, or a busy host.

On an accelerator the host's load does not slow the device's kernels, so a sustained fall of the rate
is the device's. On the CPU the host is the device: other processes' memory traffic, cache thrashing and
scheduling slow every CPU-second of the burn-in as a throttle would, so a host control (HostControl), a
small fixed NumPy computation timed in the same windows, tells the two apart (judge_throughput). The
burn-in's contract (checks/integrity/burnin.py) states what this can and cannot see.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil

from chipaudit.report.model import Severity
from chipaudit.stats import median

MIN_WINDOWS = 6  # a throughput trend needs at least this many windows
# A fall of the sustained rate to below 1/2 of the starting rate. Honest thermal throttling of data-
# centre GPUs costs 10-30%; clock-throttle events that halve throughput are what DCGM's diagnostics flag.
THROTTLE_RATIO = 2.0
# Sustained: the fall must hold for this share of the last third's windows (the rate of the window at this
# quantile of them, against the first third's median). A loaded CPU's thread team runs in two modes, at full
# speed or stalled on a descheduled member, so its windows' rates scatter by tens of times; a throttle
# slows every window, and a quarter of them may recover (a pause that ends the load).
SUSTAINED_QUANTILE = 0.75
# On the CPU the host is the device, so other processes' memory traffic, cache thrashing and scheduling
# slow every CPU-second of the burn-in as much as a throttle would. A host control, a small fixed NumPy
# computation (the host's BLAS and memory copies, never torch's kernels, which a fault may replace), is
# timed in the same windows; a fall of the device's rate is the device's only when it exceeds the
# control's fall by THROTTLE_RATIO (judge_throughput). The control has two parts, each timed by the wall
# clock, because a loaded host slows a product in two ways:
# - team: a CONTROL_N^3 fp32 product in the host BLAS, threaded as torch's product is (above OpenBLAS's
#   64^3 threshold): a thread team waits for its slowest member, so the product slows with the scheduling
#   of the host far more than a single thread does (a 0.1 ms product took a median 30 ms on a 2-core host
#   at load 8, measured). 0.1 ms on an idle 2-core host.
# - memory: a single-threaded copy of CONTROL_COPY_WORDS fp32 words (2 x 16 MiB, the size of a server's
#   shared last-level cache): the cache and memory bandwidth that other processes' traffic takes. 1.5 ms.
CONTROL_N = 128
CONTROL_COPY_WORDS = 4 * 1024 * 1024
# A round of both every CONTROL_EVERY_S, the first at each window's start, while the window's rounds took
# less than CONTROL_SHARE of it: under 1% of an idle host's burn-in (a round takes about 1.6 ms), at most
# about 5% of a loaded one's (plus the one round per window), however slow the host makes a round.
CONTROL_EVERY_S = 0.25
CONTROL_SHARE = 0.05
# On a loaded CPU a thread team runs in two modes, at full speed or stalled on a descheduled member, and
# it can switch for good in mid-run, without any change the host's counters or the control show (a 128^3
# product went from 2 ms to 40 ms, 17x, while this process and the others kept the same cores busy,
# measured on a 2-core host at load 8). A stalled product takes a few of the host's team meetings, which
# the control's team round measures (its arithmetic is negligible): about 1 at 128^3 and 2.5 at 256^3,
# measured. So a late product that took fewer than TEAM_MEETINGS control team rounds is explained by the
# host's scheduling, whatever the fall; a throttle is seen on a loaded host only beyond that.
TEAM_MEETINGS = 3.0
# A fall that the control shares is still the device's when no other process loaded the host: fewer than
# this many cores busy outside this process, at the start and at the end (the CPU as a whole slowed).
QUIET_CORES = 0.5


@dataclass
class Window:
    t_s: float  # seconds since the burn-in started, at the window's end
    products: int
    macs_per_s: float
    other_cores: float | None = None  # CPU only: cores kept busy by other processes
    own_cores: float | None = None  # CPU only: cores this process kept busy
    control_team_s: list[float] = field(default_factory=list)  # CPU only: the host control's rounds
    control_memory_s: list[float] = field(default_factory=list)
    product_s: float | None = None  # CPU only: the window's device time (without the control) per product
    fmt: str = ""  # the format the window ran

    @property
    def macs_per_cpu_s(self) -> float:
        return self.macs_per_s / max(self.own_cores or 0.0, 1e-3)



class HostLoad:
    """Cores kept busy by this process and by all others, from the kernel's CPU accounting."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.last = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        system = psutil.cpu_times()
        busy = system.user + system.system + getattr(system, "nice", 0.0) + getattr(system, "irq", 0.0) + getattr(
            system, "softirq", 0.0) + getattr(system, "steal", 0.0)
        own = self.process.cpu_times()
        return time.monotonic(), busy, own.user + own.system

    def cores(self) -> tuple[float, float]:
        """(other processes', this process's) busy cores since the last call."""
        now = self._sample()
        (t0, busy0, own0), (t1, busy1, own1) = self.last, now
        self.last = now
        wall = max(t1 - t0, 1e-6)
        own = (own1 - own0) / wall
        return max(0.0, (busy1 - busy0) / wall - own), own


class HostControl:
    """The host control (CPU only): a fixed NumPy computation, never torch's kernels, timed in the same
    windows as the device's products, so that the host's own slowdown can be told from the device's."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng([seed, 0xC0])
        self.a = rng.standard_normal((CONTROL_N, CONTROL_N), dtype=np.float32)
        self.b = rng.standard_normal((CONTROL_N, CONTROL_N), dtype=np.float32)
        self.src = rng.standard_normal(CONTROL_COPY_WORDS, dtype=np.float32)
        self.dst = self.src.copy()  # touched: no page faults in the first round
        self.team: list[float] = []  # seconds of each round's parts in the current window
        self.memory: list[float] = []
        self.seconds = 0.0  # of all rounds in the current window
        self.last = -math.inf

    def due(self, now: float, window_start: float) -> bool:
        return not self.team or (now - self.last >= CONTROL_EVERY_S
                                 and self.seconds < CONTROL_SHARE * (now - window_start))

    def round(self) -> None:
        t0 = time.perf_counter()
        np.matmul(self.a, self.b)
        t1 = time.perf_counter()
        np.copyto(self.dst, self.src)
        self.last = t2 = time.perf_counter()
        self.team.append(t1 - t0)
        self.memory.append(t2 - t1)
        self.seconds += t2 - t0

    def close_window(self) -> tuple[list[float], list[float], float]:
        """The window's (team seconds, memory seconds, total seconds the control took); a new window."""
        done = self.team, self.memory, self.seconds
        self.team, self.memory, self.seconds, self.last = [], [], 0.0, -math.inf
        return done



def ms(seconds: list[float]) -> float | None:
    """A window's median control round, in milliseconds."""
    return round(median(seconds) * 1e3, 3) if seconds else None



def judge_throughput(windows: list[Window], cpu: bool) -> tuple[Severity, str, str, dict[str, Any]] | None:
    """A sustained fall of the throughput to below 1/THROTTLE_RATIO of its starting rate.

    Robust statistics: the median of the first third's windows against the rate that SUSTAINED_QUANTILE
    of the last third's windows stay under, so that slow windows (a page-fault storm, a brief competing
    process, a thread team's stall) do not count unless they last. On the CPU the host is the device:
    other processes' memory traffic, cache thrashing and scheduling slow the products as a throttle
    would, and neither this process's CPU time nor the idle cores can tell the two apart. The host
    control, timed in the same windows, can: the part of the fall that the control shares is the host's,
    so the device is blamed only when its fall exceeds the control's by THROTTLE_RATIO (a control that got
    faster excuses nothing) and its late products took longer than TEAM_MEETINGS of the host's thread-team
    meetings (a stalled team's products take that long whatever the device does). A fall the host
    explains is still the device's when no other process loaded the host (fewer than QUIET_CORES busy, at
    the start and at the end): the CPU as a whole slowed. Otherwise it is reported as information only.
    """
    if len(windows) < MIN_WINDOWS:
        return None
    third = len(windows) // 3
    early, late = windows[:third], windows[-third:]
    start_rate = median(w.macs_per_s for w in early)
    ordered = sorted(w.macs_per_s for w in late)
    end_rate = ordered[math.ceil(SUSTAINED_QUANTILE * len(ordered)) - 1]
    if end_rate <= 0 or start_rate / end_rate < THROTTLE_RATIO:
        return None
    fall = start_rate / end_rate
    evidence: dict[str, Any] = {"start_macs_per_s": start_rate, "end_macs_per_s": end_rate, "fall": round(fall, 2)}
    title = f"throughput fell {fall:.1f}x under sustained load"
    detail = (f"In {SUSTAINED_QUANTILE:.0%} of the windows of the last third of the burn-in the rate was at most "
              f"{end_rate:.3g} multiply-adds/s, against a median {start_rate:.3g} in the first third: the device "
              "throttled, or was made to.")
    if not cpu:
        return Severity.medium, title, detail, evidence
    team, memory = control_fall(early, late, "control_team_s"), control_fall(early, late, "control_memory_s")
    host_fall = max(team, memory)
    excess = fall / max(host_fall, 1.0)
    other = (median(w.other_cores or 0.0 for w in early), median(w.other_cores or 0.0 for w in late))
    evidence |= {"control_fall": round(host_fall, 2), "control_team_fall": round(team, 2),
                 "control_memory_fall": round(memory, 2), "fall_beyond_control": round(excess, 2),
                 "other_cores_start": round(other[0], 2), "other_cores_end": round(other[1], 2),
                 "efficiency_fall": round(median(w.macs_per_cpu_s for w in early) / max(
                     median(w.macs_per_cpu_s for w in late), 1e-9), 2)}
    late_product = [w.product_s for w in late if w.product_s]
    late_team = [r for w in late for r in w.control_team_s]
    meetings = median(late_product) / max(median(late_team), 1e-9) if late_product and late_team else math.inf
    if math.isfinite(meetings):
        evidence["late_product_in_team_rounds"] = round(meetings, 2)
    if excess >= THROTTLE_RATIO and meetings >= TEAM_MEETINGS:
        return (Severity.medium, title, f"{detail} The host's control fell {host_fall:.2f}x over the same "
                "windows: the host's load does not explain the fall.", evidence)
    if max(other) < QUIET_CORES:  # nothing else ran: the control's fall, or the team's stall, is the CPU's
        return (Severity.medium, f"the CPU slowed {fall:.1f}x under sustained load",
                f"The rate fell {fall:.1f}x (the host's control {host_fall:.1f}x) while other processes kept "
                f"under {QUIET_CORES} core busy: nothing but the CPU explains it; it throttled.", evidence)
    why = (f"the host's control, timed in the same windows, fell {host_fall:.1f}x" if excess < THROTTLE_RATIO
           else f"each late product took {meetings:.1f} of the host's thread-team meetings (the control's team "
                "round), as a stalled team does on a loaded host")
    return (Severity.info, "throughput fell while other processes loaded the host",
            f"The rate fell {fall:.1f}x while {why} and other processes kept {other[1]:.1f} core(s) busy: the "
            "host slowed, not attributed to the device.", evidence)


def control_fall(early: list[Window], late: list[Window], part: str) -> float:
    """How many times longer the control's part took in the late windows than in the early ones, their
    rounds pooled (a window holds one round or several); 1 without rounds. The larger of the ratios of
    the median rounds (the typical round) and of the mean rounds (the average, as the device's rate is one:
    a host that stalls thread teams now and then shows there first)."""
    before = [s for w in early for s in getattr(w, part)]
    after = [s for w in late for s in getattr(w, part)]
    if not before or not after:
        return 1.0
    return max(median(after) / max(median(before), 1e-9),
               (sum(after) / len(after)) / max(sum(before) / len(before), 1e-9))
