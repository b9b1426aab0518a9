"""The watcher's loop: a verified burst every interval, at a duty the device's workload does not
notice, for as long as it runs.

Duty: a token bucket of device-seconds, filled at `duty` per second of wall time and holding at most
BUCKET_INTERVALS intervals' worth; each burst gets what the bucket holds and spends what it used (its
own measured busy time, host verification included: on a CPU the host is the device). A burst that
overran is paid back by waiting, so the average never exceeds the duty, whatever the interval.

Lifecycle: the state (counters, the next seed and rotation position) is saved in the store after
every burst in one transaction, so SIGKILL loses at most the burst that was running and a restart
goes on. SIGTERM and Ctrl-C let the running burst end (for at most STOP_GRACE_S), save, flush the
outputs and return. The worker (runner/watch/worker.py) runs under the same sensors an audit's
workers get (runner/watched.py): what it does besides computing is attributed to the burst running.
A worker that hangs or dies costs its burst (an error, not a failure) and is replaced.

Beside the bursts, every interval the samplers (the processes that hold the device, the device's
telemetry: see `samplers_for`) report what is new, and every `stack_every` intervals the stack is
compared with the baseline by the audit's own check (stack.fingerprint), in a fresh worker.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chipaudit.checks.base import derive_seed, status_for
from chipaudit.process.child import STARTUP_TIMEOUT_S, Child, Wrapper
from chipaudit.report.model import EXIT_CODES, FAILING_SEVERITY, Category, CheckResult, Finding, Status, Verdict
from chipaudit.runner.watch import outputs
from chipaudit.runner.watch.burst import BURST_ID, LEVEL
from chipaudit.runner.watch.state import Hour, WatchState, WatchStore, now, worst
from chipaudit.runner.watchdog import Events, PlannedCheck, run_plan
from chipaudit.runner.watched import WatchedWorker, WorkerSensors
from chipaudit.sensors.samplers import Sampler
from chipaudit.sensors.watch import Watch

WORKER = (sys.executable, "-m", "chipaudit.runner.watch.worker")
# The bucket holds this many intervals' worth of duty: a watcher idle for a day does not then burst for
# a day's worth at once.
BUCKET_INTERVALS = 2.0
# A burst that has not answered within this many times its budget, plus the grace, has hung.
BURST_TIMEOUT_FACTOR = 20.0
BURST_GRACE_S = 60.0
# On SIGTERM or Ctrl-C, the running burst may finish for this long before it is abandoned.
STOP_GRACE_S = 5.0
# How often the socket sampler looks at the watcher's worker (an audit's looks every 0.1 s). Each look
# reads every process's /proc/PID/stat to find the worker's tree, which at an audit's rate cost the
# watcher 2 % of a 2-core host, more than its bursts (measured with yappi over 35 s). Once a second
# still sees every socket and file a worker holds for a second; a packet it sends at any moment is seen
# by the sinkhole's capture whatever the rate.
WORKER_SAMPLE_S = 1.0
POLL_S = 0.5
STACK_CHECK = "stack.fingerprint"
STACK_TIMEOUT_S = 600.0


@dataclass
class WatchConfig:
    device: str
    db: Path | str
    events: Path
    interval_s: float = 60.0
    duty: float = 0.01
    once: bool = False
    count: int | None = None  # stop after this many bursts (None: until told to stop)
    seed: int | None = None  # --once only: the burst's seed (default: a new one)
    rotation: int = 0  # --once only: the burst's rotation position
    baseline: Path | None = None
    stack_every: int = 60
    prometheus: Path | None = None
    metrics_port: int | None = None
    bundle_dir: Path | None = None
    key: Ed25519PrivateKey | None = None
    params: dict[str, Any] = field(default_factory=dict)  # the allow-list, as the audit's
    syscalls: bool = True  # the eBPF syscall tracer around the worker, where the machine allows it
    device_id: str | None = None  # the device's name in the store (a fleet's node/device); default: its UUID

    def replay(self, seed: int, rotation: int) -> str:
        return (f"chipaudit watch --device {self.device} --once --seed {seed} --rotation {rotation} "
                f"--duty {self.duty:g} --interval {self.interval_s:g}")


class DutyBucket:
    """Device-seconds a burst may use: filled at `duty` per second, at most BUCKET_INTERVALS intervals'
    worth, starting with one interval's."""

    def __init__(self, duty: float, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.duty, self.clock = duty, clock
        self.capacity = BUCKET_INTERVALS * duty * interval_s
        self.tokens = duty * interval_s
        self._at = clock()

    def _fill(self) -> None:
        t = self.clock()
        self.tokens = min(self.capacity, self.tokens + self.duty * (t - self._at))
        self._at = t

    def wait_s(self, floor: float) -> float:
        """Seconds until the bucket holds `floor` (a burst's least cost)."""
        self._fill()
        return max(0.0, (min(floor, self.capacity) - self.tokens) / self.duty)

    def take(self) -> float:
        self._fill()
        return max(0.0, self.tokens)

    def spend(self, busy_s: float) -> None:
        self._fill()
        self.tokens -= busy_s


@dataclass
class Outcome:
    """One burst as the watcher saw it."""

    result: CheckResult
    findings: list[Finding]
    busy_s: float
    products: int


class Watcher:
    def __init__(self, config: WatchConfig, samplers: Sequence[Sampler] = (), wrappers: Sequence[Wrapper] = ()):
        self.config, self.samplers, self.wrappers = config, list(samplers), tuple(wrappers)
        self.log = outputs.EventLog(config.events)
        self.bucket = DutyBucket(config.duty, config.interval_s)
        self._stop = threading.Event()
        self._child: Child | None = None
        self._watched: WatchedWorker | None = None
        self._busy = 0.0
        self._began = time.monotonic()
        self._saved = time.monotonic()
        self._floor = 0.0  # the least a burst has cost
        self._telemetry: dict[str, float] = {}
        self._lock = threading.Lock()
        self._requests: list[tuple[str, int, float, Any]] = []
        self._wake = threading.Event()
        self.state: WatchState | None = None
        self.model = ""
        self.verdict = Verdict.inconclusive

    def stop(self) -> None:
        """Ask the loop to end after the running burst (from a signal handler or another thread)."""
        self._stop.set()
        self._wake.set()

    def run(self) -> int:
        """Watch until stopped (or `count` bursts, or one with `once`); `run`'s exit code for the last
        burst with `once`, else 0."""
        store = WatchStore(self.config.db)
        server = None
        try:
            with stop_on_signals(self.stop), tempfile.TemporaryDirectory() as tmp, \
                    Watch(Path(tmp) / "watch", syscalls=self.config.syscalls, sample_s=WORKER_SAMPLE_S) as watch:
                self.state = self._initial_state(store)
                self.sensors = WorkerSensors(watch, Path(tmp) / "workers", self.config.params)
                if self.config.metrics_port is not None:
                    server = outputs.MetricsServer(self.config.metrics_port, self.metrics_text)
                self.log.write("start", device=self.config.device, device_id=self.state.device_id, model=self.model,
                               continuing=self.state.bursts > 0, seed=self.state.seed, rotation=self.state.rotation,
                               duty=self.config.duty, interval_s=self.config.interval_s,
                               sensors=[s.as_dict() for s in watch.statuses()],
                               samplers={st.name: st.as_dict() for st in (s.status() for s in self.samplers)})
                self._publish()
                self._loop(store)
        finally:
            self._end_worker()
            if self.state is not None:
                self.log.write("stop", bursts=self.state.bursts, failures=self.state.failures)
                self._publish()
            if server is not None:
                server.close()
            for sampler in self.samplers:
                sampler.close()
            store.close()
        return EXIT_CODES[self.verdict] if self.config.once else 0

    def _initial_state(self, store: WatchStore) -> WatchState:
        from chipaudit.devices.torchdev import describe
        from chipaudit.runner.audit import environment

        hostname = environment().hostname
        info = describe(self.config.device)
        self.model = info.name or info.spec
        key = self.config.device_id or next((str(info.properties[k]) for k in ("uuid", "serial", "device_uuid",
                                                                              "serial_number")
                                             if info.properties.get(k)), f"{hostname or 'localhost'}:{info.spec}")
        seed = self.config.seed if self.config.seed is not None else derive_seed(time.time_ns(), key)
        fresh = WatchState(device_id=key, device_spec=self.config.device, hostname=hostname, seed=seed,
                           rotation=self.config.rotation)
        if self.config.once:
            return fresh  # one burst, reproducible from its own seed: the watch's state is not its
        return store.load(key) or fresh

    def _loop(self, store: WatchStore) -> None:
        assert self.state is not None
        next_at = time.monotonic()
        first = True
        done = 0
        while not self._stop.is_set():
            self._sleep(max(next_at - time.monotonic(), self.bucket.wait_s(self._floor)), store)
            if self._stop.is_set():
                break
            started = time.monotonic()
            when = datetime.now(timezone.utc)
            hour = Hour()
            burst = self._burst()
            if burst is None:  # stopped before it began
                break
            self._account(burst, hour)
            findings = self._sample() + (self._stack(hour) if self._stack_due(first) else [])
            self._judge(burst, findings, hour)
            store.save(self.state, hour, when, keep_state=not self.config.once)
            self._publish()
            self._requested(store)
            first = False
            done += 1
            if self.config.once or (self.config.count is not None and done >= self.config.count):
                break
            next_at = max(started + self.config.interval_s, time.monotonic())

    def _sleep(self, seconds: float, store: WatchStore) -> None:
        """Wait, serving what is asked for meanwhile."""
        until = time.monotonic() + max(0.0, seconds)
        while not self._stop.is_set() and (left := until - time.monotonic()) > 0:
            if self._wake.wait(left) and not self._stop.is_set():
                self._requested(store)

    # ----- the worker and its bursts -----

    def _worker(self) -> Child | None:
        """The running worker, or a fresh one ready for bursts; None when it could not be started."""
        if self._child is not None and self._child.running:
            return self._child
        assert self.state is not None
        if self._child is not None:
            reason = self._child.last_line(600)
            self._end_worker()
            self.state.restarts += 1
            self.log.write("worker", action="restart", reason=reason)
        watched = self.sensors.worker()
        try:
            child = Child(WORKER, [watched.wrapper, *self.wrappers], log=watched.log)
        except (RuntimeError, OSError) as e:
            self.log.write("worker", action="not started", reason=str(e))
            return None
        watched.pid = child.innermost()
        self._child, self._watched = child, watched
        child.send({"device": self.config.device, **watched.job})
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        message = self._receive(deadline)
        if message is None or message.get("type") != "ready":
            self.log.write("worker", action="not ready", reason=child.last_line(600))
            self._end_worker()
            return None
        return child

    def _receive(self, deadline: float) -> dict[str, Any] | None:
        """The worker's next message by the deadline, which a stop request shortens to STOP_GRACE_S."""
        assert self._child is not None
        stopping = False
        while True:
            if self._stop.is_set() and not stopping:
                stopping, deadline = True, min(deadline, time.monotonic() + STOP_GRACE_S)
            left = deadline - time.monotonic()
            if left <= 0 or self._child.eof:
                return None
            message = self._child.receive(min(POLL_S, left))
            if message is not None:
                return message

    def _end_worker(self) -> None:
        if self._child is not None:
            self._child.stop()
            self._child.close()
        self._child = self._watched = None

    def _burst(self) -> Outcome | None:
        assert self.state is not None
        budget = self.bucket.take()
        params = {"budget_s": budget, "rotation": self.state.rotation, "formats": None}
        return self._in_worker(BURST_ID, self.state.seed, params, budget * BURST_TIMEOUT_FACTOR + BURST_GRACE_S)

    def _in_worker(self, check_id: str, seed: int, params: dict[str, Any], timeout_s: float) -> Outcome | None:
        """One check in the long-lived worker: its result, an error result when the worker could not run
        it, or None when stopped before it began."""
        base = CheckResult(id=check_id, category=Category.integrity, status=Status.error, seed=seed)
        child = self._worker()
        if child is None:
            if self._stop.is_set():
                return None
            base.reason = "the watch's worker could not be started"
            return Outcome(base, [], 0.0, 0)
        assert self._watched is not None
        child.send({"check": check_id, "seed": seed, "params": params})
        deadline = time.monotonic() + timeout_s
        t0 = time.monotonic()
        start = self._receive(deadline)
        message = self._receive(deadline) if start is not None else None
        if start is not None:
            self._watched.started(check_id, min(float(start.get("time", time.time())), time.time()))
        if message is None or message.get("type") != "result":
            lost = "abandoned on stop" if self._stop.is_set() else (
                "the worker died" if child.eof else f"no answer within {deadline - t0:.0f} s")
            base.reason = f"{lost}: {child.last_line(600)}".rstrip(": ")
            self._end_worker()
            return Outcome(base, [], time.monotonic() - t0, 0)
        result = CheckResult.model_validate(message["result"])
        findings = [Finding.model_validate(f) for f in message["findings"]]
        sent = min(float(message.get("time", time.time())), time.time())
        result, findings = self._watched.settle(result, findings, sent, last=False)
        del self._watched.windows[:-1]  # only the last check's window can still take events
        busy = float(result.measurements.get("busy_s", result.duration_s))
        return Outcome(result, findings, busy, int(result.measurements.get("products", 0)))

    # ----- checks asked for from outside (a fleet's consensus) -----

    def request(self, check_id: str, seed: int, timeout_s: float, tag: Any = None) -> None:
        """Run `check_id` with `seed` in the worker as soon as the running burst ends (thread-safe); its
        result is the event log's `check` event, with `tag`, its measurements and its findings."""
        with self._lock:
            self._requests.append((check_id, seed, timeout_s, tag))
        self._wake.set()

    def _requested(self, store: WatchStore) -> None:
        """Every pending request, each saved as its own share of the hour; its device time is paid from
        the duty bucket like a burst's."""
        assert self.state is not None
        while not self._stop.is_set():
            with self._lock:
                if not self._requests:
                    self._wake.clear()
                    return
                check_id, seed, timeout_s, tag = self._requests.pop(0)
            when, hour = datetime.now(timezone.utc), Hour()
            outcome = self._in_worker(check_id, seed, {}, timeout_s)
            if outcome is None:
                return
            self.bucket.spend(outcome.busy_s)
            self._busy += outcome.busy_s
            result, findings = outcome.result, outcome.findings
            failing = [f for f in findings if f.severity.rank >= FAILING_SEVERITY.rank]
            hour.findings, hour.busy_s = len(findings), outcome.busy_s
            hour.worst = worst(f.severity for f in findings)
            if result.status is Status.error:
                self.state.errors += 1
                hour.errors = 1
            if failing:
                self.state.failures += 1
                hour.failures = 1
            self.log.write("check", check=check_id, tag=tag, seed=seed, status=result.status.value,
                           reason=result.reason, busy_s=round(outcome.busy_s, 4),
                           measurements=result.measurements, findings=[_brief(f) for f in findings])
            store.save(self.state, hour, when, keep_state=not self.config.once)
            self._publish()

    def _account(self, burst: Outcome, hour: Hour) -> None:
        assert self.state is not None
        state = self.state
        self.bucket.spend(burst.busy_s)
        self._busy += burst.busy_s
        if burst.busy_s > 0:
            self._floor = burst.busy_s if self._floor == 0 else min(self._floor, burst.busy_s)
        state.bursts += 1
        state.products += burst.products
        state.busy_s += burst.busy_s
        state.rotation = int(burst.result.coverage.get("rotation_end", state.rotation + burst.products))
        state.last_burst = now()
        if burst.result.status is Status.error:
            state.errors += 1
            hour.errors += 1
        elif burst.result.status in (Status.passed, Status.warning):
            state.last_good = state.last_burst
        hour.bursts, hour.products, hour.busy_s = 1, burst.products, burst.busy_s

    # ----- samplers and the stack -----

    def _sample(self) -> list[Finding]:
        found: list[Finding] = []
        for sampler in self.samplers:
            try:
                found += sampler.sample()
                self._telemetry.update(sampler.metrics())
            except Exception as e:  # a sampler's failure must not end the watch; it is said
                self.log.write("sampler", error=f"{type(e).__name__}: {e}"[:500])
        return found

    def _stack_due(self, first: bool) -> bool:
        assert self.state is not None
        return self.config.baseline is not None and (first or self.state.bursts % self.config.stack_every == 0)

    def _stack(self, hour: Hour) -> list[Finding]:
        """The stack compared with the baseline by the audit's own check, in a fresh worker under the
        same sensors; a check that could not run is said, never taken for no drift."""
        assert self.state is not None
        results: list[tuple[CheckResult, list[Finding]]] = []
        plan = [PlannedCheck(STACK_CHECK, Category.stack, derive_seed(self.state.seed, STACK_CHECK), STACK_TIMEOUT_S)]
        job = {"device": self.config.device, "level": LEVEL.value, "params": {"baseline": str(self.config.baseline)}}
        run_plan(plan, job, Events(finished=lambda r, f: results.append((r, f))), self.wrappers, self.sensors)
        self.state.stack_checks += 1
        result, findings = results[0] if results else (CheckResult(
            id=STACK_CHECK, category=Category.stack, status=Status.error, reason="no result"), [])
        self.log.write("stack", status=result.status.value, reason=result.reason,
                       findings=[_brief(f) for f in findings])
        if result.status is Status.error:
            hour.errors += 1
        return findings

    # ----- judging and outputs -----

    def _judge(self, burst: Outcome, others: list[Finding], hour: Hour) -> None:
        assert self.state is not None
        state = self.state
        findings = [*burst.findings, *others]
        failing = [f for f in findings if f.severity.rank >= FAILING_SEVERITY.rank]
        hour.findings = len(findings)
        hour.worst = worst(f.severity for f in findings)
        now_mono = time.monotonic()
        hour.wall_s, self._saved = now_mono - self._saved, now_mono
        state.wall_s += hour.wall_s
        seed, rotation = burst.result.seed or state.seed, int(burst.result.coverage.get("rotation", state.rotation))
        replay = self.config.replay(seed, rotation)
        event: dict[str, Any] = {"burst": state.bursts, "seed": seed, "rotation": rotation,
                                 "status": burst.result.status.value, "reason": burst.result.reason,
                                 "busy_s": round(burst.busy_s, 4),
                                 "budget_s": burst.result.measurements.get("budget_s"), "products": burst.products,
                                 "findings": [_brief(f) for f in findings], "replay": replay}
        if failing:
            state.failures += 1
            hour.failures = 1
            event["bundle"] = self._bundle(burst, others, seed, replay)
        self.log.write("burst", **event)
        if failing:
            self.verdict = Verdict.fail
        elif burst.result.status is Status.error:
            self.verdict = Verdict.inconclusive
        else:
            self.verdict = Verdict.pass_
        state.seed = derive_seed(seed, "next")

    def _bundle(self, burst: Outcome, others: list[Finding], seed: int, replay: str) -> str | None:
        if self.config.bundle_dir is None:
            return None
        assert self.state is not None
        results = [(burst.result, burst.findings)]
        for check in dict.fromkeys(f.check for f in others):
            mine = [f for f in others if f.check == check]
            results.append((CheckResult(id=check, category=mine[0].category, status=status_for(mine)), mine))
        name = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-burst-{self.state.bursts}"
        try:
            path = outputs.failure_bundle(self.config.bundle_dir, name, self.config.device, seed, replay,
                                          {"watch": {"duty": self.config.duty, "interval_s": self.config.interval_s}},
                                          results, self.config.key)
        except Exception as e:  # the failure stands in the log and the metrics even if its bundle cannot
            self.log.write("bundle", error=f"{type(e).__name__}: {e}"[:500])
            return None
        return str(path)

    def figures(self) -> dict[str, float]:
        state = self.state
        if state is None:
            return {}
        wall = max(time.monotonic() - self._began, 1e-9)
        since = state.last_good or state.started
        return {
            "watch_bursts_total": state.bursts, "watch_products_verified_total": state.products,
            "watch_failures_total": state.failures, "watch_errors_total": state.errors,
            "watch_worker_restarts_total": state.restarts, "watch_stack_checks_total": state.stack_checks,
            "watch_seconds_since_last_good_burst": max(0.0, (datetime.now(timezone.utc)
                                                             - datetime.fromisoformat(since)).total_seconds()),
            "watch_duty_ratio": self._busy / wall, "watch_duty_target_ratio": self.config.duty,
            "watch_interval_seconds": self.config.interval_s,
            **({"watch_last_burst_timestamp_seconds": datetime.fromisoformat(state.last_burst).timestamp()}
               if state.last_burst else {}),
        }

    def metrics_text(self) -> str:
        return outputs.metrics_text(self.config.device, self.figures(), self._telemetry)

    def _publish(self) -> None:
        if self.config.prometheus is not None:
            try:
                outputs.write_textfile(self.config.prometheus, self.metrics_text())
            except OSError as e:
                self.log.write("prometheus", error=str(e))


def _brief(f: Finding) -> dict[str, Any]:
    return {"check": f.check, "severity": f.severity.value, "title": f.title, "detail": f.detail[:500]}


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGTERM and SIGINT ask the loop to stop, in the main thread (elsewhere the caller stops it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = lambda signum, frame: stop()  # noqa: E731
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
