"""Fleet commands: fleet run, fleet resume, fleet watch, fleet report."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from chipaudit.cli.common import (
    INCONCLUSIVE,
    Kind,
    UsageError,
    check_outputs,
    console,
    ready_to_audit,
    stop,
    usage_errors,
)
from chipaudit.cli.watch import Allowlist, Baseline, Count, Duty, Interval, StackEvery, SyscallTracer
from chipaudit.report.model import EXIT_CODES, Level

if TYPE_CHECKING:
    from chipaudit.fleet.cluster import Progress

T = TypeVar("T")

fleet_app = typer.Typer(
    help="Audit every accelerator of a Ray cluster, keep every result in one store, and find the outliers.\n\n"
    "Start with:  chipaudit fleet run --level quick  (this machine alone; --address auto joins a running Ray "
    "cluster)",
    short_help="Audit every accelerator of a Ray cluster and find the outliers.",
    no_args_is_help=True,
)
Db = Annotated[str | None, typer.Option("--db", help="Store: a SQLite file or a postgresql:// URL. Default: the "
                                        "history database.")]
Address = Annotated[str | None, typer.Option(help="Ray cluster to join (host:port, auto, ray://...). Default: a "
                                             "Ray instance of this machine alone, on loopback, stopped afterwards.")]


@contextmanager
def _cluster_errors() -> Iterator[None]:
    """A cluster that cannot be reached is the user's address to fix (exit 2). The store's own errors
    need nothing here: a bad store target is an InputError (exit 2), a store that fails is Unavailable
    (exit 3)."""
    from chipaudit.fleet import FleetProblem

    try:
        yield
    except FleetProblem as e:
        raise UsageError(str(e)) from None


def _drive(action: Callable[[Callable[[Progress], None]], T]) -> T:
    """Run a fleet action under live counts; Ctrl-C passes through, for the caller to say how to resume."""
    from chipaudit.fleet.view import live

    with _cluster_errors(), live(console) as update:
        return action(update)


def _exit(run_id: str, db: str | None) -> None:
    from chipaudit.fleet import open_store
    from chipaudit.fleet.summary import load
    from chipaudit.fleet.view import outcome

    with _cluster_errors():
        store, _ = open_store(db)
        summary = load(store, run_id) or {}
    line, verdict = outcome(run_id, summary)
    console.print(line)
    console.print(f"report: chipaudit fleet report {run_id}" + (f" --db {db}" if db else ""), markup=False)
    raise typer.Exit(EXIT_CODES[verdict])


@fleet_app.command("run")
def fleet_run(
    address: Address = None,
    db: Db = None,
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
    """Audit every device in a Ray cluster, each where it sits.

    One audit per GPU, NPU or HPU, one per CPU-only node; with --resource, one per unit of that Ray
    resource instead.

    Example: chipaudit fleet run --level quick   (or --address auto to join a running cluster)
    """
    from chipaudit.checks import PLUGIN_ENV
    from chipaudit.devices.torchdev import DeviceError, parse
    from chipaudit.fleet import FleetOptions, start
    from chipaudit.fleet.consensus import with_this_check

    check_outputs((db, "--db", Kind.file))
    with usage_errors(DeviceError, prefix=f"--device {device}: "):
        parse(device)
    os.environ[PLUGIN_ENV] = with_this_check(os.environ.get(PLUGIN_ENV, ""))  # every audit's registry, checked here
    ready_to_audit(only)
    options = FleetOptions(address, level, seed, only or [], resource, device, max_attempts, node_wait, max_parallel,
                           burn_in_seconds)
    run_ids: list[str] = []
    try:
        run_ids.append(_drive(lambda update: start(options, db, update, run_ids.append)))
    except KeyboardInterrupt:
        stop(INCONCLUSIVE, f"interrupted; finished audits are kept. Continue with: chipaudit fleet resume "
             f"{run_ids[0]}" if run_ids else None)
    _exit(run_ids[0], db)


@fleet_app.command("resume")
def fleet_resume(
    run_id: Annotated[str, typer.Argument(help="The fleet run to continue.")],
    address: Address = None,
    db: Db = None,
) -> None:
    """Continue an interrupted fleet run; finished audits are not redone.

    Example: chipaudit fleet resume 20260101-120000-abc123 --address auto
    """
    from chipaudit.fleet import resume

    check_outputs((db, "--db", Kind.file))
    try:
        _drive(lambda update: resume(run_id, address, db, update))
    except KeyboardInterrupt:
        stop(INCONCLUSIVE, f"interrupted; continue with: chipaudit fleet resume {run_id}")
    _exit(run_id, db)


@fleet_app.command("watch")
def fleet_watch(
    address: Address = None,
    db: Db = None,
    interval: Interval = 60.0,
    duty: Duty = 0.01,
    baseline: Baseline = None,
    stack_every: StackEvery = 60,
    consensus_every: Annotated[int, typer.Option(min=1, help="Bursts between consensus rounds: every device of a "
                                                 "model computes the same seeded products, compared per model.")]
    = 10,
    seed: Annotated[int | None, typer.Option(min=0, help="The consensus rounds' seed. Default: random, "
                                             "recorded.")] = None,
    allowlist: Allowlist = None,
    count: Count = None,
    syscall_tracer: SyscallTracer = True,
    resource: Annotated[str | None, typer.Option(help="Watch one device per unit of this Ray resource (MLU, "
                                                 "...). Default: GPU, else Ray's NPU or HPU, else the CPU.")] = None,
    device: Annotated[str, typer.Option(help="Torch device inside each watcher when --resource is given.")] = "cpu",
) -> None:
    """Watch every device in a Ray cluster, each where it sits.

    One long-lived watcher per device, as 'chipaudit watch' runs on one (verified bursts at --duty,
    the device's holders and telemetry, the stack against --baseline), and every --consensus-every
    bursts the same seeded products on every device, compared per model. A node that leaves is
    marked lost; when it is back, its watchers go on from the fleet store, where everything is kept.
    SIGTERM or Ctrl-C stops them all.

    Example: chipaudit fleet watch --address auto --interval 60 --duty 0.01

    Example: chipaudit fleet watch --interval 2 --duty 0.1 --count 5   (a local try: this machine alone)
    """
    from chipaudit.checks import PLUGIN_ENV
    from chipaudit.checks.stack.baseline import BaselineError
    from chipaudit.checks.stack.baseline import load as load_baseline
    from chipaudit.devices.torchdev import DeviceError, parse
    from chipaudit.fleet import watch
    from chipaudit.fleet.consensus import with_this_check
    from chipaudit.fleet.watching import WatchOptions

    check_outputs((db, "--db", Kind.file))
    with usage_errors(DeviceError, prefix=f"--device {device}: "):
        parse(device)
    if baseline is not None:
        with usage_errors(BaselineError, OSError):
            load_baseline(baseline)
    params = {"behaviour_allowlist": str(allowlist.resolve())} if allowlist is not None else {}
    os.environ[PLUGIN_ENV] = with_this_check(os.environ.get(PLUGIN_ENV, ""))
    ready_to_audit(None, params)
    options = WatchOptions(interval, duty, stack_every, syscall_tracer, params, consensus_every, count,
                           baseline.read_text() if baseline is not None else None)
    run_ids: list[str] = []
    with _cluster_errors():
        watch(address, resource, device, seed, options, db, lambda counts: None, run_ids.append)
    if count is None:
        console.print(f"fleet watch {run_ids[0]} stopped", markup=False)
        console.print(f"report: chipaudit fleet report {run_ids[0]}" + (f" --db {db}" if db else ""), markup=False)
        raise typer.Exit(0)
    _exit(run_ids[0], db)


@fleet_app.command("report")
def fleet_report(
    run_id: Annotated[str, typer.Argument(help="The fleet run to summarise.")],
    db: Db = None,
    html_path: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML page.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the summary as JSON.")] = None,
) -> None:
    """Summarise a fleet run or watch: findings, outliers, consensus.

    Slow or erratic devices are judged against the devices of the same model; so are stacks. A fleet
    watch's report shows each device's watch: bursts, failures, last good burst, hours, losses.

    Example: chipaudit fleet report 20260101-120000-abc123 --html fleet.html
    """
    from chipaudit.fleet import open_store
    from chipaudit.fleet.summary import load
    from chipaudit.fleet.view import headline, tables
    from chipaudit.report.html import write_fleet
    from chipaudit.report.model import write_atomic

    check_outputs((html_path, "--html", Kind.file), (json_path, "--json", Kind.file))
    with _cluster_errors():
        store, _ = open_store(db)
        summary = load(store, run_id)
        if summary is None:
            raise UsageError(f"no fleet run {run_id} in this store")
    console.print(headline(run_id, summary))
    for table in tables(summary):
        console.print(table)
    if html_path:
        write_fleet(summary, html_path)
    if json_path:
        write_atomic(json_path, json.dumps(summary, indent=2) + "\n")
