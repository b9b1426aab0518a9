"""AMD accelerators through amdsmi (the ROCm `amdsmi` binding, optional extra `chipaudit[amd]`).

The binding ships as a pip package, but it loads libamd_smi.so from a ROCm install: without ROCm the
import itself fails, which here means "not available". Units follow amdsmi.h on Linux bare metal:
power caps in microwatts, clocks in MHz, PCIe speed in MT/s.
"""

from __future__ import annotations

from typing import Any

from chipaudit.devices.pci import GENERATION_BY_GT_S
from chipaudit.devices.vendor_reads import Fields, LiveReader, Reader, Unavailable

MICROWATTS_PER_WATT = 1_000_000
MEGATRANSFERS_PER_GIGATRANSFER = 1000
CLOCKS = {"graphics": "AmdSmiClkType.GFX", "memory": "AmdSmiClkType.MEM"}
# amdsmi_violation_status_t "active_*" flags: which limiter is holding the clocks down now.
THROTTLE_FLAGS = {
    "active_prochot_thrm": "prochot_thermal", "active_ppt_pwr": "package_power",
    "active_socket_thrm": "socket_thermal", "active_vr_thrm": "voltage_regulator_thermal",
    "active_hbm_thrm": "hbm_thermal",
}
# amdsmi_get_power_info's socket power, in watts, newest binding's name first.
POWER_FIELDS = ("socket_power", "current_socket_power", "average_socket_power")
# amdsmi reports a value it cannot read as this string (amdsmi_interface._validate_if_max_uint).
NOT_AVAILABLE = "N/A"


def open_live() -> LiveReader:
    try:
        import amdsmi
    except Exception as e:  # ImportError, or KeyError/OSError when libamd_smi.so is missing
        raise Unavailable(f"amdsmi is not usable ({type(e).__name__}: {e}); it needs ROCm's libamd_smi.so "
                          "and pip install 'chipaudit[amd]'") from e
    try:
        amdsmi.amdsmi_init(amdsmi.AmdSmiInitFlags.INIT_AMD_GPUS)
        handles = amdsmi.amdsmi_get_processor_handles()
    except amdsmi.AmdSmiException as e:
        raise Unavailable(f"amdsmi did not start: {e}") from e

    def code(e: BaseException) -> str:
        info = getattr(e, "err_info", "") or str(e)
        return str(info).split(" - ")[0]

    return LiveReader("amdsmi", amdsmi, handles, amdsmi.AmdSmiException, code, close=amdsmi.amdsmi_shut_down)


def _known(value: Any) -> Any:
    return None if value == NOT_AVAILABLE else value


def _scaled(value: Any, divisor: int) -> float | None:
    value = _known(value)
    return value / divisor if isinstance(value, int | float) else None


def _clocks(f: Fields) -> dict[str, dict[str, Any]]:
    return {name: f.get(f"clock_{name}", "amdsmi_get_clock_info", clock) or {} for name, clock in CLOCKS.items()}


def throttle_names(violations: Any) -> list[str] | None:
    """The limiters active now, from amdsmi_get_violation_status; None when it was not read."""
    return None if not isinstance(violations, dict) else [
        name for key, name in THROTTLE_FLAGS.items() if violations.get(key) is True]


def load_reading(reader: Reader, index: int) -> dict[str, Any]:
    """One reading under load (sensors/power.py): socket power and the power cap, the graphics and memory
    clocks, the hotspot temperature and the active limiters; a field amdsmi will not give is None.

    Socket power is in watts: `socket_power` (ROCm 7), else `current_socket_power` (MI300 and newer),
    else `average_socket_power` (older parts), the first one known."""
    f = Fields(reader, index)
    power = f.get("power", "amdsmi_get_power_info") or {}
    cap = f.get("power_cap", "amdsmi_get_power_cap_info") or {}
    watts = next((_known(power.get(k)) for k in POWER_FIELDS if _known(power.get(k)) is not None), None)
    clocks = _clocks(f)
    return {
        "power_w": watts if isinstance(watts, int | float) else None,
        "power_limit_w": _scaled(cap.get("power_cap"), MICROWATTS_PER_WATT),
        "compute_clock_mhz": _known(clocks["graphics"].get("clk")),
        "memory_clock_mhz": _known(clocks["memory"].get("clk")),
        "temperature_c": _known(f.get("temperature", "amdsmi_get_temp_metric", "AmdSmiTemperatureType.HOTSPOT",
                                      "AmdSmiTemperatureMetric.CURRENT")),
        "reasons": throttle_names(f.get("violation_status", "amdsmi_get_violation_status")),
    }


def load_ceilings(reader: Reader, index: int) -> dict[str, Any]:
    """The clocks the device may reach: amdsmi's maximum graphics and memory clocks."""
    f = Fields(reader, index)
    clocks = _clocks(f)
    return {"max_compute_clock_mhz": _known(clocks["graphics"].get("max_clk")),
            "max_memory_clock_mhz": _known(clocks["memory"].get("max_clk"))}


def collect(reader: Reader) -> dict[str, Any]:
    system = Fields(reader)
    version = system.get("library_version", "amdsmi_get_lib_version")
    library = None if not isinstance(version, dict) else ".".join(
        str(version[k]) for k in ("major", "minor", "release") if k in version)
    devices = [_device(reader, i) for i in range(reader.device_count())]
    return {"source": "amdsmi", "driver": {"amdsmi_library": library}, "devices": devices,
            "unavailable": system.unavailable}


def _device(reader: Reader, index: int) -> dict[str, Any]:
    f = Fields(reader, index)
    asic = f.get("asic", "amdsmi_get_gpu_asic_info") or {}
    board = f.get("board", "amdsmi_get_gpu_board_info") or {}
    vbios = f.get("vbios", "amdsmi_get_gpu_vbios_info") or {}
    firmware = f.get("firmware", "amdsmi_get_fw_info") or {}
    driver = f.get("driver", "amdsmi_get_gpu_driver_info") or {}
    pcie = f.get("pcie", "amdsmi_get_pcie_info") or {}
    link, metric = pcie.get("pcie_static", {}), pcie.get("pcie_metric", {})
    power = f.get("power_cap", "amdsmi_get_power_cap_info") or {}
    ecc = f.get("ecc_count", "amdsmi_get_gpu_total_ecc_count")
    ecc_blocks = f.get("ecc_enabled_blocks", "amdsmi_get_gpu_ecc_enabled")
    bad_pages = f.get("bad_pages", "amdsmi_get_gpu_bad_page_info")
    violations = f.get("violation_status", "amdsmi_get_violation_status")
    virtualization = f.get("virtualization", "amdsmi_get_gpu_virtualization_mode")
    clocks = _clocks(f)
    speed, max_speed = _known(metric.get("pcie_speed")), _known(link.get("max_pcie_speed"))
    return {
        "index": index,
        "vendor": "AMD",
        "model": _known(asic.get("market_name")) or _known(board.get("product_name")),
        "uuid": f.get("uuid", "amdsmi_get_gpu_device_uuid"),
        "serial": _known(board.get("product_serial")) or _known(asic.get("asic_serial")),
        "board_part_number": _known(board.get("model_number")),
        "architecture": _known(asic.get("target_graphics_version")),
        "compute_units": _known(asic.get("num_compute_units")),
        "firmware": {
            "vbios": _known(vbios.get("version")),
            "vbios_part_number": _known(vbios.get("part_number")),
            "vbios_build_date": _known(vbios.get("build_date")),
            **{str(fw.get("fw_name")): fw.get("fw_version") for fw in firmware.get("fw_list", [])},
        },
        "driver": {"name": _known(driver.get("driver_name")), "version": _known(driver.get("driver_version"))},
        "pcie": {
            "bus_id": f.get("bus_id", "amdsmi_get_gpu_device_bdf"),
            "device_id": _known(asic.get("device_id")),
            "subsystem_id": _known(asic.get("subsystem_id")),
            # amdsmi gives the current generation, and the maximum only as a speed (older bindings).
            "generation": {"current": _known(link.get("pcie_interface_version")),
                           "max": _known(link.get("max_pcie_interface_version")) or (
                               GENERATION_BY_GT_S.get(max_speed / MEGATRANSFERS_PER_GIGATRANSFER)
                               if max_speed else None)},
            "width": {"current": _known(metric.get("pcie_width")), "max": _known(link.get("max_pcie_width"))},
            "speed_gt_s": {"current": speed / MEGATRANSFERS_PER_GIGATRANSFER if speed else None,
                           "max": max_speed / MEGATRANSFERS_PER_GIGATRANSFER if max_speed else None},
            "replay_count": _known(metric.get("pcie_replay_count")),
        },
        "memory": {"total_bytes": f.get("memory_total", "amdsmi_get_gpu_memory_total", "AmdSmiMemoryType.VRAM"),
                   "used_bytes": f.get("memory_used", "amdsmi_get_gpu_memory_usage", "AmdSmiMemoryType.VRAM")},
        "power_w": {
            "limit": _scaled(power.get("power_cap"), MICROWATTS_PER_WATT),
            "default_limit": _scaled(power.get("default_power_cap"), MICROWATTS_PER_WATT),
            "min_limit": _scaled(power.get("min_power_cap"), MICROWATTS_PER_WATT),
            "max_limit": _scaled(power.get("max_power_cap"), MICROWATTS_PER_WATT),
        },
        "clocks_mhz": {name: {"current": _known(c.get("clk")), "max": _known(c.get("max_clk"))}
                       for name, c in clocks.items()},
        "ecc": {
            "mode": None if ecc_blocks is None else {"current": "enabled" if ecc_blocks else "disabled"},
            "enabled_blocks_mask": ecc_blocks,
            "errors": None if not isinstance(ecc, dict) else {"aggregate": {
                "corrected": ecc.get("correctable_count"), "uncorrected": ecc.get("uncorrectable_count"),
                "deferred": ecc.get("deferred_count")}},
        },
        "retired_pages": None if not isinstance(bad_pages, list) else {"count": len(bad_pages), "pages": bad_pages},
        "partitioning": {
            "compute": f.get("compute_partition", "amdsmi_get_gpu_compute_partition"),
            "memory": f.get("memory_partition", "amdsmi_get_gpu_memory_partition"),
        },
        "virtualization": virtualization.get("mode") if isinstance(virtualization, dict) else None,
        # amdsmi has no confidential-computing query; say so rather than guess.
        "confidential_computing": None,
        "throttle_reasons": throttle_names(violations),
        "unavailable": f.unavailable,
    }
