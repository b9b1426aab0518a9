"""Audit commands: run, checks, selftest, replay, report, history."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from chipaudit.cli.common import (
    FAIL,
    INCONCLUSIVE,
    DeviceOption,
    Kind,
    UsageError,
    app,
    baseline_params,
    check_outputs,
    console,
    existing,
    fail,
    ready_to_audit,
    resolve_device,
    say,
    stop,
    usage_errors,
)
from chipaudit.report.model import EXIT_CODES, Level, Report

if TYPE_CHECKING:
    from chipaudit.evidence.publish import Outputs
    from chipaudit.runner.audit import AuditConfig
    from chipaudit.sensors.watch import Watch


@app.command()
def run(
    device: DeviceOption = "auto",
    level: Annotated[Level, typer.Option(help="smoke (seconds: a job's prolog), quick (under three minutes), standard, "
                                              "or deep.")] = Level.standard,
    seed: Annotated[int | None, typer.Option(min=0, help="Repeat a run exactly. Default: a new random seed, "
                                             "always recorded in the report.")] = None,
    only: Annotated[list[str] | None, typer.Option(help="Run only checks with this id or id prefix "
                                                   "(repeatable), e.g. integrity.gemm.fp32.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the JSON report here; it is kept "
                                                   "current after every check.")] = None,
    bundle: Annotated[Path | None, typer.Option(help="Write a bundle folder: the report, the raw evidence and "
                                                "an attestation to sign with 'chipaudit sign'.")] = None,
    html: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report.")] = None,
    junit: Annotated[Path | None, typer.Option(help="Write JUnit XML: each check a test case, for CI.")] = None,
    prometheus: Annotated[Path | None, typer.Option(help="Write a node-exporter textfile (.prom).")] = None,
    db: Annotated[Path | None, typer.Option(help="History database. Default: history.sqlite3 in the user's "
                                            "data folder ($XDG_DATA_HOME/chipaudit).")] = None,
    baseline: Annotated[Path | None, typer.Option(help="Compare the device's stack with this baseline (from "
                                                  "'chipaudit baseline create'); differences are findings.")] = None,
    burn_in_seconds: Annotated[float | None, typer.Option(min=1.0, help="How long the sustained verified load "
                                                          "runs. Default: quick 10, standard 60, deep 600.")] = None,
    burn_in_formats: Annotated[str | None, typer.Option(help="Formats the sustained load rotates through, "
                                                        "comma-separated, e.g. bf16,fp16. Default: where the "
                                                        "device peaks: bf16, fp16 and rated fp8 on "
                                                        "accelerators, fp32 on a CPU.")] = None,
    memory_share: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Share of free device memory the "
                                                       "memory test covers. Default: smoke 0.001, quick 0.01, "
                                                       "standard 0.25, deep 0.9.")] = None,
    weights: Annotated[Path | None, typer.Option(help="Also audit products of this model's weights (a "
                                                 ".safetensors file) with realistic activations "
                                                 "(integrity.weights); its sha256 is recorded.")] = None,
) -> None:
    """Audit a device: run the checks of a level and print a verdict.

    Example: chipaudit run --device cuda:0 --level quick --json report.json
    Example: chipaudit run --device cuda:0 --level quick --only integrity.weights --weights model.safetensors
    """
    check_outputs((json_path, "--json", Kind.file), (bundle, "--bundle", Kind.new_folder),
                  (html, "--html", Kind.file), (junit, "--junit", Kind.file),
                  (prometheus, "--prometheus", Kind.file), (db, "--db", Kind.file))
    params = {**({"burn_in_seconds": burn_in_seconds} if burn_in_seconds else {}),
              **({"burn_in_formats": burn_formats_option(burn_in_formats)} if burn_in_formats else {}),
              **({"memory_share": memory_share} if memory_share is not None else {})}
    if weights is not None:
        from chipaudit.checks.integrity.weights import params_for

        params.update(params_for(weights))
    report = audit(device, level, seed, only, params, json_path, baseline=baseline, bundle=bundle, html=html,
                   junit=junit, prometheus=prometheus, db=db)
    raise typer.Exit(EXIT_CODES[report.verdict])


def burn_formats_option(given: str) -> list[str]:
    """--burn-in-formats as a list of format names; an unknown or integer one is bad input."""
    from chipaudit.oracle.formats import FORMATS

    names = [n.strip() for n in given.split(",") if n.strip()]
    floats = sorted(n for n, f in FORMATS.items() if not f.integer)
    bad = [n for n in names if n not in floats]
    if bad or not names:
        raise UsageError(f"--burn-in-formats {given}: {', '.join(bad) or 'no format'} is not one of "
                         f"{', '.join(floats)}")
    return names


def audit(device: str, level: Level, seed: int | None, only: list[str] | None, params: dict[str, Any],
          json_path: Path | None, baseline: Path | None = None, **outputs: Path | None) -> Report:
    """What run and bench share once their options are checked: the audit, shown live, then every
    output. Ctrl-C ends the command here, with whatever the audit had measured published."""
    from chipaudit.runner.levels import audit_watch

    # First of all, before torch is imported: the eBPF tracer compiles and attaches meanwhile, for
    # seconds. Bad input found below closes it at once (sensors/ebpf.py: abort).
    with audit_watch(level) as watch:
        from chipaudit.evidence.publish import Outputs
        from chipaudit.runner.audit import AuditConfig

        ready_to_audit(only, params)
        resolved = resolve_device(device)
        params = {**params, **baseline_params(baseline, resolved)}
        out = Outputs(**outputs)
        try:
            config = AuditConfig(device=resolved, level=level, seed=secrets.randbits(32) if seed is None else seed,
                                 only=only, params={**out.params(), **params})
            return _audit(config, out, json_path, watch)
        finally:
            out.cleanup()


def _audit(config: AuditConfig, outputs: Outputs, json_path: Path | None, watch: Watch) -> Report:
    """The audit under `watch`, which it ends before the outputs are written."""
    from chipaudit.report.terminal import render
    from chipaudit.runner.live import Interrupted, run_live

    console.print(f"chipaudit: auditing {config.device} at level {config.level.value}, seed {config.seed}")
    try:
        report = run_live(config, console, on_update=lambda r: r.write_json(json_path) if json_path else None,
                          watch=watch)
    except Interrupted as e:
        if e.report is None:
            stop(INCONCLUSIVE, "interrupted before the audit started")
        render(e.report, console)
        _publish(e.report, outputs)
        stop(EXIT_CODES[e.report.verdict], f"interrupted{f'; partial report in {json_path}' if json_path else ''}")
    render(report, console)
    if json_path is not None:
        console.print(f"report: {json_path}")
    _publish(report, outputs)
    return report


def _publish(report: Report, outputs: Outputs) -> None:
    from chipaudit.evidence.publish import publish

    written, failed = publish(report, outputs)
    for line in written:
        say(line)
    for line in failed:
        fail(line)


@app.command()
def checks() -> None:
    """List every check with its category and the levels it runs at.

    Example: chipaudit checks
    """
    from rich.table import Table

    from chipaudit.checks import all_checks

    table = Table("id", "category", "levels")
    for check in all_checks():
        table.add_row(check.id, check.category.value, ", ".join(lv.value for lv in check.levels))
    console.print(table)


@app.command()
def selftest(
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the detection matrix, each simulated "
                                                   "device's findings and the per-bit curves here.")] = None,
) -> None:
    """Measure the audit's own detection power on simulated faults.

    The simulated devices flip bits, corrupt values by value, structure or shape, compute fp32 in
    bf16, corrupt after use, throttle, or compute a wrong exp; an honest control must pass. The
    per-bit detection curve of the matrix-product checker is measured too. Exit 0 when every fault
    is detected and nothing honest is failed, 1 otherwise.

    Example: chipaudit selftest --json selftest.json
    """
    from chipaudit.report.model import write_atomic
    from chipaudit.selftest.run import run_selftest
    from chipaudit.selftest.view import render

    check_outputs((json_path, "--json", Kind.file))
    with console.status("selftest") as status:
        result = run_selftest(
            on_device=lambda device, note: status.update(f"selftest: {note} {device.label}"),
            on_check=lambda device, check_id: status.update(f"selftest: {device.label}: {check_id}"))
    render(result, console)
    if json_path is not None:
        write_atomic(json_path, json.dumps(result.as_dict(), indent=2) + "\n")
        say(f"selftest results: {json_path}")
    if result.interrupted:
        stop(INCONCLUSIVE, "interrupted: the results above cover the simulated devices audited so far")
    raise typer.Exit(0 if result.ok else FAIL)


@app.command()
def replay(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder, or a report JSON file.")],
    device: Annotated[str | None, typer.Option(help="Run on this device instead of the recorded one.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the reproduced report here.")] = None,
    baseline: Annotated[Path | None, typer.Option(help="The stack baseline the audit was compared with, where "
                                                  "it lies on this machine (default: its recorded path).")] = None,
) -> None:
    """Re-run a recorded audit here; say whether each check agrees.

    The checks run with the record's seeds, level and parameters (burn-in length, stack baseline,
    requested measurements). Exit 0 when every check agrees, 1 otherwise. Signatures are not
    checked: run chipaudit verify for that.

    Example: chipaudit replay bundle/ --device cuda:1
    """
    from chipaudit.evidence.bundle import BundleProblem, read_report
    from chipaudit.evidence.replay import compare, config_for
    from chipaudit.report.evidence_view import replay_tables
    from chipaudit.runner.audit import run_audit
    from chipaudit.runner.watchdog import Events

    check_outputs((json_path, "--json", Kind.file))
    existing(bundle, "BUNDLE")
    with usage_errors(BundleProblem):
        recorded = read_report(bundle)
    resolved = resolve_device(device or recorded.device.spec, "the recorded device" if device is None else "--device")
    recorded_baseline = recorded.params.get("baseline")
    if baseline is None and recorded_baseline and not Path(recorded_baseline).is_file():
        raise UsageError(f"the audit compared its stack with the baseline {recorded_baseline}, which is not on "
                         "this machine: pass --baseline FILE")
    if baseline is not None:
        existing(baseline, "--baseline")
    config = config_for(recorded, resolved, baseline_params(baseline, resolved).get("baseline"))
    ready_to_audit(config.only, config.params)
    say(f"chipaudit: replaying {len(config.only or [])} check(s) of a {recorded.level.value} audit "
        f"(seed {recorded.seed}) on {resolved}")
    reproduced = None
    if config.only:
        with console.status("replaying") as status:
            reproduced = run_audit(config, Events(started=lambda cid: status.update(f"replaying {cid}")))
        if json_path is not None:
            reproduced.write_json(json_path)
    rows = compare(recorded, reproduced)
    for table in replay_tables(rows, str(bundle)):
        console.print(table)
    agreed = sum(r.agrees for r in rows)
    say(f"{agreed} of {len(rows)} check(s) agree with the record")
    raise typer.Exit(0 if agreed == len(rows) else FAIL)


@app.command()
def report(
    source: Annotated[Path, typer.Argument(help="A report JSON file, or a bundle folder.", metavar="REPORT")],
    html: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report.")] = None,
    junit: Annotated[Path | None, typer.Option(help="Write JUnit XML.")] = None,
    prometheus: Annotated[Path | None, typer.Option(help="Write a node-exporter textfile.")] = None,
) -> None:
    """Turn a JSON report into HTML, JUnit XML or a Prometheus textfile.

    Example: chipaudit report report.json --html report.html
    """
    from chipaudit.evidence.bundle import BundleProblem, read_report
    from chipaudit.report import html as html_out
    from chipaudit.report import junit as junit_out
    from chipaudit.report import prometheus as prometheus_out

    if not (html or junit or prometheus):
        raise UsageError("give at least one of --html, --junit, --prometheus")
    check_outputs((html, "--html", Kind.file), (junit, "--junit", Kind.file),
                  (prometheus, "--prometheus", Kind.file))
    existing(source, "REPORT")
    with usage_errors(BundleProblem):
        loaded = read_report(source)
    for path, writer in ((html, html_out.write), (junit, junit_out.write), (prometheus, prometheus_out.write)):
        if path is not None:
            writer(loaded, path)
            say(f"wrote {path}")


@app.command()
def history(
    device: Annotated[str | None, typer.Option(help="Show one device (its id, device string or name) over "
                                               "time, with its key figures.")] = None,
    db: Annotated[str | None, typer.Option(help="History store: a SQLite file or a postgresql:// URL (default: "
                                              "history.sqlite3 in the user's data folder).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many runs, the latest.")] = 20,
) -> None:
    """List recorded runs, or one device's verdicts and figures by date.

    Example: chipaudit history --device cuda:0
    """
    from chipaudit.evidence import history as runs_db
    from chipaudit.report.history_view import figures_table, runs_table

    path = db or runs_db.default_db()
    runs = runs_db.runs(path, device, limit)
    trends = runs_db.figures(path, [r.id for r in runs]) if device else {}
    if not runs:
        say(f"no runs recorded{f' for {device}' if device else ''} in {path}")
        return
    console.print(runs_table(runs))
    if trends:
        console.print(figures_table(runs, trends))
