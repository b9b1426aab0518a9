"""Baselines: the stack snapshot of a machine someone trusts, and what differs from it now.

A baseline file holds one snapshot and a digest of its content. Loading is strict: a file that is
missing, empty, truncated, not JSON, of another schema, altered, or recorded on another machine or
for another device is refused with a one-line reason, never read as "no differences".

Severities of differences: changed code or firmware (a library, kernel module, firmware blob, file,
or a Python file of the device stack) is high, as is a package manager newly finding a file that
differs from its package, or a device's firmware or driver version changing. Added code is medium:
new code runs where none ran at the baseline. New kernel taint flags are medium. Missing items are
low: less code is not a threat by itself, but the stack is no longer the one trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from chipaudit.checks.stack.snapshot import CODE_KINDS, Item, Snapshot
from chipaudit.report.model import Finding, Severity, write_atomic

BASELINE_SCHEMA = "chipaudit.baseline/1"
# Files named in one finding's evidence, at most; the count is always given.
MAX_LISTED = 50

FindingFactory = Callable[..., Finding]


class BaselineError(ValueError):
    """A baseline that cannot be used; the message is one line, naming the file."""


def _canonical(snapshot: Snapshot) -> str:
    return json.dumps(snapshot.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))


def save(path: Path, snapshot: Snapshot) -> None:
    body = _canonical(snapshot)
    document = {"schema": BASELINE_SCHEMA, "content_sha256": hashlib.sha256(body.encode()).hexdigest(),
                "snapshot": json.loads(body)}
    write_atomic(path, json.dumps(document, indent=1, sort_keys=True) + "\n")


def load(path: Path) -> Snapshot:
    path = Path(path)
    if not path.exists():
        raise BaselineError(f"baseline {path}: no such file")
    if path.is_dir():
        raise BaselineError(f"baseline {path}: is a folder, not a baseline file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise BaselineError(f"baseline {path}: cannot be read ({getattr(e, 'strerror', None) or e})") from e
    if not text.strip():
        raise BaselineError(f"baseline {path}: is empty")
    try:
        document = json.loads(text)
    except ValueError as e:
        raise BaselineError(f"baseline {path}: is not valid JSON, truncated or not a baseline "
                            f"({str(e).splitlines()[0]})") from e
    if not isinstance(document, dict) or "schema" not in document:
        raise BaselineError(f"baseline {path}: is not a chipaudit baseline (it has no schema field)")
    if document["schema"] != BASELINE_SCHEMA:
        raise BaselineError(f"baseline {path}: is a {document['schema']!r} file; this chipaudit reads "
                            f"{BASELINE_SCHEMA!r} (record a new baseline with 'chipaudit baseline create')")
    try:
        snapshot = Snapshot.model_validate(document.get("snapshot"))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BaselineError(f"baseline {path}: is not a valid baseline ({where}: {first['msg']})") from e
    if hashlib.sha256(_canonical(snapshot).encode()).hexdigest() != document.get("content_sha256"):
        raise BaselineError(f"baseline {path}: its content does not match its digest (edited or damaged "
                            "since it was written)")
    return snapshot


def check_machine(snapshot: Snapshot, host: dict[str, Any], path: Path) -> None:
    then, now = snapshot.host, host
    same = (then.get("machine_id") == now.get("machine_id") if then.get("machine_id") and now.get("machine_id")
            else then.get("hostname") == now.get("hostname"))
    if not same:
        raise BaselineError(
            f"baseline {path}: was recorded on another machine (host {then.get('hostname')}, machine-id "
            f"{then.get('machine_id')}); this is host {now.get('hostname')}, machine-id {now.get('machine_id')}")


def check_device(snapshot: Snapshot, device: str, path: Path) -> None:
    if snapshot.device != device:
        raise BaselineError(f"baseline {path}: was recorded for device {snapshot.device}, not {device} "
                            "(record one baseline per device)")


def _short(sha: str | None) -> str:
    return f"{sha[:16]}…" if sha else "none"


def _listed(paths: list[str]) -> dict[str, Any]:
    return {"count": len(paths), "files": sorted(paths)[:MAX_LISTED]}


def diff(old: Snapshot, new: Snapshot, finding: FindingFactory) -> list[Finding]:
    """Every difference between the baseline and now, as findings (none when nothing changed)."""
    found: list[Finding] = []
    before, after = {i.key: i for i in old.items}, {i.key: i for i in new.items}
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        if a is not None and b is not None and a.kind == "python_package":
            found += _package_diff(a, b, old.package_files.get(a.name, {}), new.package_files.get(b.name, {}),
                                   finding)
        elif a is not None and b is not None:
            found += _item_diff(a, b, finding)
        elif b is not None:
            found.append(finding(
                Severity.medium if b.kind in CODE_KINDS or b.kind == "python_package" else Severity.low,
                f"new since the baseline: {b.name}",
                f"{b.kind} {b.path} was not part of the stack at the baseline: new code where none ran.",
                kind=b.kind, path=b.path, sha256=b.sha256, **b.details))
        elif a is not None:
            found.append(finding(Severity.low, f"missing since the baseline: {a.name}",
                                 f"{a.kind} {a.path} was part of the stack at the baseline and is not now.",
                                 kind=a.kind, path=a.path, sha256=a.sha256))
    found += _taint_diff(old, new, finding) + _os_package_diff(old, new, finding) + _device_diff(old, new, finding)
    if found and old.tool_version != new.tool_version:
        found.append(finding(
            Severity.info, f"the baseline was recorded by chipaudit {old.tool_version}, this is {new.tool_version}",
            "The probe's own Python modules may differ between versions; a new or missing Python extension "
            "module can come from that rather than from the stack.", baseline_tool=old.tool_version,
            tool=new.tool_version))
    return found


def _item_diff(a: Item, b: Item, finding: FindingFactory) -> list[Finding]:
    if a.sha256 == b.sha256:
        return []
    if a.sha256 and b.sha256:
        return [finding(Severity.high, f"changed since the baseline: {b.name}",
                        f"{b.kind} {b.path}: SHA-256 {_short(a.sha256)} at the baseline, {_short(b.sha256)} now.",
                        kind=b.kind, path=b.path, baseline_sha256=a.sha256, sha256=b.sha256,
                        baseline_size=a.size, size=b.size, **b.details)]
    if a.sha256:
        return [finding(Severity.medium, f"no longer fingerprinted: {b.name}",
                        f"{b.kind} {b.path} was fingerprinted at the baseline and cannot be now: {b.reason}.",
                        kind=b.kind, path=b.path, baseline_sha256=a.sha256, reason=b.reason)]
    return []


def _package_diff(a: Item, b: Item, old: dict[str, str], new: dict[str, str],
                  finding: FindingFactory) -> list[Finding]:
    changed = [f for f in old.keys() & new.keys() if old[f] != new[f]]
    added, missing = sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())
    if not (changed or added or missing):
        return []
    severity = Severity.high if changed else Severity.medium if added else Severity.low
    version = a.details.get("version"), b.details.get("version")
    title = (f"{b.name} changed from {version[0]} to {version[1]} since the baseline" if version[0] != version[1]
             else f"files of {b.name} changed since the baseline")
    counts = ", ".join(f"{n} {what}" for n, what in ((len(changed), "changed"), (len(added), "added"),
                                                       (len(missing), "missing")) if n)
    return [finding(severity, title, f"Python distribution {b.name} ({b.path}): {counts} file(s).",
                    kind="python_package", package=b.name, baseline_version=version[0], version=version[1],
                    changed=_listed(changed), added=_listed(added), missing=_listed(missing))]


def _taint_diff(old: Snapshot, new: Snapshot, finding: FindingFactory) -> list[Finding]:
    then, now = set((old.kernel_taint or {}).get("flags", "")), set((new.kernel_taint or {}).get("flags", ""))
    gained = sorted(now - then)
    if not gained:
        return []
    return [finding(Severity.medium, f"kernel taint flags gained {''.join(gained)} since the baseline",
                    f"The kernel now reports: {', '.join((new.kernel_taint or {}).get('meaning', []))}.",
                    baseline_taint=old.kernel_taint, taint=new.kernel_taint)]


def _os_package_diff(old: Snapshot, new: Snapshot, finding: FindingFactory) -> list[Finding]:
    known = {(p.package, q["path"], q["checks"]) for p in old.os_packages for q in p.problems}
    found = []
    for package in new.os_packages:
        for problem in package.problems:
            if (package.package, problem["path"], problem["checks"]) in known:
                continue
            serious = problem["content_differs"] and not problem["conffile"]
            found.append(finding(
                Severity.high if serious else Severity.low,
                f"{package.manager} verify: {os.path.basename(problem['path'])} differs from package "
                f"{package.package}", f"{problem['path']}: {problem['checks']} (new since the baseline).",
                manager=package.manager, package=package.package, version=package.version, **problem))
    return found


def _device_diff(old: Snapshot, new: Snapshot, finding: FindingFactory) -> list[Finding]:
    before, after = {d["key"]: d for d in old.accelerators}, {d["key"]: d for d in new.accelerators}
    found = []
    for key in sorted(before.keys() & after.keys()):
        for part in ("firmware", "driver"):
            a, b = before[key].get(part, {}), after[key].get(part, {})
            changes = {k: [a.get(k), b.get(k)] for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}
            if changes:
                found.append(finding(
                    Severity.high, f"{part} of {after[key].get('model')} {key} changed since the baseline",
                    "; ".join(f"{k}: {v[0]} -> {v[1]}" for k, v in changes.items()), device=key, changes=changes))
    for key in sorted(after.keys() - before.keys()):
        found.append(finding(Severity.medium, f"new accelerator since the baseline: {after[key].get('model')} {key}",
                             "A device the baseline did not have.", device=key))
    for key in sorted(before.keys() - after.keys()):
        found.append(finding(Severity.low, f"accelerator missing since the baseline: {before[key].get('model')} {key}",
                             "A device the baseline had is not reported now.", device=key))
    return found
