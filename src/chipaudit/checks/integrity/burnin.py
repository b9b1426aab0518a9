"""Sustained verified load (burn-in): continuous matrix products for minutes, every result checked.

Threat: faults that need sustained use to appear: a part that fails when hot, a power-delivery
weakness under full load, degradation after many operations, or a trojan that counts operations or
time before it corrupts or throttles. Short checks end before any of these fire.

Method: the burn runs in the formats where the device has its peak (burn_formats: bf16 and fp16 on
accelerators, fp8 where the spec database rates the device for it, fp32 on the CPU; `burn_in_formats`
overrides), one format per window of about a second, in turn, so that every format meets the heat of
the whole run. For each format, operand pairs are drawn on the host from the check's seed (normal
operands, then in turn each realistic pair of integrity.gemm: a model's activations and weights) and
uploaded once; the device's first product of each pair is verified on the host (oracle/matmul.py, as
integrity.gemm does) and kept on the device as its golden result (OpenDCDiag's golden values up front).
Each format's size is the largest whose product takes about TARGET_PRODUCT_S, so that comparing a result
costs little beside computing it. After a rest (SETTLE_S), so that the throughput curve starts from an
idle device, and for the level's duration (BURN_SECONDS: quick 10 s, standard 60 s, deep 10 min;
`burn_in_seconds` overrides), the device multiplies pairs chosen with a secret random generator, and
every result is compared on the device, bit for bit, with its pair's golden result. Every REFRESH_S
seconds a fresh pair the device has never seen replaces the oldest of the running format, its first
product verified on the host the same way. A result whose bits differ is moved to the host and judged
by the error bound there: within it, the device is non-deterministic (reported, low); beyond it, the
result is wrong (failed), with the time and the number of products after which it first happened.

The trade-off, for a discrete accelerator: moving every result to the host costs as much as computing
it, so the comparison of every result runs on the device itself, at the cost of one read of the result
and of the golden one (n^2 words against 2n^3 operations). A device could lie about its own comparisons,
so a secret random share of the results (HOST_CHECK_SHARE) is also moved to the host after the device
has answered and compared there with the host's copy of the golden result; a device that corrupts a
fraction f of the results while reporting them equal escapes k such host checks with probability
(1 - f)^k, which a device cannot improve because it cannot predict which results are checked. None of
it makes the device wait (overlap.py): its comparisons are read back a few products behind, and the
secret share is copied without blocking, on a stream of its own, and compared on a host thread.
Throughput stays near the device's measured peak (benchmarks/burn_efficiency.py). On the CPU, where the
host is the device, every result is compared with NumPy on the host as it is made.

Throughput is recorded per window of about a second (the throughput curve, in the measurements). A
sustained fall (SUSTAINED_QUANTILE of the last third's windows below 1/THROTTLE_RATIO of the first third's
median rate) is a finding. On the CPU the host is the device: other processes' memory traffic, cache
thrashing and scheduling slow each of this process's CPU-seconds as a throttle would, so neither its CPU
time nor the idle cores can tell a throttled device from a contended host. A host control tells them
apart: a small fixed NumPy computation (the host's BLAS and a memory copy, never torch's kernels, which an
adversary may have replaced), timed in the same windows (HostControl, under 1% of an idle host's burn-in,
at most CONTROL_SHARE plus a round per window of a loaded one's). The part of the device's fall that the
control shares is the host's; the device is blamed when its fall exceeds the control's by THROTTLE_RATIO,
or when the control fell with it while no other process loaded the host (the CPU as a whole slowed). Each
window records the control's rounds and the cores this process and all others kept busy
(judge_throughput). Accelerators keep the plain rule: the host's load does not slow their kernels.

Pass: every result identical to its golden result (or within the bound), and no throughput collapse.
Fail (high): a wrong result; a format the device declares but refuses (checks/refusal.py).
Fail (medium): throughput fell by THROTTLE_RATIO or more under sustained load
(on the CPU: beyond the host control's fall, or with it on a host no other process loaded). Information: a
CPU's fall that the host control shares while other processes loaded the host.
Warning (low): results that differ in their bits but stay within the bound.

A throughput trend spans formats: each window's rate is taken relative to its format's starting rate.
Power draw (as a share of the enforced limit), compute and memory clocks, temperature and throttle
reasons are recorded through the burn (sensors/power.py: NVML, amdsmi, psutil on a CPU) and drawn beside
the throughput curve. Fail (medium): a device that under the burn's load holds its clocks below their
floors while drawing under 90 % of its power limit and naming no reason (a possible hidden cap); where the
device names no reasons at all, the rule is not judged and the limits say so.

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
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import psutil
import torch

from chipaudit.checks.base import Check, CheckContext, NotApplicable, Outcome
from chipaudit.checks.integrity.gemm import to_host, verify_product
from chipaudit.checks.integrity.operands import PAIRS, draw_pair
from chipaudit.checks.integrity.overlap import Comparisons, host_array
from chipaudit.checks.integrity.products import compute
from chipaudit.checks.integrity.throttle import HostControl, HostLoad, Window, judge_throughput, ms
from chipaudit.checks.refusal import REFUSALS, one_line, refused_or_skip
from chipaudit.devices import capability, torchdev
from chipaudit.oracle.formats import FORMATS, NumberFormat
from chipaudit.oracle.matmul import OperandNorms, Verification
from chipaudit.perf import specs, timing
from chipaudit.report.model import Category, Finding, Level, Severity
from chipaudit.sensors import power
from chipaudit.stats import median

BURN_SECONDS: dict[Level, float] = {Level.quick: 10.0, Level.standard: 60.0, Level.deep: 600.0}
# Setup (drawing, uploading and verifying the pools) and the last product, on top of the duration.
SETUP_ALLOWANCE_S = 120.0  # includes SETTLE_S
POOL = 2
# The formats a burn-in rotates through: where the device has its peak. Tensor-core accelerators peak in
# bf16 and fp16 (and fp8 where rated, about twice those: H100/H200, MI300X, Gaudi 3 datasheets); a CPU
# peaks in fp32 (its fp16 and bf16 products are emulated or convert on the fly, except on AMX parts).
ACCELERATOR_FORMATS = ("bf16", "fp16")
RATED_ONLY_FORMATS = ("fp8_e4m3",)  # only where the spec database rates the device for them
CPU_FORMATS = ("fp32",)
MAX_LANES = len(ACCELERATOR_FORMATS) + len(RATED_ONLY_FORMATS)
# The pairs' operands, by pair index: the pool starts with random and realistic data, and fresh pairs
# cycle through the realistic pairs, so that a trigger on a model's data meets sustained load too. Not
# fp8_weights: its rounding onto the e4m3 grid on the host (a search per element) takes seconds at
# burn-in sizes; integrity.gemm draws it.
OPERANDS = ("normal", *(p for p in PAIRS if p != "fp8_weights"))
# A fresh pair of operands replaces the oldest every this many seconds (standard and deep): about 2% of
# the time at the sizes chosen (drawing, uploading and verifying a pair costs a few products).
REFRESH_S = 20.0
HOST_CHECK_SHARE = 16  # one result in this many, chosen secretly, is also compared on the host
# Sizes tried for the products, in steps of about 1.5; the fastest per operation of those whose product
# takes at most TARGET_PRODUCT_S is used (choose_size), so that windows hold several products and the
# comparison's cost stays far below the product's (one read of the result and the golden one against 2n^3
# operations: at 8192 on an H200 in bf16, under 5%).
# Not beyond 8192: the host draws and verifies each golden pair, which at 16384 takes tens of seconds
# per pair, longer than a quick burn-in.
SIZES = (256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)  # multiples of 128, as fp8 needs
TARGET_PRODUCT_S = 0.12
RATE_TIE = 0.05  # sizes whose rate is within this share of the best one are as fast
# The next size is still tried when predicted at up to this factor over TARGET_PRODUCT_S: the prediction
# (x8 per doubling) overestimates where the smaller product did not yet fill the device.
TARGET_SLACK = 1.5
MEMORY_SHARE = 0.25  # of the device's free memory, at most, for the pools and results of every format
WINDOW_S = 1.0  # each window runs one format, in turn
# The device idles this long before the burn, so that the curve starts from rest: a device that slows
# under sustained load (heat, or a trojan counting busy time) shows a fall rather than starting slow
# because the checks before this one kept it busy.
SETTLE_S = 2.0
MAX_EVENTS = 16


@dataclass
class Pair:
    a: torch.Tensor
    b: torch.Tensor
    golden: torch.Tensor
    golden_bits: np.ndarray  # the golden result's bits on the host (overlap.host_array's form)
    host_a: np.ndarray
    host_b: np.ndarray
    norms: OperandNorms


@dataclass
class BurnState:
    """One format's share of the burn (a lane): its size, its golden pairs and its tally."""

    fmt: NumberFormat
    n: int
    pool: list[Pair] = field(default_factory=list)
    products: int = 0
    within_bound: int = 0
    wrong: int = 0
    host_checks: int = 0
    host_checks_skipped: int = 0  # chosen while the host was still comparing earlier ones
    host_disagreements: int = 0
    fresh_pairs: int = 0
    first_wrong: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    control_s: float = 0.0  # CPU only: seconds the host control took in this lane's windows

    @property
    def exact(self) -> int:
        """Products identical to their golden result: every one not judged otherwise."""
        return self.products - self.within_bound - self.wrong


@dataclass(frozen=True)
class Tag:
    """What a queued result was: its lane, its pair, and when in the run it was asked for."""

    lane: int
    pair: int  # the pair's place in the lane's pool
    at_s: float
    product: int  # the lane's count of products when it was queued
    operands: Pair = field(compare=False, repr=False)  # a refresh may replace the pool's pair meanwhile


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
        out = Outcome()
        with torchdev.strict_precision():
            lanes = self._lanes(ctx, out)
            if out.findings or not lanes:
                return out
            seconds = self.seconds(ctx.level, ctx.params)
            ctx.progress(0, int(seconds), "letting the device rest before the burn")
            time.sleep(SETTLE_S)
            with power.PowerRecorder(ctx.device) as recorder:  # its seconds count from the burn's start
                elapsed = burn(ctx, lanes, seconds)
        for lane in lanes:
            self._findings(ctx, lane, out)
        throttle = judge_throughput(lane_relative(lanes), torch.device(ctx.device).type == "cpu")
        if throttle is not None:
            severity, title, detail, evidence = throttle
            out.findings.append(self.finding(severity, title, detail, **evidence))
        if (cap := power.judge_hidden_cap(recorder.recording)) is not None:
            out.findings.append(self.finding(cap[0], cap[1], cap[2], **cap[3]))
        self._report(ctx, lanes, seconds, elapsed, out)
        out.measurements.update(recorder.recording.measurements())
        out.coverage["limits"] = recorder.recording.limits()
        return out

    def _lanes(self, ctx: CheckContext, out: Outcome) -> list[BurnState]:
        """A verified pool for each format the burn rotates through; a wrong golden product, or a format
        the device declares but refuses, is a finding at once."""
        lanes = []
        for fmt in burn_formats(ctx.device, ctx.params):
            try:
                n = choose_size(ctx.device, fmt)
                lane = BurnState(fmt, n)
                bad = self._pool(ctx, lane)
            except REFUSALS as e:
                try:
                    out.findings.append(refused_or_skip(
                        self, f"{fmt.name} products", e, capability.of_format(ctx.device, fmt.name),
                        dtype=fmt.name, seed=ctx.seed))
                except NotApplicable:  # a declared lack: this format is not burnt, the others are
                    out.notes.append(f"{fmt.name}: not burnt: {one_line(e)}")
                continue
            if bad is not None:
                out.findings.append(bad)
                return lanes
            lanes.append(lane)
        return lanes

    def _pool(self, ctx: CheckContext, lane: BurnState) -> Finding | None:
        """Draw, upload and verify the lane's operand pairs; a wrong golden product is a finding at once."""
        fmt, n = lane.fmt, lane.n
        for i in range(POOL):
            ctx.progress(i, POOL, f"verifying golden product {i + 1} of {POOL} ({n}x{n}x{n} {fmt.name})")
            pair, v = make_pair(ctx, fmt, n, i)
            if not v.ok:
                return self.finding(
                    Severity.high, f"wrong {fmt.name} product before the burn-in started",
                    f"The first product of pair {i} ({n}x{n}x{n}) is already wrong: {v.bad} of {v.checked} "
                    f"checked {'elements' if v.method != 'projection' else 'column projections'} out of bound.",
                    pair=i, seed=ctx.seed, dtype=fmt.name, method=v.method, worst=v.worst,
                    secret_seed=v.secret_seed)
            lane.pool.append(pair)
        return None

    def _findings(self, ctx: CheckContext, lane: BurnState, out: Outcome) -> None:
        fmt, n = lane.fmt, lane.n
        if lane.wrong:
            first = lane.first_wrong or {}
            out.findings.append(self.finding(
                Severity.high, f"wrong {fmt.name} results under sustained load",
                f"{lane.wrong} of {lane.products} {fmt.name} products were wrong; the first after "
                f"{first.get('after_s')} s and {first.get('after_products')} products of sustained load.",
                seed=ctx.seed, shape=[n, n, n], dtype=fmt.name, wrong=lane.wrong, products=lane.products,
                first=first, events=lane.events))
        if lane.host_disagreements:
            out.findings.append(self.finding(
                Severity.high, "the device's own comparison disagrees with the host",
                f"{lane.host_disagreements} of {lane.host_checks} {fmt.name} results checked on the host differed "
                "from the golden result although the device reported them identical.",
                seed=ctx.seed, dtype=fmt.name, events=lane.events))
        if lane.within_bound:
            out.findings.append(self.finding(
                Severity.low, f"non-deterministic {fmt.name} products under sustained load",
                f"{lane.within_bound} of {lane.products} products differed in their bits from the first "
                "product of the same inputs, all within the error bound.",
                seed=ctx.seed, shape=[n, n, n], dtype=fmt.name))

    def _report(self, ctx: CheckContext, lanes: list[BurnState], seconds: float, elapsed: float,
                out: Outcome) -> None:
        cpu = torch.device(ctx.device).type == "cpu"
        windows = sorted((w for lane in lanes for w in lane.windows), key=lambda w: w.t_s)
        products = sum(lane.products for lane in lanes)
        out.coverage = {
            "products": products, "formats": [lane.fmt.name for lane in lanes], "pool": POOL,
            "seconds": round(elapsed, 2), "requested_seconds": seconds,
            "verified_on_device": products, "verified_on_host": sum(lane.host_checks for lane in lanes),
            "host_checks_skipped_busy": sum(lane.host_checks_skipped for lane in lanes),
            "identical_to_golden": sum(lane.exact for lane in lanes),
            "within_bound_not_identical": sum(lane.within_bound for lane in lanes),
            "fresh_pairs": sum(lane.fresh_pairs for lane in lanes),
            "elements_checked": sum(lane.products * lane.n**2 for lane in lanes),
            "by_format": {lane.fmt.name: {"shape": [lane.n] * 3, "products": lane.products,
                                          "verified_on_host": lane.host_checks, "fresh_pairs": lane.fresh_pairs}
                          for lane in lanes},
        }
        control_s = sum(lane.control_s for lane in lanes)
        out.measurements = {
            "throughput_macs_per_s": sum(lane.products * lane.n**3 for lane in lanes) / max(elapsed, 1e-9),
            "by_format": {lane.fmt.name: _rates(lane, elapsed) for lane in lanes},
            "throughput_curve": {
                "t_s": [round(w.t_s, 3) for w in windows],
                "format": [w.fmt for w in windows],
                "macs_per_s": [round(w.macs_per_s) for w in windows],
                "products": [w.products for w in windows],
                **({"other_cores": [round(w.other_cores or 0.0, 3) for w in windows],
                    "own_cores": [round(w.own_cores or 0.0, 3) for w in windows],
                    "control_team_ms": [ms(w.control_team_s) for w in windows],
                    "control_memory_ms": [ms(w.control_memory_s) for w in windows],
                    "control_rounds": [len(w.control_team_s) for w in windows]} if cpu else {}),
            },
            **({"control_share": round(control_s / max(elapsed, 1e-9), 4)} if cpu else {}),
        }


def _rates(lane: BurnState, elapsed: float) -> dict[str, float]:
    """A lane's throughput: its products over the whole burn (the others' windows included), and over
    its own windows."""
    rates = [w.macs_per_s for w in lane.windows]
    return {"macs_per_s": lane.products * lane.n**3 / max(elapsed, 1e-9),
            "median_macs_per_s": median(rates) if rates else 0.0,
            "min_macs_per_s": min(rates, default=0.0), "max_macs_per_s": max(rates, default=0.0)}


def burn_formats(device: str, params: dict[str, Any]) -> list[NumberFormat]:
    """The formats to rotate through: the `burn_in_formats` parameter, or where the device peaks."""
    given = params.get("burn_in_formats")
    if given:
        return [FORMATS[name] for name in given]
    if torch.device(device).type == "cpu":
        return [FORMATS[name] for name in CPU_FORMATS]
    spec = specs.lookup(torchdev.describe(device).name)
    rated = [name for name in RATED_ONLY_FORMATS if spec is not None and name in spec.dense]
    names = [name for name in (*ACCELERATOR_FORMATS, *rated)
             if not capability.of_format(device, name).lacking]
    return [FORMATS[name] for name in names] or [FORMATS["fp32"]]


def lane_relative(lanes: list[BurnState]) -> list[Window]:
    """Every lane's windows in time order, each rate relative to its lane's starting rate (the median of
    its first third), so that one throughput trend spans formats of different speeds."""
    windows = []
    for lane in lanes:
        start = median(w.macs_per_s for w in lane.windows[:max(1, len(lane.windows) // 3)]) if lane.windows else 0.0
        windows += [replace(w, macs_per_s=w.macs_per_s / start if start > 0 else 0.0) for w in lane.windows]
    return sorted(windows, key=lambda w: w.t_s)


def make_pair(ctx: CheckContext, fmt: NumberFormat, n: int, index: int) -> tuple[Pair, Verification]:
    """Operands drawn from the check's seed, the format and the pair's index, uploaded, multiplied once on
    the device, and that golden product verified on the host."""
    rng = np.random.default_rng([ctx.seed, index, *fmt.name.encode()])
    a, b, _ = draw_pair(rng, OPERANDS[index % len(OPERANDS)], (1, n, n), (1, n, n), fmt)
    da = fmt.host_buffer(a[0]).to(ctx.device).to(fmt.torch_dtype)
    db = fmt.host_buffer(b[0]).to(ctx.device).to(fmt.torch_dtype)
    if fmt.name == "fp8_e4m3":
        db = db.t().contiguous().t()  # torch._scaled_mm wants the second operand column-major
    golden = product(fmt, da, db)
    on_host = golden.cpu()  # one copy from the device serves the verification and the bits kept
    norms = OperandNorms.of(a, b)
    v = verify_product(a, b, to_host(on_host).reshape(1, n, n), fmt, norms=norms)
    return Pair(da, db, golden, host_array(on_host).copy(), a, b, norms), v


def product(fmt: NumberFormat, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The burn's product: torch.mm, or the fp8 path (integrity.gemm's)."""
    return compute(fmt, "mm", (a, b)) if fmt.name == "fp8_e4m3" else torch.mm(a, b)


def choose_size(device: str, fmt: NumberFormat) -> int:
    """Of the sizes whose product takes at most TARGET_PRODUCT_S and whose pool fits in its share of
    memory, the one the device multiplies fastest per operation (the largest of those within RATE_TIE of
    the best: its comparison costs least beside its product); SIZES[0] when none fits.

    Not simply the largest: a CPU's BLAS can run a power-of-two size far slower than its neighbours (2048
    at 98 GFLOP/s between 1536 and 3072 at 164 and 183, measured on a 2-core host), and a burn-in at
    peak load must run where the device peaks. Each size is timed by the fastest of a few products
    (timing.fastest), so that a moment of contention on a shared host does not shrink the products. A
    format the device refuses raises here, on its first product."""
    budget = _free_bytes(device) * MEMORY_SHARE / MAX_LANES
    element = torch.empty((), dtype=fmt.torch_dtype).element_size()
    timed: dict[int, float] = {}

    def fits(n: int) -> str | None:
        return "the pool does not fit" if (3 * POOL + 2) * n * n * max(element, 4) > budget else None

    def seconds_at(n: int) -> float:
        a = torch.ones((n, n), dtype=fmt.torch_dtype, device=device)
        b = a.t().contiguous().t() if fmt.name == "fp8_e4m3" else a
        timed[n] = timing.fastest(lambda: product(fmt, a, b), device)
        return timed[n]

    ladder = timing.Ladder(SIZES, TARGET_PRODUCT_S, slack=TARGET_SLACK, keep_over_cap=False)
    largest = ladder.climb(seconds_at, fits).size
    if not largest:
        return SIZES[0]
    rates = {n: n**3 / max(s, 1e-12) for n, s in timed.items() if n <= largest}
    best = max(rates.values())
    return max(n for n, r in rates.items() if r >= best * (1 - RATE_TIE))


def _free_bytes(device: str) -> float:
    kind = torch.device(device).type
    if kind == "cpu":
        return float(psutil.virtual_memory().available)
    get_info = getattr(getattr(torch, kind, None), "mem_get_info", None)
    if get_info is not None:
        return float(get_info(torch.device(device).index or 0)[0])
    return math.inf


def burn(ctx: CheckContext, lanes: list[BurnState], seconds: float) -> float:
    """The loop: each window one format in turn; products queued on the device, each compared there with
    its golden result without waiting (overlap.Comparisons), a secret share copied to the host and
    compared on a host thread, and every REFRESH_S a fresh pair the device has never seen, verified on the
    host. Returns the seconds it took, the last comparisons read."""
    cpu = torch.device(ctx.device).type == "cpu"
    load = HostLoad() if cpu else None
    control = HostControl(ctx.seed) if cpu else None
    start = time.perf_counter()

    def differs(tag: Tag, c: torch.Tensor) -> None:
        _judge_difference(ctx, lanes[tag.lane], tag, c)

    comparisons = Comparisons(ctx.device, differs)
    try:
        window_start, counted, turn = start, 0, 0
        refreshed = start
        while True:
            now = time.perf_counter()
            lane = lanes[turn % len(lanes)]
            if now - refreshed >= REFRESH_S and now - start < seconds:
                _refresh(ctx, lane, now - start)
                refreshed = now = time.perf_counter()
            if now - window_start >= WINDOW_S:
                done = comparisons.completed - counted  # products whose comparison was read: finished
                counted = comparisons.completed
                other, own = load.cores() if load else (None, None)
                team, memory, control_s = control.close_window() if control else ([], [], 0.0)
                macs = lane.n**3
                rate = done * macs / max(now - window_start - control_s, 1e-9)  # the device's own time
                lane.control_s += control_s
                lane.windows.append(Window(now - start, done, rate, other, own, team, memory,
                                           macs / rate if cpu and rate > 0 else None, lane.fmt.name))
                window_start = now
                turn += 1
                ctx.progress(min(int(now - start), int(seconds)), int(seconds),
                             f"{sum(x.products for x in lanes)} products verified "
                             f"({', '.join(f'{x.n}^3 {x.fmt.name}' for x in lanes)})")
                lane = lanes[turn % len(lanes)]
            if now - start >= seconds:
                break
            if control is not None and control.due(now, window_start):
                control.round()
            i = secrets.randbelow(len(lane.pool))
            pair = lane.pool[i]
            c = product(lane.fmt, pair.a, pair.b)
            lane.products += 1
            tag = Tag(turn % len(lanes), i, now - start, lane.products, pair)
            secret = secrets.randbelow(HOST_CHECK_SHARE) == 0
            comparisons.submit(c, pair.golden, pair.golden_bits, tag, host_check=secret)
        comparisons.drain()
    finally:
        comparisons.close()
    for tag in comparisons.host_checked:
        lanes[tag.lane].host_checks += 1
    for tag in comparisons.host_skipped:
        lanes[tag.lane].host_checks_skipped += 1
    for tag in comparisons.disagreements:
        lane = lanes[tag.lane]
        lane.host_disagreements += 1
        _event(lane, {"after_s": round(tag.at_s, 3), "after_products": tag.product, "pair": tag.pair,
                      "kind": "host readback differs from the golden result the device called identical"})
    return time.perf_counter() - start


def _refresh(ctx: CheckContext, lane: BurnState, at_s: float) -> None:
    """Replace the lane's oldest pair with fresh operands: a fault that spares inputs it has seen before,
    or that needs use before it fires on new ones, meets new inputs late in the run."""
    lane.fresh_pairs += 1
    index = POOL + lane.fresh_pairs - 1
    pair, v = make_pair(ctx, lane.fmt, lane.n, index)
    lane.products += 1
    if v.ok:
        lane.pool[index % POOL] = pair
        return
    _wrong(lane, {"after_s": round(at_s, 3), "after_products": lane.products, "pair": index, "fresh": True,
                  "method": v.method, "bad": v.bad, "checked": v.checked, "worst": v.worst,
                  "secret_seed": v.secret_seed})


def _event(lane: BurnState, event: dict[str, Any]) -> None:
    if len(lane.events) < MAX_EVENTS:
        lane.events.append(event)


def _wrong(lane: BurnState, event: dict[str, Any]) -> None:
    lane.wrong += 1
    if lane.first_wrong is None:
        lane.first_wrong = event
    _event(lane, event)


def _judge_difference(ctx: CheckContext, lane: BurnState, tag: Tag, c: torch.Tensor) -> None:
    """A result whose bits differ from the golden one: non-deterministic within the bound, or wrong."""
    pair, n = tag.operands, lane.n
    v: Verification = verify_product(pair.host_a, pair.host_b, to_host(c).reshape(1, n, n), lane.fmt,
                                     norms=pair.norms)
    if v.ok:
        lane.within_bound += 1
        return
    _wrong(lane, {"after_s": round(tag.at_s, 3), "after_products": tag.product, "pair": tag.pair,
                  "method": v.method, "bad": v.bad, "checked": v.checked, "worst": v.worst,
                  "secret_seed": v.secret_seed})


CHECKS = [BurnInCheck()]
