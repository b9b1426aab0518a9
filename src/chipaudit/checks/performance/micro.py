"""Microbenchmarks: matrix-product throughput per format, device memory bandwidth, host<->device
bandwidth, and kernel-launch latency.

Threat: a device that is slower than it is sold as, by design (a hidden cap) or by fault, and a
stack update that makes a device slower than it was.

Method: every figure comes from perf/timing.py: warm-up, device synchronisation or device events,
the median of many repeats with their relative spread, inputs rotated through more memory than the
largest cache, random data. A square matrix product grows in size until one product is long enough to
saturate the device but cheap enough for the level's budget; then a small sweep of large aligned shapes
(SWEEP) runs within the same budget, and the figure is the best shape's, with its own noise. Every
shape not measured is named with its reason (budget, memory, refusal). int8 and fp8 go through
torch._int_mm and torch._scaled_mm with their second operand column-major. Device memory bandwidth is
the better of STREAM's copy and add kernels over buffers far larger than any cache. Throughput and
bandwidth are compared with the device's rated figures (data/specs.toml); on the CPU the rating is an
estimate from cores, clock and SIMD width, and fp32/fp64 products are cross-checked with NumPy's own
BLAS on the same cores.

Pass: every figure measured. Fail (medium): a matrix-product (fp64 to bf16) or memory-bandwidth
figure below 30 % of the vendor's rating with no throttle reason reported (possible hidden cap; low
when the rating is only reported by third parties). Warning (low): on a CPU, torch's products far
slower than NumPy's BLAS. fp8 and int8 efficiencies are shown, not judged (CAP_FORMATS says why).
Fail (high): the device refusing (raising, or no answer within refusal.FIRST_ANSWER_S) the first
product of a format it declares (devices/capability.py); medium where only the torch backend's table
implies the format, low where nothing declares it either way.
Not run: a format only when the device declares that it lacks it; the reason names the declaration.

Cannot see: a cap that only engages under conditions the benchmark does not create (long runs,
particular shapes, particular processes); throughput that is honest but obtained by computing
wrongly (that is the integrity checks' job); on devices without device events, time spent in the
host's synchronisation call is included.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from chipaudit.checks.base import CheckContext, NotApplicable, Outcome
from chipaudit.checks.performance.common import (
    OUT_OF_MEMORY,
    Deadline,
    PerformanceCheck,
    cap_finding,
    device_name,
    device_spec,
    fits,
    generator,
    random_tensor,
    rate,
    release,
    spec_summary,
)
from chipaudit.checks.refusal import REFUSALS, answer_within, one_line, refused_or_skip
from chipaudit.devices import capability, torchdev
from chipaudit.oracle.formats import FORMATS
from chipaudit.perf import timing
from chipaudit.perf.timing import Figure
from chipaudit.report.model import Level, Severity

Q, S, D = Level.quick, Level.standard, Level.deep
Shape = tuple[int, int, int]  # (M, N, K): an M x K operand times a K x N operand

# Matrix sizes tried, smallest first, up to the size at which current accelerators reach their
# plateau (cuBLAS/hipBLASLt reach 90 % of their best at 8192 square on H100 and MI300X). Below MIN_N a
# product's time is mostly launch and scheduling overhead, so the next size's time is not predicted
# from it (timing.Ladder's cubic_from).
FIRST_N, MIN_N, MAX_N = 128, 512, 8192
# The largest size whose single product stays within this share of the budget: enough repeats remain
# for a median and a noise figure, and a busy machine's slowdown still leaves the check near its budget.
PRODUCT_SHARE = 1 / 20
# Shapes (M, N, K) swept beside the ladder's square, in the order tried; the figure is the best of
# them. One square size is not every chip's best: the number of output tiles against the number of
# compute units (wave quantisation), the length of K against each tile's fixed cost, and the power a
# shape draws move the rate by 10-20 %. Stas Bekman's Maximum Achievable Matmul FLOPS tables
# (stas00/ml-engineering, compute/accelerator, mamf-finder.py: randn operands, brute-force shape search)
# find H100/H200 SXM's best bf16 rate, 80 % of the rating, at 2048x2048x13312, GH200's at
# 1024x15360x4096, and H200's best fp8 rate at 1280x4096x12032; 8192 square reached 68 % in
# chipaudit's H200 run (docs/validation). Every dimension is a multiple of 256, so that no tile is
# partial on any vendor's kernel: squares, the best shapes of those tables, and LLM-like products
# (tokens x hidden x 2*hidden, tokens x MLP width x hidden of 8192-wide models).
SWEEP: tuple[Shape, ...] = (
    (4096, 4096, 4096),
    (8192, 8192, 8192),
    (16384, 16384, 16384),
    (8192, 8192, 16384),
    (2048, 2048, 13312),
    (1024, 15360, 4096),
    (1280, 4096, 12032),
    (4096, 28672, 8192),
)
# The planned shapes' least cost (warm-up calls plus the minimum of repeats, at the rate of the
# ladder's square) stays within this share of the budget, so that each shape keeps room for repeats.
SWEEP_COST_SHARE = 0.5
# Formats whose plain torch product reaches the vendor's rated class of throughput on every rated chip
# (cuBLAS, hipBLASLt, CANN, CNNL GEMMs). fp8 and int8 go through torch's private _scaled_mm and
# _int_mm, which are not always the vendor's fastest kernels: a public MI300X decode benchmark
# (xbill9/gemma4-dev) has _int_mm at a fifth of bf16's rate, and chipaudit's H200 run measured int8
# at 6 % of its rating with a row-major second operand, which cuBLASLt's int8 kernels do not read as
# it is (they read both operands along K; ComfyUI's int8 notes measured a row-major one 5x slower).
# A slow private path is not a hidden cap, and a floor low enough to spare those paths catches no cap
# that the judged bf16/fp16 figures of the same tensor cores miss: their efficiency is shown, never a
# finding.
CAP_FORMATS = frozenset({"fp64", "fp32", "tf32", "fp16", "bf16"})
# On the CPU, torch's product below this share of NumPy's BLAS on the same cores is a warning.
BLAS_CROSS_CHECK_MIN = 0.5
CROSS_CHECK_SHARE = 0.35  # of the budget spent on the NumPy cross-check
# Device memory: buffers much larger than any last-level cache.
COPY_BYTES_CPU = 128 * 2**20
COPY_BYTES_MAX = 1 << 30
# STREAM's copy (c = a) and add (c = a + b) kernels (McCalpin's STREAM; BabelStream on GPUs), with the
# buffers each call streams through. Both count every byte read and written, as STREAM does and as
# the memory's rating (its pins' rate, either direction) implies. Add's two reads per write turn the
# bus from reading to writing less often than copy's one; both are honest streams, so the figure is
# the better of the two, as a STREAM report's best kernel is the memory's sustainable rate.
STREAM_KERNELS = (("copy", 2), ("add", 3))
TRANSFER_BYTES = 256 * 2**20
# Back-to-back launches per repeat of the latency measurement.
LAUNCH_REPEAT_S = 5e-3


class GemmThroughput(PerformanceCheck):
    """Dense matrix products in one format; the figure is TFLOP/s (TOP/s for int8), the best of a
    small sweep of shapes."""

    def __init__(self, fmt_name: str, levels: tuple[Level, ...] = (S, D)):
        self.fmt = FORMATS[fmt_name]
        self.id = f"performance.gemm.{fmt_name}"
        self.levels = levels
        self.metric = f"gemm.{fmt_name}.{'tops' if self.fmt.integer else 'tflops'}"

    def is_supported(self, device: str) -> str | None:
        declared = capability.of_format(device, self.fmt.name)
        return declared.reason if declared.lacking else None

    def measure(self, ctx: CheckContext) -> Outcome:
        precision = torchdev.tf32_allowed() if self.fmt.name == "tf32" else torchdev.strict_precision()
        with precision:
            return self._measure(ctx)

    def _product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.fmt.name == "int8":
            return torch._int_mm(a, b)
        if self.fmt.name == "fp8_e4m3":
            # Tensor-wise scales as float32 tensors; default accumulation, the arithmetic the integrity
            # checks verify (use_fast_accum is faster on Hopper but not accepted by every backend, and a
            # refused flag must not read as a refused format).
            one = torch.ones((), dtype=torch.float32, device=a.device)
            return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        return torch.mm(a, b)

    def _operands(self, shape: Shape, device: str, gen: torch.Generator, count: int) -> list[tuple[torch.Tensor, ...]]:
        """`count` pairs of random operands. For int8 and fp8 the second is column-major, as the
        fastest (for _scaled_mm the only) layout of torch's _int_mm and _scaled_mm: their cuBLASLt
        kernels read both operands along K (the `TN` layout)."""
        m, n, k = shape
        dtype = self.fmt.torch_dtype
        column_major = self.fmt.name in ("int8", "fp8_e4m3")
        pairs = []
        for _ in range(count):
            a = random_tensor((m, k), dtype, device, gen)
            b = random_tensor((n, k), dtype, device, gen).t() if column_major else \
                random_tensor((k, n), dtype, device, gen)
            pairs.append((a, b))
        return pairs

    def _bytes(self, shape: Shape) -> tuple[int, int]:
        """(bytes of one operand pair, bytes of one result)."""
        m, n, k = shape
        size = _itemsize(self.fmt.torch_dtype)
        out = 4 if self.fmt.name == "int8" else 2 if self.fmt.name == "fp8_e4m3" else size
        return (m * k + k * n) * size, m * n * out

    def _fits(self, shape: Shape, device: str) -> str | None:
        pair, out = self._bytes(shape)
        return fits(device, pair * timing.rotation(pair, device) + 2 * out)

    def _choose_size(self, ctx: CheckContext, gen: torch.Generator, budget: float) -> timing.Climb:
        """Grow n until the next product, predicted at the current size's rate, would be too long for
        the budget (timing.Ladder). Not the best rate of all sizes: on some paths, CPU fp16 for one,
        small products run far faster per FLOP than large ones. A refusal of the first size, the
        format's first product here, is raised: the device refused the format.
        """
        ladder = timing.Ladder(sizes=_doublings(FIRST_N, MAX_N), cap_s=budget * PRODUCT_SHARE, cubic_from=MIN_N)

        def seconds_at(size: int) -> float:
            (a, b), = self._operands((size, size, size), ctx.device, gen, 1)

            def timed() -> float:
                return timing.fastest(lambda: self._product(a, b), ctx.device)

            return answer_within(timed) if size == FIRST_N else timed()

        def fits_at(size: int) -> str | None:
            return fits(ctx.device, 3 * size * size * _itemsize(self.fmt.torch_dtype) * timing.MIN_ROTATION)

        climb = ladder.climb(seconds_at, fits_at, errors=REFUSALS, describe=_describe)
        if climb.error is not None and not climb.size and not isinstance(climb.error, OUT_OF_MEMORY):
            raise climb.error
        return climb

    def plan(self, rate: float, budget: float, cap: float, device: str,
             square: Shape) -> tuple[list[Shape], list[str]]:
        """The shapes of SWEEP to measure beside the ladder's square, and why each other one is not.

        A shape's product time is predicted at `rate` (FLOP/s, the square's; large products are no
        slower per FLOP, so the prediction errs long). Skipped: a shape whose product would exceed
        `cap`, one whose operands do not fit in memory, and those left once the planned shapes' least
        cost (warm-up calls and the minimum of repeats) reaches SWEEP_COST_SHARE of `budget`.
        """
        least = timing.WARMUP_CALLS + timing.MIN_REPEATS
        planned: list[Shape] = []
        cost = 0.0
        skipped = []
        for shape in SWEEP:
            if shape == square:
                continue
            predicted = 2.0 * math.prod(shape) / max(rate, 1.0)
            reason = self._fits(shape, device)
            if predicted > cap:
                skipped.append(f"{_name(shape)}: budget: one product predicted at {predicted:.3g} s, over the "
                               f"{cap:.3g} s cap")
            elif reason:
                skipped.append(f"{_name(shape)}: memory: {reason}")
            elif cost + least * predicted > SWEEP_COST_SHARE * budget:
                skipped.append(f"{_name(shape)}: budget: the shapes before it take the level's budget")
            else:
                planned.append(shape)
                cost += least * predicted
        return planned, skipped

    def _sweep(self, ctx: CheckContext, gen: torch.Generator, square: Shape, seconds: float, budget: float,
               cap: float) -> tuple[list[Figure], list[str]]:
        """The square's figure first, then one for each planned shape that ran. The plan is made from
        the ladder's quick probe to share the budget out, and again from the square's measured rate
        (a probe of a small square is mostly overhead). Each shape's budget is its least cost plus an
        equal part of what is left over; a shape the device refuses or cannot hold is named."""
        deadline = Deadline(budget)
        least = timing.WARMUP_CALLS + timing.MIN_REPEATS
        expected, _ = self.plan(2.0 * math.prod(square) / max(seconds, 1e-9), budget, cap, ctx.device, square)
        ctx.progress(1, len(expected) + 3, _name(square))
        try:
            figures = [self._figure(square, ctx.device, gen, max(least * seconds, budget / (1 + len(expected))))]
        finally:
            release(ctx.device)
        rate = figures[0].value * 1e12
        shapes, skipped = self.plan(rate, deadline.left(), cap, ctx.device, square)
        costs = [least * 2.0 * math.prod(s) / rate for s in shapes]
        for i, shape in enumerate(shapes):
            ctx.progress(2 + i, len(shapes) + 3, _name(shape))
            share = costs[i] + max(0.0, deadline.left() - sum(costs[i:])) / (len(shapes) - i)
            try:
                figures.append(self._figure(shape, ctx.device, gen, share))
            except REFUSALS as e:
                skipped.append(f"{_name(shape)}: {_describe(e)}")
            finally:
                release(ctx.device)
        return figures, skipped

    def _figure(self, shape: Shape, device: str, gen: torch.Generator, budget: float) -> Figure:
        pairs = self._operands(shape, device, gen, timing.rotation(self._bytes(shape)[0], device))
        measured = timing.measure(lambda i: self._product(*pairs[i % len(pairs)]), device, budget_s=budget)
        return Figure.throughput(
            self.metric, "TOP/s" if self.fmt.integer else "TFLOP/s", 2.0 * math.prod(shape) / 1e12, measured,
            details={"shape": list(shape), "dtype": self.fmt.name, "rotated_inputs": len(pairs)})

    def _measure(self, ctx: CheckContext) -> Outcome:
        deadline = Deadline(self.budget(ctx))
        gen = generator(ctx.device, ctx.seed)
        try:
            climb = self._choose_size(ctx, gen, self.budget(ctx))
        except REFUSALS as e:
            finding = refused_or_skip(self, f"{self.fmt.name} products", e,
                                      capability.of_format(ctx.device, self.fmt.name), dtype=self.fmt.name,
                                      shape=[FIRST_N, FIRST_N, FIRST_N], seed=ctx.seed)
            return self.outcome([], [f"n={FIRST_N}: {one_line(e)}"], findings=[finding])
        if not climb.size:  # out of memory at the first size
            raise NotApplicable("no product size fits: " + "; ".join(climb.notes))
        on_cpu = torch.device(ctx.device).type == "cpu"
        cross = on_cpu and self.fmt.name in ("fp32", "fp64")
        sweep_budget = deadline.left() * (1 - CROSS_CHECK_SHARE if cross else 1)
        n = climb.size
        figures, skipped = self._sweep(ctx, gen, (n, n, n), climb.seconds, sweep_budget,
                                       self.budget(ctx) * PRODUCT_SHARE)
        figure = max(figures, key=lambda f: f.value)
        figure.details["sweep"] = [{"shape": f.details["shape"], "value": f.value, "noise": f.noise}
                                   for f in figures]
        notes = [*climb.notes, *skipped]
        spec = device_spec(ctx.device)
        rating = spec.dense.get(self.fmt.name) if spec else None
        rate(figure, rating)
        out_findings = []
        what = f"{self.fmt.name} matrix products"
        finding = cap_finding(self, figure, rating, ctx.device, what) if self.fmt.name in CAP_FORMATS else None
        if finding is not None:
            out_findings.append(finding)
        extra: dict[str, Any] = {"rating": spec_summary(spec, device_name(ctx.device))}
        if rating is not None:
            extra["rating"]["rated"] = rating.to_dict()
        if cross:
            ctx.progress(len(figures) + 1, len(figures) + 2, "cross-check with NumPy's BLAS")
            shape = tuple(figure.details["shape"])
            blas = self._numpy_cross_check(shape, ctx.seed, max(deadline.left(), 0.5))  # type: ignore[arg-type]
            ratio = figure.value / blas.value if blas.value else math.inf
            extra["cross_check"] = {"numpy_blas": blas.to_dict(), "torch_over_numpy_throughput": round(ratio, 3),
                                    "numpy": np.__version__}
            if ratio < BLAS_CROSS_CHECK_MIN and figure.noise < 0.25 and blas.noise < 0.25:
                unit = figure.unit
                out_findings.append(self.finding(
                    Severity.low, f"torch {self.fmt.name} products at {ratio:.0%} of NumPy's BLAS on the same cores",
                    f"torch: {figure.value:g} {unit}, NumPy: {blas.value:g} {unit} at {_name(shape)}. The path "
                    "torch takes is far slower than an independent library on the same hardware.",
                    torch_figure=figure.to_dict(), numpy_figure=blas.to_dict()))
        ctx.progress(len(figures) + 2, len(figures) + 2, "done")
        return self.outcome([figure], notes, findings=out_findings, **extra)

    def _numpy_cross_check(self, shape: Shape, seed: int, budget: float) -> Figure:
        m, n, k = shape
        rng = np.random.default_rng(seed)
        dtype = np.float32 if self.fmt.name == "fp32" else np.float64
        pairs = [(rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype))
                 for _ in range(timing.rotation((m * k + k * n) * np.dtype(dtype).itemsize, "cpu"))]
        measured = timing.measure(lambda i: np.matmul(*pairs[i % len(pairs)]), "cpu", budget_s=budget,
                                  min_repeats=3)
        return Figure.throughput(f"numpy.{self.fmt.name}.tflops", "TFLOP/s", 2.0 * m * n * k / 1e12, measured,
                                 details={"shape": list(shape), "library": "numpy.matmul"})


class DeviceMemoryBandwidth(PerformanceCheck):
    """Large device-to-device streams, STREAM's copy and add kernels; bandwidth counts bytes read plus
    bytes written, and the figure is the better kernel's."""

    id = "performance.memory.device"

    def measure(self, ctx: CheckContext) -> Outcome:
        deadline = Deadline(self.budget(ctx))
        on_cpu = torch.device(ctx.device).type == "cpu"
        size = COPY_BYTES_CPU if on_cpu else COPY_BYTES_MAX
        notes: list[str] = []
        widest = max(streams for _, streams in STREAM_KERNELS)
        while size >= 16 * 2**20 and (reason := fits(ctx.device, widest * size * timing.MIN_ROTATION)):
            notes.append(f"{size >> 20} MiB buffers: {reason}")
            size //= 2
        gen = generator(ctx.device, ctx.seed)
        figures = []
        for k, (kernel, streams) in enumerate(STREAM_KERNELS):
            count = timing.rotation(streams * size, ctx.device)
            sets = [[random_tensor((size // 4,), torch.float32, ctx.device, gen) for _ in range(streams - 1)]
                    + [torch.empty(size // 4, dtype=torch.float32, device=ctx.device)] for _ in range(count)]
            ctx.progress(k, len(STREAM_KERNELS) + 1, f"{kernel}: {size >> 20} MiB buffers, {count} sets rotated")

            def run(i: int, sets: list[list[torch.Tensor]] = sets, kernel: str = kernel) -> None:
                *inputs, out = sets[i % len(sets)]
                if kernel == "copy":
                    out.copy_(inputs[0])
                else:
                    torch.add(inputs[0], inputs[1], out=out)

            measured = timing.measure(run, ctx.device, budget_s=deadline.left() / (len(STREAM_KERNELS) - k))
            figures.append(Figure.throughput(
                "memory.device.bandwidth", "GB/s", streams * size / 1e9, measured,
                details={"kernel": kernel, "bytes_per_buffer": size, "buffers_per_call": streams,
                         "counted": "bytes read + bytes written", "rotated_sets": count}))
            sets.clear()
            release(ctx.device)
        figure = max(figures, key=lambda f: f.value)
        figure.details["kernels"] = [{"kernel": f.details["kernel"], "value": f.value, "noise": f.noise}
                                     for f in figures]
        spec = device_spec(ctx.device)
        rating = spec.memory_bandwidth if spec else None
        rate(figure, rating)
        finding = cap_finding(self, figure, rating, ctx.device, "device memory bandwidth")
        extra = {"rating": spec_summary(spec, device_name(ctx.device))}
        ctx.progress(len(STREAM_KERNELS) + 1, len(STREAM_KERNELS) + 1, "done")
        return self.outcome([figure], notes, findings=[finding] if finding else [], **extra)


class HostTransfer(PerformanceCheck):
    """Host-to-device and device-to-host copies from and to pinned host memory."""

    id = "performance.memory.transfer"

    def is_supported(self, device: str) -> str | None:
        if torch.device(device).type == "cpu":
            return "the device is the host: there is no host-to-device link to measure"
        return None

    def measure(self, ctx: CheckContext) -> Outcome:
        deadline = Deadline(self.budget(ctx))
        size = TRANSFER_BYTES
        count = timing.MIN_ROTATION
        reason = fits(ctx.device, size * count)
        if reason:
            raise NotApplicable(f"{size >> 20} MiB transfer buffers: {reason}")
        gen = torch.Generator().manual_seed(ctx.seed)
        hosts = [torch.randn(size // 4, generator=gen) for _ in range(count)]
        pinned = True
        try:
            hosts = [h.pin_memory() for h in hosts]
        except RuntimeError:
            pinned = False
        devs = [torch.empty(size // 4, device=ctx.device) for _ in range(count)]
        details = {"bytes_per_copy": size, "pinned_host_memory": pinned}
        figures = []
        for k, (metric, copy) in enumerate((
            ("memory.h2d.bandwidth", lambda i: devs[i % count].copy_(hosts[i % count], non_blocking=True)),
            ("memory.d2h.bandwidth", lambda i: hosts[i % count].copy_(devs[i % count], non_blocking=True)),
        )):
            ctx.progress(k, 2, metric)
            measured = timing.measure(copy, ctx.device, budget_s=deadline.left() / (2 - k))
            figures.append(Figure.throughput(metric, "GB/s", size / 1e9, measured, details=details))
        ctx.progress(2, 2, "done")
        return self.outcome(figures, [] if pinned else ["host memory could not be pinned: pageable copies"],
                            rating=spec_summary(None, device_name(ctx.device)) | {"note": "links are not rated"})


class LaunchLatency(PerformanceCheck):
    """Tiny kernels: back to back (launch overhead) and one at a time with a wait (round trip)."""

    id = "performance.launch"
    levels = (Q, S, D)

    def measure(self, ctx: CheckContext) -> Outcome:
        deadline = Deadline(self.budget(ctx))
        gen = generator(ctx.device, ctx.seed)
        x = random_tensor((1,), torch.float32, ctx.device, gen)
        figures = [Figure.latency(
            "launch.latency_us", 1e6, "us",
            timing.measure(lambda i: x.add_(1.0), ctx.device, budget_s=deadline.left() / 2,
                           min_repeat_s=LAUNCH_REPEAT_S, use_events=False),
            details={"op": "add_ on one element, launched back to back"})]
        notes = []
        if torch.device(ctx.device).type == "cpu":
            notes.append("round-trip latency: the CPU runs operators synchronously; it equals the launch figure")
        else:
            def round_trip(i: int) -> None:
                x.add_(1.0)
                torchdev.synchronize(ctx.device)

            figures.append(Figure.latency(
                "launch.sync_latency_us", 1e6, "us",
                timing.measure(round_trip, ctx.device, budget_s=deadline.left(), min_repeat_s=LAUNCH_REPEAT_S,
                               use_events=False),
                details={"op": "add_ on one element, then synchronize"}))
        return self.outcome(figures, notes)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _name(shape: Shape) -> str:
    return "x".join(map(str, shape))


def _describe(e: BaseException) -> str:
    return "device out of memory" if isinstance(e, OUT_OF_MEMORY) else one_line(e)


def _doublings(first: int, last: int) -> tuple[int, ...]:
    return tuple(first << i for i in range((last // first).bit_length()))


CHECKS = [
    GemmThroughput("fp32", levels=(Q, S, D)),
    GemmThroughput("fp64"),
    GemmThroughput("tf32"),
    GemmThroughput("fp16"),
    GemmThroughput("bf16"),
    GemmThroughput("fp8_e4m3"),
    GemmThroughput("int8"),
    DeviceMemoryBandwidth(),
    HostTransfer(),
    LaunchLatency(),
]
