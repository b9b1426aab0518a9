"""Fleet watch: every device of a Ray cluster watched where it sits (runner/watch), reported into the
fleet store, with the fleet's consensus every few intervals.

One long-lived Ray actor per device (`DeviceWatch`), pinned and holding the device's resource unit as
`fleet run` pins its audits (cluster.py), runs the device's `Watcher` in a thread of its own, with a
store and an event log of its own on its node. The driver is the store's one writer (the store may
be a SQLite file on the driver's machine, which other nodes cannot reach): it polls every actor for
its new events, its state and its hour rows, and writes them, so that the fleet store holds each
device's watch as `chipaudit watch` would have kept it, keyed `node/device`.

A node that leaves: the actor's poll fails once Ray marks the node dead; the device's row becomes
`lost` with the reason, and a `lost` event is recorded. When a node of that name is in the cluster
again with the device's resource, a new actor starts there from the state and hours the store holds,
so the watch goes on where it was (a `back` event, the row `running` again, one more attempt).

Consensus (fleet/consensus.py): every `consensus_every` bursts (counted by the median device, so that
a device that came back late does not hold the fleet back), the driver asks every watching device to
run the consensus check with the round's seed, the same on every device; the watcher runs it in its
worker between bursts, paid from its duty. When every device asked has answered (or is lost, or the
round's time is up), the answers are compared per model by consensus.compare, as the fleet run's
summary compares them, and a device unlike its model's majority gets a high `consensus` event.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipaudit.checks.base import derive_seed
from chipaudit.fleet import consensus
from chipaudit.fleet.cluster import Slot, _last_line, _pinned, _ray, _remote, alive_nodes, device_env, discover
from chipaudit.fleet.store import LOST, FleetStore
from chipaudit.report.model import FAILING_SEVERITY, Severity
from chipaudit.runner.watch.burst import LEVEL
from chipaudit.runner.watch.loop import stop_on_signals
from chipaudit.runner.watch.state import WatchState, WatchStore, worst

POLL_S = 1.0
# How long a stopping actor may take to end its running burst and flush (the watcher's own grace is 5 s).
STOP_WAIT_S = 30.0
# A consensus round's answers are awaited this long past the check's own limit and two intervals.
ROUND_GRACE_S = 30.0
# Events of a burst that passed add nothing the state and the hour rows do not hold: they are not kept.
QUIET = {"burst"}
# Seconds between looks for a lost device's node.
REJOIN_EVERY_S = 2.0


def device_id(slot: Slot) -> str:
    """A fleet device's name in the watch tables: stable across restarts of its node and of the watch."""
    return f"{slot.node}/{slot.device_uuid}"


class DeviceWatch:
    """The Ray actor: one device's watcher on its node. `spec` is the watch's options (WatchConfig's
    fields), the device's slot, and the state and hours to go on from."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from chipaudit.checks.behaviour import allowlist as allowlists
        from chipaudit.process.child import Wrapper
        from chipaudit.runner.watch import WatchConfig, Watcher
        from chipaudit.sensors.samplers import samplers_for

        os.environ.update(spec["env"])  # before the device is first touched here (CUDA_VISIBLE_DEVICES)
        self.tmp = Path(tempfile.mkdtemp())
        db, self.events = self.tmp / "watch.sqlite3", self.tmp / "events.jsonl"
        self.device_id = spec["device_id"]
        if spec.get("state"):
            local = WatchStore(db)
            local.mirror(WatchState(**spec["state"]), spec.get("hours") or [])
            local.close()
        baseline = None
        if spec.get("baseline") is not None:
            baseline = self.tmp / "baseline.json"
            baseline.write_text(spec["baseline"])
        options = spec["options"]
        config = WatchConfig(device=spec["device"], db=db, events=self.events, interval_s=options["interval_s"],
                             duty=options["duty"], baseline=baseline, stack_every=options["stack_every"],
                             params=options["params"], syscalls=options["syscalls"], device_id=self.device_id)
        samplers = samplers_for(spec["device"], [], [], allowlists.load(options["params"]))
        self.watcher = Watcher(config, samplers, [Wrapper(env=device_env({}))])
        self.store = WatchStore(db)
        self.offset = 0
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name="chipaudit-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.watcher.run()
        except BaseException as e:  # said to the driver, which records it
            self.error = f"{type(e).__name__}: {e}"[:500]

    def poll(self) -> dict[str, Any]:
        """What is new since the last poll: complete event lines, and the state and hours now."""
        events: list[dict[str, Any]] = []
        if self.events.exists():
            with open(self.events, "rb") as f:
                f.seek(self.offset)
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]
            self.offset += len(complete)
            events = [json.loads(line) for line in complete.splitlines() if line.strip()]
        state: WatchState | None = self.store.load(self.device_id)
        return {"events": events, "state": dataclasses.asdict(state) if state else None,
                "hours": self.store.hours(self.device_id) if state else [], "running": self.thread.is_alive(),
                "error": self.error, "model": self.watcher.model}

    def request(self, check_id: str, seed: int, timeout_s: float, tag: Any) -> None:
        self.watcher.request(check_id, seed, timeout_s, tag)

    def stop(self, wait_s: float) -> dict[str, Any]:
        """End the watch after its running burst; the last poll; the node's files removed."""
        self.watcher.stop()
        self.thread.join(wait_s)
        last = self.poll()
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return last


_device_watch = _remote(DeviceWatch)


@dataclass
class WatchOptions:
    interval_s: float
    duty: float
    stack_every: int
    syscalls: bool
    params: dict[str, Any]
    consensus_every: int
    count: int | None = None
    baseline: str | None = None  # the baseline file's text: the nodes cannot read the driver's files


@dataclass
class Device:
    """The driver's view of one watched device."""

    slot: Slot
    actor: Any = None
    model: str = ""
    bursts_at_start: int | None = None
    bursts: int = 0
    failing: bool = False
    pending_poll: Any = None

    @property
    def in_run(self) -> int:
        return self.bursts - (self.bursts_at_start or 0)


@dataclass
class Round:
    number: int
    seed: int
    asked: set[tuple[str, str]]
    deadline: float
    answers: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    judged: bool = False


class FleetWatch:
    """Drive one fleet watch until stopped (or until every device has done `count` bursts)."""

    def __init__(self, store: FleetStore, run_id: str, seed: int, options: WatchOptions, slots: list[Slot],
                 resource: str | None, device: str, on_progress: Callable[[dict[str, int]], None],
                 stop: threading.Event | None = None) -> None:
        self.store, self.run_id, self.seed, self.options = store, run_id, seed, options
        self.watch_store = WatchStore(store.store)
        self.resource, self.device = resource, device
        self.devices = {s.key: Device(s) for s in slots}
        self.lost: set[tuple[str, str]] = set()
        self.rounds: dict[int, Round] = {}
        self.on_progress = on_progress
        self._stop = stop or threading.Event()
        self._rejoin_at = 0.0

    def stop(self) -> None:
        self._stop.set()

    def execute(self) -> None:
        """Until stopped: SIGTERM and SIGINT stop it here (set after Ray's start, which sets its own)."""
        with stop_on_signals(self.stop):
            try:
                for key in self.devices:
                    self._start(key)
                while not self._stop.is_set():
                    self._poll()
                    self._rejoin()
                    self._consensus()
                    self.on_progress(self.counts())
                    if self._count_reached():
                        break
                    self._stop.wait(POLL_S)
            finally:
                self._stop_all()

    def counts(self) -> dict[str, int]:
        devices = self.devices.values()
        return {"watching": sum(d.actor is not None for d in devices), "lost": len(self.lost),
                "bursts": sum(d.in_run for d in devices), "failing": sum(d.failing for d in devices),
                "rounds": len(self.rounds)}

    # ----- actors -----

    def _start(self, key: tuple[str, str]) -> None:
        device = self.devices[key]
        slot = device.slot
        state = self.watch_store.load(device_id(slot))
        spec = {"env": slot.env, "device": slot.device, "device_id": device_id(slot),
                "state": dataclasses.asdict(state) if state else None,
                "hours": self.watch_store.hours(device_id(slot)) if state else [],
                "baseline": self.options.baseline,
                "options": {k: getattr(self.options, k) for k in ("interval_s", "duty", "stack_every", "params",
                                                                  "syscalls")}}
        custom = {k: v for k, v in slot.resources.items() if k not in ("CPU", "GPU")}
        device.actor = _device_watch.options(
            num_cpus=slot.resources.get("CPU", 0), num_gpus=slot.resources.get("GPU", 0), resources=custom,
            scheduling_strategy=_pinned(slot.node_id), max_restarts=0, max_concurrency=4,
        ).remote(spec)
        if device.bursts_at_start is None:
            device.bursts_at_start = state.bursts if state else 0
        self.store.start(self.run_id, key)

    def _poll(self) -> None:
        ray = _ray()
        for device in self.devices.values():
            if device.actor is not None and device.pending_poll is None:
                device.pending_poll = device.actor.poll.remote()
        refs = {d.pending_poll: k for k, d in self.devices.items() if d.pending_poll is not None}
        if not refs:
            return
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=POLL_S)
        for ref in ready:
            key = refs[ref]
            self.devices[key].pending_poll = None
            try:
                polled = ray.get(ref)
            except ray.exceptions.RayError as e:
                self._lose(key, f"{type(e).__name__}: {_last_line(e)}")
                continue
            self._record(key, polled)
            if not polled["running"]:
                self._lose(key, f"the watch of this device ended: {polled.get('error') or 'its watcher returned'}")

    def _record(self, key: tuple[str, str], polled: dict[str, Any]) -> None:
        from chipaudit.runner.watch.state import WatchState

        device = self.devices[key]
        device.model = polled.get("model") or device.model
        kept = []
        for event in polled["events"]:
            findings = event.get("findings") or []
            event["severity"] = worst(f.get("severity") for f in findings)
            if event["severity"] and Severity(event["severity"]).rank >= FAILING_SEVERITY.rank:
                device.failing = True
            if event["event"] == "check" and event.get("check") == consensus.CHECK_ID:
                self._answer(key, event)
            if event["event"] in QUIET and not findings and event.get("status") in ("passed", "warning"):
                continue
            kept.append(event)
        self.store.add_events(self.run_id, key, kept)
        if polled["state"]:
            state = WatchState(**polled["state"])
            device.bursts = state.bursts
            self.watch_store.mirror(state, polled["hours"])

    def _lose(self, key: tuple[str, str], why: str) -> None:
        """Mark the device lost; an actor still alive (its watcher ended) is ended, freeing its unit."""
        device = self.devices[key]
        if device.actor is not None:
            with contextlib.suppress(Exception):
                _ray().kill(device.actor)
        device.actor, device.pending_poll = None, None
        self.lost.add(key)
        self.store.fail(self.run_id, key, LOST, why)
        self.store.add_events(self.run_id, key, [{"event": "lost", "severity": None, "reason": why}])

    def _rejoin(self) -> None:
        """Restart the watch of a lost device whose node is in the cluster again with its device."""
        if not self.lost or time.monotonic() < self._rejoin_at:
            return
        self._rejoin_at = time.monotonic() + REJOIN_EVERY_S
        back = set(alive_nodes()) & {key[0] for key in self.lost}
        if not back:
            return
        slots = {s.key: s for s in discover(self.resource, self.device, back)}
        for key in sorted(self.lost):
            if key in slots:
                self.devices[key].slot = slots[key]
                self.lost.discard(key)
                self._start(key)
                self.store.add_events(self.run_id, key, [{"event": "back", "severity": None,
                                                          "node_id": slots[key].node_id}])

    # ----- consensus -----

    def _consensus(self) -> None:
        watching = {k: d for k, d in self.devices.items() if d.actor is not None}
        if watching and not self._stop.is_set():
            due = int(statistics.median_low([d.in_run for d in watching.values()])) // self.options.consensus_every
            for number in range(len(self.rounds) + 1, due + 1):
                self._ask(number, watching)
        for rnd in self.rounds.values():
            if not rnd.judged and (all(k in rnd.answers or k in self.lost for k in rnd.asked)
                                   or time.monotonic() > rnd.deadline):
                self._judge(rnd)

    def _ask(self, number: int, watching: dict[tuple[str, str], Device]) -> None:
        timeout = consensus.ConsensusCheck.timeout_s[LEVEL]
        seed = derive_seed(self.seed, f"consensus/{number}")
        for device in watching.values():
            device.actor.request.remote(consensus.CHECK_ID, seed, timeout, number)
        self.rounds[number] = Round(number, seed, set(watching), time.monotonic() + timeout + ROUND_GRACE_S
                                    + 2 * self.options.interval_s)

    def _answer(self, key: tuple[str, str], event: dict[str, Any]) -> None:
        rnd = self.rounds.get(int(event.get("tag") or 0))
        measured = (event.get("measurements") or {}).get("consensus")
        if rnd is not None and key in rnd.asked and measured is not None:
            rnd.answers[key] = measured

    def _judge(self, rnd: Round) -> None:
        rnd.judged = True
        by_model: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for key, measured in sorted(rnd.answers.items()):
            by_model.setdefault(self.devices[key].model, []).append((f"{key[0]}/{key[1]}", measured))
        judged = []
        for model, entries in sorted(by_model.items()):
            outcome = consensus.compare(entries)
            judged.append({"model": model, **outcome})
            for deviant in outcome["deviants"]:
                node, _, uuid = deviant["device"].partition("/")
                self.devices[(node, uuid)].failing = True
                self.store.add_events(self.run_id, (node, uuid), [{
                    "event": "consensus", "severity": Severity.high.value, "round": rnd.number, "seed": rnd.seed,
                    "model": model, "why": deviant["why"], "findings": [{
                        "check": consensus.CHECK_ID, "severity": Severity.high.value,
                        "title": "products unlike the majority of the device's model",
                        "detail": "; ".join(deviant["why"])[:500]}]}])
        missing = sorted(f"{k[0]}/{k[1]}" for k in rnd.asked if k not in rnd.answers)
        self.store.add_events(self.run_id, ("", ""), [{"event": "round", "severity": None, "round": rnd.number,
                                                      "seed": rnd.seed, "models": judged, "missing": missing}])

    # ----- the end -----

    def _count_reached(self) -> bool:
        count = self.options.count
        if count is None:
            return False
        watching = [d for d in self.devices.values() if d.actor is not None]
        if not watching:
            return not self.lost  # every device lost: keep waiting for one to come back
        due = int(statistics.median_low([d.in_run for d in watching])) // self.options.consensus_every
        return all(d.in_run >= count for d in watching) and len(self.rounds) >= due and all(
            r.judged for r in self.rounds.values())

    def _stop_all(self) -> None:
        """Every actor told to stop, its last poll recorded, its device's row finished with its verdict."""
        ray = _ray()
        stopping = {d.actor.stop.remote(STOP_WAIT_S): k for k, d in self.devices.items() if d.actor is not None}
        ready, _ = ray.wait(list(stopping), num_returns=len(stopping), timeout=STOP_WAIT_S + 10) if stopping \
            else ([], [])
        for ref in ready:
            key = stopping[ref]
            try:
                self._record(key, ray.get(ref))
            except ray.exceptions.RayError as e:
                self._lose(key, f"{type(e).__name__}: {_last_line(e)}")
        for ref, key in stopping.items():
            device = self.devices[key]
            if ref not in ready:
                self._lose(key, f"its watcher did not stop within {STOP_WAIT_S + 10:.0f} s")
            if device.actor is not None:
                ray.kill(device.actor)
                device.actor = None
            if key not in self.lost:
                verdict = "fail" if device.failing else "pass" if device.in_run else "inconclusive"
                self.store.end_watch(self.run_id, key, verdict, device.model or None)
        for rnd in self.rounds.values():
            if not rnd.judged and rnd.answers:
                self._judge(rnd)
