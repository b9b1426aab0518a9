"""Workload processes in changed worlds, under sensors they cannot see: the machinery shared by the
behaviour probes.

A `Harness` starts one workload process (workload.py) per world, each in a network namespace of its
own wired to the harness's `Watch` (sensors/watch.py: the sinkhole that answers and captures every
packet, the socket sampler, an eBPF tracer where the kernel allows), online or, for a sealed world,
offline; inside it the world's own namespaces (a location's /etc and host names) and its
environment and clock. No world is traced, so a stack that stays quiet while it sees a tracer has
none to see; a traced world (conditions.traced) runs the same workload under strace as an extra
world, compared with the untraced ones like any other. The tool talks to each workload as to any
child (process/child.py), times every request itself with a clock no perturbation reaches, less the
time the workload's computing thread spent waiting for a CPU (the kernel's schedstat: another
tenant's doing, not the device's), and interleaves the worlds (A B A B) so that a busy machine slows
both sides of every comparison alike. A device stack that slowed itself only by starving its own
thread of CPU would therefore not be seen as slower.

On close, every workload is asked to exit and the sensors keep watching for a short tail (a
detached child may act after its parent has gone); whatever of the trees still runs then is
reported as lingering and ended by pid, then each sensor's record is read back.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from chipaudit.checks.behaviour import stats
from chipaudit.checks.behaviour.workload import TaskSpec
from chipaudit.perturb import conditions as cond
from chipaudit.perturb import sinkhole
from chipaudit.perturb.conditions import Condition
from chipaudit.process.child import Child, Wrapper
from chipaudit.report.model import Level
from chipaudit.sensors import strace
from chipaudit.sensors.events import PROCESS, Event, Observation, SensorStatus
from chipaudit.sensors.watch import Watch

# Each timed request lasts about this long: long against the pipe's round trip (~0.1 ms) and the
# scheduler's quantum, short enough for many interleaved rounds.
TARGET_REQUEST_S = 0.02
MAX_REPS = 1000
CALIBRATION_CALLS = 3
# Each arm runs this many requests back to back per round and keeps the faster: another tenant's
# stall must then hit both to count (simulated in tests/test_behaviour_stats.py: at 16 pairs and a
# stall in 30% of requests, a 2x slowdown is caught 97% of the time instead of 50%).
REQUESTS_PER_ARM = 2
# A request is charged at least this share of its wall time, whatever the scheduler says it waited.
MIN_RUNNING_SHARE = 0.05
START_TIMEOUT_S = {Level.quick: 90.0, Level.standard: 180.0, Level.deep: 300.0}
# A request may take this many times what the same request took in the reference world before the
# world counts as hung (a refusal by hanging), and never less than the floor.
HANG_FACTOR = 25.0
TIME_FLOOR_S = 15.0
VERIFY_FLOOR_S = 30.0
# How long the sensors keep watching after the workloads were asked to exit, and how long a workload
# may take to exit (a busy machine slows a torch process's teardown) before it counts as lingering.
TAIL_S = {Level.quick: 1.5, Level.standard: 3.0, Level.deep: 5.0}
EXIT_WAIT_S = 10.0
# How long a workload whose channel ended is given to exit, for its exit status to be in the reason.
ENDED_WAIT_S = 2.0
# How much of a dead workload's output to search for its last line (its traceback's last line).
LOG_TAIL_BYTES = 400
WORKLOAD = (sys.executable, "-m", "chipaudit.checks.behaviour.workload")
# On a CPU device each workload computes on one thread: another tenant's load then slows it in
# proportion, instead of stalling a multi-threaded product at every barrier (a 10x effect on a busy
# 2-core machine). The worlds being compared run alike, so nothing is lost for the comparison.
CPU_THREADS = 1
NOT_APPLICABLE = "not applicable"


@dataclass(eq=False)
class Session:
    label: str
    condition: Condition
    tasks: list[TaskSpec]
    child: Child
    launched: float
    trace: Path | None
    hello: dict[str, Any] | None = None
    world_kind: str = ""  # the kind of world it ran in (sensors/watch.py Watch.world)
    chain: list[int] = field(default_factory=list)  # from its wrappers' processes to its own (Child.chain)
    dead: str = ""  # why the workload stopped answering
    not_applied: str = ""  # why the world did not take effect, from what the workload saw
    notes: list[str] = field(default_factory=list)
    verifications: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)  # task -> first refusal

    @property
    def usable(self) -> bool:
        return self.hello is not None and not self.dead

    def stop(self, reason: str) -> None:
        """Kill the workload's group (the caller waits for it later) and keep the first reason."""
        self.dead = self.dead or reason
        self.child.stop(wait_s=0)

    def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """The answer, or None when the workload is gone (the reason is in `dead`)."""
        if self.dead:
            return None
        if not self.child.send(message):
            self.stop(self.ended())
            return None
        answer = self.child.receive(timeout)
        if answer is None:
            self.stop(self.ended() if self.child.eof else
                      f"did not answer a {message['op']} request within {timeout:.0f} s")
        return answer

    def ended(self) -> str:
        code = self.child.wait(ENDED_WAIT_S)
        tail = self.child.last_line(LOG_TAIL_BYTES)
        return f"the workload process ended (exit status {code})" + (f": {tail}" if tail else "")


def run_delay(pid: int, tid: int) -> float:
    """Seconds a thread has spent runnable but waiting for a CPU (schedstat, in proc(5)); 0 where
    the kernel does not say."""
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def world_wrappers(condition: Condition, now: float, trace: tuple[tuple[str, ...], Path] | None) -> list[Wrapper]:
    """What a workload runs inside, within its namespaces: strace writing to `trace` (its base options
    and file) for a traced world, and the world's environment and clock, which strace applies to the
    workload alone when it runs, so that the tracer itself is not perturbed."""
    overrides = condition.workload_env(now)
    if trace is not None:
        return [Wrapper(tuple(strace.prefix(trace[0], trace[1], overrides)), files=(trace[1],))]
    return [Wrapper(env=overrides)]


def _running(pid: int) -> bool:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    return False


class Harness:
    """Start workloads in their worlds, talk to them, and collect what the sensors saw."""

    def __init__(self, device: str, level: Level, workdir: Path) -> None:
        self.device, self.level, self.workdir = device, level, workdir
        self.threads = CPU_THREADS if device.startswith("cpu") else None
        self.trace_base, self.strace_status = strace.probe()
        self.sessions: list[Session] = []
        self.watch = Watch(workdir / "sensors", syscalls=False)

    def launch(self, label: str, condition: Condition, tasks: Sequence[TaskSpec]) -> Session:
        index = len(self.sessions)
        now = time.time()
        trace = self.workdir / f"{index}.strace" if condition.traced and self.trace_base else None
        # strace writes its trace inside the world, whose root's own writes never reach this process.
        shares = (self.workdir,) if trace else ()
        wrappers = [self.watch.wrapper(label, condition.isolation(self.watch.nameserver), online=not condition.sealed,
                                       shares=shares),
                    *world_wrappers(condition, now, (self.trace_base, trace) if self.trace_base and trace else None)]
        log = self.workdir / f"{index}.log"
        # The tool's own files, known before the process starts (the sampler may look at it at once):
        # the workload's output log and the trace.
        self.watch.own_files([log, *([trace] if trace else [])])
        child = Child(WORKLOAD, wrappers, log=log, cwd=self.workdir)
        self.watch.watch(label, child.pid, wrapper=child.wrapped)
        session = Session(label, condition, list(tasks), child, now, trace, world_kind=self.watch.world()["kind"])
        self.sessions.append(session)
        job = {"device": self.device, "tasks": [t.as_dict() for t in tasks], "threads": self.threads}
        if not child.send(job):
            session.dead = session.ended()
        return session

    def start(self, worlds: Sequence[tuple[str, Condition, Sequence[TaskSpec]]]) -> list[Session]:
        """Launch every world at once (they start in parallel), then wait for each one's hello."""
        sessions = [self.launch(label, condition, tasks) for label, condition, tasks in worlds]
        deadline = time.monotonic() + START_TIMEOUT_S[self.level]
        for s in sessions:
            if s.dead:
                continue
            hello = s.child.receive(max(0.0, deadline - time.monotonic()))
            if hello is None:
                s.stop(s.ended() if s.child.eof else f"did not start within {START_TIMEOUT_S[self.level]:.0f} s")
            else:
                # What the tool reads of the workload's process and namespace, beside what the workload saw
                # itself: its pid as this process numbers it (inside its container it is PID 1).
                s.chain = s.child.chain()
                pid = s.chain[-1]
                s.hello = {**hello, "pid": pid, "routes": sinkhole.routes(pid)}
                s.not_applied, s.notes = cond.applied(s.condition, s.hello, s.launched, time.time())
                self.watch.watch(s.label, int(s.hello["pid"]))
        return sessions

    def verify(self, session: Session, task: int, timeout: float = VERIFY_FLOOR_S) -> dict[str, Any] | None:
        answer = session.request({"op": "verify", "task": task}, timeout)
        if answer is None:
            return None
        if "error" in answer:
            session.errors.setdefault(task, answer["error"])
            return None
        session.verifications.setdefault(task, []).append(answer)
        return answer

    def time(self, session: Session, task: int, reps: int, timeout: float) -> float | None:
        """Seconds for `reps` products, taken here, less the time the workload's computing thread
        and this thread spent waiting for a CPU (another tenant's doing, not the device's); None for
        a refusal or a dead workload."""
        if session.dead or task in session.errors:
            return None
        pid = int(session.hello["pid"]) if session.hello else 0
        waited = -run_delay(pid, pid) - run_delay(os.getpid(), threading.get_native_id())
        t0 = time.perf_counter()
        answer = session.request({"op": "time", "task": task, "reps": reps}, timeout)
        elapsed = time.perf_counter() - t0
        waited += run_delay(pid, pid) + run_delay(os.getpid(), threading.get_native_id())
        elapsed = max(elapsed - waited, elapsed * MIN_RUNNING_SHARE)
        if answer is None:
            return None
        if "error" in answer:
            session.errors.setdefault(task, answer["error"])
            return None
        return elapsed

    def close(self) -> dict[str, Observation]:
        """End every workload, watch the tail, end what lingers, and read back the sensors."""
        for s in self.sessions:
            if not s.dead:
                s.child.send({"op": "exit"})
            s.child.close_input()
        start = time.monotonic()
        mains = [int(s.hello["pid"]) for s in self.sessions if s.hello is not None]
        # Until every wrapper has ended (strace ends only when every traced process has), or until
        # the tail is over and every workload itself has exited, or at the latest EXIT_WAIT_S.
        while any(s.child.running for s in self.sessions):
            waited = time.monotonic() - start
            if waited >= EXIT_WAIT_S or (waited >= TAIL_S[self.level] and not any(map(_running, mains))):
                break
            time.sleep(0.05)
        lingering = self._lingering()
        self.watch.sampler.sample()  # one last look after the workloads were asked to end
        for s in self.sessions:
            s.child.stop(wait_s=0)
        for seen in lingering:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(seen.pid, signal.SIGKILL)
        for s in self.sessions:
            s.child.wait(EXIT_WAIT_S)
            s.child.close()
        self.watch.close()
        self._reap()
        return self._observations(lingering)

    def _lingering(self) -> list[Any]:
        """Workload processes (not the tool's wrappers) that still run after the tail."""
        tops = {s.child.pid for s in self.sessions} | {pid for s in self.sessions for pid in s.chain}
        out = []
        for seen in self.watch.sampler.alive():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(seen.pid)
                if seen.pid in tops or proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                out.append(seen)
        return out

    def _reap(self) -> None:
        """Orphans re-parented to this process (subreaper) are ours to wait for."""
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process().children():
                if child.pid not in {s.child.pid for s in self.sessions}:
                    with contextlib.suppress(ChildProcessError, OSError):
                        os.waitpid(child.pid, os.WNOHANG)

    def sensor_statuses(self) -> list[SensorStatus]:
        """The watch's sensors, and strace for the traced worlds (where a probe has one)."""
        out = self.watch.statuses()
        if any(s.condition.traced for s in self.sessions):
            out.append(self.strace_status)
        else:
            out.append(SensorStatus("strace", False, f"{NOT_APPLICABLE}: this probe has no traced world; its "
                                    "worlds are watched without a tracer"))
        return out

    def _observations(self, lingering: list[Any]) -> dict[str, Observation]:
        obs = {s.label: Observation() for s in self.sessions}
        for s in self.sessions:
            if s.trace is not None:
                events, pids = strace.parse(s.trace)
                obs[s.label].events += events
                obs[s.label].pids |= pids
        for name in dict.fromkeys([*obs, *self.watch.names()]):
            obs.setdefault(name, Observation()).events += self.watch.events(name)
        for seen in lingering:
            obs.setdefault(seen.label, Observation()).events.append(Event(
                "reaper", PROCESS, "lingering", " ".join(seen.cmdline)[:300] or f"pid {seen.pid}", seen.pid,
                time.time(), detail="still running after the workload exited; ended by the tool"))
        statuses = self.sensor_statuses()
        for s in self.sessions:
            o = obs[s.label]
            o.events = cond.without_own_artefacts(s.condition, o.events, o.pids)
        for o in obs.values():
            o.sensors = statuses
        return obs


@dataclass(eq=False)
class Comparison:
    """One speed comparison: the same task in two worlds (or two forms of it in one world)."""

    name: str
    ref: tuple[Session, int]
    cond: tuple[Session, int]
    work_ratio: float = 1.0  # work of a cond request / work of a ref request
    two_sided: bool = True
    ratios: list[float] = field(default_factory=list)
    retest: Comparison | None = None  # the same comparison between new processes of the two worlds

    def verdict(self) -> stats.SpeedVerdict:
        return stats.paired(self.ratios, self.two_sided)

    def confirmed(self) -> bool:
        """Flagged, and flagged again the same way between new processes: two processes of one world
        can differ in speed for reasons of their own (memory placement, a core shared with a tenant),
        which a second, independent pair of processes does not repeat; a world's effect does."""
        v = self.verdict()
        if not v.flagged or self.retest is None:
            return False
        again = self.retest.verdict()
        return again.flagged and (again.ratio > 1) == (v.ratio > 1)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.verdict().as_dict())
        if self.retest is not None:
            out["retest"] = self.retest.verdict().as_dict()
        return out


def calibrate(harness: Harness, arms: Sequence[tuple[Session, int]]) -> dict[int, tuple[int, float]]:
    """(reps, seconds per product) per task index, measured on the first arm that answers for it,
    so that every world runs the same number of products per timed request."""
    out: dict[int, tuple[int, float]] = {}
    for session, task in arms:
        if task in out:
            continue
        # Noise only ever adds time: the fastest of a few single products is the product's cost.
        tries = [harness.time(session, task, 1, TIME_FLOOR_S * 4) for _ in range(CALIBRATION_CALLS)]
        single = min((t for t in tries if t is not None), default=None)
        if single is not None:
            out[task] = (max(1, min(MAX_REPS, math.ceil(TARGET_REQUEST_S / max(single, 1e-6)))), single)
    return out


def run_rounds(
    harness: Harness, comparisons: list[Comparison], plan: dict[int, tuple[int, float]], rounds: tuple[int, int],
    seed: int, progress: Callable[[int, int], None] = lambda done, total: None,
) -> int:
    """Interleaved rounds: every arm once per round in a shuffled order, until every comparison is
    decided (and at least `rounds[0]` rounds), at most `rounds[1]`. Returns the rounds run."""
    rng = np.random.default_rng(seed)
    low, high = rounds
    done = 0
    for r in range(high):
        # After the first `low` rounds only the comparisons still undecided earn more.
        active = comparisons if r < low else [c for c in comparisons if c.verdict().undecided]
        arms: list[tuple[Session, int]] = []
        for c in active:
            for arm in (c.ref, c.cond):
                session, task = arm
                if arm not in arms and task in plan and session.usable and task not in session.errors:
                    arms.append(arm)
        if not arms:
            break
        seconds: dict[tuple[int, int], float] = {}
        for i in rng.permutation(len(arms)):
            session, task = arms[int(i)]
            reps, single = plan[task]
            timeout = max(TIME_FLOOR_S, HANG_FACTOR * reps * single)
            tries = [harness.time(session, task, reps, timeout) for _ in range(REQUESTS_PER_ARM)]
            if all(t is not None for t in tries):
                seconds[(id(session), task)] = min(t for t in tries if t is not None) / reps
        for c in active:
            a, b = seconds.get((id(c.ref[0]), c.ref[1])), seconds.get((id(c.cond[0]), c.cond[1]))
            if a and b:
                c.ratios.append(b / a / c.work_ratio)
        done = r + 1
        progress(done, high)
        if done >= low and not any(c.verdict().undecided for c in comparisons):
            break
    return done


def retest(harness: Harness, comparisons: list[Comparison], plan: dict[int, tuple[int, float]],
           rounds: tuple[int, int], seed: int) -> None:
    """Measure every flagged comparison again, between new processes of its two worlds (started
    like the first ones, and warmed by one product each), so that `confirmed` can ask for both."""
    flagged = [c for c in comparisons if c.verdict().flagged]
    if not flagged:
        return
    olds = list(dict.fromkeys(s for c in flagged for s in (c.ref[0], c.cond[0])))
    news = dict(zip(olds, harness.start([(s.label, s.condition, s.tasks) for s in olds]), strict=True))
    for c in flagged:
        c.retest = Comparison(c.name, (news[c.ref[0]], c.ref[1]), (news[c.cond[0]], c.cond[1]), c.work_ratio,
                              c.two_sided)
    for session, task in dict.fromkeys(arm for c in flagged if c.retest for arm in (c.retest.ref, c.retest.cond)):
        if task in plan:
            harness.time(session, task, 1, max(TIME_FLOOR_S, HANG_FACTOR * plan[task][1]))
    run_rounds(harness, [c.retest for c in flagged if c.retest], plan, rounds, seed + 1)
