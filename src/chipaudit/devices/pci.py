"""Accelerators as the PCI bus sees them (sysfs), whatever vendor library is or is not installed.

A device that no management library reports is still listed here, with the kernel driver bound to
it and its PCIe link, so that "every accelerator present" does not depend on the vendor's tools.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PCI_DEVICES = Path("/sys/bus/pci/devices")
# PCI class codes (PCI Code and ID Assignment Specification): 3D controller, processing
# accelerator, co-processor are accelerators whoever makes them; display controllers only when made
# by a vendor of compute accelerators (a server's BMC also has a VGA device).
ACCELERATOR_CLASSES = {0x0302: "3D controller", 0x1200: "processing accelerator", 0x0B40: "co-processor"}
DISPLAY_CLASSES = {0x0300: "VGA controller", 0x0380: "display controller"}
# PCI vendor ids (pci-ids.ucw.cz) of accelerator makers.
VENDORS = {
    0x10DE: "NVIDIA", 0x1002: "AMD", 0x8086: "Intel", 0x19E5: "Huawei", 0xCABC: "Cambricon",
    0x1ED5: "Moore Threads", 0x1E3E: "Iluvatar CoreX", 0x1E36: "Enflame", 0x1D94: "Hygon",
    0x1DA3: "Habana Labs", 0x1EE0: "Biren", 0x9999: "MetaX",
}
# PCIe signalling rate per lane -> generation (PCI Express Base Specification).
GENERATION_BY_GT_S = {2.5: 1, 5.0: 2, 8.0: 3, 16.0: 4, 32.0: 5, 64.0: 6, 128.0: 7}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text, 0) if text is not None else None
    except ValueError:
        return None


def _generation(speed: str | None) -> int | None:
    """'32.0 GT/s PCIe' -> 5."""
    try:
        return GENERATION_BY_GT_S.get(float(speed.split()[0])) if speed else None
    except ValueError:
        return None


def scan(root: Path = PCI_DEVICES) -> list[dict[str, Any]]:
    found = []
    for dev in sorted(root.iterdir()) if root.is_dir() else []:
        pci_class, vendor = _int(_read(dev / "class")), _int(_read(dev / "vendor"))
        if pci_class is None or vendor is None:
            continue
        kind = ACCELERATOR_CLASSES.get(pci_class >> 8)
        if kind is None and vendor in VENDORS:
            kind = DISPLAY_CLASSES.get(pci_class >> 8)
        if kind is None:
            continue
        driver = dev / "driver"
        speed, max_speed = _read(dev / "current_link_speed"), _read(dev / "max_link_speed")
        found.append({
            "bus_id": dev.name,
            "class": kind,
            "vendor": VENDORS.get(vendor, f"0x{vendor:04x}"),
            "vendor_id": f"0x{vendor:04x}",
            "device_id": _read(dev / "device"),
            "subsystem_vendor_id": _read(dev / "subsystem_vendor"),
            "subsystem_device_id": _read(dev / "subsystem_device"),
            "revision": _read(dev / "revision"),
            "driver": driver.resolve().name if driver.exists() else None,
            "numa_node": _int(_read(dev / "numa_node")),
            "pcie": {
                "speed": {"current": speed, "max": max_speed},
                "generation": {"current": _generation(speed), "max": _generation(max_speed)},
                "width": {"current": _int(_read(dev / "current_link_width")),
                          "max": _int(_read(dev / "max_link_width"))},
            },
        })
    return found
