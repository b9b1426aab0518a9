"""The hardware inventory: the host, its CPU, and every accelerator present, by every source there is.

Sources are the vendors' management libraries (NVML, amdsmi, npu-smi), each used only when present,
and the PCI bus, which needs none of them. An absent library is recorded as "not available" with the
reason. Vendor libraries run in a child process under a time limit (`collect_isolated`): a driver
that hangs or crashes in its management library costs the inventory, never the audit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import chipaudit
from chipaudit.devices import amd, ascend, cpu, nvml, pci
from chipaudit.devices.vendor_reads import LiveReader, Reader, RecordingReader, Unavailable
from chipaudit.report.model import write_atomic

SCHEMA = "chipaudit.inventory/1"
# NVML and amdsmi initialise every device; on an 8-GPU node with persistence mode off that takes
# tens of seconds. Past this the vendor library is taken to be hung.
INVENTORY_TIMEOUT_S = 120.0
MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


def host() -> dict[str, Any]:
    machine_id = None
    for path in MACHINE_ID_FILES:
        with contextlib.suppress(OSError):
            machine_id = path.read_text().strip() or None
        if machine_id:
            break
    return {"hostname": socket.gethostname(), "machine_id": machine_id, "kernel": platform.release(),
            "os": platform.platform(), "architecture": platform.machine()}


Source = Callable[[Path | None], dict[str, Any]]


def _live(open_live: Callable[[], LiveReader], collect: Callable[[Reader], dict[str, Any]],
          record: Path | None) -> dict[str, Any]:
    """Read a vendor library; with `record`, also keep every answer in <record>/<source>.json, a
    recording that devices.vendor_reads.ReplayReader gives back (for fixtures and bug reports)."""
    reader = open_live()
    try:
        if record is None:
            return collect(reader)
        recorder = RecordingReader(reader, f"recorded by chipaudit {chipaudit.__version__} on "
                                           f"{socket.gethostname()} at {datetime.now(timezone.utc).isoformat()}")
        result = collect(recorder)
        write_atomic(record / f"{reader.source}.json", json.dumps(recorder.recording(), indent=1) + "\n")
        return result
    finally:
        with contextlib.suppress(Exception):
            reader.close()


VENDOR_SOURCES: dict[str, Source] = {
    "nvml": lambda record: _live(nvml.open_live, nvml.collect, record),
    "amdsmi": lambda record: _live(amd.open_live, amd.collect, record),
    "npu-smi": lambda record: ascend.collect(),
}


def collect(sources: dict[str, Source] = VENDOR_SOURCES, record: Path | None = None) -> dict[str, Any]:
    availability: dict[str, Any] = {}
    accelerators: list[dict[str, Any]] = []
    for name, source in sources.items():
        try:
            result = source(record)
        except Unavailable as e:
            availability[name] = {"available": False, "reason": str(e)}
            continue
        except Exception as e:  # a broken vendor library is reported, not propagated
            availability[name] = {"available": False, "reason": f"{type(e).__name__}: {e}"[:500]}
            continue
        availability[name] = {"available": True, "devices": len(result["devices"]), "driver": result["driver"],
                              "unavailable": result["unavailable"]}
        accelerators.extend({"source": name, **device} for device in result["devices"])
    return {"schema": SCHEMA, "collected": datetime.now(timezone.utc).isoformat(), "host": host(),
            "cpu": cpu.read(), "accelerators": accelerators, "pci": pci.scan(), "sources": availability}


def _failed(reason: str) -> dict[str, Any]:
    return {"schema": SCHEMA, "collected": datetime.now(timezone.utc).isoformat(), "host": host(),
            "cpu": cpu.read(), "accelerators": [], "pci": pci.scan(), "sources": {}, "error": reason}


def collect_isolated(timeout_s: float = INVENTORY_TIMEOUT_S, record: Path | None = None) -> dict[str, Any]:
    args = [sys.executable, "-m", "chipaudit.devices.inventory", *(["--record", str(record)] if record else [])]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return _failed(f"the vendor libraries did not answer within {timeout_s:.0f} s")
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [""])[-1]
        return _failed(f"the inventory process failed (exit status {proc.returncode}): {tail}"[:500])
    try:
        return json.loads(proc.stdout)
    except ValueError as e:
        return _failed(f"the inventory process wrote no inventory: {e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chipaudit.devices.inventory")
    parser.add_argument("--record", type=Path, help="folder to keep the vendor libraries' answers in")
    args = parser.parse_args(argv)
    json.dump(collect(record=args.record), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
