"""Audit bundles: the report, the raw evidence behind it, and a signed in-toto attestation listing both.

Layout of a bundle folder:

    report.json                      the report (schema chipaudit.report/1)
    evidence/checks/<check id>.json  each check's result, coverage, measurements and findings
    evidence/inventory.json          the host and accelerator inventory, when the audit took one
    evidence/<anything else>         raw evidence other parts of the tool leave: sensor logs, traces,
                                     inventories (see `evidence_dir` and `write_bundle(extra_files=)`)
    attestation/statement.json       in-toto Statement v1: every file above with its sha256 digest,
                                     and a predicate summarising the audit
    attestation/envelope.dsse.json   DSSE envelope: the same statement, base64, and its signatures

The statement is signed, not the files: each file is bound through its digest. `statement.json` is a
readable copy of the signed payload and must equal it byte for byte.

A bundle comes from someone else, so reading one trusts nothing in it: names are checked before use,
symbolic links and special files are refused, every file is opened without following links and its
size is checked before it is read, and nothing in it is executed or unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipaudit.evidence.dsse import JSONProblem, strict_json
from chipaudit.report.model import Report

BUNDLE_FORMAT = "chipaudit.bundle/1"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://chipaudit.dev/attestation/audit/v1"

REPORT = "report.json"
EVIDENCE_DIR = "evidence"
CHECKS_DIR = "evidence/checks"
INVENTORY = "evidence/inventory.json"
STATEMENT = "attestation/statement.json"
ENVELOPE = "attestation/envelope.dsse.json"
UNSIGNED = (STATEMENT, ENVELOPE)

# Limits against hostile bundles. Evidence files are hashed in chunks, never read whole; the cap stops
# a bundle from making a verifier hash without end. The JSON files are parsed whole, so their caps are
# far above any real audit's (a deep audit's report is well under 1 MiB) and far below memory.
MAX_FILE_BYTES = 1 << 30
MAX_JSON_BYTES = 64 << 20
MAX_ENTRIES = 10_000
MAX_DEPTH = 16
_CHUNK = 1 << 20
BUNDLE_MODE = 0o755
# One path component: letters, digits and a few punctuation marks. No separators, no control or
# look-alike characters, nothing a shell or another filesystem would read differently.
_COMPONENT = re.compile(r"[A-Za-z0-9._@+=,-]{1,128}")
# Where a check may leave raw evidence files for the bundle (see `check_evidence_dir`).
EVIDENCE_DIR_PARAM = "evidence_dir"


class BundleProblem(Exception):
    """A bundle that is malformed, damaged or hostile; `path` names the file at fault, if one is."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


def check_name(name: str) -> str:
    """A relative path inside the bundle, or BundleProblem: no absolute paths, no '..', no odd characters."""
    parts = name.split("/")
    if len(parts) > MAX_DEPTH or not all(
        _COMPONENT.fullmatch(p) and p not in (".", "..") for p in parts
    ):
        raise BundleProblem("not an allowed file name inside a bundle (relative, plain characters, "
                            "no '.' or '..' components)", repr(name)[1:-1])
    return name


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dumps(document: Any) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def predicate(report: Report) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for check in report.checks:
        counts[check.status.value] = counts.get(check.status.value, 0) + 1
    return {
        "bundle": BUNDLE_FORMAT,
        "schema": report.schema_,
        "tool": report.tool.model_dump(mode="json"),
        "verdict": report.verdict.value,
        "complete": report.complete,
        "level": report.level.value,
        "seed": report.seed,
        "started": report.started.isoformat(),
        "finished": report.finished.isoformat() if report.finished else None,
        "device": {"spec": report.device.spec, "type": report.device.type, "name": report.device.name},
        "checks": {"counts": counts, "results": {c.id: c.status.value for c in report.checks}},
        "findings": len(report.findings),
    }


def statement(report: Report, digests: Mapping[str, str]) -> dict[str, Any]:
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digests[name]}} for name in sorted(digests)],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate(report),
    }


def check_evidence_dir(params: Mapping[str, Any], check_id: str) -> Path | None:
    """Where check `check_id` may leave raw evidence files (logs, traces) to travel in the bundle;
    None when this audit writes no bundle. Pass the CheckContext's params."""
    root = params.get(EVIDENCE_DIR_PARAM)
    if not root:
        return None
    path = Path(root) / check_name(check_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def collect_evidence(root: Path) -> dict[str, Path]:
    """The regular files under an evidence staging folder, named as they will be in the bundle.
    Links and special files are left out: a bundle holds only plain files."""
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]
        for name in files:
            path = Path(folder) / name
            if stat.S_ISREG(path.lstat().st_mode):
                found[f"{EVIDENCE_DIR}/{path.relative_to(root).as_posix()}"] = path
    return found


def _check_file_json(report: Report, check_id: str) -> bytes:
    result = next(c for c in report.checks if c.id == check_id)
    return _dumps({
        "result": result.model_dump(mode="json"),
        "findings": [f.model_dump(mode="json") for f in report.findings if f.check == check_id],
    })


def write_bundle(report: Report, directory: Path, extra_files: Mapping[str, bytes | Path] | None = None) -> Path:
    """Write an unsigned bundle (an envelope with no signatures yet; `chipaudit sign` adds them).

    `extra_files` maps names inside the bundle (under 'evidence/') to contents or files to copy. The
    bundle is assembled in a sibling folder and renamed into place, so it appears whole or not at all.
    """
    from chipaudit.evidence.dsse import PAYLOAD_TYPE, Envelope

    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FileExistsError(f"{directory} exists and is not an empty folder")
    contents: dict[str, bytes | Path] = {REPORT: (report.to_json() + "\n").encode("utf-8")}
    for check in report.checks:
        contents[f"{CHECKS_DIR}/{check_name(check.id)}.json"] = _check_file_json(report, check.id)
    inventory = getattr(report, "inventory", None)  # the stack inventory, when this audit took one
    if inventory is not None:
        contents[INVENTORY] = _dumps(inventory)
    for name, content in (extra_files or {}).items():
        if not check_name(name).startswith(EVIDENCE_DIR + "/") or name in contents:
            raise ValueError(f"extra bundle file {name!r} must be under {EVIDENCE_DIR}/ and not clash "
                             "with the report's own files")
        contents[name] = content
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        digests: dict[str, str] = {}
        for name, content in contents.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, target)
                with open(target, "rb") as f:  # a file too large to verify must not enter a bundle
                    digests[name] = _sha256(f.fileno(), name)
            else:
                target.write_bytes(content)
                digests[name] = sha256_hex(content)
        payload = _dumps(statement(report, digests))
        (staging / STATEMENT).parent.mkdir()
        (staging / STATEMENT).write_bytes(payload)
        (staging / ENVELOPE).write_bytes(Envelope(payload, PAYLOAD_TYPE).to_bytes())
        staging.chmod(BUNDLE_MODE)  # mkdtemp's folder is private; a bundle is meant to be handed on
        if directory.exists():
            directory.rmdir()
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


@dataclass
class Listing:
    files: set[str] = field(default_factory=set)
    dirs: set[str] = field(default_factory=set)


class BundleReader:
    """Read-only access to a bundle folder that trusts nothing in it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise BundleProblem("not a folder", str(root))

    def listing(self) -> Listing:
        """Every file and folder in the bundle; symbolic links and special files are refused."""
        listing = Listing()
        stack: list[tuple[Path, str]] = [(self.root, "")]
        while stack:
            folder, prefix = stack.pop()
            with os.scandir(folder) as entries:
                for entry in entries:
                    name = prefix + entry.name
                    if len(listing.files) + len(listing.dirs) >= MAX_ENTRIES:
                        raise BundleProblem(f"more than {MAX_ENTRIES} entries")
                    if entry.is_symlink():
                        raise BundleProblem("is a symbolic link; bundles hold only plain files", name)
                    if entry.is_dir(follow_symlinks=False):
                        if name.count("/") + 1 >= MAX_DEPTH:
                            raise BundleProblem(f"nested more than {MAX_DEPTH} folders deep", name)
                        listing.dirs.add(name)
                        stack.append((Path(entry.path), name + "/"))
                    elif entry.is_file(follow_symlinks=False):
                        listing.files.add(name)
                    else:
                        raise BundleProblem("is not a plain file (device, socket or pipe)", name)
        return listing

    @contextmanager
    def open(self, name: str, limit: int) -> Iterator[tuple[int, int]]:
        """(fd, size) of a regular file, opened component by component without following any link."""
        parts = check_name(name).split("/")
        nofollow = getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            for part in parts[:-1]:
                try:
                    child = os.open(part, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | nofollow, dir_fd=fd)
                except OSError as e:
                    raise BundleProblem(f"cannot open folder {part!r}: {e.strerror}", name) from None
                os.close(fd)
                fd = child
            try:
                child = os.open(parts[-1], os.O_RDONLY | nofollow | getattr(os, "O_NONBLOCK", 0), dir_fd=fd)
            except FileNotFoundError:
                raise BundleProblem("is missing", name) from None
            except OSError as e:
                raise BundleProblem(f"cannot open: {e.strerror}", name) from None
            os.close(fd)
            fd = child
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise BundleProblem("is not a plain file", name)
            if info.st_size > limit:
                raise BundleProblem(f"is {info.st_size:,} bytes, over the limit of {limit:,}", name)
            yield fd, info.st_size
        finally:
            os.close(fd)

    def read(self, name: str, limit: int = MAX_JSON_BYTES) -> bytes:
        with self.open(name, limit) as (fd, _):
            return _read_at_most(fd, limit, name)

    def read_json(self, name: str) -> Any:
        return _parse(self.read(name), name)

    def sha256(self, name: str) -> str:
        with self.open(name, MAX_FILE_BYTES) as (fd, _):
            return _sha256(fd, name)


def _chunks(fd: int, limit: int, name: str) -> Iterator[bytes]:
    """The file in chunks, refusing it as soon as it proves longer than `limit` (it may grow while read)."""
    total = 0
    while chunk := os.read(fd, _CHUNK):
        total += len(chunk)
        if total > limit:
            raise BundleProblem(f"is over the limit of {limit:,} bytes", name)
        yield chunk


def _read_at_most(fd: int, limit: int, name: str) -> bytes:
    return b"".join(_chunks(fd, limit, name))


def _sha256(fd: int, name: str) -> str:
    digest = hashlib.sha256()
    for chunk in _chunks(fd, MAX_FILE_BYTES, name):
        digest.update(chunk)
    return digest.hexdigest()


def _parse(data: bytes, name: str) -> Any:
    try:
        return strict_json(data, name)
    except JSONProblem as e:
        raise BundleProblem(str(e).removeprefix(f"{name}: "), name) from None


def read_report(path: Path) -> Report:
    """A report from a JSON file or from a bundle folder, validated against the model."""
    from pydantic import ValidationError

    path = Path(path)
    if path.is_dir():
        document = BundleReader(path).read_json(REPORT)
    else:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError as e:
            raise BundleProblem(f"cannot open: {e.strerror}", str(path)) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_JSON_BYTES:
                raise BundleProblem(f"not a plain file of at most {MAX_JSON_BYTES:,} bytes", str(path))
            document = _parse(_read_at_most(fd, MAX_JSON_BYTES, str(path)), str(path))
        finally:
            os.close(fd)
    try:
        return Report.model_validate(document)
    except ValidationError as e:
        first = e.errors()[0]
        where = "/".join(str(p) for p in first["loc"])
        raise BundleProblem(f"not a chipaudit report ({e.error_count()} problem(s); first: {where}: "
                            f"{first['msg']})", str(path)) from None
