"""The command line as users meet it: exit codes, one-line errors, the JSON report, Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import chipaudit, chipaudit_argv, cli_env, load

REQUIRED_REPORT_KEYS = {"schema", "tool", "verdict", "level", "seed", "started", "finished", "device",
                        "environment", "checks", "findings", "limits"}
REQUIRED_CHECK_KEYS = {"id", "category", "status", "duration_s", "coverage", "reason"}
REQUIRED_FINDING_KEYS = {"check", "category", "severity", "title", "detail", "evidence"}


@pytest.mark.parametrize(("only", "code", "verdict"), [
    ("fake.ok", 0, "pass"), ("fake.fail", 1, "fail"), ("fake.raise", 3, "inconclusive"),
])
def test_exit_code_follows_the_verdict(tmp_path: Path, only: str, code: int, verdict: str) -> None:
    out = tmp_path / "r.json"
    p = chipaudit("run", "--device", "cpu", "--level", "quick", "--only", only, "--json", str(out),
                  env=cli_env(plugins=True))
    assert p.returncode == code, p.stdout + p.stderr
    assert load(out)["verdict"] == verdict
    assert f"verdict: {verdict.upper()}" in p.stdout


@pytest.mark.parametrize("args", [
    ["run", "--level", "bogus"],
    ["run", "--device", "nonsense:x"],
    ["run", "--device", "cuda:7"],
    ["run", "--seed", "-3"],
    ["run", "--json", "/no/such/folder/r.json"],
    ["run", "--only", "no.such.check"],
    ["run", "--burn-in-formats", "fp32,int8"],
    ["frobnicate"],
])
def test_bad_input_is_one_line_exit_2_no_traceback(args: list[str]) -> None:
    p = chipaudit(*args)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stderr.startswith("chipaudit: error:")


def test_help_teaches() -> None:
    p = chipaudit("run", "--help")
    assert p.returncode == 0
    for word in ("--device", "--level", "--seed", "--json", "Example"):
        assert word in p.stdout


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf command's words (typer vendors its own click: groups are told by their commands)."""
    out: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        out += _commands(command, (*prefix, name)) if hasattr(command, "commands") else [(*prefix, name)]
    return out


def test_every_command_has_a_one_line_summary_and_an_example() -> None:
    """The command table of --help is one line per command at 80 columns; each command's help shows
    how it is called."""
    from typer.main import get_command
    from typer.testing import CliRunner

    from chipaudit.cli import app

    runner = CliRunner()
    for group in ((), ("baseline",), ("fleet",)):
        listing = runner.invoke(app, [*group, "--help"], terminal_width=80, env={"COLUMNS": "80"}).output
        panel = listing.split("Commands")[1].splitlines()[1:]
        rows = [line.strip("│ ") for line in panel if line.startswith("│")]
        assert rows and all(not line.startswith("│   ") for line in panel if line.startswith("│")), listing
        assert all(len(r.split()) > 2 for r in rows), listing
    commands = _commands(get_command(app))
    assert len(commands) >= 17
    for command in commands:
        text = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "100"}).output
        assert "Example" in text, command


def test_report_schema_and_reproducibility(tmp_path: Path) -> None:
    """The JSON report carries everything the issue names; a fixed seed repeats the audit exactly."""
    reports = []
    for name in ("a.json", "b.json"):
        p = chipaudit("run", "--device", "cpu", "--level", "quick", "--seed", "42",
                      "--only", "integrity.gemm.int8", "--only", "integrity.gemm.tf32",
                      "--json", str(tmp_path / name))
        assert p.returncode == 0, p.stdout + p.stderr
        reports.append(load(tmp_path / name))
    r = reports[0]
    assert r.keys() >= REQUIRED_REPORT_KEYS
    assert r["schema"].startswith("chipaudit.report/")
    assert r["tool"]["name"] == "chipaudit" and r["tool"]["version"]
    assert r["seed"] == 42 and r["level"] == "quick" and r["complete"] is True
    assert {"os", "python", "torch", "numpy"} <= r["environment"].keys()
    assert r["device"]["type"] == "cpu"
    assert r["limits"] and "--seed 42" in r["replay"]
    for check in r["checks"]:
        assert check.keys() >= REQUIRED_CHECK_KEYS
    tf32 = next(c for c in r["checks"] if c["id"] == "integrity.gemm.tf32")
    assert tf32["status"] == "skipped" and tf32["reason"]
    int8 = next(c for c in r["checks"] if c["id"] == "integrity.gemm.int8")
    assert int8["coverage"]["cases"] > 0
    assert [c["coverage"] for c in reports[0]["checks"]] == [c["coverage"] for c in reports[1]["checks"]]


def test_findings_carry_what_reproduces_them(tmp_path: Path) -> None:
    p = chipaudit("run", "--device", "cpu", "--level", "quick", "--only", "fake.fail", "--json",
                  str(tmp_path / "r.json"), env=cli_env(plugins=True))
    finding = load(tmp_path / "r.json")["findings"][0]
    assert finding.keys() >= REQUIRED_FINDING_KEYS
    assert finding["severity"] == "high" and "seed" in finding["evidence"]
    assert p.returncode == 1


def test_ctrl_c_leaves_a_partial_report_marked_incomplete(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = subprocess.Popen(chipaudit_argv("run", "--device", "cpu", "--level", "quick", "--only", "fake.ok",
                                           "--only", "fake.hang", "--json", str(out)),
                            env=cli_env(plugins=True), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until the first check's result is on disk
        if out.exists() and load(out)["checks"]:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    report = load(out)
    assert proc.returncode == 3, stdout + stderr
    assert report["complete"] is False and report["verdict"] == "inconclusive"
    assert [c["id"] for c in report["checks"]] == ["fake.ok"]
    assert any("interrupted" in limit for limit in report["limits"])
    assert "interrupted" in stderr and "Traceback" not in stderr


@pytest.mark.slow
@pytest.mark.parametrize(("check", "option", "value", "param", "coverage", "expected"), [
    ("integrity.burnin", "--burn-in-seconds", "2", "burn_in_seconds", "requested_seconds", 2.0),
    ("integrity.memory", "--memory-share", "0.001", "memory_share", "target_share", 0.001),
])
def test_an_audit_parameter_is_used_recorded_and_repeated_by_the_replay_command(
        tmp_path: Path, check: str, option: str, value: str, param: str, coverage: str, expected: float) -> None:
    report = tmp_path / "r.json"
    done = chipaudit("run", "--device", "cpu", "--level", "quick", "--only", check, option, value, "--seed", "4",
                     "--json", str(report), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    data = load(report)
    (result,) = data["checks"]
    assert result["status"] == "passed" and result["coverage"][coverage] == expected
    assert f"{option} {value}" in data["replay"] and data["params"] == {param: expected}
    if check == "integrity.burnin":  # the shortened burn-in still did verified work and drew its curve
        assert result["coverage"]["products"] > 0 and result["measurements"]["throughput_curve"]["t_s"]
