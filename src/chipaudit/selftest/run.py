"""The self-test: run the integrity audit against each built-in simulated device and measure the
per-bit detection curve, on this machine, with nothing from outside the package.

A fault counts as detected when the audit of its simulated device fails (a finding of medium severity
or above); the checks whose findings failed it form its row of the detection matrix. The control (the
kernels overridden but honest) must pass: anything else is a false positive. The per-bit curve must
meet the acceptance figure (curve.meets_requirement for fp32 with uniform operands) with no false
positive, and every curve is reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chipaudit.checks import select
from chipaudit.report.model import FAILING_SEVERITY, Level, Report, Verdict
from chipaudit.runner.audit import AuditConfig, run_audit
from chipaudit.runner.watchdog import Events
from chipaudit.selftest import curve as curves
from chipaudit.selftest.faults import (
    AfterUse,
    BitFlip,
    ExpCorruption,
    Fault,
    HiddenBeacon,
    IntegerTrigger,
    NanSuppression,
    PrecisionDowngrade,
    RealDataTrigger,
    Refusal,
    ShapeTrigger,
    Throttle,
    ZeroRowTrigger,
    worker_wrapper,
)

# The audit each simulated device gets: the integrity checks at level quick but the memory test (no
# simulated fault is in memory; its own tests plant stuck bits in every pattern), with the quick level's
# burn-in (10 s: long enough for the throttle, after 4 s of continuous load, to show as a sustained
# fall) for the control and the faults of sustained use; the others get a short one (their golden
# products are still verified), to keep the self-test within minutes.
CHECKS = ["integrity"]
NOT_RUN = ("integrity.memory",)
LONG_BURN_IN_S = 10.0
SHORT_BURN_IN_S = 1.0
SEED = 20250101


@dataclass(frozen=True)
class SimulatedDevice:
    label: str
    fault: Fault
    control: bool = False
    burn_in_seconds: float = SHORT_BURN_IN_S

    def params(self) -> dict[str, Any]:
        return {"burn_in_seconds": self.burn_in_seconds}


def builtin_devices() -> list[SimulatedDevice]:
    return [
        SimulatedDevice("control (honest override)", Fault(), control=True, burn_in_seconds=LONG_BURN_IN_S),
        SimulatedDevice("bit flips (bit 20, 1e-4 of elements)", BitFlip()),
        SimulatedDevice("integer-valued operands trigger", IntegerTrigger()),
        SimulatedDevice("zero-row (padding) trigger", ZeroRowTrigger()),
        SimulatedDevice("NaN suppression", NanSuppression()),
        SimulatedDevice("shape trigger (k = 768, BERT/GPT-2 width)", ShapeTrigger()),
        SimulatedDevice("precision downgrade fp32 -> bf16", PrecisionDowngrade()),
        SimulatedDevice("corruption after 4e10 multiply-adds or 400 products", AfterUse(),
                        burn_in_seconds=LONG_BURN_IN_S),
        SimulatedDevice("throttle 4x after 4 s of load", Throttle(factor=4.0, after_busy_s=4.0),
                        burn_in_seconds=LONG_BURN_IN_S),
        SimulatedDevice("exp corrupted on [2, 3)", ExpCorruption()),
        SimulatedDevice("fp64 products refused (a format switched off)", Refusal()),
        SimulatedDevice("corruption on outlier activation channels (real data)", RealDataTrigger()),
        SimulatedDevice("reports home only while untraced", HiddenBeacon()),
    ]


@dataclass
class DeviceResult:
    device: SimulatedDevice
    verdict: Verdict
    caught_by: list[str]
    seconds: float
    findings: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    checks: dict[str, str] = field(default_factory=dict)  # check id -> status
    throughput_curve: dict[str, Any] = field(default_factory=dict)  # the burn-in's, for diagnosis

    @property
    def ok(self) -> bool:
        if self.device.control:
            return self.verdict is Verdict.pass_
        return self.verdict is Verdict.fail and bool(self.caught_by)

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device.label, "fault": self.device.fault.spec(), "trigger": self.device.fault.trigger,
                "description": self.device.fault.description, "control": self.device.control,
                "audit_params": self.device.params(),
                "verdict": self.verdict.value, "detected": self.verdict is Verdict.fail,
                "caught_by": self.caught_by, "ok": self.ok, "seconds": round(self.seconds, 1),
                "findings": self.findings, "errors": self.errors, "checks": self.checks,
                "burn_in_throughput_curve": self.throughput_curve}


@dataclass
class SelftestResult:
    devices: list[DeviceResult]
    curves: list[curves.Curve]
    checks: list[str]
    seconds: float = 0.0
    interrupted: bool = False  # Ctrl-C: the devices audited so far, and no verdict

    @property
    def required_curve(self) -> curves.Curve:
        return next(c for c in self.curves if c.dtype == "fp32" and c.distribution == "uniform_positive")

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(d.ok for d in self.devices) and self.required_curve.meets_requirement() \
            and all(c.false_positives == 0 for c in self.curves)

    def matrix(self) -> dict[str, dict[str, bool]]:
        """Fault by check: True where that check's findings failed that simulated device."""
        return {d.device.label: {c: c in d.caught_by for c in self.checks} for d in self.devices}

    def as_dict(self) -> dict[str, Any]:
        required = self.required_curve
        return {
            "ok": self.ok, "interrupted": self.interrupted, "seconds": round(self.seconds, 1), "checks": self.checks,
            "audit": {"level": Level.quick.value, "checks": self.checks, "seed": SEED},
            "devices": [d.as_dict() for d in self.devices],
            "detection_matrix": self.matrix(),
            "per_bit": {
                "curves": [c.as_dict() for c in self.curves],
                "requirement": {
                    "curve": "fp32, k = 1024, operands uniform in [0.5, 1)",
                    "rule": f"sign, every exponent bit and the top {curves.REQUIRED_TOP_MANTISSA} mantissa bits "
                            "detected at 100%, no false positive",
                    "met": required.meets_requirement(),
                },
                "note": "With normally distributed operands, many results lie near zero, where a flip of a "
                        "low-order bit changes the value by less than the rounding error an honest device may "
                        "make; no tolerance can detect those flips without failing honest devices.",
            },
        }


def run_selftest(
    devices: list[SimulatedDevice] | None = None,
    on_device: Callable[[SimulatedDevice, str], None] = lambda device, note: None,
    on_check: Callable[[SimulatedDevice, str], None] = lambda device, check_id: None,
) -> SelftestResult:
    started = time.perf_counter()
    on_device(SimulatedDevice("per-bit detection curves", Fault()), "measuring")
    measured = curves.measure_all(seed=SEED)
    checks = [c.id for c in select(CHECKS) if Level.quick in c.levels and c.id not in NOT_RUN]
    results = []
    interrupted = False
    try:
        for device in devices or builtin_devices():
            on_device(device, "auditing")
            t0 = time.perf_counter()
            config = AuditConfig(device="cpu", level=Level.quick, seed=SEED, only=checks, params=device.params())
            events = Events(started=lambda check_id, device=device: on_check(device, check_id))
            report = run_audit(config, events, wrappers=[worker_wrapper(device.fault)])
            results.append(_result(device, report, time.perf_counter() - t0))
    except KeyboardInterrupt:  # the audit's workers are already stopped; keep what was measured
        interrupted = True
    return SelftestResult(results, measured, checks, time.perf_counter() - started, interrupted)


def _result(device: SimulatedDevice, report: Report, seconds: float) -> DeviceResult:
    failing = [f for f in report.findings if f.severity.rank >= FAILING_SEVERITY.rank]
    burn = next((c for c in report.checks if c.id == "integrity.burnin"), None)
    return DeviceResult(
        device, report.verdict, sorted({f.check for f in failing}), seconds,
        findings=[{"check": f.check, "severity": f.severity.value, "title": f.title, "detail": f.detail}
                  for f in report.findings],
        errors=[f"{c.id}: {c.reason}" for c in report.checks if c.status.value == "error"],
        checks={c.id: c.status.value for c in report.checks},
        throughput_curve=burn.measurements.get("throughput_curve", {}) if burn else {},
    )
