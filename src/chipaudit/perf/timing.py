"""Timing done the same way for every figure: warm-up, device synchronisation (or device events),
many repeats in blocks spread over the figure's whole budget, the median, and the noise.

A figure's noise is what `chipaudit compare` judges a change against, so it must describe how far
the figure moves from one run to the next, not only from one repeat to the next: two back-to-back
CPU benches once differed by x0.85 in a figure whose repeats spread by 3 % (issue 14). Repeats
taken back to back share the machine's state of that moment (other tenants, clocks, caches); the
repeats are therefore grouped into BLOCKS blocks that together span the whole budget, and the
spread between the blocks' medians, the drift over the measurement, is recorded beside the
repeats' own spread. The larger of the two is the figure's noise.

The operation under test is a callable taking an iteration number, so that each call can pick the
next of several input buffers (`rotation`): a figure measured on one buffer that stays in a cache
would describe the cache, not the device.

Also the quick speed probes that size the checks' work before any figure is measured (`fastest`, and
`Ladder` for the product size that fits a time cap): integrity.gemm, integrity.burnin and
performance.gemm size their products the same way, so a busy machine fools none of them.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch

from chipaudit import stats
from chipaudit.devices import torchdev

# Warm-up: at least this many calls and this much time (clocks ramp up, libraries pick kernels and
# allocate workspaces on the first calls), capped at a share of the budget.
WARMUP_CALLS = 2
WARMUP_S = 1.0
WARMUP_SHARE = 0.15
# One repeat runs the operation often enough to last this long, so that the clock's resolution and
# the synchronisation's own cost stay below a percent of what is measured.
MIN_REPEAT_S = 2e-3
MIN_REPEATS = 5
MAX_REPEATS = 30
# Blocks per figure. Five is the fewest for which the rank test on block medians (perf/stats.py, at
# 0.05) still finds a real change when one block of either run is out of place, a preempted block say
# (5 against 5 with one block swapped: p = 0.022; 4 against 4: p = 0.06), and each block keeps about
# six repeats at MAX_REPEATS. When more repeats would fit in the budget than MAX_REPEATS, each repeat runs more calls
# instead, so that the blocks still span the whole budget rather than ending early.
BLOCKS = 5
# Buffers rotated through: enough to exceed the largest last-level cache in the specification
# database (AMD MI300X: 256 MB Infinity Cache) twice over, within the bounds below. On a CPU, twice
# its own last-level cache as the kernel reports it (or CPU_ROTATION_BYTES when it does not).
ROTATION_BYTES = 512 * 2**20
CPU_ROTATION_BYTES = 64 * 2**20
MIN_ROTATION, MAX_ROTATION = 2, 16
# Samples kept per figure in the report, for rank tests across reports.
SIGNIFICANT_DIGITS = 6
# A speed probe keeps the fastest of this many warm calls: one call preempted on a busy machine must
# not make the device look slower than it is and shrink the work sized from it.
PROBE_TRIES = 3
# Work of a square product grows with the cube of its size: the next size's time is predicted so.
PRODUCT_EXPONENT = 3


@dataclass
class Timing:
    seconds: list[float]  # time of one call, one value per repeat
    inner: int  # calls per repeat
    warmup: int  # calls before the first repeat
    clock: str  # how time was taken
    blocks: list[int] = field(default_factory=list)  # the block of each repeat; empty: one block

    @property
    def median_s(self) -> float:
        return stats.median(self.seconds)


def rotation(item_bytes: int, device: str = "") -> int:
    """How many distinct input buffers to rotate through for items of this size on this device."""
    if item_bytes <= 0:
        return MIN_ROTATION
    total = cpu_rotation_bytes() if device.startswith("cpu") else ROTATION_BYTES
    return max(MIN_ROTATION, min(MAX_ROTATION, math.ceil(total / item_bytes)))


@cache
def cpu_rotation_bytes() -> int:
    """Twice the largest CPU cache the kernel lists (sysfs), else CPU_ROTATION_BYTES."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        with contextlib.suppress(OSError, ValueError):
            text = (index / "size").read_text().strip().upper()
            scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
            sizes.append(int(text.rstrip("KMG")) * scale)
    return 2 * max(sizes) if sizes else CPU_ROTATION_BYTES


class _Clock:
    """Device events where the backend has them, else the host clock after a synchronisation."""

    def __init__(self, device: str, use_events: bool):
        self.device = device
        self.event_type: Any = None
        dev = torch.device(device)
        if use_events and dev.type != "cpu":
            backend = getattr(torch, dev.type, None)
            event_type = getattr(backend, "Event", None)
            try:
                if event_type is not None:
                    event_type(enable_timing=True)
                    self.event_type = event_type
            except Exception:  # a backend whose events cannot time falls back to the host clock
                self.event_type = None
        self.name = "device events" if self.event_type is not None else (
            "host clock" if dev.type == "cpu" else "host clock after device synchronisation")

    def time(self, run: Callable[[], None]) -> float:
        torchdev.synchronize(self.device)
        if self.event_type is not None:
            start, end = self.event_type(enable_timing=True), self.event_type(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end)) / 1e3
        t0 = time.perf_counter()
        run()
        torchdev.synchronize(self.device)
        return time.perf_counter() - t0


def measure(
    op: Callable[[int], object],
    device: str,
    *,
    budget_s: float,
    min_repeats: int = MIN_REPEATS,
    max_repeats: int = MAX_REPEATS,
    min_repeat_s: float = MIN_REPEAT_S,
    use_events: bool = True,
    blocks: int = BLOCKS,
) -> Timing:
    """Time `op(i)` for i = 0, 1, 2, ...: warm up, then repeat within `budget_s` (at least
    `min_repeats` repeats whatever the budget: a figure from fewer is not worth reporting), the
    repeats numbered into `blocks` consecutive blocks that share the budget's time evenly."""
    clock = _Clock(device, use_events)
    started = time.perf_counter()
    calls = 0

    def run(count: int) -> Callable[[], None]:
        def body() -> None:
            nonlocal calls
            for _ in range(count):
                op(calls)
                calls += 1
        return body

    warmup_s = min(WARMUP_S, WARMUP_SHARE * budget_s)
    costs = [clock.time(run(1))]
    while calls < WARMUP_CALLS or time.perf_counter() - started < warmup_s:
        costs.append(clock.time(run(1)))
    warmup = calls
    # The median warm call, not the last one: one preempted call would otherwise size every repeat
    # (a 1 ms stall made repeats of six 5 us launches, and the figure's blocks spanned 3 ms).
    cost = max(stats.median(costs[1:]), 1e-9)
    left = budget_s - (time.perf_counter() - started)
    inner = max(1, math.ceil(min_repeat_s / cost), int(left / (max_repeats * cost)))
    repeats = max(min_repeats, min(max_repeats, int(left / (inner * cost))))
    seconds: list[float] = []
    block_of: list[int] = []
    measuring = time.perf_counter()
    expected = max(repeats * inner * cost, 1e-9)
    deadline = started + budget_s
    for k in range(repeats):
        # A repeat's block follows its place in the time expected as well as in the count, so that
        # on a machine slower than the warm-up promised the blocks still span the time until the
        # deadline cuts the repeats short.
        elapsed = time.perf_counter() - measuring
        block_of.append(min(blocks - 1, max(k * blocks // repeats, int(blocks * elapsed / expected))))
        seconds.append(clock.time(run(inner)) / inner)
        if len(seconds) >= min_repeats and time.perf_counter() > deadline:
            break
    return Timing(seconds=seconds, inner=inner, warmup=warmup, clock=clock.name, blocks=block_of)


def fastest(op: Callable[[], object], device: str, tries: int = PROBE_TRIES) -> float:
    """Seconds of one warm call of `op`, the fastest of `tries` after one call that warms it (kernel
    choice, workspaces, clocks): a probe that sizes later work, not a figure (`measure` makes those)."""
    op()
    best = math.inf
    for _ in range(tries):
        torchdev.synchronize(device)
        t0 = time.perf_counter()
        op()
        torchdev.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


@dataclass
class Climb:
    size: int  # the size chosen; 0 when none was
    seconds: float  # its product's time (inf when none was chosen)
    notes: list[str] = field(default_factory=list)  # why the climb stopped short, when it did
    error: BaseException | None = None  # the exception that stopped it, of those `climb` was told to expect


@dataclass(frozen=True)
class Ladder:
    """Product sizes tried smallest first, for the largest whose product stays near a time cap.

    Sizing by measurement rather than by a rated speed: the products must suit this device as it runs
    now (a throttled or shared device included), and a device that does not compute a format at all
    says so on the first rung. A size is tried only while its time, predicted from the last size's
    (PRODUCT_EXPONENT), stays within `cap_s * slack`; below `cubic_from`, where a product's time is
    mostly overhead (and, on an oversubscribed host, waiting for a thread) and the prediction
    overestimates, the next size is tried while the last product itself stays within that. With
    `keep_over_cap` False, a size whose measured product exceeds `cap_s` is not chosen.
    """

    sizes: Sequence[int]
    cap_s: float
    slack: float = 1.0
    cubic_from: int = 0
    keep_over_cap: bool = True

    def climb(
        self,
        seconds_at: Callable[[int], float],
        fits: Callable[[int], str | None] = lambda size: None,
        errors: tuple[type[BaseException], ...] = (),
        describe: Callable[[BaseException], str] = str,
    ) -> Climb:
        """`seconds_at(size)` times one product of that size (`fastest`); `fits(size)` says why a size
        cannot be tried (memory), or None; an exception of `errors` stops the climb, and is kept."""
        out = Climb(0, math.inf)
        for size in self.sizes:
            if out.size:
                last = max(out.seconds, 1e-9)
                predicted = last * (size / out.size) ** PRODUCT_EXPONENT if out.size >= self.cubic_from else last
                if predicted > self.cap_s * self.slack:
                    break
            reason = fits(size)
            if reason:
                out.notes.append(f"n={size}: {reason}")
                break
            try:
                seconds = seconds_at(size)
            except errors as e:
                out.notes.append(f"n={size}: {describe(e)}")
                out.error = e
                break
            if seconds > self.cap_s and not self.keep_over_cap:
                break
            out.size, out.seconds = size, seconds
        return out


def _round(x: float) -> float:
    return float(f"{x:.{SIGNIFICANT_DIGITS}g}")


@dataclass
class Figure:
    """One performance figure as the report stores it (CheckResult.measurements["figures"]).

    `params` identify what was measured (model, batch): figures with equal metric and params are
    the same measurement on different devices. `details` describe how (shapes, dtype, clock).
    `noise` is the largest of `block_noise` (relative spread of the block medians, `block_values`:
    the drift over the measurement), `repeat_noise` (relative spread of the repeats) and, for a
    figure measured in several worker processes (perf/passes.py), `pass_noise` (relative range of
    the passes' values, `pass_values`: the spread from one process to the next).
    """

    metric: str
    value: float
    unit: str
    better: str  # "higher" or "lower"
    noise: float
    ci95: tuple[float, float]
    samples: list[float]
    params: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    rated: float | None = None
    efficiency: float | None = None
    rated_source: str | None = None
    repeat_noise: float = 0.0
    block_noise: float | None = None  # None when the repeats were not taken in blocks
    block_values: list[float] = field(default_factory=list)
    pass_noise: float | None = None  # None when the figure was measured in one process
    pass_values: list[float] = field(default_factory=list)

    @classmethod
    def from_values(
        cls, metric: str, unit: str, values: list[float], better: str = "higher",
        params: dict[str, Any] | None = None, details: dict[str, Any] | None = None,
        blocks: list[int] | None = None,
    ) -> Figure:
        """`blocks[k]` is the block of `values[k]` (timing.measure); without, the repeats are one block."""
        groups: dict[int, list[float]] = {}
        for value, block in zip(values, blocks, strict=True) if blocks else ():
            groups.setdefault(block, []).append(value)
        block_values = [stats.median(g) for _, g in sorted(groups.items())] if len(groups) >= 2 else []
        repeat_noise = round(stats.relative_spread(values), 4)
        block_noise = round(stats.relative_spread(block_values), 4) if block_values else None
        return cls(
            metric=metric, value=_round(stats.median(values)), unit=unit, better=better,
            noise=max(repeat_noise, block_noise or 0.0),
            ci95=tuple(_round(v) for v in stats.median_ci(values)),  # type: ignore[arg-type]
            samples=[_round(v) for v in values], params=dict(params or {}), details=dict(details or {}),
            repeat_noise=repeat_noise, block_noise=block_noise, block_values=[_round(v) for v in block_values],
        )

    @classmethod
    def from_passes(cls, passes: Sequence[dict[str, Any]]) -> Figure:
        """One figure from the same figure (`to_dict`) measured in several worker processes: the value
        and its interval from the repeats of all, the blocks of all, and a noise of at least the
        relative range of the passes' values (perf/passes.py says why)."""
        first = passes[0]
        samples = [float(v) for p in passes for v in p["samples"]]
        block_values = [float(v) for p in passes for v in p.get("block_values") or [p["value"]]]
        pass_values = [float(p["value"]) for p in passes]
        repeat_noise = max(float(p.get("repeat_noise", p["noise"])) for p in passes)
        block_noise = round(stats.relative_spread(block_values), 4)
        pass_noise = round(stats.relative_range(pass_values), 4)
        figure = cls(
            metric=first["metric"], value=_round(stats.median(samples)), unit=first["unit"],
            better=first["better"], noise=max(repeat_noise, block_noise, pass_noise),
            ci95=tuple(_round(v) for v in stats.median_ci(samples)),  # type: ignore[arg-type]
            samples=[_round(v) for v in samples], params=dict(first.get("params") or {}),
            details=dict(first.get("details") or {}), repeat_noise=repeat_noise, block_noise=block_noise,
            block_values=[_round(v) for v in block_values], pass_noise=pass_noise,
            pass_values=[_round(v) for v in pass_values],
        )
        if first.get("rated"):
            figure.rate_against(float(first["rated"]), first.get("rated_source"))
        return figure

    @classmethod
    def throughput(
        cls, metric: str, unit: str, work: float, timing: Timing, params: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
    ) -> Figure:
        """`work` units per call (FLOPs in TFLOP, bytes in GB, tokens) divided by each repeat's time."""
        return cls.from_values(metric, unit, [work / s for s in timing.seconds], "higher", params,
                               {**(details or {}), **_timing_details(timing)}, timing.blocks)

    @classmethod
    def latency(
        cls, metric: str, unit_scale: float, unit: str, timing: Timing, params: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
    ) -> Figure:
        return cls.from_values(metric, unit, [s * unit_scale for s in timing.seconds], "lower", params,
                               {**(details or {}), **_timing_details(timing)}, timing.blocks)

    def rate_against(self, rated: float | None, source: str | None) -> None:
        if rated:
            self.rated, self.rated_source = rated, source
            self.efficiency = _round(self.value / rated)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "metric": self.metric, "value": self.value, "unit": self.unit, "better": self.better,
            "noise": self.noise, "ci95": list(self.ci95), "repeats": len(self.samples), "samples": self.samples,
            "params": self.params, "details": self.details, "repeat_noise": self.repeat_noise,
        }
        if self.block_noise is not None:
            out.update(block_noise=self.block_noise, block_values=self.block_values)
        if self.pass_noise is not None:
            out.update(pass_noise=self.pass_noise, pass_values=self.pass_values)
        if self.rated is not None:
            out.update(rated=self.rated, efficiency=self.efficiency, rated_source=self.rated_source)
        return out


def _timing_details(timing: Timing) -> dict[str, Any]:
    return {"clock": timing.clock, "calls_per_repeat": timing.inner, "warmup_calls": timing.warmup}
