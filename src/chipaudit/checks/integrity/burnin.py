"""Sustained verified load (burn-in): continuous matrix products for minutes, every result checked.

Threat: faults that need sustained use to appear: a part that fails when hot, a power-delivery
weakness under full load, degradation after many operations, or a trojan that counts operations or
time before it corrupts or throttles. Short checks end before any of these fire.

Method: operand pairs are drawn on the host from the check's seed (normal operands, then in turn each
realistic pair of integrity.gemm: a model's activations and weights) and uploaded once; the device's first
product of each pair is verified on the host (oracle/matmul.py, as integrity.gemm does) and kept on the
device as its golden result (OpenDCDiag's golden values up front). After a rest (SETTLE_S), so that
the throughput curve starts from an idle device, and for the level's duration
(BURN_SECONDS: quick 10 s, standard 60 s, deep 10 min; `burn_in_seconds` overrides), the device
multiplies pairs chosen with a secret random generator, and every result is compared on the device,
bit for bit, with its pair's golden result. Every REFRESH_S seconds a fresh pair the device has never
seen replaces the oldest, its first product verified on the host the same way. A result whose bits
differ is moved to the host and judged by the error bound there: within it, the device is
non-deterministic (reported, low); beyond it, the result is wrong (failed), with the time and the
number of products after which it first happened.

The trade-off, for a discrete accelerator: moving every result to the host costs as much as computing
it, so the comparison of every result runs on the device itself, at the cost of one read of the result
(n^2 words against 2n^3 operations: well under 1% at the sizes chosen). A device could lie about its own
comparisons, so a secret random share of the results (HOST_CHECK_SHARE) is also moved to the host after
the device has answered and compared there with the host's copy of the golden result; a device that
corrupts a fraction f of the results while reporting them equal escapes k such host checks with
probability (1 - f)^k, which a device cannot improve because it cannot predict which results are
checked. Throughput stays near the device's peak (benchmarks/burn_efficiency.py). On the CPU, where the
host is the device, every result is compared with NumPy on the host (single-threaded, so that the
comparison does not stall the product's threads on a busy host).

Throughput is recorded per window of about a second (the throughput curve, in the measurements). A
sustained fall (SUSTAINED_QUANTILE of the last third's windows below 1/THROTTLE_RATIO of the first third's
median rate) is a finding. On the CPU the host is the device: other processes' memory traffic, cache
thrashing and scheduling slow each of this process's CPU-seconds as a throttle would, so neither its CPU
time nor the idle cores can tell a throttled device from a contended host. A host control tells them
apart: a small fixed NumPy computation (the host's BLAS and a memory copy, never torch's kernels, which an
adversary may have replaced), timed in the same windows (HostControl, about 2% of an idle host's burn-in,
at most CONTROL_SHARE plus a round per window of a loaded one's). The part of the device's fall that the
control shares is the host's; the device is blamed when its fall exceeds the control's by THROTTLE_RATIO,
or when the control fell with it while no other process loaded the host (the CPU as a whole slowed). Each
window records the control's rounds and the cores this process and all others kept busy
(judge_throughput). Accelerators keep the plain rule: the host's load does not slow their kernels.

Pass: every result identical to its golden result (or within the bound), and no throughput collapse.
Fail (high): a wrong result. Fail (medium): throughput fell by THROTTLE_RATIO or more under sustained load
(on the CPU: beyond the host control's fall, or with it on a host no other process loaded). Information: a
CPU's fall that the host control shares while other processes loaded the host.
Warning (low): results that differ in their bits but stay within the bound.

Cannot see: faults that need longer than the run (deep runs 10 minutes; set burn_in_seconds for
longer); corruption of inputs other than the pairs drawn (a device that caches results for repeated
inputs could fake throughput between refreshes; the performance checks measure fresh inputs); a
constant throttle present from the start (compare with the performance checks' rated figures). On a CPU
that other processes load, a throttle of the whole CPU (that slows the control too) is not told from the
host's contention, and a device throttle is caught only when it exceeds the control's own fall by
THROTTLE_RATIO and leaves products slower than TEAM_MEETINGS of the host's thread-team meetings: a loaded
host's thread teams stall at random, by tens of times, and a throttle hidden within that is not called;
nor is one whose sleep hands the cores to other processes whose traffic then slows the control too.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import psutil
import torch

from chipaudit.checks.base import Check, CheckContext, Outcome
from chipaudit.checks.integrity.gemm import to_host, verify_product
from chipaudit.checks.integrity.operands import PAIRS, draw_pair
from chipaudit.devices import torchdev
from chipaudit.oracle.formats import FORMATS, NumberFormat
from chipaudit.oracle.matmul import OperandNorms, Verification
from chipaudit.perf import timing
from chipaudit.report.model import Category, Level, Severity
from chipaudit.sensors import power
from chipaudit.stats import median

BURN_SECONDS: dict[Level, float] = {Level.quick: 10.0, Level.standard: 60.0, Level.deep: 600.0}
# Setup (drawing, uploading and verifying the pool) and the last product, on top of the duration.
SETUP_ALLOWANCE_S = 120.0  # includes SETTLE_S
POOL = 2
# The pairs' operands, by pair index: the pool starts with random and realistic data, and fresh pairs
# cycle through the realistic pairs, so that a trigger on a model's data meets sustained load too. Not
# fp8_weights: its rounding onto the e4m3 grid on the host (a search per element) takes seconds at
# burn-in sizes; integrity.gemm draws it.
OPERANDS = ("normal", *(p for p in PAIRS if p != "fp8_weights"))
# A fresh pair of operands replaces the oldest every this many seconds (standard and deep): about 2% of
# the time at the sizes chosen (drawing, uploading and verifying a pair costs a few products).
REFRESH_S = 20.0
HOST_CHECK_SHARE = 16  # one result in this many, chosen secretly, is also compared on the host
# Sizes tried for the products; the largest whose product takes at most TARGET_PRODUCT_S is used, so
# that windows hold several products and the comparison's cost stays far below the product's.
SIZES = (256, 512, 1024, 2048, 4096, 8192, 16384)
TARGET_PRODUCT_S = 0.12
# The next size is still tried when predicted at up to this factor over TARGET_PRODUCT_S: the prediction
# (x8 per doubling) overestimates where the smaller product did not yet fill the device.
TARGET_SLACK = 1.5
MEMORY_SHARE = 0.25  # of the device's free memory, at most, for the pool and results
WINDOW_S = 1.0
# The device idles this long before the burn, so that the curve starts from rest: a device that slows
# under sustained load (heat, or a trojan counting busy time) shows a fall rather than starting slow
# because the checks before this one kept it busy.
SETTLE_S = 2.0
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
# less than CONTROL_SHARE of it: about 2% of an idle host's burn-in, at most about 5% of a loaded one's
# (plus the one round per window), however slow the host makes a round.
CONTROL_EVERY_S = 0.1
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
MAX_EVENTS = 16


@dataclass
class Pair:
    a: torch.Tensor
    b: torch.Tensor
    golden: torch.Tensor
    golden_host: np.ndarray
    host_a: np.ndarray
    host_b: np.ndarray
    norms: OperandNorms


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

    @property
    def macs_per_cpu_s(self) -> float:
        return self.macs_per_s / max(self.own_cores or 0.0, 1e-3)


@dataclass
class BurnState:
    products: int = 0
    exact: int = 0
    within_bound: int = 0
    wrong: int = 0
    host_checks: int = 0
    host_disagreements: int = 0
    fresh_pairs: int = 0
    first_wrong: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    control_s: float = 0.0  # CPU only: seconds the host control took


class _HostLoad:
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


class BurnInCheck(Check):
    id = "integrity.burnin"
    category = Category.integrity
    timeout_s: ClassVar[dict[Level, float]] = {lv: s + SETUP_ALLOWANCE_S for lv, s in BURN_SECONDS.items()}

    def time_limit(self, level: Level, params: dict[str, Any]) -> float:
        return self.seconds(level, params) * 1.1 + SETUP_ALLOWANCE_S

    @staticmethod
    def seconds(level: Level, params: dict[str, Any]) -> float:
        return float(params.get("burn_in_seconds", BURN_SECONDS[level]))

    def run(self, ctx: CheckContext) -> Outcome:
        fmt = FORMATS[str(ctx.params.get("burn_in_dtype", "fp32"))]
        with torchdev.strict_precision():
            n = choose_size(ctx.device, fmt)
            pool, bad = self._pool(ctx, fmt, n)
            out = Outcome()
            if bad is not None:
                out.findings.append(bad)
                return out
            state = BurnState()
            seconds = self.seconds(ctx.level, ctx.params)
            ctx.progress(0, int(seconds), "letting the device rest before the burn")
            time.sleep(SETTLE_S)
            with power.PowerRecorder(ctx.device) as recorder:
                elapsed = burn(ctx, pool, fmt, n, seconds, state)
        self._findings(ctx, fmt, n, state, out)
        rates = [w.macs_per_s for w in state.windows]
        out.coverage = {
            "products": state.products, "shape": [n, n, n], "dtype": fmt.name, "pool": POOL,
            "seconds": round(elapsed, 2), "requested_seconds": seconds,
            "verified_on_device": state.products, "verified_on_host": state.host_checks,
            "identical_to_golden": state.exact, "within_bound_not_identical": state.within_bound,
            "fresh_pairs": state.fresh_pairs,
            "elements_checked": state.products * n * n,
        }
        out.measurements = {
            "throughput_macs_per_s": state.products * n**3 / max(elapsed, 1e-9),
            "throughput_curve": {
                "t_s": [round(w.t_s, 3) for w in state.windows],
                "macs_per_s": [round(w.macs_per_s) for w in state.windows],
                "products": [w.products for w in state.windows],
                **({"other_cores": [round(w.other_cores or 0.0, 3) for w in state.windows],
                    "own_cores": [round(w.own_cores or 0.0, 3) for w in state.windows],
                    "control_team_ms": [_ms(w.control_team_s) for w in state.windows],
                    "control_memory_ms": [_ms(w.control_memory_s) for w in state.windows],
                    "control_rounds": [len(w.control_team_s) for w in state.windows]}
                   if torch.device(ctx.device).type == "cpu" else {}),
            },
            **({"control_share": round(state.control_s / max(elapsed, 1e-9), 4)}
               if torch.device(ctx.device).type == "cpu" else {}),
            "median_macs_per_s": median(rates) if rates else 0.0,
            "min_macs_per_s": min(rates, default=0.0),
            "max_macs_per_s": max(rates, default=0.0),
        }
        out.measurements.update(recorder.recording.measurements())
        out.coverage["limits"] = [*out.coverage.get("limits", []), *recorder.recording.limits()]
        if (cap := power.judge_hidden_cap(recorder.recording)) is not None:
            out.findings.append(self.finding(cap[0], cap[1], cap[2], **cap[3]))
        return out

    def _pool(self, ctx: CheckContext, fmt: NumberFormat, n: int) -> tuple[list[Pair], Any]:
        """Draw, upload and verify the operand pairs; a wrong golden product is a finding at once."""
        pool: list[Pair] = []
        for i in range(POOL):
            ctx.progress(i, POOL, f"verifying golden product {i + 1} of {POOL} ({n}x{n}x{n} {fmt.name})")
            pair, v = make_pair(ctx, fmt, n, i)
            if not v.ok:
                return pool, self.finding(
                    Severity.high, f"wrong {fmt.name} product before the burn-in started",
                    f"The first product of pair {i} ({n}x{n}x{n}) is already wrong: {v.bad} of {v.checked} "
                    f"checked {'elements' if v.method != 'projection' else 'column projections'} out of bound.",
                    pair=i, seed=ctx.seed, method=v.method, worst=v.worst, secret_seed=v.secret_seed)
            pool.append(pair)
        return pool, None

    def _findings(self, ctx: CheckContext, fmt: NumberFormat, n: int, state: BurnState, out: Outcome) -> None:
        if state.wrong:
            first = state.first_wrong or {}
            out.findings.append(self.finding(
                Severity.high, f"wrong {fmt.name} results under sustained load",
                f"{state.wrong} of {state.products} products were wrong; the first after "
                f"{first.get('after_s')} s and {first.get('after_products')} products of sustained load.",
                seed=ctx.seed, shape=[n, n, n], dtype=fmt.name, wrong=state.wrong, products=state.products,
                first=first, events=state.events))
        if state.host_disagreements:
            out.findings.append(self.finding(
                Severity.high, "the device's own comparison disagrees with the host",
                f"{state.host_disagreements} of {state.host_checks} results checked on the host differed from "
                "the golden result although the device reported them identical.",
                seed=ctx.seed, events=state.events))
        if state.within_bound:
            out.findings.append(self.finding(
                Severity.low, f"non-deterministic {fmt.name} products under sustained load",
                f"{state.within_bound} of {state.products} products differed in their bits from the first "
                "product of the same inputs, all within the error bound.",
                seed=ctx.seed, shape=[n, n, n]))
        throttle = judge_throughput(state.windows, torch.device(ctx.device).type == "cpu")
        if throttle is not None:
            severity, title, detail, evidence = throttle
            out.findings.append(self.finding(severity, title, detail, **evidence))


def _ms(seconds: list[float]) -> float | None:
    """A window's median control round, in milliseconds."""
    return round(median(seconds) * 1e3, 3) if seconds else None


def make_pair(ctx: CheckContext, fmt: NumberFormat, n: int, index: int) -> tuple[Pair, Verification]:
    """Operands drawn from the check's seed and the pair's index, uploaded, multiplied once on the device,
    and that golden product verified on the host."""
    rng = np.random.default_rng([ctx.seed, index])
    a, b, _ = draw_pair(rng, OPERANDS[index % len(OPERANDS)], (1, n, n), (1, n, n), fmt)
    da = fmt.host_buffer(a[0]).to(ctx.device).to(fmt.torch_dtype)
    db = fmt.host_buffer(b[0]).to(ctx.device).to(fmt.torch_dtype)
    golden = torch.mm(da, db)
    torchdev.synchronize(ctx.device)
    host = to_host(golden)
    norms = OperandNorms.of(a, b)
    v = verify_product(a, b, host.reshape(1, n, n), fmt, norms=norms)
    return Pair(da, db, golden, host.copy(), a, b, norms), v


def choose_size(device: str, fmt: NumberFormat) -> int:
    """The largest size whose product takes at most TARGET_PRODUCT_S and whose pool fits in memory
    (SIZES[0] when none does).

    Each size is timed by the fastest of a few products (timing.fastest), so that a moment of contention
    on a shared host does not shrink the products (tiny products measure the host's scheduling, not the
    device)."""
    budget = _free_bytes(device) * MEMORY_SHARE
    element = torch.empty((), dtype=fmt.torch_dtype).element_size()

    def fits(n: int) -> str | None:
        return "the pool does not fit" if (3 * POOL + 2) * n * n * element > budget else None

    def seconds_at(n: int) -> float:
        a = torch.ones((n, n), dtype=fmt.torch_dtype, device=device)
        return timing.fastest(lambda: torch.mm(a, a), device)

    ladder = timing.Ladder(SIZES, TARGET_PRODUCT_S, slack=TARGET_SLACK, keep_over_cap=False)
    return ladder.climb(seconds_at, fits).size or SIZES[0]


def _free_bytes(device: str) -> float:
    kind = torch.device(device).type
    if kind == "cpu":
        return float(psutil.virtual_memory().available)
    get_info = getattr(getattr(torch, kind, None), "mem_get_info", None)
    if get_info is not None:
        return float(get_info(torch.device(device).index or 0)[0])
    return math.inf


def burn(ctx: CheckContext, pool: list[Pair], fmt: NumberFormat, n: int, seconds: float, state: BurnState) -> float:
    """The loop: products, device-side comparison of every result, secret host checks, windows, and
    every REFRESH_S a fresh pair of operands the device has never seen, verified on the host."""
    macs = n**3
    cpu = torch.device(ctx.device).type == "cpu"
    load = _HostLoad() if cpu else None
    control = HostControl(ctx.seed) if cpu else None
    start = time.perf_counter()
    window_start, window_products = start, 0
    refreshed = start
    while True:
        now = time.perf_counter()
        if now - refreshed >= REFRESH_S and now - start < seconds:
            _refresh(ctx, pool, fmt, n, now - start, state)
            refreshed = now = time.perf_counter()
        if now - window_start >= WINDOW_S:
            other, own = load.cores() if load else (None, None)
            team, memory, control_s = control.close_window() if control else ([], [], 0.0)
            rate = window_products * macs / max(now - window_start - control_s, 1e-9)  # the device's own time
            state.control_s += control_s
            state.windows.append(Window(now - start, window_products, rate, other, own, team, memory,
                                        macs / rate if cpu and rate > 0 else None))
            window_start, window_products = now, 0
            ctx.progress(min(int(now - start), int(seconds)), int(seconds),
                         f"{state.products} products verified ({n}x{n}x{n} {fmt.name})")
        if now - start >= seconds:
            break
        if control is not None and control.due(now, window_start):
            control.round()
        i = secrets.randbelow(len(pool))
        pair = pool[i]
        c = torch.mm(pair.a, pair.b)
        identical = device_identical(c, pair, cpu)
        state.products += 1
        window_products += 1
        if identical:
            state.exact += 1
        else:
            _judge_difference(ctx, pair, i, c, fmt, n, now - start, state)
        if secrets.randbelow(HOST_CHECK_SHARE) == 0:
            _host_check(pair, i, c, identical, now - start, state)
    return time.perf_counter() - start


def _refresh(ctx: CheckContext, pool: list[Pair], fmt: NumberFormat, n: int, at_s: float, state: BurnState) -> None:
    """Replace the oldest pair with fresh operands: a fault that spares inputs it has seen before, or
    that needs use before it fires on new ones, meets new inputs late in the run."""
    state.fresh_pairs += 1
    index = POOL + state.fresh_pairs - 1
    pair, v = make_pair(ctx, fmt, n, index)
    state.products += 1
    if v.ok:
        pool[index % POOL] = pair
        state.exact += 1
        return
    state.wrong += 1
    event = {"after_s": round(at_s, 3), "after_products": state.products, "pair": index, "fresh": True,
             "method": v.method, "bad": v.bad, "checked": v.checked, "worst": v.worst, "secret_seed": v.secret_seed}
    if state.first_wrong is None:
        state.first_wrong = event
    _event(state, event)


def _event(state: BurnState, event: dict[str, Any]) -> None:
    if len(state.events) < MAX_EVENTS:
        state.events.append(event)


def _judge_difference(ctx: CheckContext, pair: Pair, index: int, c: torch.Tensor, fmt: NumberFormat, n: int,
                      at_s: float, state: BurnState) -> None:
    """A result whose bits differ from the golden one: non-deterministic within the bound, or wrong."""
    v: Verification = verify_product(pair.host_a, pair.host_b, to_host(c).reshape(1, n, n), fmt, norms=pair.norms)
    if v.ok:
        state.within_bound += 1
        return
    state.wrong += 1
    event = {"after_s": round(at_s, 3), "after_products": state.products, "pair": index, "method": v.method,
             "bad": v.bad, "checked": v.checked, "worst": v.worst, "secret_seed": v.secret_seed}
    if state.first_wrong is None:
        state.first_wrong = event
    _event(state, event)


def device_identical(c: torch.Tensor, pair: Pair, cpu: bool) -> bool:
    """The device's own comparison of a result with its golden one. On the CPU the host is the device:
    a single-threaded NumPy comparison there does not compete with the product's threads, as
    torch.equal's parallel one does on a busy host."""
    return same_bits(to_host(c), pair.golden_host) if cpu else torch.equal(c, pair.golden)


def same_bits(x: np.ndarray, y: np.ndarray) -> bool:
    """Bitwise equality, compared in the widest words the size allows."""
    word = np.uint64 if x.nbytes % 8 == 0 else np.uint8
    return x.shape == y.shape and np.array_equal(np.ascontiguousarray(x).view(word), np.ascontiguousarray(y).view(word))


def _host_check(pair: Pair, index: int, c: torch.Tensor, identical: bool, at_s: float, state: BurnState) -> None:
    """Move a secretly chosen result to the host and compare it there with the host's golden copy."""
    state.host_checks += 1
    same = same_bits(to_host(c), pair.golden_host)
    if identical and not same:
        state.host_disagreements += 1
        _event(state, {"after_s": round(at_s, 3), "after_products": state.products, "pair": index,
                       "kind": "host readback differs from the golden result the device called identical"})


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


CHECKS = [BurnInCheck()]
