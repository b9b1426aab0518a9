"""What a run writes after its verdict: each output on its own, none lost to another's failure."""

from __future__ import annotations

from pathlib import Path

from evidence_support import synthetic_report

from chipaudit.evidence import bundle, history
from chipaudit.evidence.publish import Outputs, publish


def test_one_failing_output_costs_no_other(tmp_path: Path) -> None:
    (tmp_path / "taken.html").mkdir()  # a folder where the HTML file should go
    outputs = Outputs(bundle=tmp_path / "B", html=tmp_path / "taken.html", junit=tmp_path / "j.xml",
                      prometheus=tmp_path / "p.prom", db=tmp_path / "h.sqlite3")
    (outputs.staging / "behaviour.x").mkdir()  # type: ignore[operator]
    (outputs.staging / "behaviour.x" / "log.txt").write_text("seen\n")  # type: ignore[operator]
    written, failed = publish(synthetic_report(), outputs)
    outputs.cleanup()
    assert len(failed) == 1 and "HTML report" in failed[0]
    assert [w.split(":")[0] for w in written] == ["bundle", "JUnit XML", "Prometheus textfile", "history"]
    assert (tmp_path / "B" / "evidence/behaviour.x/log.txt").read_text() == "seen\n"
    assert bundle.BundleReader(tmp_path / "B").listing().files >= {"report.json", bundle.ENVELOPE}
    assert history.runs(tmp_path / "h.sqlite3")[0].verdict == "pass"
    assert not outputs.staging.exists()  # type: ignore[union-attr]
