"""Tampering: every way of altering a signed bundle is caught.

One bundle is signed by two trusted keys (threshold 2) and copied for each example; hypothesis then
flips bytes, truncates, adds, removes and replaces files, edits the payload or its type, reorders,
duplicates, relabels or forges signatures, re-signs with an untrusted key, or swaps a file for a link.
Not one of at least MIN_EXAMPLES mutated bundles may verify, and each failure must be a clean step
failure (never an internal error), naming the file where a file was changed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from evidence_support import KeyPair, copy_bundle, make_key, restate, signed_bundle, synthetic_report
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chipaudit.evidence import bundle, dsse
from chipaudit.evidence.verify import INTERNAL, Verification, verify

MIN_EXAMPLES = 1000


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("tamper")
    a, b, c = (make_key(root, name) for name in ("a", "b", "untrusted"))
    base = signed_bundle(root / "bundle", synthetic_report(), a, b,
                         extra_files={"evidence/sensors/trace.log": b"openat(...) = 3\n" * 20})
    files = sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
    return {"base": base, "a": a, "b": b, "c": c, "files": files}


def _verify(root: Path, world: dict[str, object]) -> Verification:
    a, b = world["a"], world["b"]
    assert isinstance(a, KeyPair) and isinstance(b, KeyPair)
    return verify(root, [a.public, b.public], threshold=2)


def test_the_unaltered_bundle_verifies(world: dict[str, object]) -> None:
    result = _verify(world["base"], world)  # type: ignore[arg-type]
    assert result.ok, result.steps


def _envelope_document(root: Path) -> dict[str, object]:
    return json.loads((root / bundle.ENVELOPE).read_bytes())


def _write_document(root: Path, document: dict[str, object], **dump: object) -> None:
    (root / bundle.ENVELOPE).write_text(json.dumps(document, **dump) + "\n")  # type: ignore[arg-type]


def mutations(world: dict[str, object]) -> st.SearchStrategy[tuple[str, Callable[[Path], str | None]]]:
    """(description, mutate(root) -> the file that must be named in the failure, or None)."""
    files: list[str] = world["files"]  # type: ignore[assignment]
    a, b, c = world["a"], world["b"], world["c"]
    assert isinstance(a, KeyPair) and isinstance(b, KeyPair) and isinstance(c, KeyPair)

    def flip(name: str, where: float, bits: int) -> tuple[str, Callable[[Path], str | None]]:
        def go(root: Path) -> str:
            data = bytearray((root / name).read_bytes())
            data[min(int(where * len(data)), len(data) - 1)] ^= bits
            (root / name).write_bytes(bytes(data))
            return name
        return f"flip {bits:#x} at {where:.3f} of {name}", go

    def truncate(name: str, keep: float) -> tuple[str, Callable[[Path], str | None]]:
        def go(root: Path) -> str:
            data = (root / name).read_bytes()
            (root / name).write_bytes(data[:int(keep * len(data))])
            return name
        return f"truncate {name} to {keep:.3f}", go

    def add(name: str, content: bytes) -> tuple[str, Callable[[Path], str | None]]:
        def go(root: Path) -> str:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(content)
            return name
        return f"add {name}", go

    def remove(name: str) -> tuple[str, Callable[[Path], str | None]]:
        def go(root: Path) -> str:
            (root / name).unlink()
            return name
        return f"remove {name}", go

    def link(name: str) -> tuple[str, Callable[[Path], str | None]]:
        def go(root: Path) -> str:
            outside = Path(tempfile.mkdtemp()) / "same-content"
            shutil.copyfile(root / name, outside)
            (root / name).unlink()
            os.symlink(outside, root / name)
            return name
        return f"replace {name} by a link to identical content", go

    def payload_edit(edit: str) -> tuple[str, Callable[[Path], str | None]]:
        def go(root: Path) -> None:
            document = _envelope_document(root)
            statement = json.loads(base64.b64decode(document["payload"]))  # type: ignore[arg-type]
            if edit == "verdict":
                statement["predicate"]["verdict"] = "fail"
            elif edit == "digest":
                statement["subject"][0]["digest"]["sha256"] = "0" * 64
            elif edit == "drop-subject":
                statement["subject"].pop()
            ending = b" " if edit == "whitespace" else b"\n"
            payload = json.dumps(statement, indent=2, sort_keys=True).encode() + ending
            document["payload"] = base64.b64encode(payload).decode()
            (root / bundle.STATEMENT).write_bytes(payload)
            _write_document(root, document, indent=2, sort_keys=True)
        return f"payload: {edit}", go

    def payload_type(kind: str) -> tuple[str, Callable[[Path], str | None]]:
        def go(root: Path) -> None:
            document = _envelope_document(root)
            document["payloadType"] = kind
            _write_document(root, document, indent=2, sort_keys=True)
        return f"payloadType {kind!r}", go

    def signatures(how: str) -> tuple[str, Callable[[Path], str | None]]:
        def go(root: Path) -> None:
            document = _envelope_document(root)
            sigs: list[dict[str, str]] = document["signatures"]  # type: ignore[assignment]
            envelope = dsse.Envelope.from_bytes((root / bundle.ENVELOPE).read_bytes())
            forged = c.private.sign(dsse.pae(envelope.payload_type, envelope.payload))
            if how == "reorder":
                sigs.reverse()
            elif how == "duplicate-first":
                sigs[1] = dict(sigs[0])
            elif how == "duplicate-extra":
                sigs.append(dict(sigs[0]))
            elif how == "drop":
                sigs.pop()
            elif how == "untrusted-replaces":
                sigs[1] = {"keyid": c.public.keyid, "sig": base64.b64encode(forged).decode()}
            elif how == "untrusted-claims-trusted":
                sigs[1] = {"keyid": sigs[1]["keyid"], "sig": base64.b64encode(forged).decode()}
            elif how == "swap-labels":
                sigs[0]["keyid"], sigs[1]["keyid"] = sigs[1]["keyid"], sigs[0]["keyid"]
            elif how == "none":
                sigs.clear()
            document["signatures"] = sigs
            _write_document(root, document, indent=2, sort_keys=True)
        return f"signatures: {how}", go

    def resign_untrusted(root: Path) -> None:
        report = json.loads((root / bundle.REPORT).read_text())
        report["verdict"] = "fail"
        data = (json.dumps(report, indent=2) + "\n").encode()
        (root / bundle.REPORT).write_bytes(data)

        def edit(statement: dict[str, list[dict[str, dict[str, str]]]]) -> None:
            for subject in statement["subject"]:
                if subject["name"] == bundle.REPORT:
                    subject["digest"]["sha256"] = bundle.sha256_hex(data)
        restate(root, edit, c)

    def reformat(style: str) -> tuple[str, Callable[[Path], str | None]]:
        def go(root: Path) -> None:
            document = _envelope_document(root)
            if style == "compact":
                _write_document(root, document, separators=(",", ":"), sort_keys=True)
            elif style == "indent4":
                _write_document(root, document, indent=4, sort_keys=True)
            elif style == "key-order":
                _write_document(root, dict(reversed(list(document.items()))), indent=2)
            elif style == "escaped":
                text = (root / bundle.ENVELOPE).read_text().replace('"payloadType"', '"payload\\u0054ype"')
                (root / bundle.ENVELOPE).write_text(text)
        return f"envelope reformatted: {style}", go

    name = st.sampled_from(files)
    unit = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
    new_names = st.sampled_from(["extra.json", "evidence/extra.log", "evidence/checks/extra.json",
                                 "attestation/extra.json", ".hidden", "evidence/sensors/more.log",
                                 "evidence/new/folder/file.bin", "sitecustomize.py"])
    return st.one_of(
        st.builds(flip, name, unit, st.integers(1, 255)),
        st.builds(truncate, name, unit),
        st.builds(add, new_names, st.binary(max_size=64)),
        st.builds(remove, name),
        st.builds(link, name),
        st.builds(payload_edit, st.sampled_from(["verdict", "digest", "drop-subject", "whitespace"])),
        st.builds(payload_type, st.sampled_from(["application/json", dsse.PAYLOAD_TYPE + " ",
                                                 "application/vnd.in-toto+json; v=2", ""])),
        st.builds(signatures, st.sampled_from(["reorder", "duplicate-first", "duplicate-extra", "drop",
                                               "untrusted-replaces", "untrusted-claims-trusted",
                                               "swap-labels", "none"])),
        st.just(("re-signed by an untrusted key after changing the verdict", resign_untrusted)),
        st.builds(reformat, st.sampled_from(["compact", "indent4", "key-order", "escaped"])),
    )


def test_no_mutation_of_a_signed_bundle_verifies(world: dict[str, object], tmp_path: Path) -> None:
    examples: list[str] = []

    @settings(max_examples=MIN_EXAMPLES + 200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutations(world))
    def check(mutation: tuple[str, Callable[[Path], str | None]]) -> None:
        description, mutate = mutation
        root = copy_bundle(world["base"], Path(tempfile.mkdtemp(dir=tmp_path)) / "b")  # type: ignore[arg-type]
        named = mutate(root)
        result = _verify(root, world)
        failed = result.failed
        assert not result.ok and failed is not None, f"accepted: {description}"
        text = " ".join(failed.problems)
        assert INTERNAL not in text, f"{description}: {text}"
        if named is not None:
            assert named in text, f"{description}: the failure does not name {named}: {text}"
        examples.append(description)
        shutil.rmtree(root.parent)

    check()
    kinds = {e.split(" ")[0] for e in examples}
    print(f"tamper examples: {len(examples)}, all rejected; kinds: {sorted(kinds)}")
    assert len(examples) >= MIN_EXAMPLES
    assert {"flip", "truncate", "add", "remove", "replace", "payload:", "payloadType", "signatures:",
            "re-signed", "envelope"} <= kinds
