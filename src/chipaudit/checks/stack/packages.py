"""What the package managers know about the stack's files.

- Python distributions (torch, its vendor plugin, and whichever distribution owns a file the device
  process maps): every file listed in the distribution's RECORD is hashed and compared with the
  SHA-256 that RECORD holds, and files lying in the distribution's folders that RECORD does not list
  are named. Compiled caches (__pycache__) are left out: Python writes them as it goes.
- OS packages (dpkg, rpm): the packages owning the stack's system files are verified with
  `dpkg --verify` or `rpm -V`, which compare every file of the package with the package database.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from chipaudit.checks.stack.hashing import Hasher

# torch and the plugins that bring a vendor's device to it.
STACK_DISTRIBUTIONS = ("torch", "torch-npu", "torch-mlu", "torch-musa", "intel-extension-for-pytorch")
CACHE_DIR = "__pycache__"
PACKAGE_TOOL_TIMEOUT_S = 120.0
# rpm/dpkg verify lines: 9 check characters (or 'missing'), an attribute marker, the path.
_VERIFY_LINE = re.compile(r"^(missing|[.?SM5DLUGTP]{9})\s+([cdglr]?)\s*(/.*?)(?:\s+\(.*\))?$")
DIGEST_FLAG_INDEX = 2  # the '5' column: content differs from the package
# Paths per dpkg/rpm command line, well under the kernel's argument-size limit.
ARGS_PER_CALL = 500


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class PythonPackage:
    name: str
    version: str
    location: str  # the .dist-info folder
    files: dict[str, str]  # path relative to the site folder -> sha256 ("" when unreadable)
    unreadable: dict[str, str] = field(default_factory=dict)
    record_mismatches: list[str] = field(default_factory=list)  # content differs from RECORD
    unrecorded: list[str] = field(default_factory=list)  # present in its folders, not in RECORD

    @property
    def digest(self) -> str:
        lines = "".join(f"{path}\0{sha}\n" for path, sha in sorted(self.files.items()))
        return hashlib.sha256(lines.encode()).hexdigest()


def _site(dist: metadata.Distribution) -> str:
    return os.path.normpath(str(dist.locate_file("")))


def _rows(dist: metadata.Distribution) -> list[tuple[str, str]]:
    """Each file the distribution lists, as written (relative to its site folder), with the hash
    recorded for it ('' for none). RECORD is read as importlib.metadata reads it (csv), without
    making a path object of each of its tens of thousands of lines; a distribution without RECORD
    (an egg) gives importlib.metadata's file list."""
    text = dist.read_text("RECORD")
    if text is None:
        return [(str(f), "") for f in dist.files or []]
    return [(row[0], row[1] if len(row) > 1 else "") for row in csv.reader(text.splitlines()) if row]


def owners(paths: Iterable[str]) -> dict[str, metadata.Distribution]:
    """Each of `paths` that an installed distribution's RECORD lists -> that distribution (the first
    on sys.path where several list it). Every RECORD is read, but only entries named like a wanted
    file are joined into paths."""
    wanted = {os.path.normpath(p) for p in paths}
    names = {os.path.basename(p) for p in wanted}
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():
        base = _site(dist)
        for entry, _ in _rows(dist):
            if entry.rpartition("/")[2] in names:
                path = os.path.normpath(os.path.join(base, entry))
                if path in wanted:
                    found.setdefault(path, dist)
    return found


def name_of(dist: metadata.Distribution) -> str:
    return canonical(dist.metadata["Name"] or "")


def stack_distributions() -> list[metadata.Distribution]:
    """torch and the vendor plugins that are installed (the first of each name on sys.path), found by
    their folders' names without reading every distribution's metadata."""
    found = (next(iter(metadata.distributions(name=name)), None) for name in STACK_DISTRIBUTIONS)
    return [dist for dist in found if dist is not None]


def _record_sha256(hash_field: str) -> str | None:
    """RECORD holds 'sha256=<urlsafe base64, no padding>'; return it as hex."""
    mode, _, value = hash_field.partition("=")
    if mode != "sha256":
        return None
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def fingerprint_distribution(dist: metadata.Distribution, hasher: Hasher) -> PythonPackage:
    base = _site(dist)
    recorded = {os.path.normpath(entry): _record_sha256(hash_field) for entry, hash_field in _rows(dist)}
    tops = {p.split(os.sep)[0] for p in recorded if not p.startswith("..") and os.sep in p}
    unrecorded = []
    for top in sorted(tops):
        for root, dirs, files in os.walk(os.path.join(base, top)):
            dirs[:] = [d for d in dirs if d != CACHE_DIR]
            folder = os.path.relpath(root, base)
            unrecorded += [rel for rel in (os.path.join(folder, name) for name in files) if rel not in recorded]
    rels = sorted(recorded) + sorted(unrecorded)
    digests = hasher.many([os.path.join(base, r) for r in rels])
    record = next((os.path.join(base, r) for r in recorded if os.path.basename(r) == "RECORD"), base)
    package = PythonPackage(name_of(dist), dist.version, os.path.dirname(record), {}, unrecorded=sorted(unrecorded))
    for rel in rels:
        digest = digests[os.path.join(base, rel)]
        if digest.sha256 is None:
            package.unreadable[rel] = digest.reason or "unreadable"
            package.files[rel] = ""
            continue
        package.files[rel] = digest.sha256
        expected = recorded.get(rel)
        if expected is not None and expected != digest.sha256:
            package.record_mismatches.append(rel)
    return package


# --- OS packages -----------------------------------------------------------------------------------

Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=PACKAGE_TOOL_TIMEOUT_S, check=False)


@dataclass
class Verdict:
    manager: str
    package: str
    version: str
    files: list[str]  # the stack's files this package owns
    problems: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return not self.problems


def parse_verify(text: str) -> list[dict[str, Any]]:
    problems = []
    for line in text.splitlines():
        match = _VERIFY_LINE.match(line.rstrip())
        if match:
            checks, attribute, path = match.groups()
            problems.append({
                "path": path, "checks": checks, "conffile": attribute == "c", "missing": checks == "missing",
                "content_differs": checks != "missing" and checks[DIGEST_FLAG_INDEX] == "5",
            })
    return problems


def _usrmerge_aliases(path: str) -> list[str]:
    """dpkg records /lib/x.so while the loader maps /usr/lib/x.so on merged-/usr systems."""
    for prefix in ("/usr/lib/", "/usr/lib64/", "/usr/bin/", "/usr/sbin/"):
        if path.startswith(prefix):
            return [path, path[len("/usr"):]]
    return [path]


def parse_dpkg_search(text: str) -> dict[str, list[str]]:
    """'pkg:arch[, pkg2]: /path' lines -> path -> packages."""
    owned: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("diversion "):
            continue
        packages, sep, path = line.rpartition(": ")
        if sep and path.startswith("/"):
            owned[path] = [p.strip() for p in packages.split(",")]
    return owned


def os_package_verdicts(paths: list[str], run: Runner = _run) -> tuple[list[Verdict], str | None]:
    """Verdicts of the OS package manager on the packages owning `paths`; the second value says why
    there are none (no package manager)."""
    if shutil.which("dpkg"):
        return _dpkg(paths, run), None
    if shutil.which("rpm"):
        return _rpm(paths, run), None
    return [], "no dpkg or rpm on this machine: the OS packages' files were not verified"


def _chunks(items: list[str]) -> list[list[str]]:
    return [items[i:i + ARGS_PER_CALL] for i in range(0, len(items), ARGS_PER_CALL)]


def _dpkg_search(paths: list[str], run: Runner) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for chunk in _chunks(sorted(paths)):
        found.update(parse_dpkg_search(run(["dpkg", "-S", *chunk]).stdout))
    return found


def _dpkg(paths: list[str], run: Runner) -> list[Verdict]:
    aliases = {alias: path for path in paths for alias in _usrmerge_aliases(path)}
    by_package: dict[str, set[str]] = {}
    for alias, owning in _dpkg_search(list(aliases), run).items():
        for package in owning:
            by_package.setdefault(package, set()).add(aliases[alias])
    if not by_package:
        return []
    names = sorted(by_package)
    versions = dict(line.split(" ", 1) for line in run(
        ["dpkg-query", "-W", "-f=${binary:Package} ${Version}\n", *names]).stdout.splitlines() if " " in line)
    problems = parse_verify(run(["dpkg", "--verify", "--verify-format", "rpm", *names]).stdout)
    # dpkg --verify of several packages prints one list; give each problem to the package owning it.
    owner = _dpkg_search(sorted({p["path"] for p in problems}), run) if problems else {}
    return [Verdict("dpkg", name, versions.get(name, versions.get(name.split(":")[0], "")),
                    sorted(by_package[name]), [p for p in problems if name in owner.get(p["path"], [])])
            for name in names]


def _rpm_owners(paths: list[str], run: Runner) -> dict[str, str]:
    """path -> 'name<TAB>version-release'. One rpm -qf per batch: it prints a line per path, in order
    ('file ... is not owned by any package' for strangers); a batch where a path has several owners
    does not line up and is asked again path by path."""
    owned: dict[str, str] = {}
    for chunk in _chunks(paths):
        lines = run(["rpm", "-qf", "--qf", "%{NAME}\t%{VERSION}-%{RELEASE}\n", *chunk]).stdout.splitlines()
        if len(lines) != len(chunk):
            lines = [(run(["rpm", "-qf", "--qf", "%{NAME}\t%{VERSION}-%{RELEASE}\n", p]).stdout.splitlines()
                      or [""])[0] for p in chunk]
        owned.update((path, line) for path, line in zip(chunk, lines, strict=True) if "\t" in line)
    return owned


def _rpm(paths: list[str], run: Runner) -> list[Verdict]:
    by_package: dict[str, set[str]] = {}
    for path, key in _rpm_owners(paths, run).items():
        by_package.setdefault(key, set()).add(path)
    verdicts = []
    for key in sorted(by_package):
        name, version = key.split("\t", 1)
        problems = parse_verify(run(["rpm", "-V", name]).stdout)
        verdicts.append(Verdict("rpm", name, version, sorted(by_package[key]), problems))
    return verdicts
