"""The run history: real SQLite, real concurrent processes, the history command."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import chipaudit, cli_env
from evidence_support import synthetic_report

from chipaudit.evidence import history
from chipaudit.report.model import CheckResult
from chipaudit.store import StoreError

WRITERS, RUNS_EACH = 6, 15


def test_concurrent_processes_lose_no_row(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite3"
    go = tmp_path / "go"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from evidence_support import synthetic_report
        from chipaudit.evidence import history
        while not Path({str(go)!r}).exists():
            time.sleep(0.005)
        for i in range({RUNS_EACH}):
            report = synthetic_report(failing=i % 2 == 1)
            report.seed = int(sys.argv[1]) * 1000 + i
            history.record(Path({str(db)!r}), report)
    """)
    writers = [subprocess.Popen([sys.executable, "-c", script, str(w)]) for w in range(WRITERS)]
    go.touch()  # all start writing at once, into a database none of them has created yet
    assert [w.wait(timeout=120) for w in writers] == [0] * WRITERS
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        seeds = [s for (s,) in conn.execute("SELECT seed FROM runs")]
        (checks,) = conn.execute("SELECT COUNT(*) FROM checks").fetchone()
    assert sorted(seeds) == sorted(w * 1000 + i for w in range(WRITERS) for i in range(RUNS_EACH))
    assert checks == WRITERS * RUNS_EACH * 4


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite3"
    history.record(db, synthetic_report())
    broken = synthetic_report()
    broken.checks.append(CheckResult.model_validate(broken.checks[0].model_dump()))  # a duplicate check id
    with pytest.raises(StoreError):
        history.record(db, broken)
    runs = history.runs(db)
    assert len(runs) == 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM checks").fetchone() == (4,)


def test_runs_and_figures_of_one_device(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite3"
    for i in range(3):
        report = synthetic_report()
        report.checks[0].measurements["max_error_to_bound"] = 0.1 * (i + 1)
        history.record(db, report)
    other = synthetic_report()
    other.environment.hostname = "elsewhere"
    history.record(db, other)
    assert len(history.runs(db)) == 4
    mine = history.runs(db, "testhost:cpu")
    assert [r.id for r in mine] == [1, 2, 3]
    trend = history.figures(db, [r.id for r in mine])[("integrity.gemm.fp32", "max_error_to_bound")]
    assert [round(trend[r.id], 3) for r in mine] == [0.1, 0.2, 0.3]
    assert ("performance.burnin", "efficiency.fp16") in history.figures(db, [1])


def test_data_dir_follows_xdg(private_data_dir: Path) -> None:
    assert history.default_db() == private_data_dir / "chipaudit" / history.DB_NAME


@pytest.mark.slow
def test_run_records_itself_and_history_shows_it(tmp_path: Path, private_data_dir: Path) -> None:
    env = cli_env(plugins=True)
    for only in ("fake.ok", "fake.fail"):
        p = chipaudit("run", "--device", "cpu", "--level", "quick", "--only", only, env=env)
        assert p.returncode in (0, 1), p.stderr
    db = private_data_dir / "chipaudit" / history.DB_NAME
    assert [r.verdict for r in history.runs(db)] == ["pass", "fail"]
    explicit = tmp_path / "mine.sqlite3"
    assert chipaudit("run", "--device", "cpu", "--level", "quick", "--only", "fake.ok", "--db", str(explicit),
                     env=env).returncode == 0
    assert len(history.runs(explicit)) == 1 and len(history.runs(db)) == 2
    p = chipaudit("history", env=cli_env({"COLUMNS": "200"}))
    assert p.returncode == 0 and "pass" in p.stdout and "fail" in p.stdout
    host_device = history.runs(db)[0].device_id
    p = chipaudit("history", "--device", host_device, env=cli_env({"COLUMNS": "200"}))
    assert p.returncode == 0 and "pass" in p.stdout and "fail" in p.stdout, p.stdout
    p = chipaudit("history", "--device", "no-such-device")
    assert p.returncode == 0 and "no runs recorded for no-such-device" in p.stdout


def test_history_of_a_missing_or_broken_database(tmp_path: Path) -> None:
    p = chipaudit("history", "--db", str(tmp_path / "none.sqlite3"))
    assert p.returncode == 2 and "no history yet" in p.stderr
    assert not (tmp_path / "none.sqlite3").exists()
    junk = tmp_path / "junk.sqlite3"
    junk.write_text("this is not a database, but it is long enough to look like one" * 20)
    p = chipaudit("history", "--db", str(junk))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
