"""The inventory's sources: vendor libraries through record/replay, the CPU, the PCI bus, and absence."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from chipaudit.devices import amd, ascend, cpu, inventory, nvml, pci
from chipaudit.devices.vendor_reads import (
    NOT_RECORDED,
    LiveReader,
    ReadError,
    RecordingReader,
    ReplayReader,
    Unavailable,
    plain,
)

FIXTURES = Path(__file__).parent / "fixtures" / "vendor"


def replay(name: str) -> ReplayReader:
    return ReplayReader.from_file(FIXTURES / name)


def assert_fully_recorded(result: dict[str, Any]) -> None:
    """Every read the parser made is in the recording: nothing parsed from a hole in the fixture."""
    reasons = [*result["unavailable"].values(), *(r for d in result["devices"] for r in d["unavailable"].values())]
    assert not [r for r in reasons if NOT_RECORDED in r], reasons


def test_nvml_h100_recording_parses_into_the_inventory_fields() -> None:
    result = nvml.collect(replay("nvml_h100_sxm5.json"))
    assert_fully_recorded(result)
    assert result["driver"] == {"version": "565.57.01", "nvml_version": "12.565.57.01", "cuda": "12.7"}
    assert len(result["devices"]) == 2
    gpu = result["devices"][0]
    assert (gpu["vendor"], gpu["model"], gpu["architecture"], gpu["compute_capability"]) == (
        "NVIDIA", "NVIDIA H100 80GB HBM3", "Hopper", "9.0")
    assert gpu["uuid"] == "GPU-b42dd28e-ffdd-8720-1df0-98bd8cdc05b1" and gpu["serial"] == "1654423001593"
    assert gpu["firmware"] == {"vbios": "96.00.74.00.01", "inforom_image": "G520.0200.00.05", "gsp": "565.57.01"}
    assert gpu["pcie"] == {"bus_id": "00000000:18:00.0", "device_id": "0x2330", "subsystem_id": "0x16c1",
                           "generation": {"current": 5, "max": 5}, "width": {"current": 16, "max": 16}}
    assert gpu["memory"]["total_bytes"] == 81559 << 20
    assert gpu["power_w"] == {"limit": 700.0, "enforced_limit": 700.0, "default_limit": 700.0,
                              "min_limit": 200.0, "max_limit": 700.0, "draw": 100.89}
    assert gpu["clocks_mhz"]["sm"] == {"current": 345, "max": 1980}
    assert gpu["ecc"]["mode"] == {"current": "enabled", "pending": "enabled"}
    assert gpu["ecc"]["errors"]["aggregate"] == {"corrected": 0, "uncorrected": 0}
    assert gpu["remapped_rows"] == {"correctable": 0, "uncorrectable": 0, "pending": False,
                                    "failure_occurred": False}
    # Hopper remaps rows instead of retiring pages: NVML says not supported, and the report says so.
    assert gpu["retired_pages"] is None
    assert "NVML_ERROR_NOT_SUPPORTED" in gpu["unavailable"]["retired_pages_double_bit_ecc"]
    assert gpu["partitioning"]["mig"] == {"current": "disabled", "pending": "disabled"}
    assert gpu["confidential_computing"] == {"environment": "unavailable", "feature": "disabled",
                                             "devtools_mode": "disabled"}
    assert gpu["throttle_reasons"] == ["gpu_idle"]
    assert result["devices"][1]["pcie"]["bus_id"] == "00000000:2A:00.0"


def test_a_recording_made_on_a_real_h200_replays_to_the_inventory_printed_there() -> None:
    """docs/validation/nvidia-h200-2026-11-27: `chipaudit inventory --record` on a loaned H200."""
    printed = json.loads((Path(__file__).parents[1] / "docs" / "validation" / "nvidia-h200-2026-11-27"
                          / "inventory.json").read_text())
    result = nvml.collect(replay("nvml_h200_recorded.json"))
    assert_fully_recorded(result)
    live = [{k: v for k, v in a.items() if k != "source"} for a in printed["accelerators"] if a["source"] == "nvml"]
    assert result["devices"] == live
    gpu = result["devices"][0]
    assert (gpu["model"], gpu["firmware"]["vbios"], gpu["driver"]["version"]) == (
        "NVIDIA H200", "96.00.A5.00.1A", "580.159.04")
    assert gpu["retired_pages"] is None and gpu["remapped_rows"]["uncorrectable"] == 0


def test_amdsmi_mi300x_recording_parses_into_the_inventory_fields() -> None:
    result = amd.collect(replay("amdsmi_mi300x.json"))
    assert_fully_recorded(result)
    gpu = result["devices"][0]
    assert (gpu["vendor"], gpu["model"], gpu["architecture"], gpu["compute_units"]) == (
        "AMD", "AMD Instinct MI300X", "gfx942", 304)
    assert gpu["serial"] == "692347006052" and gpu["board_part_number"] is None  # 'N/A' is not a value
    assert gpu["firmware"]["AMDSMI_FW_ID_PM"] == "00.85.91.00" and gpu["firmware"]["vbios"] == "113-MI3SRIOV-001"
    assert gpu["driver"] == {"name": "amdgpu", "version": "6.7.0"}
    assert gpu["pcie"]["generation"] == {"current": 5, "max": 5}  # max derived from 32 GT/s
    assert gpu["pcie"]["speed_gt_s"] == {"current": 32.0, "max": 32.0}
    assert gpu["memory"]["total_bytes"] == 196592 << 20
    assert gpu["power_w"]["limit"] == 750.0  # microwatts in amdsmi
    assert gpu["clocks_mhz"]["graphics"] == {"current": 137, "max": 2100}
    assert gpu["ecc"]["errors"]["aggregate"]["uncorrected"] == 0
    assert gpu["retired_pages"] == {"count": 0, "pages": []}
    assert gpu["partitioning"] == {"compute": "SPX", "memory": "NPS1"}
    assert gpu["throttle_reasons"] is None and "AMDSMI_STATUS_NOT_SUPPORTED" in gpu["unavailable"]["violation_status"]
    assert result["driver"] == {"amdsmi_library": "24.6.3"}


def _stub_nvml() -> types.SimpleNamespace:
    """A binding that answers like nvidia-ml-py does, with nvidia-ml-py's own types and errors."""
    pynvml = pytest.importorskip("pynvml")

    def memory(handle: object) -> Any:
        return pynvml.c_nvmlMemory_t(total=80 << 30, free=79 << 30, used=1 << 30)

    def pci_info(handle: object) -> Any:
        return pynvml.nvmlPciInfo_t(busIdLegacy=b"0000:18:00.0", domain=0, bus=0x18, device=0,
                                    pciDeviceId=0x233010DE, pciSubSystemId=0x16C110DE, busId=b"00000000:18:00.0")

    def not_supported(*args: object) -> Any:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    return types.SimpleNamespace(
        NVML_CLOCK_SM=pynvml.NVML_CLOCK_SM, NVMLError=pynvml.NVMLError,
        NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR=pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR,
        nvmlDeviceGetName=lambda h: "NVIDIA H100 80GB HBM3", nvmlDeviceGetMemoryInfo=memory,
        nvmlDeviceGetPciInfo_v3=pci_info, nvmlDeviceGetEccMode=lambda h: [1, 1],
        nvmlDeviceGetMaxClockInfo=lambda h, clock: 1980 if clock == pynvml.NVML_CLOCK_SM else 0,
        nvmlDeviceGetRetiredPages=not_supported, nvmlSystemGetDriverVersion=lambda: b"565.57.01")


def test_live_reader_turns_binding_types_into_plain_data_and_records_them() -> None:
    pynvml = pytest.importorskip("pynvml")
    stub = _stub_nvml()
    names = {getattr(pynvml, n): n for n in dir(pynvml) if n.startswith("NVML_ERROR_")}
    live = LiveReader("nvml", stub, ["handle0"], pynvml.NVMLError, lambda e: names[e.value])  # type: ignore[arg-type]
    recorder = RecordingReader(live)
    assert recorder.read("nvmlDeviceGetMemoryInfo", device=0) == {"total": 80 << 30, "free": 79 << 30,
                                                                   "used": 1 << 30}
    assert recorder.read("nvmlDeviceGetPciInfo_v3", device=0)["busId"] == "00000000:18:00.0"
    assert recorder.read("nvmlDeviceGetMaxClockInfo", "NVML_CLOCK_SM", device=0) == 1980
    assert recorder.read("nvmlSystemGetDriverVersion") == "565.57.01"
    with pytest.raises(ReadError) as err:
        recorder.read("nvmlDeviceGetRetiredPages", "NVML_CLOCK_SM", device=0)
    assert err.value.code == "NVML_ERROR_NOT_SUPPORTED"
    with pytest.raises(ReadError):  # a function this binding lacks
        recorder.read("nvmlDeviceGetSomethingNew", device=0)
    # What was recorded replays identically, errors included, through JSON.
    again = ReplayReader(json.loads(json.dumps(recorder.recording())))
    assert again.read("nvmlDeviceGetMaxClockInfo", "NVML_CLOCK_SM", device=0) == 1980
    with pytest.raises(ReadError) as err:
        again.read("nvmlDeviceGetRetiredPages", "NVML_CLOCK_SM", device=0)
    assert err.value.code == "NVML_ERROR_NOT_SUPPORTED"
    with pytest.raises(ReadError) as err:
        again.read("nvmlDeviceGetUUID", device=0)
    assert err.value.code == NOT_RECORDED


def test_inventory_records_what_the_vendor_library_answered(tmp_path: Path) -> None:
    pynvml = pytest.importorskip("pynvml")
    names = {getattr(pynvml, n): n for n in dir(pynvml) if n.startswith("NVML_ERROR_")}

    def live() -> LiveReader:
        return LiveReader("nvml", _stub_nvml(), ["h0"], pynvml.NVMLError, lambda e: names[e.value])  # type: ignore[arg-type]

    doc = inventory.collect({"nvml": lambda record: inventory._live(live, nvml.collect, record)}, record=tmp_path)
    recording = json.loads((tmp_path / "nvml.json").read_text())
    assert recording["devices"][0]["nvmlDeviceGetRetiredPages(NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)"] == {
        "__error__": "NVML_ERROR_NOT_SUPPORTED"}
    # A constant this (older) binding lacks is one unreadable field, not a failed inventory.
    assert "CONSTANT_NOT_IN_BINDING" in doc["accelerators"][0]["unavailable"]["retired_pages_single_bit_ecc"]
    replayed = nvml.collect(ReplayReader(recording))
    assert replayed["devices"] == [{k: v for k, v in d.items() if k != "source"} for d in doc["accelerators"]]
    assert replayed["devices"][0]["memory"]["total_bytes"] == 80 << 30


def test_plain_handles_enums_arrays_and_nesting() -> None:
    import ctypes
    import enum

    class Block(enum.IntEnum):
        AMDSMI_FW_ID_PM = 3

    assert plain({"fw_list": [{"fw_name": Block.AMDSMI_FW_ID_PM, "v": (ctypes.c_uint * 2)(1, 2)}]}) == {
        "fw_list": [{"fw_name": "AMDSMI_FW_ID_PM", "v": [1, 2]}]}
    assert plain((9, 0)) == [9, 0] and plain(b"x") == "x" and plain(ctypes.c_int(5)) == 5


def test_nvml_binding_without_a_driver_is_not_available() -> None:
    pytest.importorskip("pynvml")
    with pytest.raises(Unavailable, match="NVML did not start"):  # the binding is there, libnvidia-ml.so is not
        nvml.open_live()


def test_absent_vendor_libraries_are_not_available_never_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "amdsmi", None)  # import fails as on a machine without it
    with pytest.raises(Unavailable, match="amdsmi is not usable"):
        amd.open_live()
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(Unavailable, match="nvidia-ml-py is not installed"):
        nvml.open_live()

    def crashes(record: Path | None) -> dict[str, Any]:
        raise RuntimeError("vendor library bug")

    def missing(record: Path | None) -> dict[str, Any]:
        raise Unavailable("not installed")

    def present(record: Path | None) -> dict[str, Any]:
        return nvml.collect(replay("nvml_h100_sxm5.json"))

    doc = inventory.collect({"a": crashes, "b": missing, "nvml": present})
    assert doc["sources"]["a"] == {"available": False, "reason": "RuntimeError: vendor library bug"}
    assert doc["sources"]["b"] == {"available": False, "reason": "not installed"}
    assert doc["sources"]["nvml"]["available"] and doc["sources"]["nvml"]["devices"] == 2
    assert [a["source"] for a in doc["accelerators"]] == ["nvml", "nvml"]
    assert doc["cpu"]["type"] == "cpu" and doc["host"]["hostname"]


def test_inventory_of_this_machine_runs_isolated_and_lists_the_cpu() -> None:
    doc = inventory.collect_isolated()
    assert "error" not in doc, doc.get("error")
    assert doc["schema"] == inventory.SCHEMA
    assert doc["cpu"]["logical_cpus"] >= 1 and doc["cpu"]["flags"]
    assert set(doc["sources"]) == {"nvml", "amdsmi", "npu-smi"}
    assert not any(s["available"] for s in doc["sources"].values())  # a CPU-only machine
    assert doc["accelerators"] == []


ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1

processor\t: 1
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics
CPU implementer\t: 0x41
CPU part\t: 0xd0c
CPU revision\t: 1
"""


def test_cpuinfo_of_x86_here_and_of_arm() -> None:
    here = cpu.read()
    assert here["logical_cpus"] >= 1 and here["model"] and here["flags"] == sorted(here["flags"])
    arm = cpu.parse_cpuinfo(ARM_CPUINFO)
    assert arm["logical_cpus"] == 2 and "asimd" in arm["flags"] and "0xd0c" in arm["model"]
    assert cpu.read(Path("/nonexistent/cpuinfo"))["unavailable"]


def _pci_device(root: Path, name: str, **files: str) -> None:
    dev = root / name
    dev.mkdir(parents=True)
    for key, value in files.items():
        (dev / key).write_text(value + "\n")


def test_pci_scan_finds_accelerators_whatever_library_is_installed(tmp_path: Path) -> None:
    drivers = tmp_path / "drivers" / "nvidia"
    drivers.mkdir(parents=True)
    _pci_device(tmp_path / "devices", "0000:18:00.0", vendor="0x10de", device="0x2330", subsystem_vendor="0x10de",
                subsystem_device="0x16c1", revision="0xa1", numa_node="0", current_link_speed="32.0 GT/s PCIe",
                max_link_speed="32.0 GT/s PCIe", current_link_width="16", max_link_width="16", **{"class": "0x030200"})
    (tmp_path / "devices" / "0000:18:00.0" / "driver").symlink_to(drivers)
    _pci_device(tmp_path / "devices", "0000:03:00.0", vendor="0x1a03", device="0x2000", **{"class": "0x030000"})
    _pci_device(tmp_path / "devices", "0000:26:00.0", vendor="0x1002", device="0x74a1", **{"class": "0x120000"})
    found = pci.scan(tmp_path / "devices")
    assert [d["bus_id"] for d in found] == ["0000:18:00.0", "0000:26:00.0"]  # the BMC's VGA is not an accelerator
    h100 = found[0]
    assert (h100["vendor"], h100["class"], h100["driver"]) == ("NVIDIA", "3D controller", "nvidia")
    assert h100["pcie"]["generation"] == {"current": 5, "max": 5} and h100["pcie"]["width"]["current"] == 16
    assert found[1]["vendor"] == "AMD" and found[1]["class"] == "processing accelerator"
    assert pci.scan(tmp_path / "absent") == []


def test_npu_smi_output_is_parsed_key_by_key() -> None:
    outputs = {
        ("info", "-l"): "Total Count                    : 2\n\nNPU ID                         : 0\n"
                        "Product Name                   : IT21DMDA\n\nNPU ID                         : 1\n",
        ("info", "-t", "board", "-i", "0"): "NPU ID                         : 0\nProduct Name                   : "
                                            "Atlas 800T A2\nSerial Number                  : 102345678901\n"
                                            "Software Version               : 24.1.rc2\nFirmware Version"
                                            "               : 7.3.0.1.231\nPCIe Bus Info                  : "
                                            "0000:C1:00.0\n",
    }

    def run(args: list[str]) -> str:
        if tuple(args) not in outputs:
            raise OSError("npu-smi: no such NPU")
        return outputs[tuple(args)]

    result = ascend.collect(run)
    first, second = result["devices"]
    assert (first["model"], first["serial"], first["firmware"], first["driver"]) == (
        "Atlas 800T A2", "102345678901", {"npu": "7.3.0.1.231"}, {"version": "24.1.rc2"})
    assert first["pcie"]["bus_id"] == "0000:C1:00.0" and first["board"]["NPU ID"] == "0"
    assert second["unavailable"]["board"] == "npu-smi: no such NPU"
