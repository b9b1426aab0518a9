"""The user-space libraries the device's computation maps, read from /proc/<pid>/maps of a probe
process that has just done device work (devices/probe.py).

The maps are read by the parent, not reported by the probe, and they list every file the process
has mapped: the driver (libcuda, libamdhip64, libascendcl, ...), the math libraries (cuBLAS, cuDNN,
rocBLAS, MKL, OpenBLAS, libgomp, ...), torch itself, and the C runtime. A mapping of a deleted file
or of an anonymous memory file (memfd) is code that no file on disk accounts for.
"""

from __future__ import annotations

import fnmatch
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipaudit.devices.probe import READY
from chipaudit.process.child import STARTUP_TIMEOUT_S, Child, Wrapper

ELF_MAGIC = b"\x7fELF"  # elf(5)
DELETED = " (deleted)"  # what proc(5) appends to the path of a mapped file that was unlinked
# After its answer the probe only tears down, once released; a dead probe's last line says why.
PROBE_EXIT_GRACE_S = 10.0
LOG_TAIL_BYTES = 600
REASON_CHARS = 300
PROBE = (sys.executable, "-m", "chipaudit.devices.probe")
# What each library is, for reviewers (file-name patterns; the first match wins).
ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("driver", ("libcuda.so*", "libnvidia-*", "libnvcuvid*", "libhsa-runtime*", "libhsakmt*", "libamd_comgr*",
                "libdrm*", "libascendcl*", "libascend_hal*", "libruntime*.so*", "libcndrv*", "libcnrt*",
                "libmusa.so*", "libze_*", "libigdrcl*", "libnvrtc*", "libOpenCL*")),
    ("math", ("libcublas*", "libcudnn*", "libcufft*", "libcurand*", "libcusolver*", "libcusparse*",
              "libnccl*", "libnvJitLink*", "librccl*", "librocblas*", "libhipblas*", "libMIOpen*", "librocfft*",
              "librocsolver*", "libmkl*", "libopenblas*", "libscipy_openblas*", "libgomp*", "libiomp*",
              "libdnnl*", "libhccl*", "libopapi*", "libcnnl*", "libmudnn*", "libmublas*", "libgfortran*",
              "libquadmath*")),
    ("runtime", ("libcudart*", "libamdhip64*", "libhiprtc*", "libcupti*")),
    ("framework", ("libtorch*", "libc10*", "libshm*", "_C.*.so", "libtorch_npu*")),
    ("system", ("libc.so*", "libm.so*", "libstdc++*", "libgcc_s*", "ld-linux*", "libpthread*", "libdl.so*",
                "librt.so*", "libresolv*")),
    ("python", ("python3*", "libpython*", "*.cpython-*.so", "*.abi3.so")),
)
SYSTEM_DIRS = ("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/")


class ProbeError(RuntimeError):
    """The probe could not do device work; the message says why, in one line."""


@dataclass
class Mapping:
    path: str
    executable: bool
    deleted: bool = False


@dataclass
class Probe:
    maps: list[Mapping]
    torch: dict[str, Any] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)


def role(path: str) -> str:
    name = os.path.basename(path)
    named = next((r for r, patterns in ROLES if any(fnmatch.fnmatchcase(name, p) for p in patterns)), None)
    return named or ("system" if path.startswith(SYSTEM_DIRS) else "other")


def parse_maps(text: str) -> list[Mapping]:
    """File-backed mappings, one per file, executable if any of its mappings is."""
    by_path: dict[str, Mapping] = {}
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or not (parts[5].startswith("/") or parts[5].startswith("memfd:")):
            continue
        path, deleted = parts[5], parts[5].endswith(DELETED)
        if deleted:
            path = path[: -len(DELETED)]
        mapping = by_path.setdefault(path, Mapping(path, False, deleted))
        mapping.executable |= "x" in parts[1]
    return list(by_path.values())


def is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


class ProbeProcess:
    """The probe, started at once so that the caller can hash other things while it imports torch and
    initialises the device; `result()` then waits for its device work and reads its maps."""

    def __init__(self, device: str, timeout_s: float = STARTUP_TIMEOUT_S, wrappers: Sequence[Wrapper] = ()) -> None:
        self.device, self.timeout_s = device, timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.child = Child(PROBE, wrappers)
        self.child.send({"device": device})  # a probe that died at once is seen by result()

    def result(self) -> Probe:
        message = self.child.receive(max(0.0, self.deadline - time.monotonic()))
        if message is None:
            raise ProbeError(self._why())
        if message.get("status") != READY:
            raise ProbeError(f"the probe could not use {self.device}: {message.get('error')}")
        # The probe's own pid as this process numbers it: a wrapper may stand between them, and in a
        # container of its own the probe is PID 1 by its own word.
        maps = Path(f"/proc/{self.child.innermost()}/maps").read_text()
        self.child.close_input()
        self.child.stop(grace_s=PROBE_EXIT_GRACE_S)
        return Probe(parse_maps(maps), message.get("torch", {}), message.get("refused", []))

    def _why(self) -> str:
        if not self.child.eof:
            return f"the probe did no device work within {self.timeout_s:.0f} s"
        status = self.child.wait(PROBE_EXIT_GRACE_S)
        line = self.child.last_line(LOG_TAIL_BYTES)[:REASON_CHARS]
        return f"the probe died (exit status {status})" + (f": {line}" if line else "")

    def close(self) -> None:
        self.child.stop()
        self.child.close()

    def __enter__(self) -> ProbeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_probe(device: str, timeout_s: float = STARTUP_TIMEOUT_S) -> Probe:
    """Start the probe, wait for its device work, read its maps, let it go."""
    with ProbeProcess(device, timeout_s) as probe:
        return probe.result()
