"""Stack commands: inventory, baseline create, baseline diff."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from chipaudit.cli.common import (
    FAIL,
    INCONCLUSIVE,
    Kind,
    UsageError,
    app,
    check_outputs,
    console,
    resolve_device,
    say,
    stop,
    usage_errors,
)


@app.command()
def inventory(
    device: Annotated[str, typer.Option(help="Device whose software stack to fingerprint: auto, cpu, cuda:0, ...")]
    = "auto",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the inventory as JSON here.")] = None,
    record: Annotated[Path | None, typer.Option(help="Also keep every answer of the vendor libraries in this "
                                                "folder (<source>.json), replayable for bug reports and tests.")]
    = None,
) -> None:
    """List the accelerators, CPU and software stack, with hashes.

    For each accelerator: vendor, model, UUID, firmware, driver, PCIe link, memory, power and clock
    limits, ECC, retired pages, MIG/partition and confidential-computing modes, throttling. For the
    stack: the SHA-256 of every library the device's computation maps. Vendor libraries (NVML,
    amdsmi, npu-smi) are used when installed: pip install 'chipaudit[nvidia]'.

    Example: chipaudit inventory --json inventory.json
    """
    from chipaudit.checks.stack.commands import inventory_document, render_inventory
    from chipaudit.report.model import write_atomic

    check_outputs((json_path, "--json", Kind.file), (record, "--record", Kind.folder))
    resolved = resolve_device(device)
    with console.status(f"fingerprinting the stack of {resolved}"):
        document = inventory_document(resolved, record)
    render_inventory(document, console)
    if json_path is not None:
        write_atomic(json_path, json.dumps(document, indent=2) + "\n")
        say(f"inventory: {json_path}")
    if document["stack"].get("error"):
        raise typer.Exit(INCONCLUSIVE)


baseline_app = typer.Typer(
    help="Record the software stack of a machine you trust, and compare with it later.\n\n"
    "Start with:  chipaudit baseline create trusted.json   then later   chipaudit baseline diff trusted.json",
    short_help="Record a trusted machine's stack; compare with it later.",
    no_args_is_help=True)


@baseline_app.command("create")
def baseline_create(
    path: Annotated[Path, typer.Argument(help="The baseline file to write.")],
    device: Annotated[str, typer.Option(help="Device whose stack to record: auto, cpu, cuda:0, ...")] = "auto",
    include: Annotated[list[Path] | None, typer.Option(help="Also fingerprint every file under this folder "
                                                       "(repeatable), e.g. /usr/local/cuda.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing baseline file.")] = False,
) -> None:
    """Record the device's stack in PATH, to compare with later.

    It records the SHA-256 of the libraries the device's computation maps, the accelerator kernel
    modules and firmware, the device stack's Python packages, the package managers' verdicts, the
    devices' firmware versions, and what each binary can do (its capabilities).

    Example: chipaudit baseline create trusted.json --device cuda:0 --include /usr/local/cuda
    """
    check_outputs((path, "PATH", Kind.file))
    if path.exists() and not force:
        raise UsageError(f"baseline {path}: exists already (use --force to replace it)")
    missing = [p for p in include or [] if not p.exists()]
    if missing:
        raise UsageError(f"--include {missing[0]}: no such file or folder")
    from chipaudit.checks.stack.commands import create_baseline
    from chipaudit.checks.stack.libraries import ProbeError

    resolved = resolve_device(device)
    try:
        with console.status(f"fingerprinting the stack of {resolved}"):
            snap = create_baseline(path, resolved, [str(p) for p in include or []])
    except ProbeError as e:
        stop(INCONCLUSIVE, f"error: {e}")
    unread = len(snap.not_fingerprinted())
    say(f"baseline: {path}: {len(snap.items)} items of {resolved}, stack sha256 {snap.digest()}"
        + (f"; {unread} not fingerprinted" if unread else "") + f" ({snap.timings_s.get('total')} s)")


@baseline_app.command("diff")
def baseline_diff(
    path: Annotated[Path, typer.Argument(help="A baseline written by 'chipaudit baseline create'.")],
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the differences as JSON here.")] = None,
) -> None:
    """Fingerprint the stack again; report every change since the baseline.

    Exit codes: 0 no difference of medium severity or above, 1 such differences, 2 unusable baseline,
    3 the stack could not be fingerprinted.

    Example: chipaudit baseline diff trusted.json --json changes.json
    """
    from chipaudit.checks.stack.baseline import BaselineError
    from chipaudit.checks.stack.commands import compare, diff_document, diff_summary, failing, finding_line
    from chipaudit.checks.stack.libraries import ProbeError
    from chipaudit.report.model import write_atomic

    check_outputs((json_path, "--json", Kind.file))
    try:
        with console.status(f"fingerprinting the stack again to compare with {path}"), usage_errors(BaselineError):
            trusted, now, findings = compare(path)
    except ProbeError as e:
        stop(INCONCLUSIVE, f"error: {e}")
    for finding in sorted(findings, key=lambda f: -f.severity.rank):
        say(finding_line(finding))
    say(diff_summary(trusted, now, findings))
    if json_path is not None:
        write_atomic(json_path, json.dumps(diff_document(path, now, findings), indent=2) + "\n")
    raise typer.Exit(FAIL if failing(findings) else 0)
