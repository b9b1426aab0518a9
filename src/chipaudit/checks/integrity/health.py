"""The device's own health counters: what the part already admits about itself before it is given work.

Threat: a part that is failing and knows it (uncorrectable memory errors since the driver loaded, a
row remapping that failed, pages awaiting retirement, hardware slowdown at rest) handed a job anyway,
because nothing read its counters between jobs. DCGM's health watches judge these; a job's prolog
(`run --level smoke`) needs them in the same seconds as the verified products.

Method: one reading, in the worker, through the vendor's management library with the inventory's own
readers (devices/nvml.py for CUDA, devices/amd.py for ROCm), of the device the audit computes on
(matched by PCI bus id, else by index): ECC counters since the driver loaded (volatile) and over the
part's life (aggregate), retired pages and whether a retirement is pending, remapped rows and whether
remapping is pending or failed, and the reasons clocks are held down now. On a CPU the host memory
controllers' EDAC counters (/sys/devices/system/edac/mc), where the kernel exposes them.

Pass: no uncorrectable error since the driver loaded, no failed remapping, nothing pending, no
hardware slowdown. Fail (high): uncorrectable ECC errors since the driver loaded (NVIDIA volatile
counter; a CPU's EDAC uncorrected count), or a row remapping failure (NVIDIA's guidance: the GPU
needs service). Warning (low): a page retirement or row remapping pending (the memory is trusted
again after a reset), hardware slowdown reported at rest, uncorrectable errors over the part's life
where no counter since the driver loaded exists. Info: corrected errors, retired pages, remapped rows.
Not run: when the device exposes none of these counters here; the reason names what is missing.

Cannot see: a driver that reports zeros (the counters are the driver's word; the other checks judge
the device by what it computes); events between readings (XID errors need an event subscription,
as `watch` holds); errors that ECC corrected and no counter kept.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, ClassVar

from chipaudit.checks.base import ALL_LEVELS, Check, CheckContext, NotApplicable, Outcome
from chipaudit.devices.vendor_reads import Unavailable
from chipaudit.report.model import Category, Finding, Level, Severity

EDAC = Path("/sys/devices/system/edac/mc")
# nvmlClocksEventReasons (devices/nvml.py names) that the hardware itself raised: at rest, before any
# load, they mean a cooling, power-delivery or board fault (NVIDIA's nvml.h on each reason).
HARDWARE_SLOWDOWN = frozenset({"hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"})


class HealthCheck(Check):
    id = "integrity.health"
    category = Category.integrity
    levels = (Level.smoke, *ALL_LEVELS)
    # One reading; the vendor library's start-up is the slow part (seconds on an 8-GPU node).
    timeout_s: ClassVar[dict[Level, float]] = {level: 20.0 for level in (Level.smoke, *ALL_LEVELS)}

    def run(self, ctx: CheckContext) -> Outcome:
        ctx.progress(0, 1, "reading the device's health counters")
        if ctx.device.startswith("cpu"):
            counters, source = edac_counters(EDAC), "EDAC (/sys/devices/system/edac/mc)"
            if counters is None:
                raise NotApplicable("the host exposes no memory-controller error counters (no EDAC under "
                                    f"{EDAC}), and a CPU has no device-side health counters to read")
            findings = self.judge_edac(counters)
        else:
            device, source = vendor_device(ctx.device)
            counters = {k: device.get(k) for k in ("ecc", "retired_pages", "remapped_rows", "throttle_reasons")}
            findings = self.judge(counters)
        ctx.progress(1, 1, "done")
        unread = [k for k, v in counters.items() if v is None]
        return Outcome(findings=findings, coverage={
            "source": source, "counters": sorted(k for k, v in counters.items() if v is not None),
            "not_reported": unread,
            "limits": [f"health counters not reported by {source}: {', '.join(unread)}"] if unread else [],
        }, measurements={"health": counters})

    def judge(self, counters: dict[str, Any]) -> list[Finding]:
        """Findings from an accelerator's counters, in the inventory's form (devices/nvml.py, amd.py)."""
        found: list[Finding] = []
        errors = (counters.get("ecc") or {}).get("errors") or {}
        volatile, aggregate = errors.get("volatile") or {}, errors.get("aggregate") or {}
        if (volatile.get("uncorrected") or 0) > 0:
            found.append(self.finding(
                Severity.high, f"{volatile['uncorrected']} uncorrectable ECC error(s) since the driver loaded",
                "The device's memory returned data that ECC could not correct; what it computes now may be "
                "wrong wherever those bits sit.", ecc=errors))
        elif not volatile and (aggregate.get("uncorrected") or 0) > 0:
            found.append(self.finding(
                Severity.low, f"{aggregate['uncorrected']} uncorrectable ECC error(s) reported over the part's life",
                "The driver keeps no count since it loaded, so whether these are recent is not known.", ecc=errors))
        corrected = volatile.get("corrected") or aggregate.get("corrected") or 0
        if corrected > 0:
            found.append(self.finding(Severity.info, f"{corrected} corrected ECC error(s)", "ECC corrected them.",
                                      ecc=errors))
        retired = counters.get("retired_pages") or {}
        if retired.get("pending") == "enabled":
            found.append(self.finding(
                Severity.low, "a page retirement is pending",
                "Pages with errors are retired only at the next reset of the device; until then they are in use.",
                retired_pages=retired))
        count = sum(v for k, v in retired.items() if k != "pending" and isinstance(v, int))
        if count:
            found.append(self.finding(Severity.info, f"{count} retired page(s)", "", retired_pages=retired))
        rows = counters.get("remapped_rows") or {}
        if rows.get("failure_occurred"):
            found.append(self.finding(
                Severity.high, "a row remapping failed",
                "The device could not remap a row with errors out of use; NVIDIA's guidance is that the GPU "
                "needs service.", remapped_rows=rows))
        if rows.get("pending"):
            found.append(self.finding(
                Severity.low, "a row remapping is pending", "Rows are remapped at the next reset of the device.",
                remapped_rows=rows))
        if (rows.get("correctable") or 0) + (rows.get("uncorrectable") or 0) > 0:
            found.append(self.finding(Severity.info, "rows remapped", "", remapped_rows=rows))
        slowdown = sorted(set(counters.get("throttle_reasons") or []) & HARDWARE_SLOWDOWN)
        if slowdown:
            found.append(self.finding(
                Severity.low, f"hardware slowdown reported at rest: {', '.join(slowdown)}",
                "The hardware holds its clocks down before any load: a cooling, power-delivery or board "
                "fault.", reasons=slowdown))
        return found

    def judge_edac(self, counters: dict[str, Any]) -> list[Finding]:
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


def vendor_device(device: str) -> tuple[dict[str, Any], str]:
    """The vendor library's view of `device` (the inventory's form) and the library's name."""
    import torch

    from chipaudit.devices import amd, nvml

    if not device.startswith("cuda"):
        raise NotApplicable(f"no health counters are read for {device.split(':')[0]} devices: only NVML "
                            "(CUDA) and amdsmi (ROCm) are wired up")
    module = amd if torch.version.hip else nvml
    try:
        reader = module.open_live()
    except Unavailable as e:
        raise NotApplicable(f"the device's health counters cannot be read: {e}") from None
    try:
        devices = module.collect(reader)["devices"]
    finally:
        with contextlib.suppress(Exception):
            reader.close()
    index = torch.device(device).index or 0
    return matching(devices, index, pci_bus_id(index)), reader.source


def pci_bus_id(index: int) -> tuple[int, int, int] | None:
    """(domain, bus, device) of torch's device `index`, which the vendor library may number otherwise."""
    import torch

    props = torch.cuda.get_device_properties(index)
    parts = [getattr(props, f"pci_{name}_id", None) for name in ("domain", "bus", "device")]
    return tuple(parts) if all(isinstance(p, int) for p in parts) else None  # type: ignore[return-value]


def address(bus_id: object) -> tuple[int, int, int] | None:
    """(domain, bus, device) of a PCI address as NVML ("00000000:18:00.0") or amdsmi ("0000:26:00.0") write it."""
    found = re.fullmatch(r"([0-9a-fA-F]+):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.[0-7]", str(bus_id))
    return None if found is None else (int(found[1], 16), int(found[2], 16), int(found[3], 16))


def matching(devices: list[dict[str, Any]], index: int, bus: tuple[int, int, int] | None) -> dict[str, Any]:
    """The vendor library's entry for torch's device `index`: by PCI address, else (no address known) by index."""
    if bus is None:
        if index < len(devices):
            return devices[index]
    else:
        for d in devices:
            if address((d.get("pcie") or {}).get("bus_id")) == bus:
                return d
    raise NotApplicable(f"the vendor library lists no device matching device {index} (PCI address {bus})")


CHECKS = [HealthCheck()]
