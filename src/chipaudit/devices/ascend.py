"""Huawei Ascend NPUs through `npu-smi`, the management tool of the Ascend driver.

`npu-smi info -l` lists the NPUs; `npu-smi info -t board -i N` prints one "Key : Value" line per
board property (product, serial, firmware and software versions, PCIe address). The text format is
the tool's interface, so the parser keeps every key it finds and maps only the well-known ones onto
the common inventory fields. torch_npu's own view of the devices comes with the stack probe.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

from chipaudit.devices.vendor_reads import Unavailable

NPU_SMI = "npu-smi"
# npu-smi talks to the driver; a wedged driver must not stall the inventory for long.
NPU_SMI_TIMEOUT_S = 20.0
_KEY_VALUE = re.compile(r"^\s*([^:]+?)\s*:\s*(.*?)\s*$")
# Common inventory field -> board keys that carry it, in order of preference.
BOARD_FIELDS = {
    "model": ("Product Name", "Chip Name", "Model"),
    "serial": ("Serial Number",),
    "firmware": ("Firmware Version",),
    "driver": ("Software Version",),
    "bus_id": ("PCIe Bus Info",),
    "device_id": ("PCI Device ID",),
}

Runner = Callable[[list[str]], str]


def key_values(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        match = _KEY_VALUE.match(line)
        if match and match.group(1) not in out:
            out[match.group(1)] = match.group(2)
    return out


def npu_ids(listing: str) -> list[int]:
    return sorted({int(v) for k, v in (m.groups() for m in map(_KEY_VALUE.match, listing.splitlines()) if m)
                   if k == "NPU ID" and v.isdigit()})


def _run(args: list[str]) -> str:
    return subprocess.run([NPU_SMI, *args], capture_output=True, text=True, timeout=NPU_SMI_TIMEOUT_S,
                          check=True).stdout


def collect(run: Runner = _run) -> dict[str, Any]:
    if run is _run and shutil.which(NPU_SMI) is None:
        raise Unavailable("npu-smi is not installed (no Ascend driver on this machine)")
    try:
        ids = npu_ids(run(["info", "-l"]))
    except (OSError, subprocess.SubprocessError) as e:
        raise Unavailable(f"npu-smi info -l failed: {e}") from e
    devices = []
    for npu in ids:
        try:
            board = key_values(run(["info", "-t", "board", "-i", str(npu)]))
        except (OSError, subprocess.SubprocessError) as e:
            devices.append({"index": npu, "vendor": "Huawei", "unavailable": {"board": str(e)}})
            continue
        picked = {field: next((board[k] for k in keys if board.get(k)), None) for field, keys in BOARD_FIELDS.items()}
        devices.append({
            "index": npu, "vendor": "Huawei", "model": picked["model"], "uuid": None, "serial": picked["serial"],
            "firmware": {"npu": picked["firmware"]}, "driver": {"version": picked["driver"]},
            "pcie": {"bus_id": picked["bus_id"], "device_id": picked["device_id"]},
            "board": board, "unavailable": {},
        })
    return {"source": "npu-smi", "driver": {}, "devices": devices, "unavailable": {}}
