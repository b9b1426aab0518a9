"""The kernel side of the accelerator stack: loaded driver modules, their signatures, the kernel's
taint flags, and the firmware blobs the drivers load.

A loaded module is compared with its file on disk by srcversion (a checksum of the module's source
that the kernel keeps for the loaded copy in /sys/module/<name>/srcversion): a file replaced after
loading, or a module loaded from somewhere else, shows as a mismatch.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipaudit.checks.stack.hashing import unreadable_reason

# Kernel modules of accelerator drivers, by vendor (module names as in /proc/modules).
STACK_MODULES: dict[str, tuple[str, ...]] = {
    "nvidia": ("nvidia", "nvidia_*", "nv_peer_mem", "gdrdrv"),
    "amd": ("amdgpu", "amdxcp", "amdkfd"),
    "intel": ("i915", "xe", "intel_vpu", "habanalabs"),
    "huawei": ("drv_davinci_*", "drv_devdrv*", "drv_devmm*", "drv_devmng*", "drv_pcie_*", "drv_vascend*",
               "drv_virtmng*", "ascend_*", "ts_agent"),
    "cambricon": ("cambricon_drv", "cambricon*"),
    "moore_threads": ("mtgpu",),
}
# Firmware folders under /lib/firmware of each vendor's accelerators (linux-firmware layout).
FIRMWARE_DIRS: dict[str, tuple[str, ...]] = {
    "nvidia": ("nvidia",), "amd": ("amdgpu",), "intel": ("i915", "xe", "intel/vpu", "habanalabs"),
    "huawei": ("ascend",), "cambricon": ("cambricon",), "moore_threads": ("mthreads",),
}
# Taint bits (Documentation/admin-guide/tainted-kernels.rst).
TAINT_FLAGS: tuple[tuple[int, str, str], ...] = (
    (0, "P", "proprietary module loaded"), (1, "F", "module force-loaded"), (2, "S", "SMP with non-SMP CPU"),
    (3, "R", "module force-unloaded"), (4, "M", "machine check exception"), (5, "B", "bad page referenced"),
    (6, "U", "taint requested by user space"), (7, "D", "kernel died (oops or BUG)"),
    (8, "A", "ACPI table overridden"), (9, "W", "kernel issued a warning"), (10, "C", "staging driver loaded"),
    (11, "I", "firmware bug workaround"), (12, "O", "out-of-tree module loaded"),
    (13, "E", "unsigned module loaded"), (14, "L", "soft lockup"), (15, "K", "kernel live-patched"),
    (16, "X", "auxiliary taint"), (17, "T", "built with struct randomization"), (18, "N", "in-kernel test run"),
)
MODINFO_TIMEOUT_S = 20.0
# modinfo fields that may repeat.
MULTI_FIELDS = {"firmware", "alias", "parm", "depends", "softdep"}
COMPRESSED_SUFFIXES = ("", ".zst", ".xz", ".gz")


@dataclass
class Paths:
    proc: Path = Path("/proc")
    sys: Path = Path("/sys")
    firmware: Path = Path("/lib/firmware")


@dataclass
class Module:
    name: str
    vendor: str  # the vendor, or "dependency" for a module a stack module needs
    state: str = ""
    file: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    loaded: dict[str, str] = field(default_factory=dict)  # from /sys/module/<name>


@dataclass
class KernelView:
    taint: dict[str, Any] | None
    modules: list[Module]
    firmware: list[str]
    notes: list[str]  # what could not be read, and why


def decode_taint(value: int) -> dict[str, Any]:
    flags = [(letter, meaning) for bit, letter, meaning in TAINT_FLAGS if value >> bit & 1]
    return {"value": value, "flags": "".join(f for f, _ in flags), "meaning": [m for _, m in flags]}


def parse_proc_modules(text: str) -> dict[str, dict[str, Any]]:
    """'name size refcount used_by state address' per line; used_by is '-' or 'a,b,'."""
    modules = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5:
            modules[parts[0]] = {"used_by": [m for m in parts[3].split(",") if m and m != "-"],
                                 "state": parts[4]}
    return modules


def stack_modules(loaded: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Accelerator modules, by vendor, and the modules they depend on (found through used_by)."""
    picked = {name: vendor for name in loaded for vendor, patterns in STACK_MODULES.items()
              if any(fnmatch.fnmatchcase(name, p) for p in patterns)}
    grew = True
    while grew:
        grew = False
        for name, info in loaded.items():
            if name not in picked and any(user in picked for user in info["used_by"]):
                picked[name] = "dependency"
                grew = True
    return picked


def parse_modinfo(text: str) -> dict[str, Any]:
    """modinfo prints 'key:   value'; the signature continues on indented lines."""
    info: dict[str, Any] = {}
    last = None
    for line in text.splitlines():
        if line[:1].isspace() and last:
            info[last] = str(info[last]) + line.strip()
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key in MULTI_FIELDS:
            info.setdefault(key, []).append(value)
        else:
            info[key] = value
        last = key if key not in MULTI_FIELDS else None
    return info


Runner = Callable[[list[str]], str]


def _modinfo(args: list[str]) -> str:
    tool = shutil.which("modinfo") or shutil.which("/sbin/modinfo")
    if tool is None:
        raise FileNotFoundError("modinfo is not installed (kmod)")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=MODINFO_TIMEOUT_S,
                          check=True).stdout


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def firmware_search_dirs(paths: Paths) -> list[Path]:
    """The kernel's firmware search order (drivers/base/firmware_loader/main.c: fw_path)."""
    release = os.uname().release
    custom = _read(paths.sys / "module/firmware_class/parameters/path")
    dirs = [Path(custom)] if custom else []
    dirs += [paths.firmware / "updates" / release, paths.firmware / "updates", paths.firmware / release,
             paths.firmware]
    return [d for d in dirs if d.is_dir()]


def _firmware(vendors: set[str], named: list[str], paths: Paths) -> list[str]:
    found: set[str] = set()
    search = firmware_search_dirs(paths)
    for base in search:
        for vendor in vendors:
            for sub in FIRMWARE_DIRS.get(vendor, ()):
                for root, _dirs, files in os.walk(base / sub):
                    found.update(os.path.join(root, f) for f in files)
    for name in named:  # files the drivers say they load, wherever they lie in the search path
        for base in search:
            hit = next((base / (name + s) for s in COMPRESSED_SUFFIXES if (base / (name + s)).is_file()), None)
            if hit is not None:
                found.add(str(hit))
                break
    return sorted(found)


def inspect(paths: Paths | None = None, modinfo: Runner | None = None) -> KernelView:
    paths, modinfo = paths or Paths(), modinfo or _modinfo
    notes: list[str] = []
    taint = None
    try:
        taint = decode_taint(int((paths.proc / "sys/kernel/tainted").read_text().strip()))
    except (OSError, ValueError) as e:
        notes.append(f"kernel taint flags: {paths.proc / 'sys/kernel/tainted'}: "
                     f"{unreadable_reason(e) if isinstance(e, OSError) else e}")
    try:
        loaded = parse_proc_modules((paths.proc / "modules").read_text())
    except OSError as e:
        notes.append(f"kernel modules: {paths.proc / 'modules'}: {unreadable_reason(e)} "
                     "(no loadable-module support visible here, e.g. a container or a VM sandbox)")
        loaded = {}
    modules = []
    for name, vendor in sorted(stack_modules(loaded).items()):
        module = Module(name, vendor, state=loaded[name]["state"])
        for key in ("srcversion", "version", "taint"):
            value = _read(paths.sys / "module" / name / key)
            if value is not None:
                module.loaded[key] = value
        try:
            module.info = parse_modinfo(modinfo([name]))
            filename = module.info.get("filename")
            module.file = filename if filename and filename.startswith("/") else None
        except (OSError, subprocess.SubprocessError) as e:
            notes.append(f"kernel module {name}: modinfo failed: {e}")
        modules.append(module)
    vendors = {m.vendor for m in modules if m.vendor != "dependency"}
    named = [fw for m in modules for fw in m.info.get("firmware", [])]
    return KernelView(taint, modules, _firmware(vendors, named, paths), notes)
