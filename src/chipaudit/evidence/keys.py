"""Ed25519 signing keys: making, loading and naming them.

Each party that signs a bundle (the auditor, the vendor, a witness) holds its own key pair; a verifier
trusts public keys, never a shared secret. Private keys are PKCS#8 PEM files, encrypted with the best
scheme the `cryptography` library offers when a passphrase is given; public keys are SubjectPublicKeyInfo
PEM files (an OpenSSH `ssh-ed25519` line is accepted too).

A key is named by its key id: the sha256 of its 32 raw public bytes, in hex. The id is what envelopes
record, so a verifier can match signatures to the keys it trusts.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
# A PEM key is a few hundred bytes; anything much larger is not a key.
MAX_KEY_FILE_BYTES = 64 * 1024


class KeyProblem(ValueError):
    """A key that cannot be used as given (missing, malformed, wrong passphrase): a usage error."""


def keyid_of(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class PublicKey:
    key: Ed25519PublicKey
    keyid: str
    source: str

    def verifies(self, signature: bytes, data: bytes) -> bool:
        try:
            self.key.verify(signature, data)
        except InvalidSignature:
            return False
        return True


def passphrase_from_env(name: str | None) -> bytes | None:
    """The passphrase held in environment variable `name`; never taken from the command line, where
    other users could read it in the process list."""
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise KeyProblem(f"--passphrase-env {name}: the environment variable {name} is not set or empty")
    return value.encode()


def _read(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_KEY_FILE_BYTES:
            raise KeyProblem(f"{path}: {size} bytes is too large to be a key")
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyProblem(f"{path}: no such key file") from None
    except OSError as e:
        raise KeyProblem(f"{path}: cannot read the key: {e.strerror or e}") from None


def _create(path: Path, data: bytes, mode: int) -> None:
    """Create a new file with `mode` from the start, so the key is never readable by others, even briefly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def generate(prefix: Path, passphrase: bytes | None) -> tuple[Path, Path, str]:
    """Write PREFIX.key (mode 0600) and PREFIX.pub; return both paths and the key id."""
    private_path = prefix.with_name(prefix.name + PRIVATE_SUFFIX)
    public_path = prefix.with_name(prefix.name + PUBLIC_SUFFIX)
    if not private_path.parent.is_dir():
        raise KeyProblem(f"--out {prefix}: the folder {private_path.parent} does not exist")
    for path in (private_path, public_path):
        if path.exists():
            raise KeyProblem(f"{path} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        _create(private_path, private_pem, 0o600)
        _create(public_path, public_pem, 0o644)
    except FileExistsError as e:
        raise KeyProblem(f"{e.filename} already exists; refusing to overwrite a key") from None
    return private_path, public_path, keyid_of(key.public_key())


def load_private(path: Path, passphrase: bytes | None) -> Ed25519PrivateKey:
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        # cryptography's way of saying the passphrase was needed but absent, or given but not needed.
        if passphrase is None:
            raise KeyProblem(f"{path}: the key is encrypted; give its passphrase with --passphrase-env NAME") \
                from None
        raise KeyProblem(f"{path}: the key is not encrypted; drop --passphrase-env") from None
    except (ValueError, UnsupportedAlgorithm):
        if passphrase is not None and b"ENCRYPTED" in data:
            raise KeyProblem(f"{path}: wrong passphrase") from None
        raise KeyProblem(f"{path}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyProblem(f"{path}: not an Ed25519 key (chipaudit signs with Ed25519)")
    return key


def load_public(path: Path) -> PublicKey:
    data = _read(path)
    try:
        if data.lstrip().startswith(b"ssh-"):
            key = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        hint = " (that is a private key: give its .pub)" if b"PRIVATE KEY" in data else ""
        raise KeyProblem(f"{path}: not a public key{hint}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyProblem(f"{path}: not an Ed25519 public key")
    return PublicKey(key, keyid_of(key), str(path))
