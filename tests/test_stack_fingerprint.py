"""Fingerprints and baselines: hashing, the kernel side, package records, and every kind of bad baseline."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PathDistribution
from pathlib import Path

import pytest
import torch

from chipaudit import cli
from chipaudit.checks.stack import baseline, kernel, libraries, packages, snapshot
from chipaudit.checks.stack.fingerprint import FingerprintCheck
from chipaudit.checks.stack.hashing import Hasher, unreadable_reason
from chipaudit.report.model import Severity

TORCH_LIB = Path(torch.__file__).parent / "lib"


@pytest.fixture
def no_python_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshots of a temp tree only: hashing all of torch is the slow tests' business."""
    monkeypatch.setattr(packages, "STACK_DISTRIBUTIONS", ())


def test_sha256_of_files_and_the_reason_for_unreadable_ones(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "big").write_bytes(data)
    digests = Hasher(threads=2).many([str(tmp_path / "big"), str(tmp_path / "absent"), str(tmp_path)])
    assert digests[str(tmp_path / "big")].sha256 == hashlib.sha256(data).hexdigest()
    assert digests[str(tmp_path / "big")].size == len(data)
    assert digests[str(tmp_path / "absent")].reason == "no such file"
    assert digests[str(tmp_path)].reason == "Is a directory"
    assert unreadable_reason(PermissionError(errno.EACCES, "Permission denied")) == "permission denied"


def test_maps_parsing_keeps_files_and_flags_code_from_nowhere() -> None:
    maps = (
        "7f00-7f01 r--p 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f01-7f02 r-xp 00001000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f03-7f04 r-xp 00000000 08:01 2 /opt/vendor/libhook.so (deleted)\n"
        "7f05-7f06 r-xp 00000000 00:01 3 memfd:jit (deleted)\n"
        "7f07-7f08 rw-p 00000000 00:00 0 [heap]\n"
        "7f09-7f0a rw-p 00000000 00:00 0\n")
    found = {m.path: m for m in libraries.parse_maps(maps)}
    assert set(found) == {"/usr/lib/x86_64-linux-gnu/libc.so.6", "/opt/vendor/libhook.so", "memfd:jit"}
    assert found["/usr/lib/x86_64-linux-gnu/libc.so.6"].executable
    assert found["/opt/vendor/libhook.so"].deleted and found["memfd:jit"].deleted
    assert libraries.role("/x/libcublasLt.so.12") == "math" and libraries.role("/x/libcuda.so.1") == "driver"
    assert libraries.role("/usr/lib/x86_64-linux-gnu/libz.so.1") == "system"


def test_the_probe_of_an_absent_device_fails_in_one_line() -> None:
    with pytest.raises(libraries.ProbeError, match=r"could not use cuda:0: .*") as err:
        libraries.run_probe("cuda:0")
    assert "\n" not in str(err.value)


def test_a_changed_byte_in_a_library_is_one_high_finding_for_that_file(
        tmp_path: Path, no_python_packages: None) -> None:
    tree = tmp_path / "vendor" / "lib"
    tree.mkdir(parents=True)
    for name in ("libgomp.so.1", "libshm.so", "libtorch_global_deps.so"):
        shutil.copy(TORCH_LIB / name, tree / name)
    saved = tmp_path / "baseline.json"
    baseline.save(saved, snapshot.collect(None, include=[str(tmp_path / "vendor")]))
    check = FingerprintCheck()
    unchanged = snapshot.collect(None, include=[str(tmp_path / "vendor")])
    assert baseline.diff(baseline.load(saved), unchanged, check.finding) == []

    target = tree / "libshm.so"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    findings = baseline.diff(baseline.load(saved), snapshot.collect(None, include=[str(tmp_path / "vendor")]),
                             check.finding)
    assert len(findings) == 1
    (finding,) = findings
    assert finding.severity is Severity.high and finding.check == "stack.fingerprint"
    assert finding.evidence["path"] == str(target)
    assert finding.evidence["sha256"] == hashlib.sha256(data).hexdigest()


def test_added_missing_and_unreadable_files_against_a_baseline(tmp_path: Path, no_python_packages: None) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "a.bin").write_bytes(b"a")
    (tree / "b.bin").write_bytes(b"b")
    trusted = snapshot.collect(None, include=[str(tree)])
    (tree / "a.bin").unlink()
    (tree / "c.bin").write_bytes(b"c")
    (tree / "b.bin").unlink()
    (tree / "b.bin").symlink_to(tree / "gone")  # dangling: cannot be read now
    now = snapshot.collect(None, include=[str(tree)])
    found = {f.evidence["path"].rsplit("/", 1)[1]: f for f in baseline.diff(trusted, now, FingerprintCheck().finding)}
    assert found["c.bin"].severity is Severity.medium and found["c.bin"].title.startswith("new since")
    assert found["a.bin"].severity is Severity.low and found["a.bin"].title.startswith("missing since")
    assert found["b.bin"].severity is Severity.medium and "no such file" in found["b.bin"].detail
    unread = FingerprintCheck().self_consistency(now, with_baseline=False)
    assert unread[0].severity is Severity.info
    assert {"path": str(tree / "b.bin"), "reason": "no such file"} in unread[0].evidence["not_fingerprinted"]


PROC_MODULES = """nvidia_uvm 1527808 0 - Live 0x0000000000000000 (POE)
nvidia_drm 77824 0 - Live 0x0000000000000000 (POE)
nvidia_modeset 1306624 1 nvidia_drm, Live 0x0000000000000000 (POE)
nvidia 56717312 2 nvidia_uvm,nvidia_modeset, Live 0x0000000000000000 (POE)
drm_kms_helper 184320 1 nvidia_drm, Live 0x0000000000000000
drm 622592 4 nvidia_drm,drm_kms_helper, Live 0x0000000000000000
ext4 942080 1 - Live 0x0000000000000000
"""


def _modinfo_text(name: str, filename: Path) -> str:
    return (f"filename:       {filename}\n"
            "firmware:       nvidia/565.57.01/gsp_ga10x.bin\nfirmware:       nvidia/565.57.01/gsp_tu10x.bin\n"
            "version:        565.57.01\nlicense:        NVIDIA\nsrcversion:     DEF0123456789ABCDEF0123\n"
            f"depends:        drm\nname:           {name}\nvermagic:       6.8.0-49-generic SMP mod_unload\n"
            "sig_id:         PKCS#7\nsigner:         Build time autogenerated kernel key\n"
            "sig_key:        1C:8D:3A:55\nsig_hashalgo:   sha512\nsignature:      30:65:02:31:00:A1:\n"
            "\t\tB2:C3:D4\n")


@pytest.fixture
def fake_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> kernel.Paths:
    """An NVIDIA host's /proc, /sys and /lib/firmware, and its modinfo's answers."""
    paths = kernel.Paths(proc=tmp_path / "proc", sys=tmp_path / "sys", firmware=tmp_path / "firmware")
    (paths.proc / "sys/kernel").mkdir(parents=True)
    (paths.proc / "modules").write_text(PROC_MODULES)
    (paths.proc / "sys/kernel/tainted").write_text("12289\n")  # P, O, E
    for name in ("nvidia", "nvidia_uvm", "nvidia_drm", "nvidia_modeset", "drm_kms_helper", "drm"):
        (paths.sys / "module" / name).mkdir(parents=True)
        (paths.sys / "module" / name / "srcversion").write_text("ABC0123456789ABCDEF0123\n")
        (tmp_path / "modules").mkdir(exist_ok=True)
        (tmp_path / "modules" / f"{name}.ko").write_bytes(name.encode() * 100)
    (paths.sys / "module/nvidia/srcversion").write_text("DEF0123456789ABCDEF0123\n")
    gsp = paths.firmware / "nvidia" / "565.57.01"
    gsp.mkdir(parents=True)
    for blob in ("gsp_ga10x.bin", "gsp_tu10x.bin"):
        (gsp / blob).write_bytes(blob.encode() * 1000)
    monkeypatch.setattr(kernel, "_modinfo", lambda args: _modinfo_text(args[0], tmp_path / "modules" /
                                                                        f"{args[0]}.ko"))
    return paths


def test_kernel_side_modules_signatures_taint_and_firmware(fake_kernel: kernel.Paths) -> None:
    view = kernel.inspect(fake_kernel)
    assert view.taint == {"value": 12289, "flags": "POE", "meaning": [
        "proprietary module loaded", "out-of-tree module loaded", "unsigned module loaded"]}
    by_name = {m.name: m for m in view.modules}
    assert set(by_name) == {"nvidia", "nvidia_uvm", "nvidia_drm", "nvidia_modeset", "drm_kms_helper", "drm"}
    assert by_name["nvidia"].vendor == "nvidia" and by_name["drm"].vendor == "dependency"
    assert by_name["nvidia"].info["signer"] == "Build time autogenerated kernel key"
    assert by_name["nvidia"].info["signature"] == "30:65:02:31:00:A1:B2:C3:D4"
    assert by_name["nvidia"].info["firmware"] == ["nvidia/565.57.01/gsp_ga10x.bin", "nvidia/565.57.01/gsp_tu10x.bin"]
    assert [Path(f).name for f in view.firmware] == ["gsp_ga10x.bin", "gsp_tu10x.bin"]


def test_kernel_items_and_a_module_that_differs_from_its_file(fake_kernel: kernel.Paths,
                                                               no_python_packages: None) -> None:
    snap = snapshot.collect(None, kernel_paths=fake_kernel)
    modules = [i for i in snap.items if i.kind == "kernel_module"]
    assert len(modules) == 6 and all(i.sha256 for i in modules)
    assert {i.name for i in snap.items if i.kind == "firmware"} == {"gsp_ga10x.bin", "gsp_tu10x.bin"}
    findings = FingerprintCheck().self_consistency(snap, with_baseline=False)
    mismatched = [f for f in findings if f.severity is Severity.medium]
    # modinfo reports srcversion DEF… for every file; only nvidia's loaded copy has DEF…, the rest ABC….
    assert sorted(f.title for f in mismatched) == sorted(
        f"loaded kernel module {n} differs from its file"
        for n in ("nvidia_uvm", "nvidia_drm", "nvidia_modeset", "drm_kms_helper", "drm"))

    # Against a baseline: a changed firmware blob is high, a new taint flag medium.
    blob = fake_kernel.firmware / "nvidia/565.57.01/gsp_ga10x.bin"
    blob.write_bytes(b"patched" + blob.read_bytes())
    (fake_kernel.proc / "sys/kernel/tainted").write_text(str(12289 | 1 << 9))  # W: a warning
    found = baseline.diff(snap, snapshot.collect(None, kernel_paths=fake_kernel), FingerprintCheck().finding)
    assert [(f.severity, f.title) for f in found] == [
        (Severity.high, "changed since the baseline: gsp_ga10x.bin"),
        (Severity.medium, "kernel taint flags gained W since the baseline")]


def _fake_distribution(site: Path) -> PathDistribution:
    (site / "fakepkg").mkdir(parents=True)
    (site / "fakepkg" / "__init__.py").write_text("VALUE = 1\n")
    (site / "fakepkg" / "_impl.py").write_text("def f():\n    return 2\n")
    info = site / "fakepkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n")
    lines = []
    for rel in ("fakepkg/__init__.py", "fakepkg/_impl.py", "fakepkg-1.0.dist-info/METADATA"):
        digest = base64.urlsafe_b64encode(hashlib.sha256((site / rel).read_bytes()).digest()).rstrip(b"=").decode()
        lines.append(f"{rel},sha256={digest},{(site / rel).stat().st_size}")
    (info / "RECORD").write_text("\n".join([*lines, "fakepkg-1.0.dist-info/RECORD,,"]) + "\n")
    return PathDistribution(info)


def test_python_files_are_checked_against_their_record(tmp_path: Path) -> None:
    dist = _fake_distribution(tmp_path)
    clean = packages.fingerprint_distribution(dist, Hasher())
    assert (clean.name, clean.version, clean.record_mismatches, clean.unrecorded) == ("fakepkg", "1.0", [], [])
    assert set(clean.files) == {"fakepkg/__init__.py", "fakepkg/_impl.py", "fakepkg-1.0.dist-info/METADATA",
                                "fakepkg-1.0.dist-info/RECORD"}
    (tmp_path / "fakepkg" / "_impl.py").write_text("def f():\n    return 3\n")
    (tmp_path / "fakepkg" / "dropped.py").write_text("import os\n")
    (tmp_path / "fakepkg" / "__pycache__").mkdir()
    (tmp_path / "fakepkg" / "__pycache__" / "_impl.cpython-311.pyc").write_bytes(b"cache")
    tampered = packages.fingerprint_distribution(dist, Hasher())
    assert tampered.record_mismatches == ["fakepkg/_impl.py"]
    assert tampered.unrecorded == ["fakepkg/dropped.py"]
    assert tampered.digest != clean.digest
    snap = snapshot.Snapshot(created=datetime.now(timezone.utc), tool_version="0", device=None, host={},
                             items=[snapshot._package_item(tampered)])
    found = FingerprintCheck().self_consistency(snap, with_baseline=False)
    assert [(f.severity, f.title) for f in found] == [
        (Severity.high, "files of fakepkg differ from its RECORD"),
        (Severity.info, "1 file(s) in fakepkg's folders are not in its RECORD")]
    assert found[0].evidence["files"] == ["fakepkg/_impl.py"]


DPKG_VERIFY = """missing   c /etc/debuginfod/elfutils.urls
missing     /usr/lib/node_modules/npm/.npmrc
??5??????   /usr/lib/node_modules/npm/bin/npm.ps1
"""
RPM_VERIFY = """S.5....T.  c /etc/httpd/conf/httpd.conf
..5....T.    /usr/lib64/libcuda.so.550.54.15
missing     /usr/share/doc/nvidia/README (No such file or directory)
"""


def test_package_manager_verify_output_is_parsed() -> None:
    dpkg = packages.parse_verify(DPKG_VERIFY)
    assert [(p["path"], p["missing"], p["conffile"], p["content_differs"]) for p in dpkg] == [
        ("/etc/debuginfod/elfutils.urls", True, True, False),
        ("/usr/lib/node_modules/npm/.npmrc", True, False, False),
        ("/usr/lib/node_modules/npm/bin/npm.ps1", False, False, True)]
    rpm = packages.parse_verify(RPM_VERIFY)
    assert [(p["path"], p["content_differs"], p["conffile"]) for p in rpm] == [
        ("/etc/httpd/conf/httpd.conf", True, True), ("/usr/lib64/libcuda.so.550.54.15", True, False),
        ("/usr/share/doc/nvidia/README", False, False)]
    assert packages.parse_dpkg_search("libc6:amd64: /lib/x86_64-linux-gnu/libc.so.6\n"
                                      "diversion by dash from: /bin/sh\n") == {
        "/lib/x86_64-linux-gnu/libc.so.6": ["libc6:amd64"]}


def test_rpm_verdicts_from_rpm_answers() -> None:
    answers = {
        ("-qf",): "nvidia-driver-cuda-libs\t550.54.15-1.el9\nfile /opt/x.so is not owned by any package\n"
                  "glibc\t2.34-100.el9\n",
        ("-V", "nvidia-driver-cuda-libs"): "..5....T.    /usr/lib64/libcuda.so.550.54.15\n",
        ("-V", "glibc"): "",
    }

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        key = ("-qf",) if args[1] == "-qf" else tuple(args[1:])
        return subprocess.CompletedProcess(args, 0, answers[key], "")

    verdicts = packages._rpm(["/usr/lib64/libcuda.so.550.54.15", "/opt/x.so", "/usr/lib64/libc.so.6"], run)
    assert [(v.package, v.version, v.files, v.ok) for v in verdicts] == [
        ("glibc", "2.34-100.el9", ["/usr/lib64/libc.so.6"], True),
        ("nvidia-driver-cuda-libs", "550.54.15-1.el9", ["/usr/lib64/libcuda.so.550.54.15"], False)]
    assert verdicts[1].problems[0]["content_differs"]


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="a Debian machine's dpkg")
def test_dpkg_verdict_on_the_c_library_the_process_maps() -> None:
    libc = next(m.path for m in libraries.parse_maps(Path("/proc/self/maps").read_text())
                if os.path.basename(m.path).startswith("libc.so"))
    verdicts, why_not = packages.os_package_verdicts([libc])
    assert why_not is None
    (verdict,) = verdicts
    assert verdict.manager == "dpkg" and verdict.package.startswith("libc6") and verdict.version
    assert verdict.files == [libc] and verdict.ok


# --- bad baselines ---------------------------------------------------------------------------------

def _valid_baseline(tmp_path: Path, **host: str) -> Path:
    snap = snapshot.Snapshot(created=datetime(2026, 1, 1, tzinfo=timezone.utc), tool_version="0", device="cpu",
                             host={**_this_host(), **host})
    path = tmp_path / "b.json"
    baseline.save(path, snap)
    return path


def _this_host() -> dict[str, str | None]:
    from chipaudit.devices.inventory import host

    return host()


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = _valid_baseline(tmp_path)
    text = good.read_text()
    cases = {
        "missing": ("absent.json", None, "no such file"),
        "empty": ("empty.json", "", "is empty"),
        "truncated": ("cut.json", text[: len(text) // 2], "not valid JSON"),
        "not json": ("text.json", "hello\n", "not valid JSON"),
        "not a baseline": ("list.json", "[1, 2]", "no schema field"),
        "a report": ("report.json", json.dumps({"schema": "chipaudit.report/1"}), "'chipaudit.report/1' file"),
        "another version": ("v2.json", text.replace(baseline.BASELINE_SCHEMA, "chipaudit.baseline/2"),
                            "'chipaudit.baseline/2' file"),
        "edited": ("edited.json", text.replace('"tool_version": "0"', '"tool_version": "9"'), "digest"),
        "broken content": ("broken.json", json.dumps({"schema": baseline.BASELINE_SCHEMA, "snapshot": {}}),
                           "not a valid baseline"),
    }
    out = {}
    for label, (name, body, message) in cases.items():
        path = tmp_path / name
        if body is not None:
            path.write_text(body)
        out[label] = (path, message)
    other = tmp_path / "other"
    other.mkdir()
    out["another machine"] = (_valid_baseline(other, hostname="elsewhere", machine_id="0" * 32), "another machine")
    return out


def test_bad_baselines_are_refused_with_the_reason(tmp_path: Path) -> None:
    from chipaudit.checks.stack.commands import load_checked

    assert load_checked(_valid_baseline(tmp_path), "cpu").device == "cpu"
    for label, (path, message) in _bad_files(tmp_path).items():
        with pytest.raises(baseline.BaselineError) as err:
            load_checked(path)
        assert message in str(err.value), label
        assert "\n" not in str(err.value) and str(path) in str(err.value), label
    with pytest.raises(baseline.BaselineError, match="recorded for device cpu, not cuda:0"):
        load_checked(_valid_baseline(tmp_path), "cuda:0")


@pytest.mark.parametrize("command", [["baseline", "diff"], ["run", "--device", "cpu", "--only", "stack",
                                                            "--baseline"]])
def test_bad_baselines_exit_2_in_one_line_never_no_differences(
        tmp_path: Path, command: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for label, (path, message) in _bad_files(tmp_path).items():
        monkeypatch.setattr(sys, "argv", ["chipaudit", *command, str(path)])
        with pytest.raises(SystemExit) as code:
            cli.main()
        out, err = capsys.readouterr()
        assert code.value.code == 2, (label, out, err)
        assert err.count("\n") == 1 and message in err and "Traceback" not in err, (label, err)
        assert "no differences" not in out, label
