"""Shared makings for the evidence and report tests: a small synthetic report, keys, signed bundles."""

from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image

from chipaudit.evidence import bundle, dsse, keys
from chipaudit.report.model import (
    Category,
    CheckResult,
    DeviceInfo,
    Environment,
    Finding,
    Level,
    Report,
    Severity,
    Status,
    ToolInfo,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VERDICT_RGB = {"pass": (0x1A, 0x7F, 0x37), "fail": (0xCF, 0x22, 0x2E), "inconclusive": (0x9A, 0x67, 0x00)}


def synthetic_report(failing: bool = False, level: Level = Level.quick,
                     finished: datetime | None = None) -> Report:
    """Four checks of every kind of status, with series a plot can draw."""
    started = (finished or datetime.now(timezone.utc)) - timedelta(seconds=42)
    report = Report(
        tool=ToolInfo(version="0.1.0"), level=level, seed=1234, started=started,
        device=DeviceInfo(spec="cpu", type="cpu", name="Synthetic CPU", memory_bytes=8 << 30),
        environment=Environment(os="Linux", python="3.11", torch="2.13.0", numpy="2.0", hostname="testhost"),
        replay="chipaudit run --device cpu --level quick --seed 1234", limits=["A synthetic report sees nothing."],
    )
    burn_in = [1e9 * (1 + 0.01 * math.sin(i / 7)) - (4e8 if 60 <= i < 64 else 0) for i in range(300)]
    report.add(CheckResult(id="integrity.gemm.fp32", category=Category.integrity, status=Status.passed,
                           duration_s=1.5, seed=11, coverage={"cases": 20, "elements_checked": 123456},
                           measurements={"max_error_to_bound": 0.25, "probe_macs_per_s": 1.5e9}), [])
    report.add(CheckResult(id="performance.burnin", category=Category.performance, status=Status.passed,
                           duration_s=30.0, seed=12, coverage={"minutes": 0.5},
                           measurements={"throughput_per_s": burn_in,
                                         "per_bit": {str(b): min(1.0, b / 10) for b in range(24)},
                                         "probe": {"baseline": [1.0, 1.1, 1.0, 1.2], "perturbed": [1.0, 2.5, 2.4, 1.1]},
                                         "efficiency": {"fp32": 0.81, "fp16": 0.64}}), [])
    report.add(CheckResult(id="integrity.gemm.tf32", category=Category.integrity, status=Status.skipped, seed=13,
                           reason="TF32 is an NVIDIA tensor-core mode"), [])
    if failing:
        finding = Finding(check="integrity.gemm.bf16", category=Category.integrity, severity=Severity.high,
                          title="wrong bf16 mm results: outside the error bound",
                          detail="pow2 64: 3 of 4096 checked elements wrong", evidence={"seed": 14, "shape": [1, 64]})
        report.add(CheckResult(id="integrity.gemm.bf16", category=Category.integrity, status=Status.failed,
                               duration_s=0.5, seed=14, coverage={"cases": 3}), [finding])
    else:
        low = Finding(check="integrity.gemm.bf16", category=Category.integrity, severity=Severity.low,
                      title="non-deterministic bf16 mm", detail="both within bound")
        report.add(CheckResult(id="integrity.gemm.bf16", category=Category.integrity, status=Status.warning,
                               duration_s=0.5, seed=14, coverage={"cases": 3}), [low])
    report.finish(complete=True)
    if finished is not None:
        report.finished = finished
    return report


@dataclass
class KeyPair:
    private_path: Path
    public_path: Path

    @property
    def private(self) -> dsse.Ed25519PrivateKey:
        return keys.load_private(self.private_path, None)

    @property
    def public(self) -> keys.PublicKey:
        return keys.load_public(self.public_path)


def make_key(folder: Path, name: str) -> KeyPair:
    private, public, _ = keys.generate(folder / name, None)
    return KeyPair(private, public)


def sign(root: Path, *signers: KeyPair) -> None:
    path = root / bundle.ENVELOPE
    envelope = dsse.Envelope.from_bytes(path.read_bytes())
    for signer in signers:
        envelope.sign(signer.private)
    path.write_bytes(envelope.to_bytes())


def signed_bundle(root: Path, report: Report, *signers: KeyPair,
                  extra_files: dict[str, bytes | Path] | None = None) -> Path:
    bundle.write_bundle(report, root, extra_files)
    sign(root, *signers)
    return root


def restate(root: Path, edit: object, *signers: KeyPair) -> None:
    """Rewrite the statement (edit(statement) changes it in place) and sign it afresh, as a signer
    whose key is trusted would: for building hostile bundles that pass the signature step."""
    import json

    statement = json.loads((root / bundle.STATEMENT).read_bytes())
    edit(statement)  # type: ignore[operator]
    payload = (json.dumps(statement, indent=2, sort_keys=True) + "\n").encode()
    (root / bundle.STATEMENT).write_bytes(payload)
    envelope = dsse.Envelope(payload)
    for signer in signers:
        envelope.sign(signer.private)
    (root / bundle.ENVELOPE).write_bytes(envelope.to_bytes())


def copy_bundle(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target


def _chromium(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (.ci/run installs the Debian package 'chromium')")
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120)


def check_rendering(page: Path, verdict: str, tmp_path: Path) -> None:
    """Real Chromium loads the page, its script runs under its own CSP, and the verdict is the first
    thing seen: the banner's colour across the top of the screenshot, its word in white."""
    dom = _chromium(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-rendered="true"' in dom.stdout  # the inline script ran: the page loaded whole
    word = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE"}[verdict]
    assert f'<div id="verdict-word">{word}</div>' in dom.stdout
    shot = tmp_path / f"{page.stem}.png"
    p = _chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", "--hide-scrollbars")
    assert p.returncode == 0 and shot.exists(), p.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 1600)
    band = image.crop((0, 0, 1200, 60))
    colours = band.getcolors(maxcolors=1 << 16) or []
    dominant = max(colours)[1]
    assert dominant == VERDICT_RGB[verdict], dominant
    text = sum(n for n, rgb in colours if min(rgb) > 230)  # the verdict word, white on the banner
    assert text > 500
    body = image.crop((0, 400, 1200, 1600)).getcolors(maxcolors=1 << 20) or []
    assert len(body) > 50  # the rest of the page drew: text, tables, badges
