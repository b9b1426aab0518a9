"""Everything a finished (or interrupted) run writes besides its JSON report: the bundle, the HTML,
JUnit and Prometheus files, and its row in the history.

Each output is attempted even when another fails, so that a full disk under one path does not cost
the others; failures come back as messages for the command line to print.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chipaudit.evidence import bundle, history
from chipaudit.report.model import Report
from chipaudit.store import StoreError


@dataclass
class Outputs:
    bundle: Path | None = None
    html: Path | None = None
    junit: Path | None = None
    prometheus: Path | None = None
    db: Path | None = None  # None: the default history database
    staging: Path | None = None  # where checks left raw evidence for the bundle

    def __post_init__(self) -> None:
        if self.bundle is not None and self.staging is None:
            self.staging = Path(tempfile.mkdtemp())

    def params(self) -> dict[str, str]:
        """Audit parameters that tell checks where to leave raw evidence (bundle.check_evidence_dir)."""
        return {bundle.EVIDENCE_DIR_PARAM: str(self.staging)} if self.staging else {}

    def cleanup(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)


def publish(report: Report, outputs: Outputs) -> tuple[list[str], list[str]]:
    """(what was written, what could not be); never raises for one output's failure."""
    from chipaudit.report import html, junit, prometheus

    written: list[str] = []
    failed: list[str] = []

    def attempt(label: str, path: Path | None, action: Callable[[Path], object], hint: str = "") -> None:
        if path is None:
            return
        try:
            action(path)
        except Exception as e:  # one output's failure must not cost the others, nor the verdict
            failed.append(f"could not write the {label} {path}: {e}")
        else:
            written.append(f"{label}: {path}{hint}")

    attempt("bundle", outputs.bundle, lambda p: bundle.write_bundle(
        report, p, bundle.collect_evidence(outputs.staging) if outputs.staging else None),
        f" (unsigned; sign it with: chipaudit sign {outputs.bundle} --key KEY)")
    attempt("HTML report", outputs.html, lambda p: html.write(report, p))
    attempt("JUnit XML", outputs.junit, lambda p: junit.write(report, p))
    attempt("Prometheus textfile", outputs.prometheus, lambda p: prometheus.write(report, p))
    db = outputs.db or history.default_db()
    try:
        run_id = history.record(db, report, outputs.bundle)
    except (StoreError, OSError) as e:
        failed.append(f"could not record the run in the history: {e}")
    else:
        written.append(f"history: run {run_id} in {db}")
    return written, failed
