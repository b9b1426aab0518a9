"""`chipaudit inventory`, `chipaudit baseline` and `run --baseline` end to end, on this CPU machine."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import chipaudit, cli_env, load

pytestmark = pytest.mark.slow

MARKER = b"chipaudit-preload-marker-AAAA"
PRELOADED = f'const char *chipaudit_marker(void) {{ return "{MARKER.decode()}"; }}\n'


def test_inventory_lists_the_cpu_and_the_torch_libraries_the_worker_maps_with_hashes(tmp_path: Path) -> None:
    out = tmp_path / "inv.json"
    p = chipaudit("inventory", "--device", "cpu", "--json", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    doc = load(out)
    assert doc["schema"] == "chipaudit.inventory/1"
    assert doc["cpu"]["type"] == "cpu" and doc["cpu"]["logical_cpus"] >= 1 and doc["cpu"]["model"]
    assert [d["type"] for d in doc["torch"]["devices"]] == ["cpu"]
    assert all(not s["available"] and s["reason"] for s in doc["sources"].values())
    items = {Path(i["path"]).name: i for i in doc["stack"]["items"] if i["kind"] == "library"}
    torch_lib = Path(torch.__file__).parent / "lib"
    for name in ("libtorch_cpu.so", "libc10.so", "libgomp.so.1"):
        assert items[name]["path"] == str(torch_lib / name)
        assert items[name]["sha256"] == hashlib.sha256((torch_lib / name).read_bytes()).hexdigest()
        assert items[name]["package"] == "torch"
    assert items["libtorch_cpu.so"]["role"] == "framework" and items["libgomp.so.1"]["role"] == "math"
    packages = {i["name"]: i for i in doc["stack"]["items"] if i["kind"] == "python_package"}
    assert packages["torch"]["version"] == torch.__version__ and packages["torch"]["files"] > 1000
    assert "networking" in doc["stack"]["capabilities"][str(torch_lib / "libtorch_cpu.so")]
    assert "libtorch_cpu.so" in p.stdout and "stack sha256" in p.stdout


@pytest.fixture(scope="module")
def preloaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    """A library injected into every process with LD_PRELOAD, and a baseline recorded with it there."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    tmp = tmp_path_factory.mktemp("preload")
    (tmp / "hook.c").write_text(PRELOADED)
    lib = tmp / "libhook.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(tmp / "hook.c")], check=True)
    env = cli_env({"LD_PRELOAD": str(lib)})
    saved = tmp / "trusted.json"
    p = chipaudit("baseline", "create", str(saved), "--device", "cpu", env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "baseline:" in p.stdout and "stack sha256" in p.stdout
    return lib, env, saved


def test_an_unchanged_machine_has_no_differences(preloaded: tuple[Path, dict[str, str], Path],
                                                  tmp_path: Path) -> None:
    _lib, env, saved = preloaded
    out = tmp_path / "diff.json"
    p = chipaudit("baseline", "diff", str(saved), "--json", str(out), env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no differences from the baseline" in p.stdout
    assert load(out)["findings"] == []
    again = chipaudit("baseline", "create", str(saved), env=env)
    assert again.returncode == 2 and "exists already" in again.stderr


def test_a_changed_byte_in_a_mapped_library_is_high_for_exactly_that_file(
        preloaded: tuple[Path, dict[str, str], Path], tmp_path: Path) -> None:
    lib, env, saved = preloaded
    original = lib.read_bytes()
    try:
        lib.write_bytes(original.replace(MARKER, MARKER[:-1] + b"B"))
        out = tmp_path / "diff.json"
        p = chipaudit("baseline", "diff", str(saved), "--json", str(out), env=env)
        assert p.returncode == 1, p.stdout + p.stderr
        findings = load(out)["findings"]
        assert [(f["severity"], f["evidence"]["path"]) for f in findings] == [("high", str(lib))]
        assert "[high] stack.fingerprint: changed since the baseline: libhook.so" in p.stdout
    finally:
        lib.write_bytes(original)


def test_replay_compares_with_the_recorded_baseline(preloaded: tuple[Path, dict[str, str], Path],
                                                   tmp_path: Path) -> None:
    lib, env, saved = preloaded
    original = lib.read_bytes()
    out = tmp_path / "r.json"
    try:
        lib.write_bytes(original.replace(MARKER, MARKER[:-1] + b"C"))
        p = chipaudit("run", "--device", "cpu", "--level", "quick", "--only", "stack.fingerprint", "--baseline",
                      str(saved), "--json", str(out), env=env)
        assert p.returncode == 1, p.stdout + p.stderr
        assert load(out)["params"] == {"baseline": str(saved.resolve())}
        again = chipaudit("replay", str(out), env=env)
        assert again.returncode == 0, again.stdout + again.stderr  # the difference is found again
        moved = tmp_path / "moved.json"
        saved.rename(moved)
        try:
            lost = chipaudit("replay", str(out), env=env)
            assert lost.returncode == 2 and "pass --baseline" in lost.stderr and "Traceback" not in lost.stderr
            elsewhere = chipaudit("replay", str(out), "--baseline", str(moved), env=env)
            assert elsewhere.returncode == 0, elsewhere.stdout + elsewhere.stderr
        finally:
            moved.rename(saved)
    finally:
        lib.write_bytes(original)


def test_run_with_a_baseline_embeds_the_inventory_and_compares_the_stack(
        preloaded: tuple[Path, dict[str, str], Path], tmp_path: Path) -> None:
    _lib, env, saved = preloaded
    out = tmp_path / "r.json"
    p = chipaudit("run", "--device", "cpu", "--level", "quick", "--only", "stack", "--baseline", str(saved),
                  "--json", str(out), env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    report = load(out)
    assert report["inventory"]["schema"] == "chipaudit.inventory/1" and report["inventory"]["cpu"]["model"]
    statuses = {c["id"]: c["status"] for c in report["checks"]}
    assert statuses == {"stack.fingerprint": "passed", "stack.capabilities": "passed"}
    assert f"--baseline {saved}" in report["replay"]
    assert not [f for f in report["findings"] if f["severity"] != "info"]
    fingerprint = next(c for c in report["checks"] if c["id"] == "stack.fingerprint")
    assert fingerprint["coverage"]["baseline"] == str(saved) and fingerprint["coverage"]["libraries"] > 10
    assert len(fingerprint["measurements"]["fingerprint"]["stack_sha256"]) == 64
    capabilities = [f for f in report["findings"] if f["check"] == "stack.capabilities"]
    assert any(f["evidence"]["path"].endswith("libtorch_cpu.so") for f in capabilities)
