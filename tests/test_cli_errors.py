"""The exit-code contract at the command line, walked as a table of bad inputs: each exits with its code
(2 bad input, 3 inconclusive, never 1, which blames the device) and says so in one line, no traceback.

Tests run as root, for whom permission bits allow everything; a read-only place is made the way root
meets one: an immutable folder (chattr +i) in-process, and a read-only mount (unshare -m) for the real
executable once.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import chipaudit, chipaudit_argv, cli_env
from safetensors.numpy import save_file

from chipaudit.cli import main

PG = "postgresql://u:secret@127.0.0.1:1/x"


@dataclass
class Row:
    argv: list[str]
    code: int
    message: str
    env: dict[str, str] = field(default_factory=dict)
    plugins: bool = False
    said_by_the_audit: bool = False  # the audit reports it on stdout; stderr stays silent

    def __str__(self) -> str:
        return " ".join(self.argv)


# Every output of every command, and what a folder there does ({dir}: a non-empty folder, {file}: a file).
OUTPUTS = [
    (["run", "--json"], "is a folder"), (["run", "--html"], "is a folder"), (["run", "--junit"], "is a folder"),
    (["run", "--prometheus"], "is a folder"), (["run", "--db"], "is a folder"),
    (["run", "--bundle"], "exists and is not an empty folder"),
    (["selftest", "--json"], "is a folder"), (["keygen", "--out"], "is a folder"),
    (["replay", "{file}", "--json"], "is a folder"), (["report", "{file}", "--html"], "is a folder"),
    (["report", "{file}", "--junit"], "is a folder"), (["report", "{file}", "--prometheus"], "is a folder"),
    (["inventory", "--json"], "is a folder"), (["baseline", "create"], "is a folder"),
    (["baseline", "diff", "{file}", "--json"], "is a folder"), (["bench", "--json"], "is a folder"),
    (["compare", "{file}", "{file}", "--json"], "is a folder"), (["fleet", "run", "--db"], "is a folder"),
    (["fleet", "resume", "r1", "--db"], "is a folder"), (["fleet", "report", "r1", "--html"], "is a folder"),
    (["fleet", "report", "r1", "--json"], "is a folder"),
]
# Outputs that are folders: a file there is the mistake.
FOLDER_OUTPUTS = [(["inventory", "--record"], "not a folder"), (["sign", "--key", "{file}"], "not a folder")]

TABLE = [
    *(Row([*argv, "{dir}"], 2, message) for argv, message in OUTPUTS),
    *(Row([*argv, "{file}"], 2, message) for argv, message in FOLDER_OUTPUTS),
    *(Row([*argv, "{ro}/out"], 2, "cannot write in") for argv, _ in OUTPUTS),
    *(Row([*argv, "{ro}"], 2, "cannot write in") for argv, _ in FOLDER_OUTPUTS),
    Row(["run", "--json", "{tmp}/no/such/r.json"], 2, "does not exist"),
    Row(["run", "--json", "{ro_file}"], 2, "cannot be written (read-only or immutable file)"),
    Row(["compare", "{file}", "{file}", "--json", "{ro_file}"], 2, "cannot be written"),
    Row(["run", "--device", "cpu", "--only", "fake.ok"], 2, "allow-list {bad_allow}",
        {"CHIPAUDIT_BEHAVIOUR_ALLOWLIST": "{bad_allow}"}, plugins=True),
    Row(["run", "--device", "cpu", "--only", "fake.ok"], 2, "not JSON",
        {"CHIPAUDIT_BEHAVIOUR_ALLOWLIST": "{file}"}, plugins=True),
    Row(["run", "--device", "cpu", "--only", "fake.ok"], 2, "cannot be read",
        {"CHIPAUDIT_BEHAVIOUR_ALLOWLIST": "{tmp}/missing.json"}, plugins=True),
    Row(["fleet", "report", "r1", "--db", PG], 3, "postgresql://u:***@127.0.0.1:1/x: connection failed"),
    Row(["fleet", "resume", "r1", "--db", PG], 3, "postgresql://u:***@127.0.0.1:1/x: connection failed"),
    Row(["history", "--db", PG], 3, "postgresql://u:***@127.0.0.1:1/x: connection failed"),
    Row(["fleet", "report", "r1", "--db", "{broken_store}"], 3, "{broken_store}: no such column"),
    Row(["fleet", "run", "--device", "nonsense:x"], 2, "--device nonsense:x"),
    Row(["run", "--device", "cpu", "--weights", "{tmp}/missing.safetensors"], 2, "missing.safetensors: no such file"),
    Row(["run", "--device", "cpu", "--weights", "{dir}"], 2, "not a file"),
    Row(["run", "--device", "cpu", "--weights", "{file}"], 2, "not a safetensors file"),
    Row(["run", "--device", "cpu", "--weights", "{no_matrix}"], 2, "no 2-D floating-point tensor"),
    Row(["run", "--device", "cpu", "--only", "fake.ok"], 2,
        "two checks have the id fake.ok: one from fake_checks, one from twin",
        {"CHIPAUDIT_CHECK_MODULES": "fake_checks,twin"}, plugins=True),
    Row(["checks"], 2, "names no_such_plugin, which cannot be imported",
        {"CHIPAUDIT_CHECK_MODULES": "no_such_plugin"}),
    Row(["run", "--device", "cpu", "--only", "fake.ok"], 3, "internal error: RuntimeError: plugin exploded",
        {"CHIPAUDIT_CHECK_MODULES": "fake_checks,exploding"}, plugins=True),
    Row(["run", "--device", "cpu", "--level", "quick", "--only", "fake.raise"], 3, "verdict: INCONCLUSIVE",
        plugins=True, said_by_the_audit=True),
    Row(["run", "--device", "cpu", "--level", "quick", "--only", "fake.killed"], 3, "verdict: INCONCLUSIVE",
        plugins=True, said_by_the_audit=True),
]


@pytest.fixture
def places(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The paths rows name; {ro} is an immutable folder, which refuses root too."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "something").write_text("")
    (tmp_path / "file").write_text("not json")
    (tmp_path / "bad_allow.json").write_text('{"file_writes": "/tmp/*"}')
    save_file({"ln.weight": np.ones(8, dtype=np.float32), "codes": np.zeros((4, 4), dtype=np.int8)},
              str(tmp_path / "no_matrix.safetensors"))
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "twin.py").write_text("from fake_checks import CHECKS\n")
    (tmp_path / "plugins" / "exploding.py").write_text("raise RuntimeError('plugin exploded')\n")
    broken = tmp_path / "broken.sqlite3"
    with sqlite3.connect(broken) as db:  # a store that opens, then fails its first query
        db.execute("CREATE TABLE fleet_runs (nothing_useful TEXT)")
    ro, ro_file = tmp_path / "ro", tmp_path / "locked.json"
    ro.mkdir()
    ro_file.write_text("{}")
    immutable = shutil.which("chattr") is not None and subprocess.run(["chattr", "+i", str(ro), str(ro_file)],
                                                                      capture_output=True).returncode == 0
    yield {"tmp": str(tmp_path), "dir": str(tmp_path / "dir"), "file": str(tmp_path / "file"),
           "bad_allow": str(tmp_path / "bad_allow.json"), "broken_store": str(broken),
           "no_matrix": str(tmp_path / "no_matrix.safetensors"),
           "ro": str(ro) if immutable else "", "ro_file": str(ro_file) if immutable else ""}
    if immutable:
        subprocess.run(["chattr", "-i", str(ro), str(ro_file)], check=True)


def _run(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
         ) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["chipaudit", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


@pytest.mark.parametrize("row", TABLE, ids=str)
def test_bad_input_table(row: Row, places: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    if ("{ro}" in str(row) or "{ro_file}" in str(row)) and not places["ro"]:
        pytest.skip("needs chattr +i (root, on a file system with immutable files)")
    fill = dict(places)
    env = cli_env(plugins=row.plugins)
    for name in ("CHIPAUDIT_CHECK_MODULES", "PYTHONPATH"):
        if name in env:
            monkeypatch.setenv(name, env[name])
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "plugins"))
    for name, value in row.env.items():
        monkeypatch.setenv(name, value.format(**fill))
    code, out, err = _run([a.format(**fill) for a in row.argv], monkeypatch, capsys)
    assert code == row.code and code != 1, out + err
    assert "Traceback" not in err and "secret" not in err
    if row.said_by_the_audit:
        assert row.message in out and not err.strip(), out + err
        return
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert row.message.format(**fill) in lines[0], err


def test_a_crash_leaves_its_traceback_in_the_data_folder(private_data_dir: Path, places: dict[str, str],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setenv("CHIPAUDIT_CHECK_MODULES", "exploding")
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    code, _, err = _run(["checks"], monkeypatch, capsys)
    assert code == 3
    log = Path(err.split("traceback in ")[1].rstrip(")\n"))
    assert log.parent == private_data_dir / "chipaudit"
    assert "Traceback" in log.read_text() and "plugin exploded" in log.read_text()


def test_a_read_only_mount_stops_the_real_command_before_work(tmp_path: Path) -> None:
    """The same refusal through the installed executable, on a file system mounted read-only."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    wrapper = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"', str(mount)]
    if shutil.which("unshare") is None or subprocess.run([*wrapper, "true"]).returncode != 0:
        pytest.skip("needs unshare -m and mount (root)")
    p = subprocess.run([*wrapper, *chipaudit_argv("run", "--json", str(mount / "r.json"))], capture_output=True,
                       text=True, env=cli_env(), timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == f"chipaudit: error: --json {mount / 'r.json'}: cannot write in {mount}: " \
                               "Read-only file system"


def test_bench_passes_requirement_cases_as_params_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    needs = tmp_path / "needs.toml"
    needs.write_text('[[need]]\nmetric = "llm_decode.tokens_per_s"\nmin = 0.001\nbatch = 2\n')
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    p = chipaudit("bench", "--device", "cpu", "--level", "quick", "--only", "launch", "--requirements", str(needs),
                  env=cli_env({"TMPDIR": str(scratch)}), timeout=300)
    assert p.returncode in (0, 1, 3) and "Traceback" not in p.stderr, p.stdout + p.stderr
    assert "need(s) met" in p.stdout
    assert list(scratch.iterdir()) == []


def test_bench_asks_for_requirement_cases_through_the_audit_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Params are recorded in the report, so a replay measures the same cases; the environment was not."""
    from chipaudit.cli import audit

    needs = tmp_path / "needs.toml"
    needs.write_text('[[need]]\nmetric = "llm_decode.tokens_per_s"\nmin = 1\nbatch = 2\n')
    seen = []
    monkeypatch.setattr(audit, "_audit", lambda config, *_: (seen.append(config), sys.exit(0)))
    assert _run(["bench", "--device", "cpu", "--requirements", str(needs)], monkeypatch, capsys)[0] == 0
    cases = seen[0].params["perf_cases"]
    assert [(c["metric"], c["batch"]) for c in cases] == [("llm_decode.tokens_per_s", 2)]


def test_an_io_failure_mid_command_is_one_line_and_inconclusive(private_data_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A full disk after the checks passed: nothing about the input is wrong and nothing about the
    device is known, so exit 3, never 1."""
    from chipaudit.report import schema

    def full_disk() -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(schema, "shipped_text", full_disk)
    code, _, err = _run(["schema"], monkeypatch, capsys)
    assert code == 3 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("chipaudit: I/O error: [Errno 28] No space left on device (traceback in ")
    assert str(private_data_dir / "chipaudit") in err
