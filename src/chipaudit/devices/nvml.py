"""NVIDIA accelerators through NVML (the `nvidia-ml-py` binding, optional extra `chipaudit[nvidia]`).

What NVML itself reports: identity, firmware, driver, PCIe link, memory, power and clock limits, ECC
mode and counters, retired pages and remapped rows, MIG and confidential-computing modes, and the
reasons clocks are held down now. All of it is the driver's own word; the audit records it as the
inventory and judges the device elsewhere by what it computes.
"""

from __future__ import annotations

import contextlib
from typing import Any

from chipaudit.devices.vendor_reads import Fields, LiveReader, Reader, Unavailable, plain

# nvmlDeviceArchitecture_t (nvml.h; pynvml NVML_DEVICE_ARCH_*).
ARCHITECTURES = {2: "Kepler", 3: "Maxwell", 4: "Pascal", 5: "Volta", 6: "Turing", 7: "Ampere", 8: "Ada",
                 9: "Hopper", 10: "Blackwell", 13: "Rubin"}
# nvmlClocksEventReasons bit mask (nvml.h "ClocksEventReasons"; pynvml nvmlClocksEventReason*).
CLOCK_EVENT_REASONS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting",
}
# nvmlConfComputeSystemState_t fields (pynvml NVML_CC_SYSTEM_*).
CC_ENVIRONMENT = {0: "unavailable", 1: "simulated", 2: "production"}
CC_FEATURE = {0: "disabled", 1: "enabled"}
ENABLED = {0: "disabled", 1: "enabled"}
COMPUTE_MODES = {0: "default", 1: "exclusive_thread", 2: "prohibited", 3: "exclusive_process"}
CLOCKS = {"graphics": "NVML_CLOCK_GRAPHICS", "sm": "NVML_CLOCK_SM", "memory": "NVML_CLOCK_MEM"}
MILLIWATTS_PER_WATT = 1000
# nvmlEventType bits watched (nvml.h; pynvml nvmlEventType*): what says the device failed. Clock and
# P-state changes are read as values instead; single-bit ECC errors are corrected and counted.
EVENT_TYPES = {0x2: "double_bit_ecc_error", 0x8: "xid_critical_error", 0x400: "dram_retirement",
               0x800: "dram_retirement_failure", 0x2000: "fatal_poison_error", 0x4000: "gpu_unavailable"}
# A storm of events is read this many at a time per poll; the rest wait in NVML's queue.
MAX_EVENTS_PER_POLL = 256


def open_live() -> LiveReader:
    try:
        import pynvml
    except ImportError as e:
        raise Unavailable("nvidia-ml-py is not installed (pip install 'chipaudit[nvidia]')") from e
    try:
        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError as e:
        raise Unavailable(f"NVML did not start: {e}") from e
    names = {getattr(pynvml, n): n for n in dir(pynvml) if n.startswith("NVML_ERROR_")}
    return LiveReader("nvml", pynvml, handles, pynvml.NVMLError,
                      lambda e: names.get(getattr(e, "value", None), str(e)), close=pynvml.nvmlShutdown)


def _hex16(value: int | None, shift: int) -> str | None:
    return None if value is None else f"0x{(value >> shift) & 0xFFFF:04x}"


def _pair(values: Any, names: dict[int, str]) -> dict[str, str] | None:
    if not isinstance(values, list) or len(values) != 2:
        return None
    return {"current": names.get(values[0], str(values[0])), "pending": names.get(values[1], str(values[1]))}


def _watts(milliwatts: Any) -> float | None:
    return milliwatts / MILLIWATTS_PER_WATT if isinstance(milliwatts, int | float) else None


def reason_names(mask: Any) -> list[str] | None:
    """The clock-event reasons set in an NVML bit mask; None when the mask was not read."""
    return None if not isinstance(mask, int) else [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]


def load_reading(reader: Reader, index: int) -> dict[str, Any]:
    """One reading under load (sensors/power.py): power drawn and the limit enforced now, the SM and memory
    clocks, the GPU's temperature and the clock-event reasons; a field NVML will not give is None.

    NVML averages the power over one second on Ampere and newer (except GA100), so a reading lags the
    load by up to a second (NVML API reference, nvmlDeviceGetPowerUsage)."""
    f = Fields(reader, index)
    return {
        "power_w": _watts(f.get("power_draw", "nvmlDeviceGetPowerUsage")),
        "power_limit_w": _watts(f.get("power_enforced_limit", "nvmlDeviceGetEnforcedPowerLimit")),
        "compute_clock_mhz": f.get("clock_sm", "nvmlDeviceGetClockInfo", CLOCKS["sm"]),
        "memory_clock_mhz": f.get("clock_memory", "nvmlDeviceGetClockInfo", CLOCKS["memory"]),
        "temperature_c": f.get("temperature", "nvmlDeviceGetTemperature", "NVML_TEMPERATURE_GPU"),
        "reasons": reason_names(f.get("throttle_reasons", "nvmlDeviceGetCurrentClocksEventReasons")),
    }


def load_ceilings(reader: Reader, index: int) -> dict[str, Any]:
    """The clocks the device may reach: NVML's maximum SM and memory clocks (boost included)."""
    f = Fields(reader, index)
    return {"max_compute_clock_mhz": f.get("max_clock_sm", "nvmlDeviceGetMaxClockInfo", CLOCKS["sm"]),
            "max_memory_clock_mhz": f.get("max_clock_memory", "nvmlDeviceGetMaxClockInfo", CLOCKS["memory"])}


def _cuda_version(encoded: Any) -> str | None:
    """NVML encodes the CUDA driver API version as 1000 * major + 10 * minor."""
    return f"{encoded // 1000}.{encoded % 1000 // 10}" if isinstance(encoded, int) else None


def collect(reader: Reader) -> dict[str, Any]:
    system = Fields(reader)
    driver = {
        "version": system.get("driver_version", "nvmlSystemGetDriverVersion"),
        "nvml_version": system.get("nvml_version", "nvmlSystemGetNVMLVersion"),
        "cuda": _cuda_version(system.get("cuda_driver_version", "nvmlSystemGetCudaDriverVersion_v2")),
    }
    state = system.get("confidential_computing", "nvmlSystemGetConfComputeState")
    cc = None if not isinstance(state, dict) else {
        "environment": CC_ENVIRONMENT.get(state.get("environment"), str(state.get("environment"))),
        "feature": CC_FEATURE.get(state.get("ccFeature"), str(state.get("ccFeature"))),
        "devtools_mode": ENABLED.get(state.get("devToolsMode"), str(state.get("devToolsMode"))),
    }
    devices = [_device(reader, i, driver, cc) for i in range(reader.device_count())]
    return {"source": "nvml", "driver": driver, "devices": devices, "unavailable": system.unavailable}


def ecc_errors(f: Fields) -> dict[str, dict[str, Any]]:
    """ECC error counts, corrected and uncorrected, since the driver loaded (volatile) and over the
    device's life (aggregate); None where NVML gives none (ECC off, or not supported)."""
    return {
        counter: {
            kind: f.get(f"ecc_{kind}_{counter}", "nvmlDeviceGetTotalEccErrors", error_type, counter_type)
            for kind, error_type in (("corrected", "NVML_MEMORY_ERROR_TYPE_CORRECTED"),
                                     ("uncorrected", "NVML_MEMORY_ERROR_TYPE_UNCORRECTED"))
        }
        for counter, counter_type in (("volatile", "NVML_VOLATILE_ECC"), ("aggregate", "NVML_AGGREGATE_ECC"))
    }


def retired_pages(f: Fields) -> dict[str, Any] | None:
    """Pages retired per cause (Kepler to Volta; Ampere and newer remap rows instead: None there)."""
    retired = {
        cause: f.get(f"retired_pages_{cause}", "nvmlDeviceGetRetiredPages", source)
        for cause, source in (("single_bit_ecc", "NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS"),
                              ("double_bit_ecc", "NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR"))
    }
    pending = f.get("retired_pages_pending", "nvmlDeviceGetRetiredPagesPendingStatus")
    return None if all(v is None for v in retired.values()) else {
        **{cause: len(pages) if isinstance(pages, list) else None for cause, pages in retired.items()},
        "pending": ENABLED.get(pending) if pending is not None else None,
    }


def remapped_rows(f: Fields) -> dict[str, Any] | None:
    """Rows remapped for correctable and uncorrectable errors, a remap pending, a remap failed (Ampere
    and newer)."""
    remapped = f.get("remapped_rows", "nvmlDeviceGetRemappedRows")
    return None if not isinstance(remapped, list) or len(remapped) != 4 else dict(zip(
        ("correctable", "uncorrectable", "pending", "failure_occurred"),
        (remapped[0], remapped[1], bool(remapped[2]), bool(remapped[3])), strict=True))


def health_reading(reader: Reader, index: int) -> tuple[dict[str, Any], dict[str, str]]:
    """What `chipaudit watch` reads every interval: a load reading plus the memory-health counters, and
    for each field NVML would not give, what it answered instead."""
    f = Fields(reader, index)
    reading = load_reading(reader, index)
    reading.update({"ecc_errors": ecc_errors(f), "retired_pages": retired_pages(f), "remapped_rows": remapped_rows(f)})
    return reading, f.unavailable


def running_pids(reader: Reader, index: int) -> tuple[set[int] | None, dict[str, str]]:
    """The processes NVML says run on the device (compute and graphics contexts), or None when it
    answered neither list; and what it answered instead where it did not.

    Inside a container NVML may list host PIDs, or none (NVIDIA's documentation of the process queries):
    the device files' holders are looked for besides."""
    f = Fields(reader, index)
    lists = [f.get(kind, f"nvmlDevice{name}RunningProcesses")
             for kind, name in (("compute_processes", "GetCompute"), ("graphics_processes", "GetGraphics"))]
    if all(v is None for v in lists):
        return None, f.unavailable
    return {int(p["pid"]) for v in lists if isinstance(v, list) for p in v
            if isinstance(p, dict) and isinstance(p.get("pid"), int)}, f.unavailable


class Events:
    """NVML's events of one device (XID errors, double-bit ECC errors, page retirements, a device that
    became unavailable), polled without waiting (nvmlEventSetWait_v2 with timeout 0 answers
    NVML_ERROR_TIMEOUT when none is queued; NVML API reference, Event Handling Methods).

    Registered for the types of EVENT_TYPES the device supports (nvmlDeviceGetSupportedEventTypes);
    `registered` names them, `unavailable` says why there are none."""

    def __init__(self, reader: LiveReader, index: int):
        self.module, self.handle = reader.module, reader.handles[index]
        self.error_type, self.error_code = reader.error_type, reader.error_code
        self.registered: list[str] = []
        self.unavailable = ""
        self._set: Any = None
        try:
            supported = int(self.module.nvmlDeviceGetSupportedEventTypes(self.handle))
            mask = supported & sum(EVENT_TYPES)
            if not mask:
                self.unavailable = "the device supports none of the events watched"
                return
            self._set = self.module.nvmlEventSetCreate()
            self.module.nvmlDeviceRegisterEvents(self.handle, mask, self._set)
            self.registered = [name for bit, name in EVENT_TYPES.items() if mask & bit]
        except self.error_type as e:
            self.unavailable = f"NVML events: {self.error_code(e)}"
            self.close()

    def poll(self) -> list[dict[str, Any]]:
        """Events queued since the last poll (at most MAX_EVENTS_PER_POLL), as plain data."""
        out: list[dict[str, Any]] = []
        while self._set is not None and len(out) < MAX_EVENTS_PER_POLL:
            try:
                data = plain(self.module.nvmlEventSetWait_v2(self._set, 0))
            except self.error_type as e:
                if self.error_code(e) != "NVML_ERROR_TIMEOUT":
                    self.unavailable = f"NVML events stopped: {self.error_code(e)}"
                    self.close()
                break
            out.append({k: v for k, v in data.items() if k != "device"})
        return out

    def close(self) -> None:
        if self._set is not None:
            with contextlib.suppress(Exception):
                self.module.nvmlEventSetFree(self._set)
            self._set = None


def _device(reader: Reader, index: int, driver: dict[str, Any], cc: dict[str, str] | None) -> dict[str, Any]:
    f = Fields(reader, index)
    pci = f.get("pci", "nvmlDeviceGetPciInfo_v3") or {}
    memory = f.get("memory", "nvmlDeviceGetMemoryInfo") or {}
    capability = f.get("compute_capability", "nvmlDeviceGetCudaComputeCapability")
    power_range = f.get("power_limit_range", "nvmlDeviceGetPowerManagementLimitConstraints") or [None, None]
    ecc_mode = f.get("ecc_mode", "nvmlDeviceGetEccMode")
    reasons = f.get("throttle_reasons", "nvmlDeviceGetCurrentClocksEventReasons")
    arch = f.get("architecture", "nvmlDeviceGetArchitecture")
    return {
        "index": index,
        "vendor": "NVIDIA",
        "model": f.get("model", "nvmlDeviceGetName"),
        "uuid": f.get("uuid", "nvmlDeviceGetUUID"),
        "serial": f.get("serial", "nvmlDeviceGetSerial"),
        "board_part_number": f.get("board_part_number", "nvmlDeviceGetBoardPartNumber"),
        "architecture": ARCHITECTURES.get(arch, str(arch)) if arch is not None else None,
        "compute_capability": ".".join(map(str, capability)) if capability else None,
        "firmware": {
            "vbios": f.get("vbios", "nvmlDeviceGetVbiosVersion"),
            "inforom_image": f.get("inforom_image", "nvmlDeviceGetInforomImageVersion"),
            "gsp": f.get("gsp_firmware", "nvmlDeviceGetGspFirmwareVersion"),
        },
        "driver": driver,
        "pcie": {
            "bus_id": pci.get("busId"),
            "device_id": _hex16(pci.get("pciDeviceId"), 16),
            "subsystem_id": _hex16(pci.get("pciSubSystemId"), 16),
            "generation": {"current": f.get("pcie_generation", "nvmlDeviceGetCurrPcieLinkGeneration"),
                           "max": f.get("pcie_max_generation", "nvmlDeviceGetMaxPcieLinkGeneration")},
            "width": {"current": f.get("pcie_width", "nvmlDeviceGetCurrPcieLinkWidth"),
                      "max": f.get("pcie_max_width", "nvmlDeviceGetMaxPcieLinkWidth")},
        },
        "memory": {"total_bytes": memory.get("total"), "used_bytes": memory.get("used"),
                   "free_bytes": memory.get("free")},
        "power_w": {
            "limit": _watts(f.get("power_limit", "nvmlDeviceGetPowerManagementLimit")),
            "enforced_limit": _watts(f.get("power_enforced_limit", "nvmlDeviceGetEnforcedPowerLimit")),
            "default_limit": _watts(f.get("power_default_limit", "nvmlDeviceGetPowerManagementDefaultLimit")),
            "min_limit": _watts(power_range[0]),
            "max_limit": _watts(power_range[1]),
            "draw": _watts(f.get("power_draw", "nvmlDeviceGetPowerUsage")),
        },
        "clocks_mhz": {
            name: {"current": f.get(f"clock_{name}", "nvmlDeviceGetClockInfo", clock),
                   "max": f.get(f"max_clock_{name}", "nvmlDeviceGetMaxClockInfo", clock)}
            for name, clock in CLOCKS.items()
        },
        "ecc": {"mode": _pair(ecc_mode, ENABLED), "errors": ecc_errors(f)},
        "retired_pages": retired_pages(f),
        "remapped_rows": remapped_rows(f),
        "partitioning": {"mig": _pair(f.get("mig_mode", "nvmlDeviceGetMigMode"), ENABLED)},
        "confidential_computing": cc,
        "throttle_reasons": reason_names(reasons),
        "persistence_mode": ENABLED.get(f.get("persistence_mode", "nvmlDeviceGetPersistenceMode")),
        "compute_mode": COMPUTE_MODES.get(f.get("compute_mode", "nvmlDeviceGetComputeMode")),
        "unavailable": f.unavailable,
    }
