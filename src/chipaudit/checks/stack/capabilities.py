"""Capability scan: what the stack's binaries can do, from what they import.

Threat: a driver or library that phones home, starts programs, writes files, or reads the date or
where it is (the makings of a tracker or a time-triggered kill switch).

Method: every ELF library the device process maps, every accelerator kernel module and every
included file is parsed (pyelftools); its undefined dynamic symbols (a kernel module's undefined
kernel symbols) and the libraries it needs are sorted into capabilities: networking (socket, connect,
getaddrinfo, libcurl), process creation (fork, execve, system, posix_spawn; call_usermodehelper in the
kernel), file writes (and the absolute paths outside the usual trees that the binary names), wall
clock time, and location (time zone, locale, host identity, geolocation libraries).

Pass: always, without a baseline: each binary's capabilities are reported as information, evidence
for reviewers rather than a verdict (libtorch itself imports socket and fork, for distributed work).
Fail: against a baseline, a binary that gained a capability it did not have (high for networking and
process creation, medium otherwise), a new binary included.

Cannot see: system calls made directly, functions found at run time with dlsym(), code downloaded
or generated after loading, and what the imported functions are actually used for.
"""

from __future__ import annotations

import os

from chipaudit.checks.base import CheckContext, Outcome
from chipaudit.checks.stack import baseline as baselines
from chipaudit.checks.stack import snapshot as snapshots
from chipaudit.checks.stack.elf import CAPABILITIES, ElfScan
from chipaudit.checks.stack.fingerprint import StackCheck
from chipaudit.report.model import Finding, Severity

SERIOUS = frozenset({"networking", "process_creation"})
MEANING = {c.name: c.meaning for c in CAPABILITIES}


def gained(trusted: snapshots.Snapshot, now: snapshots.Snapshot, finding: baselines.FindingFactory) -> list[Finding]:
    """Capabilities each binary has now and did not have at the baseline."""
    if trusted.capabilities is None or now.capabilities is None:
        return []
    found = []
    for path, caps in sorted(now.capabilities.items()):
        before = trusted.capabilities.get(path, {})
        for cap in sorted(caps.keys() - before.keys()):
            new_binary = path not in trusted.capabilities
            found.append(finding(
                Severity.high if cap in SERIOUS else Severity.medium,
                f"{os.path.basename(path)} {'is new and' if new_binary else 'now'} {MEANING[cap]}",
                f"{path} imports {', '.join(caps[cap][:10])}"
                + (" and was not part of the stack at the baseline." if new_binary
                   else ", which it did not import at the baseline."),
                path=path, capability=cap, imports=caps[cap], new_binary=new_binary))
    return found


class CapabilityCheck(StackCheck):
    id = "stack.capabilities"

    def run(self, ctx: CheckContext) -> Outcome:
        snap, trusted = self.stack(ctx)
        scans = snapshots.scan_capabilities(snap)
        findings = [self._evidence(s) for s in scans.values() if s.capabilities]
        if trusted is not None:
            findings += gained(trusted, snap, self.finding)
        ctx.progress(1, 1, "done")
        by_capability = {c.name: sorted(p for p, s in scans.items() if c.name in s.capabilities) for c in CAPABILITIES}
        return Outcome(
            findings=findings,
            coverage={"binaries_scanned": sum(s.error is None for s in scans.values()),
                      "not_scanned": [{"path": p, "reason": s.error} for p, s in scans.items() if s.error],
                      "baseline_compared": bool(trusted and trusted.capabilities is not None)},
            measurements={"by_capability": by_capability,
                          "binaries": {p: {"capabilities": s.capabilities, "needed": s.needed, "paths": s.paths}
                                       for p, s in scans.items() if s.capabilities}})

    def _evidence(self, scan: ElfScan) -> Finding:
        name = os.path.basename(scan.path)
        return self.finding(
            Severity.info, f"{name} imports {', '.join(scan.capabilities)}",
            "; ".join(f"{cap}: {', '.join(hits[:6])}{' …' if len(hits) > 6 else ''}"
                      for cap, hits in scan.capabilities.items()),
            path=scan.path, capabilities=scan.capabilities, needed=scan.needed, named_paths=scan.paths)


CHECKS = [CapabilityCheck()]
