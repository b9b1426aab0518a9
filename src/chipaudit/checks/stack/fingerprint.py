"""Stack fingerprint: SHA-256 of the driver, firmware and libraries the device's computation runs on.

Threat: a driver, math library, kernel module or firmware blob that was replaced or patched (a
backdoor, a kill switch, a tracker, or a quiet downgrade), or code injected into the device process
(a preloaded library, a file deleted after loading, code mapped from memory).

Method: a fresh probe process does fixed work on the device; its /proc/<pid>/maps names every library
the computation maps. Those, the accelerator kernel modules (/proc/modules, modinfo: signer, signature,
srcversion) and the kernel's taint flags, the drivers' firmware under /lib/firmware, and every file of
the device stack's Python distributions are hashed with SHA-256. Python files are checked against the
SHA-256 in their distribution's RECORD, and system files against the OS package database
(`dpkg --verify`, `rpm -V`). With a baseline (`--baseline FILE`, from `chipaudit baseline create` on a
trusted machine), every difference is a finding. At level smoke it runs only with a baseline.

Pass: nothing contradicts itself (files match their packages, loaded modules match their files, no
code mapped from nowhere) and, with a baseline, nothing changed.
Fail (high): a file differs from its package's record, or, against a baseline, any code, firmware or
device firmware or driver version changed. Medium: code mapped from no file on disk, a loaded kernel
module that differs from its file; against a baseline, new code or new kernel taint flags.
Info: files that could not be read, listed with the reason, and what this machine does not expose.

Cannot see: firmware running on the device that the host never loads from a file (only the version
the driver reports is compared), code the driver loads later or downloads, and a stack that was
already compromised when the baseline was taken. Without a baseline it trusts the package records,
which an attacker with root can rewrite along with the files.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from chipaudit.checks.base import ALL_LEVELS, Check, CheckContext, NotApplicable, Outcome
from chipaudit.checks.stack import baseline as baselines
from chipaudit.checks.stack import snapshot as snapshots
from chipaudit.report.model import Category, Finding, Level, Severity

MAX_LISTED = baselines.MAX_LISTED


class StackCheck(Check):
    """What the stack checks share: they read /proc, and one snapshot of the stack per worker."""

    category = Category.stack
    # Hashing a CUDA stack (several GB of libraries) on a small host takes a while; the probe's device
    # initialisation may too. The CPU stack takes seconds. The same at every level: the stack is what
    # it is, however long the audit.
    timeout_s: ClassVar[dict[Level, float]] = {Level.smoke: 300.0, Level.quick: 300.0, Level.standard: 300.0,
                                               Level.deep: 600.0}

    def is_supported(self, device: str) -> str | None:
        if not os.path.exists("/proc/self/maps"):
            return "needs Linux /proc to see which files the device's computation maps"
        return None

    def stack(self, ctx: CheckContext) -> tuple[snapshots.Snapshot, snapshots.Snapshot | None]:
        """This worker's snapshot of the device's stack, and the baseline to compare it with, if any
        (`run --baseline`; the CLI has already refused a baseline unfit for this machine and device)."""
        path = ctx.params.get("baseline")
        trusted = baselines.load(path) if path else None
        ctx.progress(0, 1, "device work in a probe, then hashing the stack")
        return snapshots.cached(ctx.device, trusted.include if trusted else None), trusted


class FingerprintCheck(StackCheck):
    id = "stack.fingerprint"
    # At smoke only against a baseline: a job's prolog asks whether the stack changed since it was trusted.
    levels = (Level.smoke, *ALL_LEVELS)

    def run(self, ctx: CheckContext) -> Outcome:
        if ctx.level is Level.smoke and not ctx.params.get("baseline"):
            raise NotApplicable("level smoke fingerprints the stack only to compare it with a baseline, and none "
                                "was given (run --baseline FILE, from 'chipaudit baseline create')")
        snap, trusted = self.stack(ctx)
        path = ctx.params.get("baseline")
        findings = self.self_consistency(snap, with_baseline=trusted is not None)
        if trusted is not None:
            findings += baselines.diff(trusted, snap, self.finding)
        ctx.progress(1, 1, "done")
        return Outcome(findings=findings, coverage=coverage(snap, path), measurements={
            "fingerprint": snap.summary(), "timings_s": snap.timings_s})

    def self_consistency(self, snap: snapshots.Snapshot, with_baseline: bool) -> list[Finding]:
        """What the snapshot says about itself, with no baseline to compare with. Against a baseline,
        package-record and package-manager findings come from the comparison instead, so that a state
        the baseline already had (and someone trusted) is not reported again."""
        found = []
        unread = snap.not_fingerprinted()
        if unread or snap.notes:
            title = " and ".join(([f"{len(unread)} file(s) not fingerprinted"] if unread else [])
                                 + (["parts of the stack not visible here"] if snap.notes else []))
            found.append(self.finding(
                Severity.info, title[0].upper() + title[1:],
                "; ".join([f"{u['path']}: {u['reason']}" for u in unread[:5]] + snap.notes)[:1000],
                not_fingerprinted=unread[:MAX_LISTED], not_observed=snap.notes))
        for item in snap.items:
            if item.details.get("deleted") or item.path.startswith("memfd:"):
                found.append(self.finding(
                    Severity.medium, f"code mapped from no file on disk: {item.name}",
                    f"The device process maps {item.path} ({item.reason}); nothing on disk can be checked for it.",
                    path=item.path))
            loaded = item.details.get("loaded", {}).get("srcversion")
            on_disk = item.details.get("srcversion")
            if item.kind == "kernel_module" and loaded and on_disk and loaded != on_disk:
                found.append(self.finding(
                    Severity.medium, f"loaded kernel module {item.name} differs from its file",
                    f"srcversion {loaded} is loaded, {item.path} has {on_disk}: the running driver is not the "
                    "one fingerprinted (a driver update awaiting a reboot, or a replaced file).", path=item.path,
                    loaded_srcversion=loaded, file_srcversion=on_disk))
        if with_baseline:
            return found
        for item in snap.items:
            if item.kind == "python_package" and item.details.get("record_mismatches"):
                mismatches = item.details["record_mismatches"]
                found.append(self.finding(
                    Severity.high, f"files of {item.name} differ from its RECORD",
                    f"{len(mismatches)} file(s) of {item.name} {item.details.get('version')} do not have the "
                    f"SHA-256 its installer recorded, e.g. {mismatches[0]}.",
                    package=item.name, files=mismatches[:MAX_LISTED], count=len(mismatches)))
            if item.kind == "python_package" and item.details.get("unrecorded"):
                extra = item.details["unrecorded"]
                found.append(self.finding(
                    Severity.info, f"{len(extra)} file(s) in {item.name}'s folders are not in its RECORD",
                    f"Added after installation, e.g. {extra[0]}; they are fingerprinted with the package.",
                    package=item.name, files=extra[:MAX_LISTED], count=len(extra)))
        for package in snap.os_packages:
            differs = [p for p in package.problems if p["content_differs"] and not p["conffile"]]
            if differs:
                found.append(self.finding(
                    Severity.high, f"{package.manager} verify: files of {package.package} differ from the package",
                    f"{len(differs)} file(s) differ from package {package.package} {package.version}, e.g. "
                    f"{differs[0]['path']}.", package=package.package, version=package.version,
                    problems=differs[:MAX_LISTED]))
        return found


def coverage(snap: snapshots.Snapshot, baseline_path: str | None) -> dict[str, Any]:
    kinds = {"libraries": "library", "kernel_modules": "kernel_module", "firmware_files": "firmware",
             "included_files": "file", "python_packages": "python_package"}
    return {
        **{name: sum(i.kind == kind for i in snap.items) for name, kind in kinds.items()},
        "python_files": sum(len(f) for f in snap.package_files.values()),
        "os_packages_verified": len(snap.os_packages),
        "bytes_hashed": sum(i.size or 0 for i in snap.items if i.kind != "python_package"),
        "not_fingerprinted": snap.not_fingerprinted()[:MAX_LISTED],
        "not_observed": snap.notes,
        "baseline": baseline_path,
    }


CHECKS = [FingerprintCheck()]
