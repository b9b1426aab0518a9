"""What every performance check shares: budgets, random inputs, memory headroom, the device's rated
figures, and the "possible hidden cap" finding.

A performance check never fails a device for being slow on its own: speed alone proves nothing
about honesty. It fails it only where the maker's own rating says the device should be far faster
and the device reports no reason (thermal or power throttling) for being slower.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from abc import abstractmethod
from typing import Any, ClassVar

import torch

from chipaudit.checks.base import Check, CheckContext, NotApplicable, Outcome
from chipaudit.devices import torchdev
from chipaudit.perf import specs
from chipaudit.perf.metrics import figure_key, value_name
from chipaudit.perf.timing import Figure
from chipaudit.report.model import Category, Finding, Level, Severity

# Below this share of a vendor rating, with no throttle reason reported, a figure is a possible hidden
# cap. Honest large products reach well above it: H100-class dense GEMMs commonly reach 60-80 % of the
# rated figure, and the lowest delivered share among the rated chips, MI300X's, was about half of its
# marketed rate in SemiAnalysis' independent GEMM runs ("MI300X vs H100 vs H200 Benchmark Part 1:
# Training", December 2024); a large copy reaches most of the rated bandwidth. The line is a judgement
# with margin under those, not a measured constant. The H20's rating is 15 % of the H100's: a card
# sold as one and capped as the other falls far below it.
CAP_EFFICIENCY = 0.30
# Share of free device (or host) memory a check may take for its buffers.
MEMORY_SHARE = 0.25
# torch < 2.5 only has the CUDA-specific name.
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class PerformanceCheck(Check):
    category = Category.performance
    levels: ClassVar[tuple[Level, ...]] = (Level.standard, Level.deep)
    # Seconds of measurement a check aims to spend at each level; the watchdog limit is well above.
    budget_s: ClassVar[dict[Level, float]] = {Level.quick: 2.0, Level.standard: 5.0, Level.deep: 30.0}

    def run(self, ctx: CheckContext) -> Outcome:
        try:
            return self.measure(ctx)
        finally:
            release(ctx.device)  # hand the buffers back before the next check allocates its own

    @abstractmethod
    def measure(self, ctx: CheckContext) -> Outcome: ...

    def budget(self, ctx: CheckContext) -> float:
        return float(ctx.params.get("perf_budget_scale", 1.0)) * self.budget_s[ctx.level]

    def outcome(self, figures: list[Figure], skipped: list[str], findings: list[Finding] | None = None,
                **extra: Any) -> Outcome:
        """The figures as measurements; with no figure, a skip, unless there are findings (a refusal)."""
        if not figures and not findings:
            raise NotApplicable("no figure could be measured: " + "; ".join(skipped or ["nothing to measure"]))
        out = Outcome(findings=list(findings or []))
        out.measurements = {
            "figures": [f.to_dict() for f in figures],
            "values": {value_name(f.to_dict()): f.value for f in figures},
            **extra,
        }
        out.coverage = {"cases": len(figures), "figures": [_key(f) for f in figures], "skipped_cases": skipped}
        return out


def _key(f: Figure) -> str:
    return figure_key(f.to_dict())


# --- inputs ---------------------------------------------------------------------------------------------


def generator(device: str, seed: int) -> torch.Generator:
    """A generator on the device where the backend has one (no host-side generation of big inputs)."""
    try:
        g = torch.Generator(device=device)
    except (RuntimeError, TypeError):
        g = torch.Generator()
    g.manual_seed(seed)
    return g


def random_tensor(shape: tuple[int, ...], dtype: torch.dtype, device: str, gen: torch.Generator,
                  scale: float = 1.0) -> torch.Tensor:
    """Random values (never zeros: some devices skip work on zeros), then cast to `dtype`."""
    on = gen.device
    if dtype in (torch.int8, torch.uint8, torch.int32):
        t = torch.randint(-127, 128, shape, generator=gen, device=on, dtype=torch.int32)
    else:
        t = torch.randn(shape, generator=gen, device=on, dtype=torch.float32)
        if scale != 1.0:
            t.mul_(scale)
    return t.to(device=device, dtype=dtype)


# --- memory headroom --------------------------------------------------------------------------------


def free_bytes(device: str) -> int | None:
    """Free memory where the device (or, for the CPU, the host) says; None when it cannot say."""
    dev = torch.device(device)
    if dev.type == "cpu":
        try:
            import psutil

            return int(psutil.virtual_memory().available)
        except Exception:
            return None
    backend = getattr(torch, dev.type, None)
    with contextlib.suppress(Exception):
        return int(backend.mem_get_info(dev.index or 0)[0])  # type: ignore[union-attr]
    return None


def fits(device: str, needed: int) -> str | None:
    """None when `needed` bytes fit in this check's share of free memory, else why not."""
    free = free_bytes(device)
    if free is not None and needed > MEMORY_SHARE * free:
        return f"needs {needed / 1e9:.1f} GB, over {MEMORY_SHARE:.0%} of the {free / 1e9:.1f} GB free"
    return None


def release(device: str) -> None:
    dev = torch.device(device)
    backend = getattr(torch, dev.type, None)
    if dev.type != "cpu" and hasattr(backend, "empty_cache"):
        with contextlib.suppress(Exception):
            backend.empty_cache()  # type: ignore[union-attr]


# --- ratings and the hidden-cap finding ----------------------------------------------------------------


def device_name(device: str) -> str:
    return torchdev.describe(device).name


def device_spec(device: str) -> specs.DeviceSpec | None:
    """The database entry for this device; for a CPU, the estimate from its cores, clock and SIMD."""
    if torch.device(device).type == "cpu":
        return specs.cpu_estimate()
    return specs.lookup(device_name(device))


def spec_summary(spec: specs.DeviceSpec | None, name: str) -> dict[str, Any]:
    if spec is None:
        return {"device_name": name, "spec": None, "note": "no spec: the database has no entry for this name"}
    return {"device_name": name, "spec": spec.id, "spec_name": spec.name}


def throttle_reasons(device: str) -> list[str] | None:
    """Reasons the device gives for running below its top clocks now (NVIDIA through NVML: heat, power,
    or clocks an administrator set); None when the device cannot be asked."""
    if torch.device(device).type == "cpu":
        return None
    from chipaudit.sensors.telemetry import SLOWDOWN_REASONS, Telemetry

    telemetry = Telemetry(device, lambda: [os.getpid()])
    try:
        if telemetry.reader is None:
            return None
        return sorted(set(telemetry.read().reasons) & (SLOWDOWN_REASONS | {"applications_clocks_setting"}))
    finally:
        telemetry.close()


def rate(figure: Figure, rating: specs.Rating | None) -> None:
    if rating is not None:
        figure.rate_against(rating.value, f"{rating.source} [{rating.kind}]")


def cap_finding(check: Check, figure: Figure, rating: specs.Rating | None, device: str,
                what: str) -> Any | None:
    """A finding when `figure` is far below a rating, or None.

    Estimates (the CPU model) never raise one. A MIG slice or similar partition has a fraction of the
    chip, so its ratings do not apply. A reported throttle reason explains the shortfall: the finding
    is then informational.
    """
    if rating is None or figure.efficiency is None or rating.kind == "estimate":
        return None
    if figure.efficiency >= CAP_EFFICIENCY:
        return None
    name = device_name(device)
    if re.search(r"\bmig\b", name.lower()):
        return None
    reasons = throttle_reasons(device)
    evidence = {
        "metric": figure.metric, "measured": figure.value, "unit": figure.unit, "rated": rating.value,
        "efficiency": figure.efficiency, "noise": figure.noise, "rating_source": rating.source,
        "rating_kind": rating.kind, "device_name": name, "throttle_reasons": reasons, "details": figure.details,
    }
    share = f"{figure.efficiency:.0%}"
    if reasons:
        return check.finding(
            Severity.info, f"{what} at {share} of rating while the device reports throttling",
            f"{figure.value:g} {figure.unit} measured against {rating.value:g} rated; the device reports: "
            f"{', '.join(reasons)}.", **evidence)
    severity = Severity.medium if rating.kind == "vendor" else Severity.low
    asked = "no throttle reason was reported" if reasons == [] else "the device could not be asked for throttle reasons"
    return check.finding(
        severity, f"possible hidden cap: {what} at {share} of rating",
        f"{figure.value:g} {figure.unit} measured (noise {figure.noise:.0%}) against {rating.value:g} rated "
        f"({rating.source}); {asked}. A device this far below its rating delivers less than it is sold as.",
        **evidence)


class Deadline:
    """The check's own time budget, shared by its cases."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.perf_counter())
