"""Microbenchmarks: matrix-product throughput per format, device memory bandwidth, host<->device
bandwidth, and kernel-launch latency.

Threat: a device that is slower than it is sold as, by design (a hidden cap) or by fault, and a
stack update that makes a device slower than it was.

Method: every figure comes from perf/timing.py: warm-up, device synchronisation or device events,
the median of many repeats with their relative spread, inputs rotated through more memory than the
largest cache, random data. Matrix products grow in size until one product is long enough to
saturate the device but cheap enough for the level's budget. Throughput and bandwidth are compared
with the device's rated figures (data/specs.toml); on the CPU the rating is an estimate from cores,
clock and SIMD width, and fp32/fp64 products are cross-checked with NumPy's own BLAS on the same
cores.

Pass: every figure measured. Fail (medium): a matrix-product (fp64 to bf16) or memory-bandwidth
figure below 30 % of the vendor's rating with no throttle reason reported (possible hidden cap; low
when the rating is only reported by third parties). Warning (low): on a CPU, torch's products far
slower than NumPy's BLAS. fp8 and int8 efficiencies are shown, not judged.
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
    spec_summary,
)
from chipaudit.checks.refusal import REFUSALS, answer_within, one_line, refused_or_skip
from chipaudit.devices import capability, torchdev
from chipaudit.oracle.formats import FORMATS
from chipaudit.perf import timing
from chipaudit.perf.timing import Figure
from chipaudit.report.model import Level, Severity

Q, S, D = Level.quick, Level.standard, Level.deep

# Matrix sizes tried, smallest first, up to the size at which current accelerators reach their
# plateau (cuBLAS/hipBLASLt reach 90 % of their best at 8192 square on H100 and MI300X). Below MIN_N a
# product's time is mostly launch and scheduling overhead, so the next size's time is not predicted
# from it (timing.Ladder's cubic_from).
FIRST_N, MIN_N, MAX_N = 128, 512, 8192
# The largest size whose single product stays within this share of the budget: enough repeats remain
# for a median and a noise figure, and a busy machine's slowdown still leaves the check near its budget.
PRODUCT_SHARE = 1 / 20
# Formats whose plain torch product reaches the vendor's rated class of throughput on every rated chip
# (cuBLAS, hipBLASLt, CANN, CNNL GEMMs). fp8 and int8 go through torch's private _scaled_mm and
# _int_mm, which are not always the vendor's fastest kernels: their efficiency is shown, never a
# finding, so that a slow library path is not called a hidden cap.
CAP_FORMATS = frozenset({"fp64", "fp32", "tf32", "fp16", "bf16"})
# On the CPU, torch's product below this share of NumPy's BLAS on the same cores is a warning.
BLAS_CROSS_CHECK_MIN = 0.5
CROSS_CHECK_SHARE = 0.35  # of the budget spent on the NumPy cross-check
# Device-to-device copy: buffers much larger than any last-level cache.
COPY_BYTES_CPU = 128 * 2**20
COPY_BYTES_MAX = 1 << 30
TRANSFER_BYTES = 256 * 2**20
# Back-to-back launches per repeat of the latency measurement.
LAUNCH_REPEAT_S = 5e-3


class GemmThroughput(PerformanceCheck):
    """Dense square matrix products in one format; the figure is TFLOP/s (TOP/s for int8)."""

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
            one = torch.ones((), device=a.device)
            return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        return torch.mm(a, b)

    def _operands(self, n: int, device: str, gen: torch.Generator, count: int) -> list[tuple[torch.Tensor, ...]]:
        dtype = self.fmt.torch_dtype
        pairs = []
        for _ in range(count):
            a = random_tensor((n, n), dtype, device, gen)
            b = random_tensor((n, n), dtype, device, gen)
            if self.fmt.name == "fp8_e4m3":
                b = b.t().contiguous().t()  # _scaled_mm wants the second operand column-major
            pairs.append((a, b))
        return pairs

    def _choose_size(self, ctx: CheckContext, gen: torch.Generator, budget: float) -> tuple[int, list[str]]:
        """Grow n until the next product, predicted at the current size's rate, would be too long for
        the budget (timing.Ladder). Not the best rate of all sizes: on some paths, CPU fp16 for one,
        small products run far faster per FLOP than large ones. A refusal of the first size, the
        format's first product here, is raised: the device refused the format.
        """
        ladder = timing.Ladder(sizes=_doublings(FIRST_N, MAX_N), cap_s=budget * PRODUCT_SHARE, cubic_from=MIN_N)

        def seconds_at(size: int) -> float:
            (a, b), = self._operands(size, ctx.device, gen, 1)

            def timed() -> float:
                return timing.fastest(lambda: self._product(a, b), ctx.device)

            return answer_within(timed) if size == FIRST_N else timed()

        def fits_at(size: int) -> str | None:
            return fits(ctx.device, 3 * size * size * _itemsize(self.fmt.torch_dtype) * timing.MIN_ROTATION)

        climb = ladder.climb(seconds_at, fits_at, errors=REFUSALS,
                             describe=lambda e: "device out of memory" if isinstance(e, OUT_OF_MEMORY) else one_line(e))
        if climb.error is not None and not climb.size and not isinstance(climb.error, OUT_OF_MEMORY):
            raise climb.error
        return climb.size, climb.notes

    def _measure(self, ctx: CheckContext) -> Outcome:
        deadline = Deadline(self.budget(ctx))
        gen = generator(ctx.device, ctx.seed)
        try:
            n, notes = self._choose_size(ctx, gen, self.budget(ctx))
        except REFUSALS as e:
            finding = refused_or_skip(self, f"{self.fmt.name} products", e,
                                      capability.of_format(ctx.device, self.fmt.name), dtype=self.fmt.name,
                                      shape=[FIRST_N, FIRST_N, FIRST_N], seed=ctx.seed)
            return self.outcome([], [f"n={FIRST_N}: {one_line(e)}"], findings=[finding])
        on_cpu = torch.device(ctx.device).type == "cpu"
        cross = on_cpu and self.fmt.name in ("fp32", "fp64")
        item = 2 * n * n * _itemsize(self.fmt.torch_dtype)
        pairs = self._operands(n, ctx.device, gen, timing.rotation(item, ctx.device))
        ctx.progress(1, 3, f"{n}x{n}x{n}, {len(pairs)} operand pairs rotated")
        measured = timing.measure(
            lambda i: self._product(*pairs[i % len(pairs)]), ctx.device,
            budget_s=deadline.left() * (1 - CROSS_CHECK_SHARE if cross else 1),
        )
        flop = 2.0 * n**3 / 1e12
        unit = "TOP/s" if self.fmt.integer else "TFLOP/s"
        figure = Figure.throughput(self.metric, unit, flop, measured,
                                   details={"shape": [n, n, n], "dtype": self.fmt.name, "rotated_inputs": len(pairs)})
        pairs.clear()  # free the operands before the cross-check allocates its own
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
            ctx.progress(2, 3, "cross-check with NumPy's BLAS")
            blas = self._numpy_cross_check(n, ctx.seed, max(deadline.left(), 0.5))
            ratio = figure.value / blas.value if blas.value else math.inf
            extra["cross_check"] = {"numpy_blas": blas.to_dict(), "torch_over_numpy_throughput": round(ratio, 3),
                                    "numpy": np.__version__}
            if ratio < BLAS_CROSS_CHECK_MIN and figure.noise < 0.25 and blas.noise < 0.25:
                out_findings.append(self.finding(
                    Severity.low, f"torch {self.fmt.name} products at {ratio:.0%} of NumPy's BLAS on the same cores",
                    f"torch: {figure.value:g} {unit}, NumPy: {blas.value:g} {unit} at {n}x{n}x{n}. The path torch "
                    "takes is far slower than an independent library on the same hardware.",
                    torch_figure=figure.to_dict(), numpy_figure=blas.to_dict()))
        ctx.progress(3, 3, "done")
        return self.outcome([figure], notes, findings=out_findings, **extra)

    def _numpy_cross_check(self, n: int, seed: int, budget: float) -> Figure:
        rng = np.random.default_rng(seed)
        dtype = np.float32 if self.fmt.name == "fp32" else np.float64
        pairs = [(rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype))
                 for _ in range(timing.rotation(2 * n * n * np.dtype(dtype).itemsize, "cpu"))]
        measured = timing.measure(lambda i: np.matmul(*pairs[i % len(pairs)]), "cpu", budget_s=budget,
                                  min_repeats=3)
        return Figure.throughput(f"numpy.{self.fmt.name}.tflops", "TFLOP/s", 2.0 * n**3 / 1e12, measured,
                                 details={"shape": [n, n, n], "library": "numpy.matmul"})


class DeviceMemoryBandwidth(PerformanceCheck):
    """A large device-to-device copy; bandwidth counts bytes read plus bytes written."""

    id = "performance.memory.device"

    def measure(self, ctx: CheckContext) -> Outcome:
        deadline = Deadline(self.budget(ctx))
        on_cpu = torch.device(ctx.device).type == "cpu"
        size = COPY_BYTES_CPU if on_cpu else COPY_BYTES_MAX
        notes: list[str] = []
        while size >= 16 * 2**20 and (reason := fits(ctx.device, 2 * size * timing.MIN_ROTATION)):
            notes.append(f"{size >> 20} MiB buffers: {reason}")
            size //= 2
        gen = generator(ctx.device, ctx.seed)
        count = timing.rotation(2 * size, ctx.device)
        pairs = [(random_tensor((size // 4,), torch.float32, ctx.device, gen),
                  torch.empty(size // 4, dtype=torch.float32, device=ctx.device)) for _ in range(count)]
        ctx.progress(1, 2, f"{size >> 20} MiB copies, {count} buffer pairs rotated")
        measured = timing.measure(lambda i: pairs[i % count][1].copy_(pairs[i % count][0]), ctx.device,
                                  budget_s=deadline.left())
        figure = Figure.throughput("memory.device.bandwidth", "GB/s", 2 * size / 1e9, measured,
                                   details={"bytes_per_copy": size, "counted": "bytes read + bytes written",
                                            "rotated_buffers": count})
        spec = device_spec(ctx.device)
        rating = spec.memory_bandwidth if spec else None
        rate(figure, rating)
        finding = cap_finding(self, figure, rating, ctx.device, "device memory bandwidth")
        extra = {"rating": spec_summary(spec, device_name(ctx.device))}
        ctx.progress(2, 2, "done")
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
