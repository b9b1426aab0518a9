"""What `chipaudit inventory` and `chipaudit baseline` do; cli/stack.py only parses options and prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from chipaudit.checks.stack import baseline as baselines
from chipaudit.checks.stack import capabilities, fingerprint
from chipaudit.checks.stack import snapshot as snapshots
from chipaudit.checks.stack.libraries import ProbeError
from chipaudit.devices.inventory import collect_isolated, host
from chipaudit.devices.torchdev import DeviceError, resolve
from chipaudit.report.model import FAILING_SEVERITY, Finding

UNITS = {"GiB": 1 << 30, "MiB": 1 << 20, "KiB": 1 << 10, "B": 0}


def fingerprinted(device: str, include: list[str] | None = None) -> snapshots.Snapshot:
    snap = snapshots.with_inventory(device, include)
    snapshots.scan_capabilities(snap)
    return snap


def inventory_document(device: str, record: Path | None = None) -> dict[str, Any]:
    """The hardware inventory plus the fingerprinted stack of `device` (or why it could not be had)."""
    document = collect_isolated(record=record)
    try:
        snap = snapshots.collect(device, inventory=document)
    except ProbeError as e:
        return {**document, "stack": {"device": device, "error": str(e)}}
    snapshots.scan_capabilities(snap)
    document["torch"] = snap.torch
    document["stack"] = {**snap.summary(), "capabilities": snap.capabilities, "timings_s": snap.timings_s}
    return document


def create_baseline(path: Path, device: str, include: list[str] | None) -> snapshots.Snapshot:
    snap = fingerprinted(device, include)
    baselines.save(path, snap)
    return snap


def load_checked(path: Path, device: str | None = None) -> snapshots.Snapshot:
    """A baseline fit for this machine (and, given one, this device); BaselineError otherwise."""
    trusted = baselines.load(path)
    baselines.check_machine(trusted, host(), path)
    if device is not None:
        baselines.check_device(trusted, device, path)
    return trusted


def compare(path: Path) -> tuple[snapshots.Snapshot, snapshots.Snapshot, list[Finding]]:
    trusted = load_checked(path)
    if trusted.device is None:
        raise baselines.BaselineError(f"baseline {path}: names no device")
    try:
        device = resolve(trusted.device)
    except DeviceError as e:
        raise baselines.BaselineError(f"baseline {path}: device {trusted.device} is not usable now: {e}") from e
    now = fingerprinted(device, trusted.include)
    findings = baselines.diff(trusted, now, fingerprint.CHECKS[0].finding)
    findings += capabilities.gained(trusted, now, capabilities.CHECKS[0].finding)
    return trusted, now, findings


def diff_summary(trusted: snapshots.Snapshot, now: snapshots.Snapshot, findings: list[Finding]) -> str:
    """The line under the differences; it names the new digest, which a fleet compares across nodes."""
    when = f"{trusted.created:%Y-%m-%d %H:%M} UTC"
    if not findings:
        return f"no differences from the baseline of {when}; stack sha256 {now.digest()}"
    return (f"{len(findings)} difference(s) from the baseline of {when} ({len(failing(findings))} of medium "
            f"severity or above); stack sha256 {now.digest()}")


def failing(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity.rank >= FAILING_SEVERITY.rank]


def diff_document(path: Path, now: snapshots.Snapshot, findings: list[Finding]) -> dict[str, Any]:
    return {"baseline": str(path), "stack_sha256": now.digest(),
            "findings": [f.model_dump(mode="json") for f in findings]}


def finding_line(f: Finding) -> str:
    return f"  [{f.severity.value}] {f.check}: {f.title} — {f.detail}"


def _size(n: int | None) -> str:
    if n is None:
        return ""
    unit = next(u for u in ("GiB", "MiB", "KiB", "B") if n >= UNITS[u])
    return f"{n / UNITS[unit]:.1f} {unit}" if unit != "B" else f"{n} B"


def render_inventory(doc: dict[str, Any], console: Console) -> None:
    h, cpu = doc.get("host", {}), doc.get("cpu", {})
    console.print(f"host: {h.get('hostname')}  kernel {h.get('kernel')}  machine-id {h.get('machine_id')}",
                  markup=False)
    flags = len(cpu.get("flags", []))
    console.print(f"cpu: {cpu.get('model')}  {cpu.get('cores')} cores / {cpu.get('logical_cpus')} threads, "
                  f"{cpu.get('sockets')} socket(s), microcode {cpu.get('microcode')}, {flags} flags", markup=False)
    table = Table("source", "#", "model", "uuid / serial", "firmware", "driver", "PCIe", "memory", "power cap",
                  "ECC", "throttle", title="accelerators")
    if not doc.get("accelerators"):
        console.print("accelerators: none reported by a vendor library", markup=False)
    for d in doc.get("accelerators", []):
        pcie = d.get("pcie") or {}
        gen, width = (pcie.get("generation") or {}).get("current"), (pcie.get("width") or {}).get("current")
        firmware, ecc = d.get("firmware") or {}, (d.get("ecc") or {}).get("mode") or {}
        table.add_row(
            d.get("source"), str(d.get("index")), str(d.get("model")), str(d.get("uuid") or d.get("serial")),
            str(firmware.get("vbios") or next(iter(firmware.values()), "")),
            str((d.get("driver") or {}).get("version")), f"gen{gen} x{width}" if gen else "",
            _size((d.get("memory") or {}).get("total_bytes")), str((d.get("power_w") or {}).get("limit") or ""),
            str(ecc.get("current")), ", ".join(d.get("throttle_reasons") or []))
    if doc.get("accelerators"):
        console.print(table)
    for p in doc.get("pci", []):
        console.print(f"pci {p['bus_id']}: {p['vendor']} {p['device_id']} ({p['class']}), driver {p['driver']}",
                      markup=False)
    for name, source in doc.get("sources", {}).items():
        state = f"{source.get('devices')} device(s)" if source.get("available") else \
            f"not available: {source.get('reason')}"
        console.print(f"{name}: {state}", markup=False)
    if doc.get("error"):
        console.print(f"vendor libraries: {doc['error']}", markup=False)
    for d in (doc.get("torch") or {}).get("devices", []):
        console.print(f"torch device {d['spec']}: {d['name']} ({_size(d.get('memory_bytes'))})", markup=False)
    stack = doc.get("stack", {})
    if stack.get("error"):
        console.print(f"stack of {stack.get('device')}: not fingerprinted: {stack['error']}", markup=False)
        return
    console.print(f"stack of {stack.get('device')}: kind, role or version, sha256, size, name", markup=False)
    for item in stack.get("items", []):
        digest = (item["sha256"] or "")[:16] or f"not fingerprinted: {item.get('reason')}"
        console.print(f"  {item['kind']:<14} {item.get('role') or item.get('version') or '':<12} {digest:<16} "
                      f"{_size(item['size']):>10}  {item['name']}", markup=False, highlight=False, soft_wrap=True)
    for note in stack.get("notes", []):
        console.print(f"not observed: {note}", markup=False)
    console.print(f"stack sha256: {stack.get('stack_sha256')}  ({stack.get('timings_s', {}).get('total')} s)",
                  markup=False)
