"""The device's own health, read every interval of `chipaudit watch`: what changed that matters.

Threat: a part that fails after weeks in production (memory that starts to fail, a link that drops,
a cooler that clogs) while every audit passed. The driver counts and reports much of it: ECC errors,
retired pages or remapped rows, XID errors, throttle reasons. Method: each sample reads NVML's
counters and the clock-event reasons (devices/nvml.py `health_reading`), and drains NVML's event queue
without waiting (`nvml.Events`); it reports what is new since the previous sample:
- uncorrectable ECC errors, retired pages or remapped rows that grew, a remap that failed or a page
  retirement pending: high (memory the device can no longer trust);
- an XID error: high for the classes NVIDIA's catalog puts on hardware, memory or the bus
  (HARDWARE_XIDS), medium for the others (an application's or the driver's fault, still a failure);
- a double-bit ECC error, a page retirement (or its failure), poison or an unavailable device
  announced as an event: high;
- a slowdown reason the device newly names: medium for the hardware's own (HW slowdown, HW thermal,
  power brake), low for the driver's thermal slowdown. The power cap is not one: a busy device reaches
  it by design (sensors/power.py).
The first sample is the baseline: counts the device already had are its history (the audit's
inventory shows them), not news. Power, temperature, clocks and all counters are gauges (`metrics`).

Cannot see: what the driver does not count or report (its word is taken); events between the device
failing and the driver noticing. On a device without a management library wired here (a CPU, AMD,
others) it reports no findings, and its metrics and `status` say what was not available.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from chipaudit.devices import nvml
from chipaudit.devices.vendor_reads import Reader
from chipaudit.report.model import Category, Finding, Severity
from chipaudit.sensors.events import SensorStatus
from chipaudit.sensors.telemetry import cpu_clock, cpu_temperature

CHECK = "watch.telemetry"
HERTZ_PER_MHZ = 1e6
# XIDs that NVIDIA's Xid catalog (docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html, and the
# cause table of its "Xid Errors" guide) attributes to hardware, memory or the bus rather than to an
# application or the driver: double-bit ECC (48), ECC page retirement or row remapping (63) and its
# failure (64), NVLink (74), fallen off the bus (79), high single-bit ECC rate (92), contained and
# uncontained ECC errors (94, 95), GSP timeouts and errors (119, 120), C2C link (121), unrecovered ECC (140).
HARDWARE_XIDS = frozenset({48, 63, 64, 74, 79, 92, 94, 95, 119, 120, 121, 140})
# Clock-event reasons that are news when newly named (nvml.CLOCK_EVENT_REASONS), by severity.
SLOWDOWN_SEVERITY = {"hw_slowdown": Severity.medium, "hw_thermal_slowdown": Severity.medium,
                     "hw_power_brake_slowdown": Severity.medium, "sw_thermal_slowdown": Severity.low}
XID_EVENT = "xid_critical_error"
LOST = "NVML_ERROR_GPU_IS_LOST"
# Counters whose growth is a high finding: (metric name, path in the health reading, what it means).
COUNTERS = (
    ("ecc_uncorrected_volatile_errors", ("ecc_errors", "volatile", "uncorrected"), "uncorrectable ECC errors"),
    ("ecc_uncorrected_aggregate_errors", ("ecc_errors", "aggregate", "uncorrected"),
     "uncorrectable ECC errors (lifetime count)"),
    ("retired_pages_single_bit_ecc", ("retired_pages", "single_bit_ecc"), "pages retired for single-bit errors"),
    ("retired_pages_double_bit_ecc", ("retired_pages", "double_bit_ecc"), "pages retired for double-bit errors"),
    ("remapped_rows_correctable", ("remapped_rows", "correctable"), "rows remapped for correctable errors"),
    ("remapped_rows_uncorrectable", ("remapped_rows", "uncorrectable"), "rows remapped for uncorrectable errors"),
)
# Gauges only: counted, never a finding by themselves (corrected errors were corrected).
GAUGES = (
    ("ecc_corrected_volatile_errors", ("ecc_errors", "volatile", "corrected")),
    ("ecc_corrected_aggregate_errors", ("ecc_errors", "aggregate", "corrected")),
)
# Flags whose turning on is a high finding.
FLAGS = (("remapped_rows_pending", ("remapped_rows", "pending"), "a row remap is pending (applied at the next reset)"),
         ("remapped_rows_failure", ("remapped_rows", "failure_occurred"), "a row remap failed"),
         ("retired_pages_pending", ("retired_pages", "pending"), "a page retirement is pending"))


class EventSource(Protocol):
    registered: list[str]
    unavailable: str

    def poll(self) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


def _at(reading: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = reading
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if value == "enabled":  # retired_pages.pending, as nvml.py names it
        return 1.0
    if value == "disabled":
        return 0.0
    return float(value) if isinstance(value, int | float) else None


def xid_severity(xid: int) -> Severity:
    return Severity.high if xid in HARDWARE_XIDS else Severity.medium


class TelemetrySampler:
    """One device's health through NVML (`reader` at `index`, events from `events`), or, without a
    reader, what psutil says of a CPU (no findings: a CPU reports none of these counters here)."""

    def __init__(self, device: str, reader: Reader | None = None, index: int = 0, events: EventSource | None = None,
                 why_not: str = ""):
        self.device, self.reader, self.index, self.events = device, reader, index, events
        self.why_not = why_not or ("a CPU: no ECC, XID or throttle counters to read; clock and temperature "
                                   "from psutil where the machine reports them" if device.startswith("cpu")
                                   else "no management library for this device")
        self._last: dict[str, Any] | None = None
        self._gauges: dict[str, float] = {}
        self._unavailable: dict[str, str] = {}
        self._events = self._xids = 0
        self._lost = False

    def status(self) -> SensorStatus:
        if self.reader is None:
            return SensorStatus("device_health", False, f"not available: {self.why_not}")
        events = (f"events {', '.join(self.events.registered)}" if self.events and self.events.registered
                  else f"no events ({self.events.unavailable if self.events else 'not opened'})")
        missing = f"; not given: {', '.join(sorted(self._unavailable))}" if self._unavailable else ""
        return SensorStatus("device_health", True, f"NVML counters, clocks, power and reasons; {events}{missing}")

    def sample(self) -> list[Finding]:
        if self.reader is None:
            self._gauges = {k: v for k, v in (("compute_clock_hertz", _hz(cpu_clock())),
                                              ("temperature_celsius", cpu_temperature())) if v is not None}
            return []
        reading, self._unavailable = nvml.health_reading(self.reader, self.index)
        self._gauges = _gauges(reading)
        out = self._lost_device() + self._event_findings()
        if self._last is not None:
            out += self._changes(self._last, reading)
        self._last = reading
        return out

    def metrics(self) -> dict[str, float]:
        out = {"telemetry_available": float(self.reader is not None), **self._gauges}
        if self.reader is not None:
            out.update({"telemetry_fields_unavailable": float(len(self._unavailable)),
                        "nvml_events_total": float(self._events), "xid_events_total": float(self._xids),
                        "nvml_events_available": float(bool(self.events and self.events.registered))})
        return out

    def close(self) -> None:
        """Ends the events and NVML (the holders' sampler shares it: close both at the end)."""
        if self.events is not None:
            self.events.close()
        close = getattr(self.reader, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()

    def _finding(self, severity: Severity, title: str, detail: str, **evidence: Any) -> Finding:
        return Finding(check=CHECK, category=Category.integrity, severity=severity, title=title, detail=detail,
                       evidence={"device": self.device, "source": "nvml", **evidence})

    def _lost_device(self) -> list[Finding]:
        lost = [k for k, v in self._unavailable.items() if LOST in v]
        if not lost or self._lost:
            return []
        self._lost = True
        return [self._finding(Severity.high, "the device stopped answering NVML (GPU is lost)",
                              "NVML reports the GPU fallen off the bus or otherwise inaccessible.", fields=lost)]

    def _event_findings(self) -> list[Finding]:
        if self.events is None:
            return []
        out = []
        for event in self.events.poll():
            self._events += 1
            kind = next((name for bit, name in nvml.EVENT_TYPES.items() if int(event.get("eventType") or 0) & bit),
                        f"event type {event.get('eventType')}")
            if kind == XID_EVENT:
                self._xids += 1
                xid = int(event.get("eventData") or 0)
                out.append(self._finding(
                    xid_severity(xid), f"XID {xid} reported by the driver",
                    f"NVML delivered XID {xid}; NVIDIA's Xid catalog puts it on "
                    f"{'hardware, memory or the bus' if xid in HARDWARE_XIDS else 'an application or the driver'}.",
                    xid=xid, event=event))
            else:
                out.append(self._finding(Severity.high, f"NVML event: {kind.replace('_', ' ')}",
                                         "The driver announced a memory or device failure as an event.",
                                         event=event, event_kind=kind))
        return out

    def _changes(self, before: dict[str, Any], now: dict[str, Any]) -> list[Finding]:
        out = []
        for name, path, what in COUNTERS:
            a, b = _number(_at(before, path)), _number(_at(now, path))
            if a is not None and b is not None and b > a:
                out.append(self._finding(Severity.high, f"new {what}: {b - a:g} since the last sample",
                                         f"{name} went from {a:g} to {b:g}: memory the device can no longer trust.",
                                         counter=name, before=a, after=b))
        for name, path, what in FLAGS:
            if not _number(_at(before, path)) and _number(_at(now, path)):
                out.append(self._finding(Severity.high, what, f"{name} turned on since the last sample.", flag=name))
        new = set(now.get("reasons") or []) - set(before.get("reasons") or [])
        for reason in sorted(new & SLOWDOWN_SEVERITY.keys()):
            out.append(self._finding(
                SLOWDOWN_SEVERITY[reason], f"the device newly names a slowdown: {reason}",
                f"Clocks are held down for {reason.replace('_', ' ')} since the last sample (NVML clock-event "
                "reasons).", reason=reason, reasons=now.get("reasons"),
                temperature_c=now.get("temperature_c"), power_w=now.get("power_w")))
        return out


def _hz(mhz: float | None) -> float | None:
    return None if mhz is None else mhz * HERTZ_PER_MHZ


def _gauges(reading: dict[str, Any]) -> dict[str, float]:
    values: dict[str, Any] = {
        "power_watts": reading.get("power_w"), "power_limit_watts": reading.get("power_limit_w"),
        "temperature_celsius": reading.get("temperature_c"),
        "compute_clock_hertz": _hz(_number(reading.get("compute_clock_mhz"))),
        "memory_clock_hertz": _hz(_number(reading.get("memory_clock_mhz"))),
        **{name: _at(reading, path) for name, path, _ in COUNTERS},
        **{name: _at(reading, path) for name, path in GAUGES},
        **{name: _at(reading, path) for name, path, _ in FLAGS},
    }
    reasons = reading.get("reasons")
    if isinstance(reasons, list):
        values.update({f"throttle_{r}": float(r in reasons) for r in nvml.CLOCK_EVENT_REASONS.values()})
    return {k: n for k, v in values.items() if (n := _number(v)) is not None}
