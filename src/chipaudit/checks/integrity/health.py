"""The device's own health counters: what the part already admits about itself before it is given work.

Threat: a part that is failing and knows it (uncorrectable memory errors since the driver loaded, a
row remap that failed or is pending, a page retirement pending, a hardware slowdown) handed a job
anyway, because nothing read its counters between jobs. `chipaudit watch` reports what changes in
them (sensors/devicewatch.py); a job's prolog (`run --level smoke`) needs their state now, in the same
seconds as the verified products.

Method: one reading in the worker, the one `watch` takes every interval (devices/nvml.py
`health_reading`: ECC counts since the driver loaded and over the part's life, retired pages and
remapped rows with their pending and failure flags, the clock-event reasons), of the device as NVML
numbers it (sensors/telemetry.py `open_nvml`); on a CPU the host memory controllers' EDAC counters
(/sys/devices/system/edac/mc), where the kernel exposes them.

Pass: no uncorrectable error since the driver loaded, no remap or retirement failed or pending, no
slowdown the hardware names. Fail (high): uncorrectable ECC errors since the driver loaded (a CPU's
EDAC uncorrected count since boot), a row remap failed or pending, a page retirement pending (memory
the device can no longer trust until it is reset); (medium) a hardware slowdown named now, as
`watch` judges it (devicewatch.SLOWDOWN_SEVERITY). Warning (low): the driver's own thermal slowdown.
Info: corrected errors, and the part's history: uncorrectable errors over its life, pages retired
and rows remapped (the inventory shows them too).
Not run: when the device exposes none of these counters here (no NVML, ROCm's amdsmi not wired up
for them, a CPU without EDAC); the reason names what is missing.

Cannot see: a driver that reports zeros (the counters are the driver's word; the other checks judge
the device by what it computes); events between readings (XID errors need an event subscription,
as `watch` holds); errors that ECC corrected and no counter kept.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, ClassVar

from chipaudit.checks.base import ALL_LEVELS, Check, CheckContext, NotApplicable, Outcome
from chipaudit.devices import nvml
from chipaudit.report.model import Category, Finding, Level, Severity
from chipaudit.sensors.devicewatch import SLOWDOWN_SEVERITY
from chipaudit.sensors.telemetry import open_nvml

EDAC = Path("/sys/devices/system/edac/mc")
# Flags of the health reading that mean memory the device cannot trust until it is reset.
FLAGS = ((("remapped_rows", "failure_occurred"), "a row remap failed"),
         (("remapped_rows", "pending"), "a row remap is pending (applied at the next reset)"),
         (("retired_pages", "pending"), "a page retirement is pending (applied at the next reset)"))


class HealthCheck(Check):
    id = "integrity.health"
    category = Category.integrity
    levels = (Level.smoke, *ALL_LEVELS)
    # One reading; the vendor library's start-up is the slow part (seconds on an 8-GPU node).
    timeout_s: ClassVar[dict[Level, float]] = {level: 20.0 for level in (Level.smoke, *ALL_LEVELS)}

    def run(self, ctx: CheckContext) -> Outcome:
        ctx.progress(0, 1, "reading the device's health counters")
        if ctx.device.startswith("cpu"):
            counters = edac_counters(EDAC)
            if counters is None:
                raise NotApplicable("the host exposes no memory-controller error counters (no EDAC under "
                                    f"{EDAC}), and a CPU has no device-side health counters to read")
            findings, source, unread = self.judge_edac(counters), "EDAC", []
            reading: dict[str, Any] = {"edac": counters}
        else:
            reading, unavailable = nvml_reading(ctx.device)
            findings, source, unread = self.judge(reading), "NVML", sorted(unavailable)
        ctx.progress(1, 1, "done")
        return Outcome(findings=findings, coverage={
            "source": source, "not_reported": unread,
            "limits": [f"health counters {source} did not give: {', '.join(unread)}"] if unread else [],
        }, measurements={"health": reading})

    def judge(self, reading: dict[str, Any]) -> list[Finding]:
        """Findings from one health reading (devices/nvml.py `health_reading`)."""
        found: list[Finding] = []
        errors = reading.get("ecc_errors") or {}
        volatile, aggregate = errors.get("volatile") or {}, errors.get("aggregate") or {}
        if (volatile.get("uncorrected") or 0) > 0:
            found.append(self.finding(
                Severity.high, f"{volatile['uncorrected']} uncorrectable ECC error(s) since the driver loaded",
                "The device's memory returned data that ECC could not correct; what it computes now may be "
                "wrong wherever those bits sit.", ecc_errors=errors))
        for path, what in FLAGS:
            flag = (reading.get(path[0]) or {}).get(path[1])
            if flag is True or flag == "enabled":
                found.append(self.finding(Severity.high, what, "Memory the device cannot trust until it is reset.",
                                          **{path[0]: reading.get(path[0])}))
        for reason in sorted(set(reading.get("reasons") or []) & SLOWDOWN_SEVERITY.keys()):
            found.append(self.finding(
                SLOWDOWN_SEVERITY[reason], f"the device names a slowdown: {reason}",
                f"Clocks are held down for {reason.replace('_', ' ')} (NVML clock-event reasons).",
                reasons=reading.get("reasons"), temperature_c=reading.get("temperature_c")))
        history = {"corrected ECC errors": (volatile.get("corrected") or 0) + (aggregate.get("corrected") or 0),
                   "uncorrectable ECC errors over the part's life": aggregate.get("uncorrected") or 0,
                   "retired pages": sum(v for k, v in (reading.get("retired_pages") or {}).items()
                                        if k != "pending" and isinstance(v, int)),
                   "remapped rows": sum(v for k, v in (reading.get("remapped_rows") or {}).items()
                                        if k in ("correctable", "uncorrectable") and isinstance(v, int))}
        for what, count in history.items():
            if count:
                found.append(self.finding(Severity.info, f"{what}: {count}", "The part's history, counted by its "
                                          "driver.", ecc_errors=errors))
        return found

    def judge_edac(self, counters: dict[str, dict[str, int]]) -> list[Finding]:
        found: list[Finding] = []
        uncorrected = sum(c["ue_count"] for c in counters.values())
        corrected = sum(c["ce_count"] for c in counters.values())
        if uncorrected:
            found.append(self.finding(
                Severity.high, f"{uncorrected} uncorrectable host memory error(s) (EDAC)",
                "The host's memory controllers saw errors ECC could not correct since boot.", edac=counters))
        if corrected:
            found.append(self.finding(Severity.info, f"{corrected} corrected host memory error(s) (EDAC)", "",
                                      edac=counters))
        return found


def edac_counters(root: Path) -> dict[str, dict[str, int]] | None:
    """Corrected and uncorrected counts per memory controller; None when the kernel exposes none."""
    out: dict[str, dict[str, int]] = {}
    for mc in sorted(root.glob("mc[0-9]*")):
        with contextlib.suppress(OSError, ValueError):
            out[mc.name] = {name: int((mc / name).read_text().strip()) for name in ("ce_count", "ue_count")}
    return out or None


def nvml_reading(device: str) -> tuple[dict[str, Any], dict[str, str]]:
    """`watch`'s health reading of `device`, and what NVML would not give."""
    import torch

    if not device.startswith("cuda") or not torch.version.cuda:
        raise NotApplicable(f"no health counters are read for {device} here: only NVML (CUDA) is wired up")
    reader, index, why = open_nvml(device)
    if reader is None:
        raise NotApplicable(f"the device's health counters cannot be read: {why}")
    try:
        return nvml.health_reading(reader, index)
    finally:
        close = getattr(reader, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


CHECKS = [HealthCheck()]
