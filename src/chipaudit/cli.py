"""The command line. Thin: parse, call the layers below, print, map the verdict to an exit code."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from chipaudit.report.model import EXIT_CODES, EXIT_USAGE, Level, Report, Verdict

if TYPE_CHECKING:
    from chipaudit.evidence.publish import Outputs

app = typer.Typer(
    name="chipaudit",
    help=(
        "Audit an AI accelerator by what it does: check every computation against an independent host "
        "oracle, and report a verdict others can reproduce.\n\n"
        "Start with:  chipaudit run --level quick\n\n"
        "Exit codes: 0 pass, 1 fail, 2 usage error, 3 inconclusive."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False, emoji=False)
# typer >= 0.26 vendors its own copy of click; reach its exceptions through a public typer class.
_click = sys.modules[next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException").__module__]


def fail(message: str) -> None:
    """One line on stderr, never wrapped, never a traceback."""
    print(f"chipaudit: {message}", file=sys.stderr, flush=True)


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit 2."""


def _writable(path: Path | None, option: str) -> None:
    if path is not None and not path.parent.exists():
        raise UsageError(f"{option} {path}: the folder {path.parent} does not exist")


@app.command()
def run(
    device: Annotated[str, typer.Option(help="PyTorch device: auto, cpu, cuda:0, npu:0, mps, xpu, ...")] = "auto",
    level: Annotated[Level, typer.Option(help="quick (about a minute), standard, or deep.")] = Level.standard,
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
    memory_share: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Share of free device memory the "
                                                       "memory test covers. Default: quick 0.01, standard "
                                                       "0.25, deep 0.9.")] = None,
) -> None:
    """Audit a device: run the checks of a level and print a verdict.

    Example: chipaudit run --device cuda:0 --level quick --json report.json
    """
    from chipaudit.devices.torchdev import DeviceError, resolve
    from chipaudit.evidence.publish import Outputs
    from chipaudit.report.terminal import render
    from chipaudit.runner.audit import AuditConfig, run_audit
    from chipaudit.runner.watchdog import Events

    for path, option in ((json_path, "--json"), (bundle, "--bundle"), (html, "--html"), (junit, "--junit"),
                         (prometheus, "--prometheus"), (db, "--db")):
        _writable(path, option)
    if bundle is not None and bundle.exists() and (not bundle.is_dir() or any(bundle.iterdir())):
        raise UsageError(f"--bundle {bundle}: exists and is not an empty folder")
    _known_checks(only)
    try:
        resolved = resolve(device)
    except DeviceError as e:
        raise UsageError(f"--device {device}: {e}") from e
    outputs = Outputs(bundle=bundle, html=html, junit=junit, prometheus=prometheus, db=db)
    config = AuditConfig(device=resolved, level=level, seed=secrets.randbits(32) if seed is None else seed,
                         only=only, params={**outputs.params(), **_baseline_params(baseline, resolved),
                                              **({"burn_in_seconds": burn_in_seconds} if burn_in_seconds else {}),
                                              **({"memory_share": memory_share} if memory_share is not None else {})})
    console.print(f"chipaudit: auditing {resolved} at level {level.value}, seed {config.seed}")

    def save(report: Report) -> None:
        if json_path is not None:
            report.write_json(json_path)

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True)
    tasks: dict[str, int] = {}

    def started(check_id: str) -> None:
        tasks[check_id] = progress.add_task(check_id, total=None)

    def step(check_id: str, done: int, total: int, note: str) -> None:
        progress.update(tasks[check_id], completed=done, total=total, description=f"{check_id}: {note}"[:70])

    def finished(result: object, findings: object) -> None:
        task = tasks.pop(getattr(result, "id", ""), None)
        if task is not None:
            progress.remove_task(task)
        progress.advance(overall)

    from chipaudit.runner.audit import plan

    overall = progress.add_task("checks", total=len(plan(config)))
    report: Report | None = None
    captured: list[Report] = []
    try:
        with progress:
            report = run_audit(config, Events(started, step, finished),
                               on_update=lambda r: (captured.clear(), captured.append(r), save(r)))
    except KeyboardInterrupt:
        report = captured[-1] if captured else None
        if report is None:
            fail("interrupted before the audit started")
            raise typer.Exit(EXIT_CODES[Verdict.inconclusive]) from None
        render(report, console)
        _publish(report, outputs)
        where = f"; partial report in {json_path}" if json_path else ""
        fail(f"interrupted{where}")
        raise typer.Exit(EXIT_CODES[report.verdict]) from None
    render(report, console)
    if json_path is not None:
        console.print(f"report: {json_path}")
    _publish(report, outputs)
    raise typer.Exit(EXIT_CODES[report.verdict])


@app.command()
def checks() -> None:
    """List every check with its category and the levels it runs at."""
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
    """Measure the audit's own detection power on this machine: audit simulated faulty CPU devices (bit
    flips, value-, structure- and shape-triggered corruption, fp32 computed in bf16, corruption after
    use, a throttle, a corrupted exp) and an honest control, and measure the per-bit detection curve of
    the matrix-product checker. Exit 0 when every fault is detected and nothing honest is failed.

    Example: chipaudit selftest --json selftest.json
    """
    import json

    from chipaudit.report.model import write_atomic
    from chipaudit.selftest.run import run_selftest
    from chipaudit.selftest.view import render

    _writable(json_path, "--json")
    with console.status("selftest") as status:
        result = run_selftest(
            on_device=lambda device, note: status.update(f"selftest: {note} {device.label}"),
            on_check=lambda device, check_id: status.update(f"selftest: {device.label}: {check_id}"))
    render(result, console)
    if json_path is not None:
        write_atomic(json_path, json.dumps(result.as_dict(), indent=2) + "\n")
        _say(f"selftest results: {json_path}")
    if result.interrupted:
        fail("interrupted: the results above cover the simulated devices audited so far")
        raise typer.Exit(EXIT_CODES[Verdict.inconclusive])
    raise typer.Exit(0 if result.ok else 1)


def _say(text: str) -> None:
    """Plain text: no markup, no highlighting, no wrapping of long paths and key ids."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _publish(report: Report, outputs: Outputs) -> None:
    from chipaudit.evidence.publish import publish

    try:
        written, failed = publish(report, outputs)
    finally:
        outputs.cleanup()
    for line in written:
        _say(line)
    for line in failed:
        fail(line)


def _known_checks(only: list[str] | None) -> None:
    from chipaudit.checks import select

    if only and not select(only):
        raise UsageError(f"--only {' '.join(only)}: no check has that id or prefix (see 'chipaudit checks')")


def _existing(path: Path, option: str, folder: bool = False) -> Path:
    if not path.exists():
        raise UsageError(f"{option} {path}: no such file or folder")
    if folder and not path.is_dir():
        raise UsageError(f"{option} {path}: not a folder (a bundle is the folder chipaudit run --bundle wrote)")
    return path


PassphraseEnv = Annotated[str | None, typer.Option(
    "--passphrase-env", metavar="NAME", help="Read the key's passphrase from environment variable NAME "
    "(never from the command line, where other users could see it).")]


@app.command()
def schema() -> None:
    """Print the JSON Schema that every report follows (draft 2020-12)."""
    from chipaudit.report.schema import shipped_text

    sys.stdout.write(shipped_text())


@app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="Write PREFIX.key (private, mode 0600) and PREFIX.pub.",
                                      metavar="PREFIX")],
    passphrase_env: PassphraseEnv = None,
) -> None:
    """Make an Ed25519 key pair for signing bundles.

    Example: AUDIT_PASS=... chipaudit keygen --out auditor --passphrase-env AUDIT_PASS
    """
    from chipaudit.evidence import keys

    try:
        private, public, keyid = keys.generate(out, keys.passphrase_from_env(passphrase_env))
    except keys.KeyProblem as e:
        raise UsageError(str(e)) from None
    _say(f"private key: {private}{' (encrypted)' if passphrase_env else ''}\npublic key:  {public}\n"
         f"key id:      {keyid}")


@app.command()
def sign(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder written by chipaudit run --bundle.")],
    key: Annotated[Path, typer.Option(help="Your private key (from chipaudit keygen).")],
    passphrase_env: PassphraseEnv = None,
) -> None:
    """Add your signature to a bundle. Several parties can sign the same bundle: the auditor, the
    vendor, a witness. The bundle is checked first; a damaged bundle is not signed (exit 1)."""
    from chipaudit.evidence import keys
    from chipaudit.evidence.bundle import BundleProblem
    from chipaudit.evidence.signing import sign_bundle

    _existing(bundle, "BUNDLE", folder=True)
    try:
        private = keys.load_private(key, keys.passphrase_from_env(passphrase_env))
    except keys.KeyProblem as e:
        raise UsageError(str(e)) from None
    try:
        added, keyid, checked = sign_bundle(bundle, private)
    except BundleProblem as e:
        fail(str(e))
        raise typer.Exit(1) from None
    report = checked.report
    what = f"{report.verdict.value} {report.level.value} audit of {report.device.spec}" if report else "bundle"
    verb = "signed" if added else "already signed by this key:"
    _say(f"{verb} {what} in {bundle} as key {keyid}")


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(help="The bundle folder to verify.")],
    pubkey: Annotated[list[Path], typer.Option(help="A public key you trust (repeatable).")],
    threshold: Annotated[int, typer.Option(min=1, help="How many of the trusted keys must have signed.")] = 1,
    policy: Annotated[Path | None, typer.Option(help="A JSON policy: required_checks, min_level, "
                                                "max_age_days, verdicts.")] = None,
) -> None:
    """Check a bundle: signatures, every file's digest, the schema, and a policy. Exit 0 only when all
    hold; otherwise exit 1 and name the step and file that failed.

    Example: chipaudit verify B --pubkey auditor.pub --pubkey vendor.pub --threshold 2
    """
    from chipaudit.evidence import keys
    from chipaudit.evidence import policy as policies
    from chipaudit.evidence.verify import unique_keys
    from chipaudit.evidence.verify import verify as verify_bundle

    _existing(bundle, "BUNDLE", folder=True)
    try:
        trusted = unique_keys(keys.load_public(p) for p in pubkey)
        rules = policies.load(policy) if policy else None
    except (keys.KeyProblem, policies.PolicyProblem) as e:
        raise UsageError(str(e)) from None
    if threshold > len(trusted):
        raise UsageError(f"--threshold {threshold}: only {len(trusted)} distinct trusted key(s) given")
    result = verify_bundle(bundle, trusted, threshold, rules)
    for i, step in enumerate(result.steps, 1):
        mark = {True: "ok  ", False: "FAIL", None: "--  "}[step.ok]
        _say(f"{i}. {step.name:<10} {mark} {step.detail if step.ok is not False else ''}"
             f"{'not checked' if step.ok is None else ''}".rstrip())
        for problem in step.problems:
            _say(f"     {problem}")
    failed = result.failed
    if failed is not None:
        fail(f"verification failed at step {failed.name}: {failed.problems[0] if failed.problems else ''}")
        raise typer.Exit(1)
    _say(f"verified: {bundle}")


@app.command()
def replay(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder, or a report JSON file.")],
    device: Annotated[str | None, typer.Option(help="Run on this device instead of the recorded one.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the reproduced report here.")] = None,
    baseline: Annotated[Path | None, typer.Option(help="The stack baseline the audit was compared with, where "
                                                  "it lies on this machine (default: its recorded path).")] = None,
) -> None:
    """Re-run a recorded audit's checks here with its seeds, level and parameters (burn-in length, stack
    baseline), and print whether each check agrees with the record. Exit 0 when every check agrees, 1
    otherwise. Signatures are not checked: run chipaudit verify for that."""
    from rich.table import Table

    from chipaudit.devices.torchdev import DeviceError, resolve
    from chipaudit.evidence.bundle import BundleProblem, read_report
    from chipaudit.evidence.replay import FIGURE_RTOL, compare, config_for
    from chipaudit.report.figures import format_figure
    from chipaudit.runner.audit import run_audit
    from chipaudit.runner.watchdog import Events

    _existing(bundle, "BUNDLE")
    _writable(json_path, "--json")
    try:
        recorded = read_report(bundle)
        resolved = resolve(device or recorded.device.spec)
    except BundleProblem as e:
        raise UsageError(str(e)) from None
    except DeviceError as e:
        raise UsageError(f"the recorded device {device or recorded.device.spec}: {e} (choose one with --device)") \
            from None
    recorded_baseline = recorded.params.get("baseline")
    if baseline is None and recorded_baseline and not Path(recorded_baseline).is_file():
        raise UsageError(f"the audit compared its stack with the baseline {recorded_baseline}, which is not on "
                         "this machine: pass --baseline FILE")
    if baseline is not None:
        _existing(baseline, "--baseline")
    config = config_for(recorded, resolved, _baseline_params(baseline, resolved).get("baseline"))
    _say(f"chipaudit: replaying {len(config.only or [])} check(s) of a {recorded.level.value} audit "
         f"(seed {recorded.seed}) on {resolved}")
    reproduced = None
    if config.only:
        with console.status("replaying") as status:
            reproduced = run_audit(config, Events(started=lambda cid: status.update(f"replaying {cid}")))
        if json_path is not None:
            reproduced.write_json(json_path)
    rows = compare(recorded, reproduced)
    table = Table("check", "recorded", "reproduced", "agrees", "note", title=f"replay of {bundle}")
    figures = Table("check", "figure", "recorded", "reproduced", "difference", "within tolerance",
                    title=f"key figures (accuracy within {FIGURE_RTOL:.0%}; timing shown only)")
    for row in rows:
        table.add_row(row.check, row.recorded.value, row.reproduced.value if row.reproduced else "—",
                      "[green]yes[/]" if row.agrees else "[bold red]NO[/]", row.note)
        for f in row.figures:
            diff = f.relative_difference
            figures.add_row(row.check, f.name, format_figure(f.recorded),
                            format_figure(f.reproduced) if f.reproduced is not None else "—",
                            f"{diff:.1%}" if diff is not None else "—",
                            {True: "yes", False: "[yellow]no[/]", None: "(timing)"}[f.within])
    console.print(table)
    if figures.row_count:
        console.print(figures)
    agreed = sum(r.agrees for r in rows)
    _say(f"{agreed} of {len(rows)} check(s) agree with the record")
    raise typer.Exit(0 if agreed == len(rows) else 1)


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
    _existing(source, "REPORT")
    for path, option in ((html, "--html"), (junit, "--junit"), (prometheus, "--prometheus")):
        _writable(path, option)
    try:
        loaded = read_report(source)
    except BundleProblem as e:
        raise UsageError(str(e)) from None
    for path, writer in ((html, html_out.write), (junit, junit_out.write), (prometheus, prometheus_out.write)):
        if path is not None:
            writer(loaded, path)
            _say(f"wrote {path}")


@app.command()
def history(
    device: Annotated[str | None, typer.Option(help="Show one device (its id, device string or name) over "
                                               "time, with its key figures.")] = None,
    db: Annotated[Path | None, typer.Option(help="History database (default: the user's data folder).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many runs, the latest.")] = 20,
) -> None:
    """List recorded runs, or one device's verdicts and key figures over time."""
    from chipaudit.evidence import history as runs_db
    from chipaudit.report.history_view import figures_table, runs_table

    path = db or runs_db.default_db()
    try:
        runs = runs_db.runs(path, device, limit)
        trends = runs_db.figures(path, [r.id for r in runs]) if device else {}
    except runs_db.HistoryProblem as e:
        raise UsageError(str(e)) from None
    if not runs:
        _say(f"no runs recorded{f' for {device}' if device else ''} in {path}")
        return
    console.print(runs_table(runs))
    if trends:
        console.print(figures_table(runs, trends))


def _baseline_params(path: Path | None, device: str) -> dict[str, str]:
    from chipaudit.checks.stack.baseline import BaselineError
    from chipaudit.checks.stack.commands import load_checked

    if path is None:
        return {}
    try:
        load_checked(path, device)
    except BaselineError as e:
        raise UsageError(str(e)) from e
    return {"baseline": str(path.resolve())}


@app.command()
def inventory(
    device: Annotated[str, typer.Option(help="Device whose software stack to fingerprint: auto, cpu, cuda:0, ...")]
    = "auto",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the inventory as JSON here.")] = None,
    record: Annotated[Path | None, typer.Option(help="Also keep every answer of the vendor libraries in this "
                                                "folder (<source>.json), replayable for bug reports and tests.")]
    = None,
) -> None:
    """List every accelerator (vendor, model, UUID, firmware, driver, PCIe link, memory, power and clock
    limits, ECC, retired pages, MIG/partition and confidential-computing modes, throttling), the CPU, and
    the device's software stack with the SHA-256 of every library its computation maps.

    Vendor libraries (NVML, amdsmi, npu-smi) are used when installed: pip install 'chipaudit[nvidia]'.
    Example: chipaudit inventory --json inventory.json
    """
    import json

    from chipaudit.checks.stack.commands import inventory_document, render_inventory
    from chipaudit.devices.torchdev import DeviceError, resolve
    from chipaudit.report.model import write_atomic

    _writable(json_path, "--json")
    if record is not None and not record.is_dir():
        raise UsageError(f"--record {record}: not a folder")
    try:
        resolved = resolve(device)
    except DeviceError as e:
        raise UsageError(f"--device {device}: {e}") from e
    with console.status(f"fingerprinting the stack of {resolved}"):
        document = inventory_document(resolved, record)
    render_inventory(document, console)
    if json_path is not None:
        write_atomic(json_path, json.dumps(document, indent=2) + "\n")
        _say(f"inventory: {json_path}")
    if document["stack"].get("error"):
        raise typer.Exit(EXIT_CODES[Verdict.inconclusive])


baseline_app = typer.Typer(
    help="Record the software stack of a machine you trust, and compare with it later.\n\n"
    "Start with:  chipaudit baseline create trusted.json   then later   chipaudit baseline diff trusted.json",
    no_args_is_help=True)
app.add_typer(baseline_app, name="baseline")


@baseline_app.command("create")
def baseline_create(
    path: Annotated[Path, typer.Argument(help="The baseline file to write.")],
    device: Annotated[str, typer.Option(help="Device whose stack to record: auto, cpu, cuda:0, ...")] = "auto",
    include: Annotated[list[Path] | None, typer.Option(help="Also fingerprint every file under this folder "
                                                       "(repeatable), e.g. /usr/local/cuda.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing baseline file.")] = False,
) -> None:
    """Fingerprint the device's stack and write it to PATH: the baseline to compare with later.

    It records the SHA-256 of the libraries the device's computation maps, the accelerator kernel
    modules and firmware, the device stack's Python packages, the package managers' verdicts, the
    devices' firmware versions, and what each binary can do (its capabilities).

    Example: chipaudit baseline create trusted.json --device cuda:0 --include /usr/local/cuda
    """
    _writable(path, "baseline")
    if path.exists() and not force:
        raise UsageError(f"baseline {path}: exists already (use --force to replace it)")
    missing = [p for p in include or [] if not p.exists()]
    if missing:
        raise UsageError(f"--include {missing[0]}: no such file or folder")
    from chipaudit.checks.stack.commands import create_baseline
    from chipaudit.checks.stack.libraries import ProbeError
    from chipaudit.devices.torchdev import DeviceError, resolve

    try:
        resolved = resolve(device)
    except DeviceError as e:
        raise UsageError(f"--device {device}: {e}") from e
    try:
        with console.status(f"fingerprinting the stack of {resolved}"):
            snap = create_baseline(path, resolved, [str(p) for p in include or []])
    except ProbeError as e:
        fail(f"error: {e}")
        raise typer.Exit(EXIT_CODES[Verdict.inconclusive]) from None
    unread = len(snap.not_fingerprinted())
    _say(f"baseline: {path}: {len(snap.items)} items of {resolved}, stack sha256 {snap.digest()}"
         + (f"; {unread} not fingerprinted" if unread else "") + f" ({snap.timings_s.get('total')} s)")


@baseline_app.command("diff")
def baseline_diff(
    path: Annotated[Path, typer.Argument(help="A baseline written by 'chipaudit baseline create'.")],
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the differences as JSON here.")] = None,
) -> None:
    """Fingerprint the stack again and report every change, addition and removal since the baseline.

    Exit codes: 0 no difference of medium severity or above, 1 such differences, 2 unusable baseline,
    3 the stack could not be fingerprinted.
    """
    import json

    from chipaudit.checks.stack.baseline import BaselineError
    from chipaudit.checks.stack.commands import compare, finding_line
    from chipaudit.checks.stack.libraries import ProbeError
    from chipaudit.report.model import FAILING_SEVERITY, write_atomic

    _writable(json_path, "--json")
    try:
        with console.status(f"fingerprinting the stack again to compare with {path}"):
            trusted, now, findings = compare(path)
    except BaselineError as e:
        raise UsageError(str(e)) from e
    except ProbeError as e:
        fail(f"error: {e}")
        raise typer.Exit(EXIT_CODES[Verdict.inconclusive]) from None
    for finding in sorted(findings, key=lambda f: -f.severity.rank):
        _say(finding_line(finding))
    failing = [f for f in findings if f.severity.rank >= FAILING_SEVERITY.rank]
    _say(f"{len(findings)} difference(s) from the baseline of {trusted.created:%Y-%m-%d %H:%M} UTC "
         f"({len(failing)} of medium severity or above); stack sha256 {now.digest()}"
         if findings else f"no differences from the baseline of {trusted.created:%Y-%m-%d %H:%M} UTC; "
         f"stack sha256 {now.digest()}")
    if json_path is not None:
        write_atomic(json_path, json.dumps({"baseline": str(path), "stack_sha256": now.digest(),
                                            "findings": [f.model_dump(mode="json") for f in findings]}, indent=2)
                     + "\n")
    raise typer.Exit(EXIT_CODES[Verdict.fail] if failing else 0)


@app.command()
def bench(
    device: Annotated[str, typer.Option(help="PyTorch device: auto, cpu, cuda:0, npu:0, mps, xpu, ...")] = "auto",
    level: Annotated[Level, typer.Option(help="quick (two figures), standard (minutes on a CPU), or deep.")]
    = Level.standard,
    seed: Annotated[int | None, typer.Option(min=0, help="Seed of the random inputs (recorded).")] = None,
    only: Annotated[list[str] | None, typer.Option(help="Measure only these performance checks (repeatable), "
                                                   "e.g. gemm.bf16 or workload.llm_decode.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report (with every figure, its "
                                                   "repeats and noise) here, for 'chipaudit compare'.")] = None,
    requirements: Annotated[Path | None, typer.Option(help="A TOML file of needs (e.g. metric = "
                                                      "'gemm.bf16.tflops', min = 10): print a fitness table and "
                                                      "exit 1 if any need fails.")] = None,
    from_report: Annotated[Path | None, typer.Option("--from", help="Judge the requirements against this "
                                                     "saved report instead of measuring.")] = None,
) -> None:
    """Measure performance: matrix-product throughput per format, memory and host-link bandwidth,
    launch latency, and transformer, LLM-decode and CNN-training workloads, each with its noise and,
    where the chip is in the specification database, its efficiency against the rating.

    A figure far below the vendor's rating with no throttle reason is a finding (possible hidden cap).

    Examples: chipaudit bench --device cuda:0 --json h100.json
              chipaudit bench --requirements needs.toml
    """
    from chipaudit.perf import bench as perf_bench
    from chipaudit.perf import requirements as reqs
    from chipaudit.perf.compare import ReportInputError, load_report

    scenario = None
    if requirements is not None:
        try:
            scenario = reqs.load(requirements)
        except reqs.RequirementsError as e:
            raise UsageError(str(e)) from None
    if from_report is not None:
        if scenario is None:
            raise UsageError("--from needs --requirements: it judges a saved report against them")
        try:
            measured = load_report(from_report)
        except ReportInputError as e:
            raise UsageError(str(e)) from None
        code = EXIT_CODES[measured.verdict]
    else:
        try:
            patterns = perf_bench.only_patterns(only)
        except perf_bench.BenchInputError as e:
            raise UsageError(str(e)) from None
        path = json_path
        if path is None:
            import tempfile

            path = Path(tempfile.mkstemp(prefix="chipaudit-bench-", suffix=".json")[1])
        code = EXIT_CODES[Verdict.inconclusive]  # run always exits with the verdict's code
        with perf_bench.requested_cases(scenario):
            try:
                run(device=device, level=level, seed=seed, only=patterns, json_path=path)
            except typer.Exit as e:
                code = e.exit_code
            except UsageError:
                if json_path is None:
                    path.unlink(missing_ok=True)
                raise
        try:
            measured = load_report(path)
        except ReportInputError:  # interrupted before a report was written: the run has said so
            raise typer.Exit(code) from None
    console.print(perf_bench.figures_table(measured))
    if scenario is not None:
        results = perf_bench.evaluate(measured, scenario)
        console.print(perf_bench.fitness_table(scenario, results))
        failed = sum(not r.passed for r in results)
        _say(f"{len(results) - failed} of {len(results)} need(s) met")
        if failed:
            code = EXIT_CODES[Verdict.fail]
    raise typer.Exit(code)


@app.command()
def compare(
    reports: Annotated[list[Path], typer.Argument(help="Two or more report JSON files (or bundle folders); the "
                                                  "first is the reference column.", metavar="REPORT...")],
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the comparison as JSON here.")] = None,
) -> None:
    """Show audits or benchmarks side by side: verdicts per category and check, and every performance
    figure with its ratio to the first report, its efficiency against its rating, and changes beyond
    noise marked. Exit 1 when a figure is worse than the first report's beyond noise or a check's
    verdict is worse; 0 otherwise.

    Example: chipaudit compare before-driver-update.json after.json
    """
    from chipaudit.perf import compare as comparison
    from chipaudit.report.model import write_atomic

    _writable(json_path, "--json")
    if len(reports) < 2:
        raise UsageError("compare needs at least two reports")
    try:
        columns = [comparison.Column(str(p), comparison.load_report(p)) for p in reports]
        result = comparison.build(columns)
    except comparison.ReportInputError as e:
        raise UsageError(str(e)) from None
    comparison.render(result, console)
    if json_path is not None:
        write_atomic(json_path, comparison.dumps(result))
        _say(f"comparison: {json_path}")
    summary = result["summary"]
    raise typer.Exit(1 if summary["regressions"] or summary["worse_checks"] else 0)


fleet_app = typer.Typer(
    help="Audit every accelerator of a Ray cluster, keep every result in one store, and find the outliers.",
    no_args_is_help=True,
)
app.add_typer(fleet_app, name="fleet")
_FLEET_DB = typer.Option("--db", help="Store: a SQLite file or a postgresql:// URL. Default: the history database.")
_FLEET_ADDRESS = typer.Option(help="Ray cluster address (host:port or auto). Default: a local Ray instance.")


def _fleet_call(action: Callable[[Callable[[object], None]], object]) -> object:
    """Run a fleet action with live progress; bad addresses, stores and run ids are usage errors."""
    from rich.progress import TimeRemainingColumn

    from chipaudit.fleet import FleetProblem, StoreProblem

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)
    task = progress.add_task("fleet: connecting", total=None)

    def update(p: object) -> None:
        counts, total = p.counts, p.total
        finished = counts["done"] + counts["failed"] + counts["lost"]
        progress.update(task, completed=finished, total=total, description=(
            f"fleet: {counts['done']} done, {counts['running']} running, {counts['failed']} failed, "
            f"{counts['lost']} lost"))

    try:
        with progress:
            return action(update)
    except (FleetProblem, StoreProblem) as e:
        raise UsageError(str(e)) from e


def _fleet_exit(run_id: str, db: str | None) -> None:
    from chipaudit.fleet import open_store
    from chipaudit.fleet.summary import summarize

    store, _ = open_store(db)
    run = store.run(run_id)
    summary = summarize(run, store.audits(run_id)) if run else {}
    counts = {k: summary.get(k, 0) for k in ("audited", "devices", "passed", "failed", "lost")}
    console.print("fleet run {}: {audited} of {devices} devices audited, {passed} passed, {failed} failed, "
                  "{lost} lost".format(run_id, **counts))
    console.print(f"report: chipaudit fleet report {run_id}" + (f" --db {db}" if db else ""), markup=False)
    if summary.get("failed"):
        raise typer.Exit(EXIT_CODES[Verdict.fail])
    unfinished = summary.get("lost", 0) + summary.get("could_not_run", 0) + summary.get("inconclusive", 0)
    raise typer.Exit(EXIT_CODES[Verdict.inconclusive] if unfinished or not summary else EXIT_CODES[Verdict.pass_])


@fleet_app.command("run")
def fleet_run(
    address: Annotated[str | None, _FLEET_ADDRESS] = None,
    db: Annotated[str | None, _FLEET_DB] = None,
    level: Annotated[Level, typer.Option(help="Level of every audit.")] = Level.quick,
    seed: Annotated[int | None, typer.Option(min=0, help="One seed for every audit, so every device gets the "
                                             "same inputs. Default: random, recorded.")] = None,
    only: Annotated[list[str] | None, typer.Option(help="Checks to run on every device (repeatable).")] = None,
    burn_in_seconds: Annotated[float | None, typer.Option(min=1.0, help="How long each audit's sustained verified "
                                                          "load runs. Default: the level's.")] = None,
    resource: Annotated[str | None, typer.Option(help="Audit one device per unit of this Ray resource (MLU, "
                                                 "...). Default: GPU, else Ray's NPU or HPU, else the CPU.")] = None,
    device: Annotated[str, typer.Option(help="Torch device inside each task when --resource is given.")] = "cpu",
    max_attempts: Annotated[int, typer.Option(min=1, help="Tries per audit when its node or worker dies.")] = 2,
    node_wait: Annotated[float, typer.Option(min=0, help="Seconds to wait for a dead node to come back.")] = 60.0,
    max_parallel: Annotated[int, typer.Option(min=0, help="Audits in flight at once (0: one per device).")] = 0,
) -> None:
    """Audit every device in the cluster: one audit per GPU, NPU or HPU (or --resource unit), one per
    CPU-only node.

    Example: chipaudit fleet run --address auto --level quick
    """
    from chipaudit.fleet import FleetOptions, start

    _known_checks(only)
    options = FleetOptions(address, level, seed, only or [], resource, device, max_attempts, node_wait, max_parallel,
                           burn_in_seconds)
    run_ids: list[str] = []
    try:
        run_ids.append(str(_fleet_call(lambda update: start(options, db, update, run_ids.append))))
    except KeyboardInterrupt:
        if run_ids:
            fail(f"interrupted; finished audits are kept. Continue with: chipaudit fleet resume {run_ids[0]}")
        raise typer.Exit(EXIT_CODES[Verdict.inconclusive]) from None
    _fleet_exit(run_ids[0], db)


@fleet_app.command("resume")
def fleet_resume(
    run_id: Annotated[str, typer.Argument(help="The fleet run to continue.")],
    address: Annotated[str | None, _FLEET_ADDRESS] = None,
    db: Annotated[str | None, _FLEET_DB] = None,
) -> None:
    """Continue an interrupted fleet run; finished audits are not redone."""
    from chipaudit.fleet import resume

    try:
        _fleet_call(lambda update: resume(run_id, address, db, update))
    except KeyboardInterrupt:
        fail(f"interrupted; continue with: chipaudit fleet resume {run_id}")
        raise typer.Exit(EXIT_CODES[Verdict.inconclusive]) from None
    _fleet_exit(run_id, db)


@fleet_app.command("report")
def fleet_report(
    run_id: Annotated[str, typer.Argument(help="The fleet run to summarise.")],
    db: Annotated[str | None, _FLEET_DB] = None,
    html_path: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML page.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the summary as JSON.")] = None,
) -> None:
    """Summarise a fleet run: outcomes, findings by kind, slow or erratic devices, stacks that differ."""
    import json

    from rich.table import Table

    from chipaudit.fleet import StoreProblem, open_store
    from chipaudit.fleet.summary import summarize, to_html
    from chipaudit.report.model import write_atomic

    _writable(html_path, "--html")
    _writable(json_path, "--json")
    try:
        store, _ = open_store(db)
    except StoreProblem as e:
        raise UsageError(str(e)) from e
    run = store.run(run_id)
    if run is None:
        raise UsageError(f"no fleet run {run_id} in this store")
    summary = summarize(run, store.audits(run_id))
    console.print(f"fleet run {run_id} ({summary['state']}): {summary['devices']} devices, {summary['audited']} "
                  f"audited, {summary['passed']} passed, {summary['failed']} failed, {summary['lost']} lost, "
                  f"{summary['could_not_run']} could not run")
    for title, rows, columns in (
        ("performance outliers", summary["outliers"], ["node", "device_uuid", "figure", "value", "peer_median", "z",
                                                       "kind"]),
        ("stacks unlike their model's majority", summary["stack_deviants"], ["node", "device_uuid", "digest",
                                                                             "majority_digest"]),
        ("findings by kind", summary["findings"], ["severity", "check", "title", "devices"]),
        ("audits", summary["audits"], ["node", "device_uuid", "state", "attempts", "verdict", "reason"]),
    ):
        table = Table(*columns, title=title)
        for row in rows:
            table.add_row(*(str(row.get(c)) for c in columns))
        console.print(table)
    if html_path:
        write_atomic(html_path, to_html(summary))
    if json_path:
        write_atomic(json_path, json.dumps(summary, indent=2) + "\n")


def main() -> None:
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="chipaudit", standalone_mode=False)
    except _click.NoArgsIsHelpError as e:
        console.print(e.ctx.get_help() if e.ctx else "")
        code = 0
    except _click.ClickException as e:
        fail(f"error: {' '.join(e.format_message().split())}")
        code = EXIT_USAGE
    except UsageError as e:
        fail(f"error: {e}")
        code = EXIT_USAGE
    except typer.Abort:
        fail("aborted")
        code = EXIT_CODES[Verdict.inconclusive]
    sys.exit(code if isinstance(code, int) else 0)
