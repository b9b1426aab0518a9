"""DSSE envelopes (Dead Simple Signing Envelope, secure-systems-lab/dsse, protocol v1).

A signature covers the pre-authentication encoding PAE(payloadType, payload), never the JSON around it,
so the type cannot be swapped under a valid signature. Several parties can sign the same payload.

The envelope is the one file of a bundle that no digest covers, so chipaudit holds it to a canonical
form: sorted keys, two-space indentation, strict base64, signatures sorted by key id, one signature per
key. Every change to the envelope's bytes, even one a lenient JSON reader would ignore (whitespace,
key order, a re-ordered or repeated signature, base64 padding bits), then makes it non-canonical and
the verification fails. DSSE treats key ids as hints; here a key id must also name the key that made
the signature, so a signature cannot be passed off as another key's.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chipaudit.evidence.keys import PublicKey, keyid_of

PAYLOAD_TYPE = "application/vnd.in-toto+json"
KEYID_HEX_LENGTH = 64


class EnvelopeProblem(ValueError):
    """An envelope that is malformed or altered."""


class JSONProblem(ValueError):
    """A JSON document that strict reading refuses."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSEv1 SP LEN(type) SP type SP LEN(body) SP body, lengths as ASCII decimal of byte counts."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: Any, what: str) -> bytes:
    """Standard base64 with padding, and only its canonical spelling (no stray bits in the padding)."""
    if not isinstance(text, str):
        raise EnvelopeProblem(f"{what} is not a base64 string")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise EnvelopeProblem(f"{what} is not valid base64") from None
    if b64encode(data) != text:
        raise EnvelopeProblem(f"{what} is not canonical base64")
    return data


def strict_json(data: bytes, what: str) -> Any:
    """Parse JSON refusing duplicate keys and non-standard numbers, which readers disagree about."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                raise JSONProblem(f"{what}: the key {key!r} appears twice")
            result[key] = value
        return result

    def constant(name: str) -> Any:
        raise JSONProblem(f"{what}: {name} is not JSON")

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant)
    except UnicodeDecodeError:
        raise JSONProblem(f"{what}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise JSONProblem(f"{what}: not valid JSON ({e.msg} at byte {e.pos})") from None
    except RecursionError:
        raise JSONProblem(f"{what}: nested too deeply") from None


def _keys(obj: Any, expected: set[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise EnvelopeProblem(f"{what} is not a JSON object")
    if set(obj) != expected:
        raise EnvelopeProblem(f"{what} has keys {sorted(obj)}, expected {sorted(expected)}")
    return obj


@dataclass(frozen=True, order=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass
class Envelope:
    payload: bytes
    payload_type: str = PAYLOAD_TYPE
    signatures: list[Signature] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        document = {
            "payload": b64encode(self.payload),
            "payloadType": self.payload_type,
            "signatures": [{"keyid": s.keyid, "sig": b64encode(s.sig)} for s in sorted(self.signatures)],
        }
        return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        try:
            document = strict_json(data, "the envelope")
        except JSONProblem as e:
            raise EnvelopeProblem(str(e)) from None
        document = _keys(document, {"payload", "payloadType", "signatures"}, "the envelope")
        if not isinstance(document["payloadType"], str):
            raise EnvelopeProblem("payloadType is not a string")
        if not isinstance(document["signatures"], list):
            raise EnvelopeProblem("signatures is not a list")
        signatures = []
        for i, entry in enumerate(document["signatures"]):
            entry = _keys(entry, {"keyid", "sig"}, f"signature {i + 1}")
            keyid = entry["keyid"]
            if not (isinstance(keyid, str) and len(keyid) == KEYID_HEX_LENGTH
                    and all(c in "0123456789abcdef" for c in keyid)):
                raise EnvelopeProblem(f"signature {i + 1}: the key id is not a lowercase sha256 hex digest")
            signatures.append(Signature(keyid, b64decode(entry["sig"], f"signature {i + 1}")))
        envelope = cls(b64decode(document["payload"], "the payload"), document["payloadType"], signatures)
        if len({s.keyid for s in signatures}) != len(signatures):
            raise EnvelopeProblem("two signatures name the same key")
        if envelope.to_bytes() != data:
            raise EnvelopeProblem("not in canonical form: the envelope was edited after it was written")
        return envelope

    def sign(self, key: Ed25519PrivateKey) -> bool:
        """Add `key`'s signature; False (and no change) when that key has already signed."""
        keyid = keyid_of(key.public_key())
        if any(s.keyid == keyid for s in self.signatures):
            return False
        self.signatures.append(Signature(keyid, key.sign(pae(self.payload_type, self.payload))))
        self.signatures.sort()
        return True


@dataclass
class SignatureCheck:
    signed_by: list[PublicKey]
    untrusted: int
    problems: list[str]

    def meets(self, threshold: int) -> bool:
        return not self.problems and len(self.signed_by) >= threshold


def check_signatures(envelope: Envelope, trusted: Iterable[PublicKey]) -> SignatureCheck:
    """Which trusted keys signed this envelope.

    A signature that claims a trusted key but does not verify, or that verifies under a trusted key
    while claiming another, means the envelope was altered: that is a problem, not merely an
    uncounted signature. Signatures by keys nobody here trusts are counted, not judged.
    """
    keys = {k.keyid: k for k in trusted}
    message = pae(envelope.payload_type, envelope.payload)
    signed_by: list[PublicKey] = []
    untrusted = 0
    problems: list[str] = []
    for s in envelope.signatures:
        claimed = keys.get(s.keyid)
        if claimed is not None:
            if claimed.verifies(s.sig, message):
                signed_by.append(claimed)
            else:
                problems.append(f"the signature claiming key {s.keyid[:16]} ({claimed.source}) does not verify")
            continue
        impostor = next((k for k in keys.values() if k.verifies(s.sig, message)), None)
        if impostor is not None:
            problems.append(f"a signature by key {impostor.keyid[:16]} is labelled as key {s.keyid[:16]}")
        else:
            untrusted += 1
    return SignatureCheck(signed_by, untrusted, problems)
