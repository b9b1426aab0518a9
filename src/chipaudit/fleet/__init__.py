"""Fleet audits: every accelerator of a Ray cluster audited where it sits, every result kept centrally.

`start` plans and runs a new fleet run, `resume` finishes an interrupted one without redoing finished
audits, `watch` watches every device until stopped (watching.py), and `summary.summarize` turns a run
or a watch into its fleet report.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chipaudit.errors import InputError
from chipaudit.fleet import consensus
from chipaudit.fleet.cluster import FleetProblem, FleetRun, Progress, Slot, discover, session
from chipaudit.fleet.store import Audit, FleetStore
from chipaudit.fleet.watching import WatchOptions
from chipaudit.report.model import Level
from chipaudit.runner import levels

__all__ = ["FleetOptions", "FleetProblem", "open_store", "resume", "start", "watch"]

# An audit that takes this many times its level's budget is stuck, not slow.
AUDIT_TIMEOUT_FACTOR = 3.0


@dataclass
class FleetOptions:
    address: str | None
    level: Level
    seed: int | None
    only: list[str]
    resource: str | None
    device: str
    max_attempts: int
    node_wait_s: float
    max_parallel: int
    burn_in_seconds: float | None = None

    def audit_argv(self, seed: int) -> list[str]:
        """Every audit alike, with one seed; the consensus check joins the checks asked for."""
        burn = ["--burn-in-seconds", f"{self.burn_in_seconds:g}"] if self.burn_in_seconds else []
        only = [*self.only, consensus.CHECK_ID] if self.only and consensus.CHECK_ID not in self.only else self.only
        return ["--level", self.level.value, "--seed", str(seed), *(x for p in only for x in ("--only", p)), *burn]


def open_store(db: str | None) -> tuple[FleetStore, Path | None]:
    """The store, and the history database to mirror finished audits into when it is the SQLite default."""
    from chipaudit.evidence.history import default_db

    if db is None:
        path = default_db()
        path.parent.mkdir(parents=True, exist_ok=True)
        return FleetStore.open(str(path)), path
    store = FleetStore.open(db)
    return store, None if store.postgres else Path(db)


def _record_history(history_db: Path | None) -> Callable[[Audit], None]:
    def record(audit: Audit) -> None:
        if history_db is not None and audit.report:
            from chipaudit.evidence.history import record as history_record
            from chipaudit.report.model import Report

            history_record(history_db, Report.model_validate_json(audit.report))

    return record


def _drive(store: FleetStore, history_db: Path | None, run_id: str, config: dict[str, Any], slots: list[Slot],
           on_progress: Callable[[Progress], None]) -> None:
    timeout = levels.BUDGET_S[Level(config["level"])] * AUDIT_TIMEOUT_FACTOR
    try:
        FleetRun(store, run_id, config["argv"], slots, config["max_attempts"], config["node_wait_s"],
                 config["max_parallel"] or len(slots) or 1, timeout, on_progress,
                 _record_history(history_db)).execute()
    except KeyboardInterrupt:
        store.set_run_state(run_id, "interrupted")
        raise
    store.set_run_state(run_id, "finished")


def _run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def start(options: FleetOptions, db: str | None, on_progress: Callable[[Progress], None],
          on_created: Callable[[str], None] = lambda run_id: None) -> str:
    store, history_db = open_store(db)
    with session(options.address, options.resource, options.device):
        slots = discover(options.resource, options.device)
        if not slots:
            raise FleetProblem("the cluster has no devices to audit")
        seed = secrets.randbits(32) if options.seed is None else options.seed
        run_id = _run_id()
        config = {"address": options.address, "level": options.level.value, "seed": seed, "only": options.only,
                  "resource": options.resource, "device": options.device, "max_attempts": options.max_attempts,
                  "node_wait_s": options.node_wait_s, "max_parallel": options.max_parallel,
                  "argv": options.audit_argv(seed)}
        store.create_run(run_id, config, [Audit(run_id, s.node, s.device_uuid, s.device, "pending", 0)
                                          for s in slots])
        on_created(run_id)
        _drive(store, history_db, run_id, config, slots, on_progress)
    return run_id


def resume(run_id: str, address: str | None, db: str | None, on_progress: Callable[[Progress], None]) -> None:
    store, history_db = open_store(db)
    run = store.run(run_id)
    if run is None:
        raise InputError(f"no fleet run {run_id} in this store")
    config = run["config"]
    with session(address if address is not None else config["address"], config["resource"], config["device"]):
        slots = discover(config["resource"], config["device"])
        store.requeue(run_id)
        _drive(store, history_db, run_id, config, slots, on_progress)


def watch(address: str | None, resource: str | None, device: str, seed: int | None, options: WatchOptions,
          db: str | None, on_progress: Callable[[dict[str, int]], None],
          on_created: Callable[[str], None] = lambda run_id: None, stop: threading.Event | None = None) -> str:
    """Watch every device of the cluster until `stop` is set, SIGTERM or SIGINT comes (or every device
    has done options.count bursts); the watch is a fleet run of kind `watch` in the store."""
    from chipaudit.fleet.watching import FleetWatch

    store, _ = open_store(db)
    with session(address, resource, device):
        slots = discover(resource, device)
        if not slots:
            raise FleetProblem("the cluster has no devices to watch")
        seed = secrets.randbits(32) if seed is None else seed
        run_id = _run_id()
        config = {"kind": "watch", "address": address, "resource": resource, "device": device, "seed": seed,
                  **{k: v for k, v in asdict(options).items() if k not in ("params", "baseline")},
                  "baseline": options.baseline is not None}
        store.create_run(run_id, config, [Audit(run_id, s.node, s.device_uuid, s.device, "pending", 0)
                                          for s in slots])
        on_created(run_id)
        FleetWatch(store, run_id, seed, options, slots, resource, device, on_progress, stop).execute()
        store.set_run_state(run_id, "finished")
    return run_id
