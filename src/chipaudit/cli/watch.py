"""The watch command: options checked, then the watcher (runner/watch) until it is told to stop."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

import typer

from chipaudit.cli.common import (
    DeviceOption,
    Kind,
    PassphraseEnv,
    UsageError,
    app,
    baseline_params,
    check_outputs,
    ready_to_audit,
    resolve_device,
    say,
    usage_errors,
)

EVENTS_NAME = "watch-events.jsonl"

# The options a watch of one device and a fleet's watch share (cli/fleet.py).
Interval = Annotated[float, typer.Option(min=0.1, help="Seconds between bursts.")]
Duty = Annotated[float, typer.Option(min=1e-5, max=1.0, help="Share of the device's time the bursts may take, on "
                                     "average (their own measured busy time, host verification included).")]
Baseline = Annotated[Path | None, typer.Option(help="Compare the stack with this baseline (from 'chipaudit baseline "
                                               "create') at the start and every --stack-every intervals; a "
                                               "changed driver library is a high finding.")]
StackEvery = Annotated[int, typer.Option(min=1, help="Intervals between stack comparisons.")]
Allowlist = Annotated[Path | None, typer.Option(help="What honest processes may do (the behaviour probes' "
                                                "allow-list). Default: the built-in one.")]
Count = Annotated[int | None, typer.Option(min=1, help="Stop after this many bursts.")]
SyscallTracer = Annotated[bool, typer.Option(help="Watch the worker's system calls with the eBPF tracer where the "
                                             "machine allows it (root, bpftrace; seconds to attach).")]


@app.command()
def watch(
    device: DeviceOption = "auto",
    interval: Interval = 60.0,
    duty: Duty = 0.01,
    baseline: Baseline = None,
    stack_every: StackEvery = 60,
    prometheus: Annotated[Path | None, typer.Option(help="Keep a node-exporter textfile (.prom) current, "
                                                    "replaced atomically after every burst.")] = None,
    metrics_port: Annotated[int | None, typer.Option(min=1, max=65535, help="Serve the metrics on "
                                                     "http://127.0.0.1:PORT/metrics instead.")] = None,
    db: Annotated[str | None, typer.Option(help="The store for the watch's state and its hourly history: a SQLite "
                                           "file or a postgresql:// URL (default: the history database in the "
                                           "user's data folder). A restart goes on from it.")] = None,
    events: Annotated[Path | None, typer.Option(help="JSON-lines event log, appended. Default: "
                                                f"{EVENTS_NAME} beside the SQLite store, or in --bundle-dir.")] = None,
    bundle_dir: Annotated[Path | None, typer.Option(help="Write a bundle for every failure into this folder "
                                                    "(made if missing).")] = None,
    key: Annotated[Path | None, typer.Option(help="Sign every failure's bundle with this private key (from "
                                             "'chipaudit keygen').")] = None,
    passphrase_env: PassphraseEnv = None,
    watch_pid: Annotated[list[int] | None, typer.Option(help="Also watch this process, which uses the device "
                                                        "(repeatable; on a CPU device, how the holders are named).")]
    = None,
    watch_cgroup: Annotated[list[str] | None, typer.Option(help="Also watch every process of this cgroup "
                                                           "(repeatable), e.g. a job's slice.")] = None,
    allowlist: Allowlist = None,
    once: Annotated[bool, typer.Option("--once", help="Run one burst and exit with run's exit codes (0 pass, "
                                       "1 fail, 3 inconclusive).")] = False,
    count: Count = None,
    seed: Annotated[int | None, typer.Option(min=0, help="With --once: the burst's seed, from a failure's replay "
                                             "command.")] = None,
    rotation: Annotated[int | None, typer.Option(min=0, help="With --once: the burst's rotation position, from "
                                                 "a failure's replay command.")] = None,
    syscall_tracer: SyscallTracer = True,
) -> None:
    """Audit a device as it works: a verified burst every interval.

    Each burst verifies matrix products against the host oracle, in the device's
    formats with realistic operands, a sample of operators and a slice of memory;
    formats, shapes and operands rotate from burst to burst. Bursts are sized so
    that the device spends at most --duty of its time on them. The processes that
    hold the device are watched without a tracer, and its health telemetry read.
    SIGTERM or Ctrl-C stops after the running burst; a restart goes on from the
    store. Every failure is a JSON line in the event log, with its replay command.

    Example: chipaudit watch --device cuda:0 --prometheus /var/lib/node_exporter/chipaudit.prom --bundle-dir fails/

    Example: chipaudit watch --device cuda:0 --baseline baseline.json --key auditor.key --bundle-dir fails/

    Example: chipaudit watch --device cuda:0 --once   (one burst, e.g. as a readiness probe)
    """
    from chipaudit.checks.behaviour import allowlist as allowlists
    from chipaudit.evidence import history, keys
    from chipaudit.paths import data_dir
    from chipaudit.runner.watch import WatchConfig, Watcher
    from chipaudit.sensors.samplers import samplers_for
    from chipaudit.store.dialects import is_postgres

    if prometheus is not None and metrics_port is not None:
        raise UsageError("give --prometheus FILE or --metrics-port PORT, not both")
    if not once and (seed is not None or rotation is not None):
        raise UsageError("--seed and --rotation replay one burst: give them with --once (a watch goes on from "
                         "its stored state)")
    store = db or str(history.default_db())
    if db is None:
        data_dir().mkdir(parents=True, exist_ok=True)
    check_outputs((None if is_postgres(store) else store, "--db", Kind.file))
    if bundle_dir is not None and not bundle_dir.exists():
        if not bundle_dir.parent.is_dir():
            raise UsageError(f"--bundle-dir {bundle_dir}: the folder {bundle_dir.parent} does not exist")
        bundle_dir.mkdir()
    if events is None:
        if bundle_dir is None and is_postgres(store):
            data_dir().mkdir(parents=True, exist_ok=True)
        events = (bundle_dir if bundle_dir is not None else data_dir() if is_postgres(store)
                  else Path(store).parent) / EVENTS_NAME
    check_outputs((prometheus, "--prometheus", Kind.file), (bundle_dir, "--bundle-dir", Kind.folder),
                  (events, "--events", Kind.file))
    private = None
    if key is not None:
        with usage_errors(keys.KeyProblem):
            private = keys.load_private(key, keys.passphrase_from_env(passphrase_env))
    params = {"behaviour_allowlist": str(allowlist)} if allowlist is not None else {}
    ready_to_audit(None, params)
    resolved = resolve_device(device)
    config = WatchConfig(
        device=resolved, db=store, events=events, interval_s=interval, duty=duty, once=once, count=count,
        seed=seed if seed is not None else (secrets.randbits(63) if once else None), rotation=rotation or 0,
        baseline=Path(baseline_params(baseline, resolved)["baseline"]) if baseline else None,
        stack_every=stack_every, prometheus=prometheus, metrics_port=metrics_port, bundle_dir=bundle_dir,
        key=private, params=params, syscalls=syscall_tracer)
    samplers = samplers_for(resolved, watch_pid or [], [Path(c) for c in watch_cgroup or []],
                            allowlists.load(params))
    say(f"chipaudit: watching {resolved} every {interval:g} s at duty {duty:g}; events in {events}")
    raise typer.Exit(Watcher(config, samplers).run())
