"""The stack snapshot: SHA-256 of everything a device's computation depends on, in one record.

- the libraries a probe process maps after device work (libraries.py);
- the accelerator kernel modules, with signer and srcversion, and the kernel's taint flags, and the
  firmware blobs of the loaded drivers (kernel.py);
- the Python distributions of the device stack, file by file (packages.py);
- the OS package manager's verdict on the packages owning those files (packages.py);
- any further trees the user names (`--include`), e.g. a vendor SDK folder;
- the firmware and driver versions the vendor libraries report for each device (the inventory);
- optionally, the capability scan of every ELF file among them (elf.py).

A file that cannot be read is kept as an item without a digest, with the reason.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import chipaudit
from chipaudit.checks.stack import elf, kernel, libraries, packages
from chipaudit.checks.stack.hashing import Digest, Hasher

SNAPSHOT_SCHEMA = "chipaudit.stack/1"
ItemKind = Literal["library", "kernel_module", "firmware", "file", "python_package"]
# Kinds whose content is code or firmware that the device's computation runs.
CODE_KINDS = frozenset({"library", "kernel_module", "firmware", "file"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Item(_Model):
    kind: ItemKind
    name: str
    path: str
    sha256: str | None = None
    size: int | None = None
    reason: str | None = Field(default=None, description="Why there is no digest: the file could not be read.")
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name if self.kind == 'python_package' else self.path}"


class OsPackage(_Model):
    manager: str
    package: str
    version: str
    files: list[str]
    problems: list[dict[str, Any]]


class Snapshot(_Model):
    schema_: str = Field(default=SNAPSHOT_SCHEMA, alias="schema")
    created: datetime
    tool_version: str
    device: str | None
    host: dict[str, Any]
    torch: dict[str, Any] = Field(default_factory=dict)
    kernel_taint: dict[str, Any] | None = None
    accelerators: list[dict[str, Any]] = Field(default_factory=list)
    items: list[Item] = Field(default_factory=list)
    package_files: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Python distribution -> file -> SHA-256 ('' when unreadable).")
    os_packages: list[OsPackage] = Field(default_factory=list)
    capabilities: dict[str, dict[str, list[str]]] | None = Field(
        default=None, description="ELF file -> capability -> the imports that grant it; None when not scanned.")
    include: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="What could not be observed at all, and why.")
    timings_s: dict[str, float] = Field(default_factory=dict)

    def digest(self) -> str:
        """One SHA-256 for the whole stack: over every item's key and digest."""
        lines = "".join(f"{i.key}\0{i.sha256 or '-'}\n" for i in sorted(self.items, key=lambda i: i.key))
        return hashlib.sha256(lines.encode()).hexdigest()

    def not_fingerprinted(self) -> list[dict[str, str]]:
        """Every file that could not be hashed, with the reason: items, and files of Python packages."""
        unread = [{"path": i.path, "reason": i.reason} for i in self.items if i.reason]
        for item in self.items:
            site = os.path.dirname(item.path)
            unread += [{"path": os.path.join(site, rel), "reason": why}
                       for rel, why in item.details.get("unreadable", {}).items()]
        return unread

    def summary(self) -> dict[str, Any]:
        """What a report carries: every digest but the per-file ones of Python distributions."""
        return {
            "stack_sha256": self.digest(),
            "device": self.device,
            "kernel_taint": self.kernel_taint,
            "items": [{"kind": i.kind, "name": i.name, "path": i.path, "sha256": i.sha256, "size": i.size,
                       **({"reason": i.reason} if i.reason else {}),
                       **{k: i.details[k] for k in ("role", "version", "files", "package") if k in i.details}}
                      for i in self.items],
            "os_packages": [{"manager": p.manager, "package": p.package, "version": p.version,
                             "verified": not p.problems} for p in self.os_packages],
            "notes": self.notes,
        }


def accelerator_firmware(inventory: dict[str, Any]) -> list[dict[str, Any]]:
    """Per device: who it is, and the firmware and driver versions its vendor library reports."""
    return [{"key": d.get("uuid") or d.get("serial") or (d.get("pcie") or {}).get("bus_id") or str(d.get("index")),
             "source": d.get("source"), "model": d.get("model"), "firmware": d.get("firmware") or {},
             "driver": d.get("driver") or {}} for d in inventory.get("accelerators", [])]


def _walk(paths: list[str]) -> list[str]:
    files: list[str] = []
    for top in paths:
        if os.path.isfile(top):
            files.append(os.path.abspath(top))
        for root, _dirs, names in os.walk(top):
            files.extend(os.path.join(root, n) for n in names)
    return sorted(set(files))


def _module_item(module: kernel.Module, hasher: Hasher) -> Item:
    info = module.info
    details = {"vendor": module.vendor, "state": module.state, "loaded": module.loaded,
               **{k: info[k] for k in ("version", "srcversion", "vermagic", "signer", "sig_key", "sig_hashalgo",
                                        "sig_id", "license") if k in info}}
    if module.file is None:
        return Item(kind="kernel_module", name=module.name, path=f"(module {module.name})", details=details,
                    reason="modinfo did not give the module's file" if info else "modinfo failed")
    return _file_item("kernel_module", module.file, hasher.one(module.file), name=module.name, **details)


def _package_item(package: packages.PythonPackage) -> Item:
    return Item(kind="python_package", name=package.name, path=package.location, sha256=package.digest,
                details={"version": package.version, "files": len(package.files),
                         "record_mismatches": package.record_mismatches, "unrecorded": package.unrecorded,
                         "unreadable": package.unreadable})


def _file_item(kind: ItemKind, path: str, digest: Digest, name: str | None = None, **details: Any) -> Item:
    return Item(kind=kind, name=name or os.path.basename(path), path=path, sha256=digest.sha256, size=digest.size,
                reason=digest.reason, details=details)


def collect(device: str | None, include: list[str] | None = None, inventory: dict[str, Any] | None = None,
            kernel_paths: kernel.Paths | None = None) -> Snapshot:
    """Fingerprint the stack of `device` (None: no probe, only the kernel side, Python and `include`)."""
    from chipaudit.devices.inventory import host

    started = time.perf_counter()
    timings: dict[str, float] = {}
    hasher = Hasher()
    include = [os.path.abspath(p) for p in include or []]
    snapshot = Snapshot(created=datetime.now(timezone.utc), tool_version=chipaudit.__version__, device=device,
                        host=host(), include=include)
    probe_process = libraries.ProbeProcess(device) if device is not None else None
    try:
        # While the probe imports torch and initialises the device, hash what does not depend on it.
        python = {p.name: p for p in (packages.fingerprint_distribution(d, hasher)
                                      for d in packages.stack_distributions())}
        timings["python_packages"] = time.perf_counter() - started
        t = time.perf_counter()
        view = kernel.inspect(kernel_paths)
        snapshot.items += [_module_item(m, hasher) for m in view.modules]
        files = _walk(include)
        digests = hasher.many(view.firmware + files)
        snapshot.items += [_file_item("firmware", p, digests[p]) for p in view.firmware]
        snapshot.items += [_file_item("file", p, digests[p]) for p in files]
        timings["kernel_included"] = time.perf_counter() - t
        t = time.perf_counter()
        probe = probe_process.result() if probe_process is not None else None
        timings["probe_wait"] = time.perf_counter() - t
    finally:
        if probe_process is not None:
            probe_process.close()
    snapshot.kernel_taint, snapshot.notes = view.taint, list(view.notes)

    t = time.perf_counter()
    mapped: list[libraries.Mapping] = []
    if probe is not None:
        snapshot.torch = {**probe.torch, "refused": probe.refused}
        # Code: ELF files, and executable mappings of deleted or anonymous files (data such as shared
        # memory in /dev/shm is mapped deleted too, but not executable).
        mapped = [m for m in probe.maps if libraries.is_elf(m.path)
                  or (m.executable and (m.deleted or m.path.startswith("memfd:")))]
    code = [m.path for m in mapped if not m.deleted and not m.path.startswith("memfd:")]
    digests = hasher.many(code)
    owning = packages.owners(code + files)
    owner = {p: packages.name_of(d) for p, d in owning.items()}
    for m in mapped:
        details = {"role": libraries.role(m.path), "executable": m.executable,
                   **({"package": owner[m.path]} if m.path in owner else {})}
        if m.path in digests:
            snapshot.items.append(_file_item("library", m.path, digests[m.path], **details))
        else:
            why = "mapped from a deleted file" if m.deleted else "mapped from an anonymous memory file"
            snapshot.items.append(Item(kind="library", name=os.path.basename(m.path), path=m.path, reason=why,
                                       details={**details, "deleted": m.deleted}))
    # The package manager verifies the system files in its own processes while the distributions
    # owning mapped files are hashed here.
    system_files = [i.path for i in snapshot.items if i.kind in CODE_KINDS and i.sha256 and i.path not in owner]
    with ThreadPoolExecutor(1) as pool:
        verifying = pool.submit(packages.os_package_verdicts, system_files)
        for path, dist in sorted(owning.items()):
            if owner[path] not in python:
                python[owner[path]] = packages.fingerprint_distribution(dist, hasher)
        for package in python.values():
            snapshot.package_files[package.name] = package.files
            snapshot.items.append(_package_item(package))
        timings["libraries"] = time.perf_counter() - t
        t = time.perf_counter()
        verdicts, why_not = verifying.result()
    snapshot.os_packages = [OsPackage(manager=v.manager, package=v.package, version=v.version, files=v.files,
                                      problems=v.problems) for v in verdicts]
    if why_not:
        snapshot.notes.append(why_not)
    timings["os_packages"] = time.perf_counter() - t

    if inventory is not None:
        snapshot.accelerators = accelerator_firmware(inventory)
    snapshot.items.sort(key=lambda i: (i.kind, i.path))
    timings["total"] = time.perf_counter() - started
    snapshot.timings_s = {k: round(v, 3) for k, v in timings.items()}
    return snapshot


def scan_capabilities(snapshot: Snapshot) -> dict[str, elf.ElfScan]:
    """Scan every ELF item of the snapshot, and keep the result in it."""
    scans = {}
    for item in snapshot.items:
        if item.sha256 and (item.kind == "kernel_module" or (item.kind in ("library", "file")
                                                              and libraries.is_elf(item.path))):
            scans[item.path] = elf.scan(item.path)
    snapshot.capabilities = {path: s.capabilities for path, s in scans.items() if s.error is None}
    return scans


def with_inventory(device: str | None, include: list[str] | None = None) -> Snapshot:
    """`collect`, with the vendor libraries' inventory (their own process, devices/inventory.py) taken
    meanwhile rather than before."""
    from chipaudit.devices.inventory import collect_isolated

    with ThreadPoolExecutor(1) as pool:
        inventory = pool.submit(collect_isolated)
        snapshot = collect(device, include)
        snapshot.accelerators = accelerator_firmware(inventory.result())
    return snapshot


_CACHE: dict[tuple[str | None, tuple[str, ...]], Snapshot] = {}


def cached(device: str | None, include: list[str] | None = None) -> Snapshot:
    """One snapshot per worker process: the fingerprint and capability checks share it. A worker
    lives for one audit's checks; a long-lived process (the watch) compares in a fresh worker each
    time, so drift is never hidden behind this cache."""
    key = (device, tuple(include or []))
    if key not in _CACHE:
        _CACHE[key] = with_inventory(device, include)
    return _CACHE[key]
