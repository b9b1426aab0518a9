"""Evidence commands: keygen, sign, verify, schema."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from chipaudit.cli.common import (
    FAIL,
    Kind,
    PassphraseEnv,
    UsageError,
    app,
    check_outputs,
    existing,
    say,
    stop,
    usage_errors,
)


@app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="Write PREFIX.key (private, mode 0600) and PREFIX.pub.",
                                      metavar="PREFIX")],
    passphrase_env: PassphraseEnv = None,
) -> None:
    """Make an Ed25519 key pair for signing bundles.

    Example: AUDIT_PASS=... chipaudit keygen --out auditor --passphrase-env AUDIT_PASS
    """
    from chipaudit.evidence import keys

    check_outputs((out, "--out", Kind.prefix))
    with usage_errors(keys.KeyProblem):
        private, public, keyid = keys.generate(out, keys.passphrase_from_env(passphrase_env))
    say(f"private key: {private}{' (encrypted)' if passphrase_env else ''}\npublic key:  {public}\n"
        f"key id:      {keyid}")


@app.command()
def sign(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder written by chipaudit run --bundle.")],
    key: Annotated[Path, typer.Option(help="Your private key (from chipaudit keygen).")],
    passphrase_env: PassphraseEnv = None,
) -> None:
    """Add your signature to a bundle (several parties may sign).

    The auditor, the vendor and a witness can each sign. The bundle is checked first: a damaged
    bundle is not signed (exit 1).

    Example: chipaudit sign bundle/ --key auditor.key
    """
    from chipaudit.evidence import keys
    from chipaudit.evidence.bundle import BundleProblem
    from chipaudit.evidence.signing import sign_bundle

    existing(bundle, "BUNDLE", folder=True)
    check_outputs((bundle, "BUNDLE", Kind.folder))
    with usage_errors(keys.KeyProblem):
        private = keys.load_private(key, keys.passphrase_from_env(passphrase_env))
    try:
        added, keyid, checked = sign_bundle(bundle, private)
    except BundleProblem as e:
        stop(FAIL, str(e))
    report = checked.report
    what = f"{report.verdict.value} {report.level.value} audit of {report.device.spec}" if report else "bundle"
    verb = "signed" if added else "already signed by this key:"
    say(f"{verb} {what} in {bundle} as key {keyid}")


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(help="The bundle folder to verify.")],
    pubkey: Annotated[list[Path], typer.Option(help="A public key you trust (repeatable).")],
    threshold: Annotated[int, typer.Option(min=1, help="How many of the trusted keys must have signed.")] = 1,
    policy: Annotated[Path | None, typer.Option(help="A JSON policy: required_checks, min_level, "
                                                "max_age_days, verdicts.")] = None,
) -> None:
    """Check a bundle's signatures, file digests, schema and policy.

    Exit 0 only when all hold; otherwise exit 1 and name the step and file that failed.

    Example: chipaudit verify B --pubkey auditor.pub --pubkey vendor.pub --threshold 2
    """
    from chipaudit.evidence import keys
    from chipaudit.evidence import policy as policies
    from chipaudit.evidence.verify import unique_keys
    from chipaudit.evidence.verify import verify as verify_bundle
    from chipaudit.report.evidence_view import verification_lines

    existing(bundle, "BUNDLE", folder=True)
    with usage_errors(keys.KeyProblem, policies.PolicyProblem):
        trusted = unique_keys(keys.load_public(p) for p in pubkey)
        rules = policies.load(policy) if policy else None
    if threshold > len(trusted):
        raise UsageError(f"--threshold {threshold}: only {len(trusted)} distinct trusted key(s) given")
    result = verify_bundle(bundle, trusted, threshold, rules)
    for line in verification_lines(result):
        say(line)
    failed = result.failed
    if failed is not None:
        stop(FAIL, f"verification failed at step {failed.name}: {failed.problems[0] if failed.problems else ''}")
    say(f"verified: {bundle}")


@app.command()
def schema() -> None:
    """Print the JSON Schema that every report follows (draft 2020-12).

    Example: chipaudit schema > report.schema.json
    """
    from chipaudit.report.schema import shipped_text

    sys.stdout.write(shipped_text())
