"""Who holds an accelerator's device files open, and which accelerator daemons run, with their sockets.

Read from /proc: every process's open descriptors, matched against the device-file patterns of the
audited device type, and every process whose name is a known accelerator daemon. Other users'
processes can be inspected only with privilege; how many could not be is counted and reported.

Cannot see: processes in other PID namespaces (other containers) unless this one is the host's;
use of the device through a daemon that holds it on another's behalf (the daemon itself is seen).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
from dataclasses import dataclass, field
from typing import Any

import psutil

# Device nodes by PyTorch device type (driver documentation of each vendor). ROCm builds of torch
# call AMD GPUs "cuda"; /dev/accel is the kernel's generic compute-accelerator class.
DEVICE_FILES: dict[str, tuple[str, ...]] = {
    "cuda": ("/dev/nvidia*", "/dev/nvidia-caps/*", "/dev/kfd", "/dev/dri/*", "/dev/accel/*"),
    "npu": ("/dev/davinci*", "/dev/devmm_svm", "/dev/hisi_hdc", "/dev/accel/*"),
    "mlu": ("/dev/cambricon*", "/dev/mlu*"),
    "musa": ("/dev/mtgpu*", "/dev/musa*", "/dev/dri/*"),
    "xpu": ("/dev/dri/*", "/dev/accel/*"),
}
# Accelerator management and telemetry daemons, whether or not they hold a device file right now.
DAEMONS = (
    "nvidia-persistenced", "nv-fabricmanager", "nv-hostengine", "dcgm-exporter", "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server", "amd-smi", "rocm-smi", "gpuagent", "dmp_daemon", "slogd", "sklogd", "npu-smi",
    "cnmon", "mthreads-gmi", "xpu-smi", "xpumd",
)


@dataclass
class Holder:
    pid: int
    name: str
    exe: str
    user: str
    cmdline: str
    files: list[str] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)
    daemon: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in ("", [], False)}


@dataclass
class Scan:
    holders: list[Holder] = field(default_factory=list)
    inspected: int = 0
    denied: int = 0  # processes whose descriptors could not be read (another user's, without privilege)


def _sockets(proc: psutil.Process) -> list[str]:
    out = []
    with contextlib.suppress(psutil.Error):
        for c in proc.net_connections(kind="all"):
            where = c.laddr if not c.raddr else c.raddr
            text = f"{where[0]}:{where[1]}" if isinstance(where, tuple) and where else str(where or "(unnamed)")
            out.append(f"{c.status or 'socket'} {text}".strip())
    return sorted(set(out))


def scan(patterns: tuple[str, ...], exclude: set[int], daemons: tuple[str, ...] = DAEMONS) -> Scan:
    result = Scan()
    for proc in psutil.process_iter(["pid", "name", "exe", "username", "cmdline"]):
        if proc.pid in exclude:
            continue
        result.inspected += 1
        info = proc.info
        files: list[str] = []
        try:
            for fd in os.listdir(f"/proc/{proc.pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{proc.pid}/fd/{fd}")
                    if any(fnmatch.fnmatchcase(target, p) for p in patterns):
                        files.append(target)
        except PermissionError:
            result.denied += 1
        except OSError:
            continue
        daemon = (info.get("name") or "") in daemons
        if files or daemon:
            result.holders.append(Holder(
                proc.pid, info.get("name") or "", info.get("exe") or "", info.get("username") or "",
                " ".join(info.get("cmdline") or [])[:300], sorted(set(files)), _sockets(proc), daemon))
    return result


def own_processes() -> set[int]:
    """This process (the audit's worker), its parent (the audit's command line) and its descendants."""
    me = psutil.Process()
    pids = {me.pid, me.ppid()}
    with contextlib.suppress(psutil.Error):
        pids |= {p.pid for p in me.children(recursive=True)}
    return pids
