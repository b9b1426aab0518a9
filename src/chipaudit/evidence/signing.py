"""Adding a signature to a bundle.

A signer checks the bundle first: every file against its digest and the report against the schema,
so that no party ever puts its name to a damaged bundle. The signature goes into the envelope, which
is rewritten atomically; the statement and the evidence are never touched.
"""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chipaudit.evidence.bundle import ENVELOPE, BundleProblem
from chipaudit.evidence.keys import keyid_of
from chipaudit.evidence.verify import Verification, integrity
from chipaudit.report.model import write_atomic


def sign_bundle(root: Path, key: Ed25519PrivateKey) -> tuple[bool, str, Verification]:
    """(added, key id, the integrity check); added is False when this key had already signed.

    Raises BundleProblem, naming the step that failed, when the bundle is damaged.
    """
    checked = integrity(root)
    failed = checked.failed
    if failed is not None or checked.envelope is None:
        problems = failed.problems if failed else ["no envelope"]
        raise BundleProblem(f"refusing to sign: {failed.name if failed else 'envelope'} check failed: "
                            + "; ".join(problems))
    added = checked.envelope.sign(key)
    if added:
        path = Path(root) / ENVELOPE
        write_atomic(path, checked.envelope.to_bytes().decode("ascii"), mode=stat.S_IMODE(path.stat().st_mode))
    return added, keyid_of(key.public_key()), checked
