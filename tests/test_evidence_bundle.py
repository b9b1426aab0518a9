"""Bundles, keys, signatures, policies and hostile bundles, through the library and the CLI."""

from __future__ import annotations

import json
import os
import pickle
import stat
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import chipaudit, cli_env
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from evidence_support import copy_bundle, make_key, restate, sign, signed_bundle, synthetic_report

from chipaudit.evidence import bundle, dsse, keys, policy
from chipaudit.evidence.verify import INTERNAL, verify
from chipaudit.report.model import Level


def test_pae_matches_the_dsse_specification() -> None:
    # The worked example of the DSSE protocol document.
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert dsse.pae("", b"") == b"DSSEv1 0  0 "


def test_bundle_layout_and_statement(tmp_path: Path) -> None:
    root = bundle.write_bundle(synthetic_report(), tmp_path / "b", {"evidence/sensors/log.txt": b"hello\n"})
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == sorted([
        "report.json", "attestation/statement.json", "attestation/envelope.dsse.json", "evidence/sensors/log.txt",
        "evidence/checks/integrity.gemm.fp32.json", "evidence/checks/integrity.gemm.tf32.json",
        "evidence/checks/integrity.gemm.bf16.json", "evidence/checks/performance.burnin.json",
    ])
    statement = json.loads((root / bundle.STATEMENT).read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == bundle.PREDICATE_TYPE
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert set(subjects) == set(files) - set(bundle.UNSIGNED)
    assert all(subjects[n] == bundle.sha256_hex((root / n).read_bytes()) for n in subjects)
    predicate = statement["predicate"]
    assert predicate["verdict"] == "pass" and predicate["level"] == "quick" and predicate["seed"] == 1234
    assert predicate["device"]["spec"] == "cpu" and predicate["tool"]["version"] == "0.1.0"
    assert predicate["checks"]["counts"] == {"passed": 2, "skipped": 1, "warning": 1}
    envelope = dsse.Envelope.from_bytes((root / bundle.ENVELOPE).read_bytes())
    assert envelope.payload == (root / bundle.STATEMENT).read_bytes() and envelope.signatures == []
    per_check = json.loads((root / "evidence/checks/integrity.gemm.bf16.json").read_text())
    assert per_check["result"]["status"] == "warning" and len(per_check["findings"]) == 1


def test_write_bundle_refuses_a_used_folder_and_names_outside_evidence(tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        bundle.write_bundle(synthetic_report(), tmp_path / "used")
    for name in ("../escape", "report.json", "evidence/../x", "/abs", "evidence/checks/integrity.gemm.fp32.json"):
        with pytest.raises((ValueError, bundle.BundleProblem)):
            bundle.write_bundle(synthetic_report(), tmp_path / "new", {name: b"x"})
    assert not (tmp_path / "new").exists()


def test_threshold_counts_distinct_trusted_keys(tmp_path: Path) -> None:
    a, b, c = (make_key(tmp_path, n) for n in "abc")
    root = signed_bundle(tmp_path / "b", synthetic_report(), a)
    assert verify(root, [a.public]).ok
    assert verify(root, [a.public, b.public], threshold=1).ok
    assert not verify(root, [a.public, b.public], threshold=2).ok
    assert not verify(root, [b.public]).ok
    sign(root, c)  # a witness nobody here trusts may add a signature; it changes nothing
    result = verify(root, [a.public])
    assert result.ok and "1 signature(s) by keys not trusted here" in result.steps[0].detail
    sign(root, b)
    assert verify(root, [a.public, b.public], threshold=2).ok
    # The same key given twice is one party.
    assert not verify(root, [a.public, a.public, c.public], threshold=3).ok


def test_signing_twice_with_one_key_adds_nothing(tmp_path: Path) -> None:
    a = make_key(tmp_path, "a")
    root = signed_bundle(tmp_path / "b", synthetic_report(), a)
    before = (root / bundle.ENVELOPE).read_bytes()
    p = chipaudit("sign", str(root), "--key", str(a.private_path))
    assert p.returncode == 0 and "already signed" in p.stdout
    assert (root / bundle.ENVELOPE).read_bytes() == before


def test_duplicate_and_mislabelled_signatures_are_refused(tmp_path: Path) -> None:
    a, b = make_key(tmp_path, "a"), make_key(tmp_path, "b")
    root = signed_bundle(tmp_path / "b", synthetic_report(), a)
    envelope = dsse.Envelope.from_bytes((root / bundle.ENVELOPE).read_bytes())
    only = envelope.signatures[0]
    for signatures in ([only, only], [dsse.Signature(b.public.keyid, only.sig)]):
        envelope.signatures = signatures
        (root / bundle.ENVELOPE).write_bytes(envelope.to_bytes())
        result = verify(root, [a.public, b.public], threshold=1)
        assert not result.ok and result.failed is not None and result.failed.name == "signatures"


def test_sign_refuses_a_damaged_bundle(tmp_path: Path) -> None:
    a = make_key(tmp_path, "a")
    root = bundle.write_bundle(synthetic_report(), tmp_path / "b")
    (root / "report.json").write_text((root / "report.json").read_text().replace('"pass"', '"fail"'))
    p = chipaudit("sign", str(root), "--key", str(a.private_path))
    assert p.returncode == 1, p.stderr
    assert "refusing to sign" in p.stderr and "report.json" in p.stderr
    assert dsse.Envelope.from_bytes((root / bundle.ENVELOPE).read_bytes()).signatures == []


# --- keys -----------------------------------------------------------------------------------------------


def test_keygen_makes_a_private_0600_key_encrypted_with_a_passphrase(tmp_path: Path) -> None:
    env = cli_env({"PASS": "correct horse"})
    p = chipaudit("keygen", "--out", str(tmp_path / "auditor"), "--passphrase-env", "PASS", env=env)
    assert p.returncode == 0, p.stderr
    private, public = tmp_path / "auditor.key", tmp_path / "auditor.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in private.read_bytes()
    assert keys.load_public(public).keyid in p.stdout
    with pytest.raises(keys.KeyProblem, match="wrong passphrase"):
        keys.load_private(private, b"wrong")
    assert keys.load_private(private, b"correct horse").public_key() is not None
    again = chipaudit("keygen", "--out", str(tmp_path / "auditor"))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


def _rsa_files(tmp_path: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = tmp_path / "rsa.key", tmp_path / "rsa.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def test_key_problems_are_one_line_usage_errors(tmp_path: Path) -> None:
    a = make_key(tmp_path, "a")
    root = signed_bundle(tmp_path / "b", synthetic_report(), a)
    enc = tmp_path / "enc"
    keys.generate(enc, b"secret")
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    rsa_private, rsa_public = _rsa_files(tmp_path)
    env = cli_env({"WRONG": "nope", "RIGHT": "secret"})
    cases = [
        (["sign", str(root), "--key", str(enc) + ".key", "--passphrase-env", "WRONG"], "wrong passphrase"),
        (["sign", str(root), "--key", str(enc) + ".key"], "encrypted"),
        (["sign", str(root), "--key", str(enc) + ".key", "--passphrase-env", "UNSET_VARIABLE"], "not set"),
        (["sign", str(root), "--key", str(a.private_path), "--passphrase-env", "RIGHT"], "not encrypted"),
        (["sign", str(root), "--key", str(rsa_private)], "not an Ed25519 key"),
        (["sign", str(root), "--key", str(tmp_path / "missing.key")], "no such key file"),
        (["verify", str(root), "--pubkey", str(garbage)], "not a public key"),
        (["verify", str(root), "--pubkey", str(a.private_path)], "private key"),
        (["verify", str(root), "--pubkey", str(rsa_public)], "not an Ed25519 public key"),
        (["verify", str(root), "--pubkey", str(a.public_path), "--threshold", "2"], "--threshold 2"),
        (["verify", str(tmp_path / "nope"), "--pubkey", str(a.public_path)], "no such file"),
        (["verify", str(root), "--pubkey", str(a.public_path), "--policy", str(tmp_path / "no.json")], "no such"),
    ]
    for args, message in cases:
        p = chipaudit(*args, env=env)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert message in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_an_openssh_public_key_is_accepted(tmp_path: Path) -> None:
    a = make_key(tmp_path, "a")
    line = a.public.key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    (tmp_path / "a.ssh.pub").write_bytes(line + b" auditor@example\n")
    assert keys.load_public(tmp_path / "a.ssh.pub").keyid == a.public.keyid


# --- hostile bundles ---------------------------------------------------------------------------------------


@pytest.fixture
def trusted(tmp_path: Path) -> tuple[Path, object]:
    a = make_key(tmp_path, "a")
    return signed_bundle(tmp_path / "b", synthetic_report(), a), a


@pytest.mark.parametrize("name", ["../outside.json", "/etc/passwd", "evidence/../../outside.json",
                                  "evidence/./x.json", "evidence\\..\\x", "evidence//x", "x\x00y", "ev il"])
def test_signed_names_that_escape_the_bundle_are_refused(tmp_path: Path, trusted: tuple[Path, object],
                                                         name: str) -> None:
    root, a = trusted
    (tmp_path / "outside.json").write_text("{}")

    def edit(statement: dict) -> None:  # type: ignore[type-arg]
        statement["subject"].append({"name": name, "digest": {"sha256": bundle.sha256_hex(b"{}")}})
    restate(root, edit, a)  # type: ignore[arg-type]
    result = verify(root, [a.public])  # type: ignore[attr-defined]
    assert result.failed is not None and result.failed.name == "files"
    assert "outside the rules" in " ".join(result.failed.problems)


def test_links_and_special_files_are_refused(tmp_path: Path, trusted: tuple[Path, object]) -> None:
    root, a = trusted
    outside = tmp_path / "outside"
    (root / "evidence" / "checks").rename(outside)
    os.symlink(outside, root / "evidence" / "checks")  # the same files, reached through a linked folder
    result = verify(root, [a.public])  # type: ignore[attr-defined]
    assert result.failed is not None and "symbolic link" in " ".join(result.failed.problems)
    os.unlink(root / "evidence" / "checks")
    outside.rename(root / "evidence" / "checks")
    assert verify(root, [a.public]).ok  # type: ignore[attr-defined]
    os.mkfifo(root / "evidence" / "pipe")
    t0 = time.monotonic()
    result = verify(root, [a.public])  # type: ignore[attr-defined]
    assert time.monotonic() - t0 < 5 and result.failed is not None
    assert "evidence/pipe" in " ".join(result.failed.problems)


def test_oversized_files_are_refused_before_being_read(tmp_path: Path, trusted: tuple[Path, object]) -> None:
    root, a = trusted
    huge = root / "evidence" / "huge.bin"
    with open(huge, "wb") as f:  # sparse: costs no disk, but reading it whole would take minutes
        f.truncate(bundle.MAX_FILE_BYTES + 1)

    def edit(statement: dict) -> None:  # type: ignore[type-arg]
        statement["subject"].append({"name": "evidence/huge.bin", "digest": {"sha256": "0" * 64}})
    restate(root, edit, a)  # type: ignore[arg-type]
    t0 = time.monotonic()
    result = verify(root, [a.public])  # type: ignore[attr-defined]
    assert time.monotonic() - t0 < 2
    assert result.failed is not None and "over the limit" in " ".join(result.failed.problems)
    envelope = root / bundle.ENVELOPE
    with open(envelope, "r+b") as f:
        f.truncate(bundle.MAX_JSON_BYTES + 1)
    t0 = time.monotonic()
    result = verify(root, [a.public])  # type: ignore[attr-defined]
    assert time.monotonic() - t0 < 2
    assert result.failed is not None and result.failed.name == "signatures"
    assert "over the limit" in " ".join(result.failed.problems)


class _Trap:
    """Unpickling this would create the file named by MARK."""

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (os.environ["CHIPAUDIT_TEST_MARK"], "w"))


def test_nothing_in_a_bundle_is_unpickled_or_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = make_key(tmp_path, "a")
    mark = tmp_path / "mark"
    monkeypatch.setenv("CHIPAUDIT_TEST_MARK", str(mark))
    root = signed_bundle(tmp_path / "b", synthetic_report(), a, extra_files={
        "evidence/state.pkl": pickle.dumps(_Trap()),
        "evidence/sitecustomize.py": f"open({str(mark)!r}, 'w')\n".encode(),
    })
    for args in (["verify", str(root), "--pubkey", str(a.public_path)], ["report", str(root), "--junit",
                                                                         str(tmp_path / "j.xml")]):
        p = chipaudit(*args, cwd=root / "evidence")
        assert p.returncode == 0, p.stderr
    assert not mark.exists()


def test_verify_never_raises_on_garbage(tmp_path: Path) -> None:
    a = make_key(tmp_path, "a")
    root = tmp_path / "b"
    (root / "attestation").mkdir(parents=True)
    for content in (b"", b"[]", b"{}", b'{"payload": 1, "payloadType": [], "signatures": {}}', b"\xff\xfe",
                    b"[" * 100_000, b'{"a": NaN}'):
        (root / bundle.ENVELOPE).write_bytes(content)
        result = verify(root, [a.public])
        assert result.failed is not None and result.failed.name == "signatures"
        assert INTERNAL not in " ".join(result.failed.problems), result.failed.problems
    p = chipaudit("verify", str(root), "--pubkey", str(a.public_path))
    assert p.returncode == 1 and "Traceback" not in p.stderr


# --- policy ---------------------------------------------------------------------------------------------


def test_policy_rules(tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    report = synthetic_report(level=Level.standard, finished=now - timedelta(days=3))
    ok = policy.Policy(required_checks=["integrity.gemm.fp32", "performance"], min_level=Level.standard,
                       max_age_days=7, verdicts=["pass"])
    assert policy.violations(ok, report, now) == []
    strict = policy.Policy(required_checks=["integrity.gemm.tf32", "integrity.gemm.fp64", "integrity"],
                           min_level=Level.deep, max_age_days=1, verdicts=["fail"])
    found = policy.violations(strict, report, now)
    assert len(found) == 5, found
    assert any("tf32 did not run" in f and "skipped" in f for f in found)
    assert any("integrity.gemm.fp64 did not run: not in this audit" in f for f in found)
    assert not any(f.startswith("required check integrity:") for f in found)  # fp32 passed, none failed
    failing = synthetic_report(failing=True)
    assert any("integrity.gemm.bf16 failed" in f
               for f in policy.violations(policy.Policy(required_checks=["integrity"]), failing, now))
    future = synthetic_report(finished=now + timedelta(hours=1))
    assert "future" in policy.violations(policy.Policy(max_age_days=1), future, now)[0]


def test_policy_through_verify_and_bad_policy_files(tmp_path: Path) -> None:
    a = make_key(tmp_path, "a")
    root = signed_bundle(tmp_path / "b", synthetic_report(), a)
    good, bad, typo, broken = (tmp_path / f"{n}.json" for n in ("good", "bad", "typo", "broken"))
    good.write_text(json.dumps({"required_checks": ["integrity.gemm.fp32"], "max_age_days": 1}))
    bad.write_text(json.dumps({"min_level": "deep"}))
    typo.write_text(json.dumps({"required_check": ["x"]}))
    broken.write_text("{")
    assert chipaudit("verify", str(root), "--pubkey", str(a.public_path), "--policy", str(good)).returncode == 0
    p = chipaudit("verify", str(root), "--pubkey", str(a.public_path), "--policy", str(bad))
    assert p.returncode == 1 and "step policy" in p.stderr and "below the required deep" in p.stderr
    for path in (typo, broken):
        p = chipaudit("verify", str(root), "--pubkey", str(a.public_path), "--policy", str(path))
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_schema_step_catches_a_signed_but_inconsistent_report(tmp_path: Path) -> None:
    a = make_key(tmp_path, "a")
    root = signed_bundle(tmp_path / "b", synthetic_report(failing=True), a)
    document = json.loads((root / "report.json").read_text())
    document["verdict"] = "pass"  # a verdict its own findings contradict, signed anyway
    data = (json.dumps(document, indent=2) + "\n").encode()
    (root / "report.json").write_bytes(data)

    def edit(statement: dict) -> None:  # type: ignore[type-arg]
        statement["predicate"]["verdict"] = "pass"
        next(s for s in statement["subject"] if s["name"] == "report.json")["digest"]["sha256"] = \
            bundle.sha256_hex(data)
    restate(root, edit, a)
    result = verify(root, [a.public])
    assert result.failed is not None and result.failed.name == "schema"
    assert "does not follow from its checks" in " ".join(result.failed.problems)


def test_copies_of_a_bundle_verify_alike(tmp_path: Path) -> None:
    a = make_key(tmp_path, "a")
    root = signed_bundle(tmp_path / "b", synthetic_report(), a)
    assert verify(copy_bundle(root, tmp_path / "copy"), [a.public]).ok


PLUGIN = '''
from chipaudit.checks.base import Check, Outcome
from chipaudit.evidence.bundle import check_evidence_dir
from chipaudit.report.model import Category


class Logger(Check):
    id = "behaviour.logger"
    category = Category.behaviour

    def run(self, ctx):
        folder = check_evidence_dir(ctx.params, self.id)
        if folder is not None:
            (folder / "trace.log").write_text("openat(AT_FDCWD, ...) = 3\\n")
        return Outcome(coverage={"wrote_log": folder is not None})


CHECKS = [Logger()]
'''


@pytest.mark.slow
def test_checks_can_leave_raw_evidence_in_the_bundle(tmp_path: Path) -> None:
    (tmp_path / "evidence_plugin.py").write_text(PLUGIN)
    env = cli_env({"CHIPAUDIT_CHECK_MODULES": "evidence_plugin", "PYTHONPATH": str(tmp_path)})
    root = tmp_path / "B"
    p = chipaudit("run", "--device", "cpu", "--level", "quick", "--only", "behaviour.logger", "--bundle", str(root),
                  env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (root / "evidence/behaviour.logger/trace.log").read_text().startswith("openat")
    statement = json.loads((root / bundle.STATEMENT).read_text())
    assert "evidence/behaviour.logger/trace.log" in {s["name"] for s in statement["subject"]}
    a = make_key(tmp_path, "a")
    sign(root, a)
    assert verify(root, [a.public]).ok
