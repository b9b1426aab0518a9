"""The command line. Thin: parse, call the layers below, print, map the verdict to an exit code."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from chipaudit.report.model import EXIT_CODES, EXIT_USAGE, Level, Report, Verdict

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
) -> None:
    """Audit a device: run the checks of a level and print a verdict.

    Example: chipaudit run --device cuda:0 --level quick --json report.json
    """
    from chipaudit.checks import select
    from chipaudit.devices.torchdev import DeviceError, resolve
    from chipaudit.report.terminal import render
    from chipaudit.runner.audit import AuditConfig, run_audit
    from chipaudit.runner.watchdog import Events

    _writable(json_path, "--json")
    if only and not select(only):
        raise UsageError(f"--only {' '.join(only)}: no check has that id or prefix (see 'chipaudit checks')")
    try:
        resolved = resolve(device)
    except DeviceError as e:
        raise UsageError(f"--device {device}: {e}") from e
    config = AuditConfig(device=resolved, level=level, seed=secrets.randbits(32) if seed is None else seed,
                         only=only)
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
        where = f"; partial report in {json_path}" if json_path else ""
        fail(f"interrupted{where}")
        raise typer.Exit(EXIT_CODES[report.verdict]) from None
    render(report, console)
    if json_path is not None:
        console.print(f"report: {json_path}")
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
    except _click.Abort:
        fail("aborted")
        code = EXIT_CODES[Verdict.inconclusive]
    sys.exit(code if isinstance(code, int) else 0)
