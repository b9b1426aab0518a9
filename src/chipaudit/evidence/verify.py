"""Verify a bundle, in order: signatures, files, schema, policy. The first step that fails ends it.

1. signatures: the envelope is canonical and of the in-toto payload type, and at least `threshold` of
   the trusted keys signed PAE(payloadType, payload); a signature that claims a trusted key but does
   not verify fails the step even when others meet the threshold.
2. files: the statement is well formed, `statement.json` equals the signed payload, every subject's
   file exists with its digest, and nothing else is in the bundle (no unlisted file or folder).
3. schema: the report validates against the published schema, agrees with the signed predicate, and
   its verdict follows from its own checks and findings.
4. policy: the report meets the relying party's policy, when one is given.

Whatever the bundle holds, verification ends in a list of steps and never in an exception: a bundle
that cannot be read is a bundle that failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from chipaudit.evidence import bundle as b
from chipaudit.evidence.dsse import PAYLOAD_TYPE, Envelope, EnvelopeProblem, JSONProblem, check_signatures, strict_json
from chipaudit.evidence.keys import PublicKey
from chipaudit.evidence.policy import Policy, violations
from chipaudit.report import schema
from chipaudit.report.model import Report

# Predicate fields a report must agree with; the rest of the predicate is a summary of the same report.
PREDICATE_BINDINGS = ("verdict", "complete", "level", "seed", "schema")
MAX_PROBLEMS_SHOWN = 20
INTERNAL = "internal error while checking"


class Failed(Exception):
    """A step's verdict on the bundle: everything found wrong, one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class Step:
    name: str
    ok: bool | None  # None: not reached
    detail: str = ""
    problems: list[str] = field(default_factory=list)


@dataclass
class Verification:
    steps: list[Step]
    report: Report | None = None
    envelope: Envelope | None = None

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    @property
    def failed(self) -> Step | None:
        return next((s for s in self.steps if s.ok is False), None)


def unique_keys(keys: Iterable[PublicKey]) -> list[PublicKey]:
    """The same key given twice is one trusted party, not two."""
    return list({k.keyid: k for k in keys}.values())


class _Verifier:
    def __init__(self, root: Path, trusted: list[PublicKey], threshold: int, policy: Policy | None,
                 now: datetime | None):
        self.root = root
        self.trusted, self.threshold, self.policy, self.now = unique_keys(trusted), threshold, policy, now
        self.envelope: Envelope | None = None
        self.payload = b""
        self.statement: dict[str, Any] = {}
        self.report: Report | None = None

    @cached_property
    def reader(self) -> b.BundleReader:
        return b.BundleReader(self.root)

    def read_envelope(self) -> Envelope:
        try:
            envelope = Envelope.from_bytes(self.reader.read(b.ENVELOPE))
        except EnvelopeProblem as e:
            raise Failed([f"{b.ENVELOPE}: {e}"]) from None
        if envelope.payload_type != PAYLOAD_TYPE:
            raise Failed([f"{b.ENVELOPE}: payloadType is {envelope.payload_type!r}, not {PAYLOAD_TYPE!r}"])
        self.envelope, self.payload = envelope, envelope.payload
        return envelope

    def envelope_step(self) -> str:
        envelope = self.read_envelope()
        return f"canonical envelope with {len(envelope.signatures)} signature(s)"

    def signatures(self) -> str:
        envelope = self.read_envelope()
        if not envelope.signatures:
            raise Failed([f"{b.ENVELOPE}: the bundle is not signed (chipaudit sign adds a signature)"])
        check = check_signatures(envelope, self.trusted)
        if check.problems:
            raise Failed([f"{b.ENVELOPE}: {p}" for p in check.problems])
        others = f"; {check.untrusted} signature(s) by keys not trusted here" if check.untrusted else ""
        signers = ", ".join(f"{k.keyid[:16]} ({k.source})" for k in check.signed_by) or "none"
        summary = (f"{len(check.signed_by)} of {len(self.trusted)} trusted key(s) signed, threshold "
                   f"{self.threshold}: {signers}{others}")
        if not check.meets(self.threshold):
            raise Failed([f"{b.ENVELOPE}: {summary}"])
        return summary

    def _subjects(self) -> dict[str, str]:
        try:
            st = strict_json(self.payload, "the signed statement")
        except JSONProblem as e:
            raise Failed([str(e)]) from None
        if not isinstance(st, dict) or set(st) != {"_type", "subject", "predicateType", "predicate"}:
            raise Failed(["the signed statement does not have the fields of an in-toto Statement v1"])
        if st["_type"] != b.STATEMENT_TYPE or st["predicateType"] != b.PREDICATE_TYPE:
            raise Failed([f"the signed statement is of type {st['_type']!r} / {st['predicateType']!r}, "
                          f"not a chipaudit audit ({b.STATEMENT_TYPE} / {b.PREDICATE_TYPE})"])
        if not isinstance(st["predicate"], dict) or not isinstance(st["subject"], list):
            raise Failed(["the signed statement's predicate or subject list is malformed"])
        subjects: dict[str, str] = {}
        for entry in st["subject"]:
            if not (isinstance(entry, dict) and set(entry) == {"name", "digest"} and isinstance(entry["name"], str)
                    and isinstance(entry["digest"], dict) and set(entry["digest"]) == {"sha256"}):
                raise Failed(["a subject of the signed statement is malformed"])
            name, digest = entry["name"], entry["digest"]["sha256"]
            try:
                b.check_name(name)
            except b.BundleProblem as e:
                raise Failed([f"the signed statement lists a file outside the rules: {e}"]) from None
            if name in subjects or name in b.UNSIGNED:
                raise Failed([f"the signed statement lists {name} twice or as a subject it cannot be"])
            if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
                raise Failed([f"the signed statement's digest of {name} is not a sha256 hex digest"])
            subjects[name] = digest
        if b.REPORT not in subjects:
            raise Failed([f"the signed statement does not list {b.REPORT}"])
        self.statement = st
        return subjects

    def files(self) -> str:
        subjects = self._subjects()
        problems: list[str] = []
        if self.reader.read(b.STATEMENT) != self.payload:
            problems.append(f"{b.STATEMENT}: differs from the signed statement in the envelope")
        listing = self.reader.listing()
        for name, digest in subjects.items():
            if name not in listing.files:
                problems.append(f"{name}: listed in the signed statement but missing")
            elif self.reader.sha256(name) != digest:
                problems.append(f"{name}: sha256 does not match the signed statement (the file was changed)")
        expected = set(subjects) | set(b.UNSIGNED)
        for name in sorted(listing.files - expected):
            problems.append(f"{name}: not listed in the signed statement")
        folders = {"/".join(n.split("/")[:i]) for n in expected for i in range(1, n.count("/") + 1)}
        for name in sorted(listing.dirs - folders):
            problems.append(f"{name}/: a folder the signed statement does not account for")
        if problems:
            raise Failed(problems)
        return f"{len(subjects)} file(s) match their signed sha256 digests; nothing unlisted"

    def schema(self) -> str:
        document = self.reader.read_json(b.REPORT)
        problems = [f"{b.REPORT}: {p}" for p in schema.problems(document)]
        if problems:
            raise Failed(problems)
        report = Report.model_validate(document)
        signed = self.statement["predicate"]
        recorded = b.predicate(report)
        for key in PREDICATE_BINDINGS:
            if signed.get(key) != recorded[key]:
                problems.append(f"{b.REPORT}: {key} is {recorded[key]!r} but the signed predicate says "
                                f"{signed.get(key)!r}")
        if report.verdict is not report.derive_verdict():
            problems.append(f"{b.REPORT}: the verdict {report.verdict.value} does not follow from its checks "
                            f"and findings ({report.derive_verdict().value})")
        if problems:
            raise Failed(problems)
        self.report = report
        return f"{report.schema_}; verdict {report.verdict.value} follows from {len(report.checks)} check(s)"

    def policy_step(self) -> str:
        if self.policy is None:
            return "no policy given"
        assert self.report is not None
        found = violations(self.policy, self.report, self.now)
        if found:
            raise Failed(found)
        return "the report meets the policy"


def _run(verifier: _Verifier, actions: dict[str, Callable[[], str]]) -> Verification:
    steps: list[Step] = []
    for name, action in actions.items():
        if steps and not steps[-1].ok:
            steps.append(Step(name, None))
            continue
        try:
            steps.append(Step(name, True, action()))
        except Failed as e:
            steps.append(Step(name, False, problems=e.problems[:MAX_PROBLEMS_SHOWN]
                              + ([f"... and {len(e.problems) - MAX_PROBLEMS_SHOWN} more"]
                                 if len(e.problems) > MAX_PROBLEMS_SHOWN else [])))
        except b.BundleProblem as e:
            steps.append(Step(name, False, problems=[str(e)]))
        except OSError as e:
            steps.append(Step(name, False, problems=[f"cannot read the bundle: {e}"]))
        except Exception as e:  # hostile input must end in a failed step, never in a traceback
            steps.append(Step(name, False, problems=[f"{INTERNAL}: {type(e).__name__}: {e}"[:300]]))
    return Verification(steps, verifier.report, verifier.envelope)


def verify(root: Path, trusted: list[PublicKey], threshold: int = 1, policy: Policy | None = None,
           now: datetime | None = None) -> Verification:
    v = _Verifier(root, trusted, threshold, policy, now)
    return _run(v, {"signatures": v.signatures, "files": v.files, "schema": v.schema, "policy": v.policy_step})


def integrity(root: Path) -> Verification:
    """Steps 2 and 3 (and a well-formed envelope) without asking who signed: what a signer checks
    before adding a signature, so that nobody signs a damaged bundle."""
    v = _Verifier(root, [], 0, None, None)
    return _run(v, {"envelope": v.envelope_step, "files": v.files, "schema": v.schema})
