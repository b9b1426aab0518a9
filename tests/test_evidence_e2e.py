"""The issue's own checks, on a real quick audit of this machine's CPU, through the CLI only.

run --bundle, keygen, sign (two parties, one key encrypted), verify -> 0; one byte changed in any
file -> 1, naming the file; replay agrees on every check; the run's HTML renders in Chromium.

The audit runs the matrix-product checks only (ONLY): they are deterministic on a CPU, so replay
must agree on every one of them, and they keep this test to under a minute. What is tested here is
the evidence chain, which is the same for every check.
"""

from __future__ import annotations

import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import chipaudit, cli_env
from evidence_support import check_rendering
from prometheus_client.parser import text_string_to_metric_families

from chipaudit.evidence import bundle, history
from chipaudit.evidence.keys import load_public
from chipaudit.evidence.verify import verify

pytestmark = pytest.mark.slow

SEED = "20250731"
ONLY = ("integrity.gemm",)
VERIFY_BUDGET_S = 1.0
ENV = cli_env({"AUDITOR_PASS": "a long passphrase", "COLUMNS": "200"})


@pytest.fixture(scope="module")
def audit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e")
    paths = {"bundle": root / "B", "html": root / "audit.html", "junit": root / "junit.xml",
             "prom": root / "audit.prom", "db": root / "history.sqlite3"}
    only = [arg for prefix in ONLY for arg in ("--only", prefix)]
    p = chipaudit("run", "--device", "cpu", "--level", "quick", "--seed", SEED, *only, "--bundle", str(paths["bundle"]),
                  "--html", str(paths["html"]), "--junit", str(paths["junit"]), "--prometheus", str(paths["prom"]),
                  "--db", str(paths["db"]), env=ENV, timeout=600)
    # Whatever the verdict (other checks judge this CPU), the evidence of it must hold up.
    assert p.returncode in (0, 1, 3) and paths["bundle"].is_dir(), p.stdout[-3000:] + p.stderr[-3000:]
    for name, args in (("auditor", ["--passphrase-env", "AUDITOR_PASS"]), ("vendor", [])):
        assert chipaudit("keygen", "--out", str(root / name), *args, env=ENV).returncode == 0
        paths[name] = root / name
    assert chipaudit("sign", str(paths["bundle"]), "--key", str(root / "auditor.key"),
                     "--passphrase-env", "AUDITOR_PASS", env=ENV).returncode == 0
    assert chipaudit("sign", str(paths["bundle"]), "--key", str(root / "vendor.key"), env=ENV).returncode == 0
    return paths


def _verify_args(audit: dict[str, Path], target: Path) -> list[str]:
    return ["verify", str(target), "--pubkey", f"{audit['auditor']}.pub", "--pubkey", f"{audit['vendor']}.pub",
            "--threshold", "2"]


def test_signed_quick_bundle_verifies_fast(audit: dict[str, Path]) -> None:
    t0 = time.perf_counter()
    p = chipaudit(*_verify_args(audit, audit["bundle"]), env=ENV)
    wall = time.perf_counter() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 of 2 trusted key(s) signed" in p.stdout and "verified" in p.stdout
    trusted = [load_public(Path(f"{audit[k]}.pub")) for k in ("auditor", "vendor")]
    t0 = time.perf_counter()
    assert verify(audit["bundle"], trusted, threshold=2).ok
    inside = time.perf_counter() - t0
    print(f"verify of a quick bundle: {wall:.3f} s through the CLI (interpreter start included), "
          f"{inside:.3f} s of verification")
    assert inside < VERIFY_BUDGET_S
    assert wall < 10 * VERIFY_BUDGET_S  # the whole command, on a loaded 2-core machine


def test_one_changed_byte_in_any_file_fails_and_names_it(audit: dict[str, Path], tmp_path: Path) -> None:
    files = sorted(p.relative_to(audit["bundle"]).as_posix() for p in audit["bundle"].rglob("*") if p.is_file())
    assert {bundle.REPORT, bundle.STATEMENT, bundle.ENVELOPE} <= set(files) and len(files) > 5
    for i, name in enumerate(files):
        copy = tmp_path / f"copy{i}"
        shutil.copytree(audit["bundle"], copy)
        data = bytearray((copy / name).read_bytes())
        data[(len(data) * 2) // 3] ^= 0x20
        (copy / name).write_bytes(bytes(data))
        p = chipaudit(*_verify_args(audit, copy), env=ENV)
        assert p.returncode == 1, (name, p.stdout, p.stderr)
        assert name in p.stderr and "verification failed at step" in p.stderr, (name, p.stderr)
        assert "Traceback" not in p.stderr


def test_replay_agrees_on_every_check(audit: dict[str, Path]) -> None:
    p = chipaudit("replay", str(audit["bundle"]), env=ENV, timeout=600)
    recorded = bundle.read_report(audit["bundle"])
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert f"{len(recorded.checks)} of {len(recorded.checks)} check(s) agree" in p.stdout


def test_run_outputs_html_junit_prometheus_history(audit: dict[str, Path], tmp_path: Path) -> None:
    recorded = bundle.read_report(audit["bundle"])
    check_rendering(audit["html"], recorded.verdict.value, tmp_path)
    cases = list(ET.parse(audit["junit"]).getroot().iter("testcase"))
    assert {c.get("name") for c in cases} == {c.id for c in recorded.checks}
    families = {f.name for f in text_string_to_metric_families(audit["prom"].read_text())}
    assert {"chipaudit_verdict", "chipaudit_check_status"} <= families
    (run,) = history.runs(audit["db"])
    assert (run.seed, run.verdict) == (int(SEED), recorded.verdict.value)
