"""What the device and the host say about slowing down: throttle reasons, temperature, clocks, and
how much of the host other tenants use.

A device that slows down under sustained use may have an honest reason it reports itself: NVIDIA's
clock-event reasons (thermal or power slowdown) through NVML when the optional binding is present,
otherwise temperature and clock readings where the platform has them (psutil on a CPU). On a CPU
device other tenants' load is itself a reason, measured from the system's CPU time minus the
audit's own. Whatever is not available is said to be not available.

Cannot see: throttling the device neither reports nor shows in its clocks; a reason reported
falsely (the driver's word is taken).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from chipaudit.devices.vendor_reads import Reader, ReadError, Unavailable
from chipaudit.sensors.events import SensorStatus

# nvmlClocksEventReasons that mean the device was held down by heat or power (nvml.h); idle,
# application clock settings and sync boost are not slowdowns under load.
SLOWDOWN_REASONS = frozenset({
    "sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown",
})


@dataclass
class Reading:
    t: float  # time.monotonic()
    reasons: list[str] = field(default_factory=list)
    temperature_c: float | None = None
    clock_mhz: float | None = None
    foreign_cores: float | None = None  # CPU cores other processes kept busy since the last reading

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [])}


def open_nvml(device: str) -> tuple[Reader | None, int, str]:
    from chipaudit.devices import nvml

    index = int(device.split(":", 1)[1]) if ":" in device else 0
    try:
        reader = nvml.open_live()
    except Unavailable as e:
        return None, index, str(e)
    if index >= reader.device_count():
        return None, index, f"NVML lists {reader.device_count()} device(s), not index {index}"
    return reader, index, ""


class Telemetry:
    """Readings taken on demand; `own_pids()` names the processes whose CPU time is the audit's."""

    def __init__(self, device: str, own_pids: Callable[[], list[int]], reader: Reader | None = None):
        self.device, self.own_pids = device, own_pids
        self.reader, self.index = reader, 0
        self.readings: list[Reading] = []
        why = ""
        if reader is None and device.startswith("cuda"):
            import torch

            if torch.version.cuda:
                self.reader, self.index, why = open_nvml(device)
            else:
                why = "a ROCm device: clock and temperature readings through amdsmi are not wired up"
        if self.reader is not None:
            self.status = SensorStatus("device_telemetry", True, "NVML clock-event reasons, GPU temperature and "
                                       "SM clock")
        elif device.startswith("cpu"):
            temps, freq = bool(cpu_temperature() is not None), bool(cpu_clock() is not None)
            what = [w for w, ok in (("temperature", temps), ("clock frequency", freq)) if ok]
            self.status = SensorStatus("device_telemetry", bool(what),
                                       f"CPU {' and '.join(what)} (psutil)" if what else
                                       "not available: this machine reports neither CPU temperature nor "
                                       "frequency")
        else:
            self.status = SensorStatus("device_telemetry", False, f"not available: {why or 'no vendor library'}")
        self._last: tuple[float, float, float] | None = None

    def read(self) -> Reading:
        r = Reading(time.monotonic())
        if self.reader is not None:
            r.reasons = self._nvml_reasons()
            r.temperature_c = self._nvml_value("nvmlDeviceGetTemperature", "NVML_TEMPERATURE_GPU")
            r.clock_mhz = self._nvml_value("nvmlDeviceGetClockInfo", "NVML_CLOCK_SM")
        elif self.device.startswith("cpu"):
            r.temperature_c, r.clock_mhz = cpu_temperature(), cpu_clock()
        r.foreign_cores = self._foreign(r.t)
        self.readings.append(r)
        return r

    def _nvml_value(self, function: str, arg: str) -> float | None:
        assert self.reader is not None
        with contextlib.suppress(ReadError):
            value = self.reader.read(function, arg, device=self.index)
            return float(value) if isinstance(value, int | float) else None
        return None

    def _nvml_reasons(self) -> list[str]:
        from chipaudit.devices.nvml import reason_names

        assert self.reader is not None
        try:
            mask = self.reader.read("nvmlDeviceGetCurrentClocksEventReasons", device=self.index)
        except ReadError:
            return []
        return reason_names(mask) or []

    def _foreign(self, now: float) -> float | None:
        times = psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        own = 0.0
        for pid in self.own_pids():
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                own += t.user + t.system
        last, self._last = self._last, (now, busy, own)
        if last is None or now <= last[0]:
            return None
        return max(0.0, ((busy - last[1]) - (own - last[2])) / (now - last[0]))

    def close(self) -> None:
        close = getattr(self.reader, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


def cpu_temperature() -> float | None:
    with contextlib.suppress(AttributeError, OSError):
        temps = [t.current for sensors in psutil.sensors_temperatures().values() for t in sensors if t.current]
        return max(temps) if temps else None
    return None


def cpu_clock(field: str = "current") -> float | None:
    """psutil's CPU frequency in MHz: `current`, or `max` (the highest the platform lists)."""
    with contextlib.suppress(AttributeError, OSError, NotImplementedError):
        value = getattr(psutil.cpu_freq(), field, None)
        return float(value) if value else None
    return None
