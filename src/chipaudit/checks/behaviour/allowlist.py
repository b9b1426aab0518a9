"""What an honest device stack is known to do that would otherwise be a behaviour finding.

Allowed events are still reported (at severity info), never hidden: the list only decides what fails
an audit. The defaults hold vendors' documented caches and logs, their management daemons, and what
a vendor runtime was seen doing in every process on real hardware (each entry names its source). An
operator extends them with a JSON file named by the audit parameter `behaviour_allowlist` or the
environment variable CHIPAUDIT_BEHAVIOUR_ALLOWLIST:

    {"file_writes": ["~/.cache/myvendor/**"], "programs": ["/usr/bin/ldconfig"],
     "local_sockets": ["@myvendor-ipc-*"], "destinations": ["10.0.0.5:443", "[fd00::*]:*"],
     "device_holders": [{"name": "my-scheduler-agent", "exe": "/opt/agent/bin/*"}]}

Globs follow fnmatch (`*` also matches '/'); `~` is the workload user's home. Destinations are
internet addresses as the sensors write them, 'host:port' and '[host]:port'; none is allowed by
default, since a device stack has no documented business with any (an operator whose jobs do, under
`chipaudit watch`, names their services).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipaudit.errors import InputError
from chipaudit.process import child

ENV = "CHIPAUDIT_BEHAVIOUR_ALLOWLIST"
PARAM = "behaviour_allowlist"

DEFAULT_FILE_WRITES = (
    "~/.nv/ComputeCache/*",  # CUDA driver's PTX JIT cache (CUDA_CACHE_PATH)
    "~/.cache/torch/kernels/*",  # PyTorch's NVRTC kernel cache
    "~/.triton/*",  # Triton's kernel cache
    "~/.cache/miopen/*", "~/.config/miopen/*",  # ROCm MIOpen kernel cache and user performance db
    "~/ascend/log/*",  # Huawei CANN's default plog directory
    # A thread's name: glibc's pthread_setname_np writes /proc/self/task/<tid>/comm, which strace
    # shows resolved to the pid. PyTorch and libcuda name their threads; nothing leaves the process.
    "/proc/*/task/*/comm", "/proc/thread-self/comm",
    # libcuda, run as root, makes the device nodes it needs, as nvidia-modprobe does: the MIG capability
    # nodes under /dev/nvidia-caps and the /dev/char/<major>:<minor> links to them and to nvidiactl.
    # Also its check for a profiler's injection path. Every workload process tried each of these on an
    # NVIDIA H200, driver 580.159.04 (docs/validation/nvidia-h200-2026-11-30).
    "/dev/nvidia-caps", "/dev/nvidia-caps/*", "/dev/char/*", "/dev/shm/cuda_injection_path_shm",
)
DEFAULT_PROGRAMS: tuple[str, ...] = ()
# UNIX sockets (paths, or abstract names written with a leading '@') that driver libraries make for
# themselves. They never leave the machine: an AF_UNIX socket reaches only processes on it, and an
# abstract name only those in the same network namespace.
DEFAULT_LOCAL_SOCKETS = (
    # libcuda listens on "cuda-uvmfd-<namespace inode>-<pid>" (the PID namespace's inode, as seen) to
    # hand its unified-memory file descriptor to peer processes (CUDA IPC). Seen on an NVIDIA H200,
    # driver 580.159.04, in every workload process (docs/validation/nvidia-h200-2026-11-27).
    "@cuda-uvmfd-*",
    # The CUDA runtime looks for an MPS control daemon at $CUDA_MPS_PIPE_DIRECTORY/control, by default
    # under /tmp/nvidia-mps; seen in every workload process on the same H200.
    "/tmp/nvidia-mps/*",
)
# Vendor management daemons and the display stack, which hold accelerator device files on honest
# machines. Matching is by process name and, where given, executable path.
DEFAULT_DEVICE_HOLDERS: tuple[dict[str, str], ...] = (
    {"name": "nvidia-persistenced"}, {"name": "nv-fabricmanager"}, {"name": "nv-hostengine"},
    {"name": "Xorg"}, {"name": "Xwayland"}, {"name": "gnome-shell"}, {"name": "kwin_wayland"},
    {"name": "systemd-logind"},
)


@dataclass
class Allowlist:
    file_writes: list[str] = field(default_factory=lambda: list(DEFAULT_FILE_WRITES))
    programs: list[str] = field(default_factory=lambda: list(DEFAULT_PROGRAMS))
    local_sockets: list[str] = field(default_factory=lambda: list(DEFAULT_LOCAL_SOCKETS))
    device_holders: list[dict[str, str]] = field(default_factory=lambda: list(DEFAULT_DEVICE_HOLDERS))
    destinations: list[str] = field(default_factory=list)
    source: str = "built-in defaults"

    def file_allowed(self, path: str) -> bool:
        return bool(self.file_rule(path))

    def file_rule(self, path: str) -> str:
        """The entry that allows `path` ('' if none): the one cause of every write it allows."""
        return _rule(path, self.file_writes)

    def folder_rule(self, path: str) -> str:
        """The entry whose folder `path` lies on the way to ('' if none): making the folders an
        allowed cache lives in (mkdir -p ~/.nv/ComputeCache) is part of writing to it."""
        home = os.path.expanduser("~")
        for g in self.file_writes:
            fixed = re.split(r"[*?\[]", g.replace("~", home, 1) if g.startswith("~") else g, maxsplit=1)[0]
            if fixed.startswith(path.rstrip("/") + "/"):
                return g
        return ""

    def program_allowed(self, path: str) -> bool:
        return bool(_rule(path, self.programs))

    def local_socket_allowed(self, address: str) -> bool:
        return bool(self.local_socket_rule(address))

    def local_socket_rule(self, address: str) -> str:
        return next((g for g in self.local_sockets if fnmatch.fnmatchcase(address, g)), "")

    def destination_allowed(self, address: str) -> bool:
        return any(fnmatch.fnmatchcase(address, g) for g in self.destinations)

    def holder_allowed(self, name: str, exe: str) -> bool:
        return any(entry.get("name") in (None, name) and fnmatch.fnmatchcase(exe or "", entry.get("exe", "*"))
                   for entry in self.device_holders)


def _rule(path: str, globs: list[str]) -> str:
    home = os.path.expanduser("~")
    return next((g for g in globs if fnmatch.fnmatchcase(path, g.replace("~", home, 1) if g.startswith("~") else g)),
                "")


class AllowlistError(InputError):
    """The operator's allow-list cannot be used; the message is one line naming the file and the field."""


_LISTS = ("file_writes", "programs", "local_sockets", "device_holders", "destinations")


def source(params: dict[str, Any]) -> str | None:
    """The operator's file: the audit parameter wins over the environment, so a replay uses the
    list the recorded audit named."""
    return params.get(PARAM) or child.setting(ENV) or None


def read(path: str) -> dict[str, list[Any]]:
    """The operator's entries, checked in full: a malformed file must stop an audit before it starts,
    not error every behaviour check in its worker."""
    where = f"the behaviour allow-list {path} (from {PARAM} or {ENV})"
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise AllowlistError(f"{where}: cannot be read: {e.strerror or e}") from None
    except ValueError as e:
        raise AllowlistError(f"{where}: not JSON: {e}") from None
    if not isinstance(data, dict):
        raise AllowlistError(f"{where}: must be a JSON object with the lists {', '.join(_LISTS)}")
    unknown = sorted(set(data) - set(_LISTS))
    if unknown:
        raise AllowlistError(f"{where}: unknown field {unknown[0]} (known: {', '.join(_LISTS)})")
    for name, entries in data.items():
        kind = dict if name == "device_holders" else str
        if not isinstance(entries, list) or not all(isinstance(e, kind) for e in entries):
            raise AllowlistError(f"{where}: {name} must be a list of {'objects' if kind is dict else 'strings'}")
    for holder in data.get("device_holders", []):
        if not set(holder) <= {"name", "exe"} or not all(isinstance(v, str) for v in holder.values()):
            raise AllowlistError(f"{where}: each of device_holders has a string name and/or exe, nothing else")
    return data


def load(params: dict[str, Any]) -> Allowlist:
    """The defaults plus the operator's file, if one is named. A named file that cannot be read is
    an error: silently auditing with a different list than the operator asked for would mislead."""
    allow = Allowlist()
    path = source(params)
    if not path:
        return allow
    data = read(path)
    allow.file_writes += list(data.get("file_writes", []))
    allow.programs += list(data.get("programs", []))
    allow.local_sockets += list(data.get("local_sockets", []))
    allow.device_holders += list(data.get("device_holders", []))
    allow.destinations += list(data.get("destinations", []))
    allow.source = f"built-in defaults and {path}"
    return allow
