"""The host CPU, from /proc/cpuinfo: it runs the oracle, and on a CPU audit it is the device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """x86 lists 'model name', 'flags' and 'microcode' per logical CPU; Arm lists 'Features' and the
    implementer and part numbers instead. Both come out in the same shape."""
    blocks = [dict(_fields(block)) for block in text.split("\n\n") if block.strip()]
    processors = [b for b in blocks if "processor" in b]
    first = processors[0] if processors else (blocks[0] if blocks else {})
    shared = {k: v for b in blocks if "processor" not in b for k, v in b.items()}  # Arm: trailing 'Hardware'
    cores = {(b.get("physical id"), b.get("core id")) for b in processors if "core id" in b}
    sockets = {b.get("physical id") for b in processors if "physical id" in b}
    flags = (first.get("flags") or first.get("Features") or "").split()
    model = first.get("model name") or shared.get("Hardware") or (
        f"implementer {first['CPU implementer']} part {first['CPU part']}" if "CPU part" in first else "")
    return {
        "type": "cpu",
        "vendor": first.get("vendor_id") or (f"implementer {first['CPU implementer']}"
                                             if "CPU implementer" in first else ""),
        "model": model,
        "family": first.get("cpu family"),
        "model_number": first.get("model"),
        "stepping": first.get("stepping") or first.get("CPU revision"),
        "microcode": first.get("microcode"),
        "logical_cpus": len(processors),
        "cores": len(cores) or len(processors),
        "sockets": len(sockets) or 1,
        "flags": sorted(flags),
        "bugs": sorted((first.get("bugs") or "").split()),
    }


def _fields(block: str) -> list[tuple[str, str]]:
    pairs = []
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            pairs.append((key.strip(), value.strip()))
    return pairs


def read(path: Path = CPUINFO) -> dict[str, Any]:
    try:
        return parse_cpuinfo(path.read_text())
    except OSError as e:
        return {"type": "cpu", "unavailable": {"cpuinfo": f"{path}: {e.strerror}"}}
