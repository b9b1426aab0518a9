"""behaviour.cotenants: who else uses the device?

Threat: monitoring through a co-resident process: an agent that holds the accelerator open beside
the user's work (reading its memory, its counters, or its results), or a daemon that exposes the
device's state over a socket.

Method: every process's open descriptors are read from /proc and matched against the device files
of the audited device type (/dev/nvidia*, /dev/kfd and /dev/dri/* for NVIDIA and AMD, /dev/davinci*
for Ascend, /dev/cambricon* for Cambricon, /dev/mtgpu* for Moore Threads, /dev/dri/* for Intel, and
/dev/accel/*); known accelerator daemons are listed whether or not they hold a file, each with its
sockets. The audit's own processes are left out. Holders on the allow-list (vendor persistence,
fabric and telemetry daemons, the display server; extended by the operator, see allowlist.py) are
reported as information.

Pass: no process outside the allow-list holds the device.
Fail (medium): each unknown holder, with its user, executable, command line, files and sockets.
Not run: on a CPU (it has no device files) and on platforms without /proc.
A process whose descriptors could not be read (another user's, without privilege) is counted and the
report says the scan was partial.

Runs in the tool's own process (Check.host_view): the audit's device processes live in containers that
show them only their own processes. It computes nothing on the device.

Cannot see: processes in other PID namespaces (containers) unless the audit runs in the host's;
access that goes through an allowed daemon on another's behalf.
"""

from __future__ import annotations

import os

from chipaudit.checks.base import Check, CheckContext, NotApplicable, Outcome
from chipaudit.checks.behaviour import allowlist
from chipaudit.report.model import Category, Severity
from chipaudit.sensors import holders


class CotenantsProbe(Check):
    id = "behaviour.cotenants"
    category = Category.behaviour
    host_view = True

    def is_supported(self, device: str) -> str | None:
        kind = device.split(":", 1)[0]
        if kind == "cpu":
            return "a CPU has no accelerator device files for other processes to hold"
        if not os.path.isdir("/proc/self/fd"):
            return "this platform has no /proc to read other processes' open files from"
        if kind not in holders.DEVICE_FILES:
            return f"no device-file patterns are known for device type '{kind}'"
        return None

    def run(self, ctx: CheckContext) -> Outcome:
        kind = ctx.device.split(":", 1)[0]
        if kind not in holders.DEVICE_FILES:
            raise NotApplicable(f"no device-file patterns are known for device type '{kind}'")
        allow = allowlist.load(ctx.params)
        patterns = holders.DEVICE_FILES[kind]
        scan = holders.scan(patterns, holders.own_processes())
        out = Outcome()
        for h in scan.holders:
            allowed = allow.holder_allowed(h.name, h.exe)
            what = "holds the device open" if h.files else "is an accelerator daemon"
            out.findings.append(self.finding(
                Severity.info if allowed else Severity.medium,
                f"{'allow-listed' if allowed else 'unknown'} process {h.name or h.pid} {what}",
                f"pid {h.pid}, user {h.user or '?'}, {h.exe or 'executable unknown'}; files: "
                f"{', '.join(h.files) or 'none'}; sockets: {', '.join(h.sockets) or 'none'}.", **h.as_dict()))
        limits = []
        if scan.denied:
            limits.append(f"{scan.denied} of {scan.inspected} processes could not be inspected (another user's, "
                          "without privilege): the scan is partial")
        out.coverage = {"device_files": list(patterns), "processes_inspected": scan.inspected,
                        "processes_not_readable": scan.denied, "holders": len(scan.holders),
                        "allowlist": allow.source, "limits": limits}
        out.measurements = {"holders": [h.as_dict() for h in scan.holders]}
        return out


CHECKS = [CotenantsProbe()]
