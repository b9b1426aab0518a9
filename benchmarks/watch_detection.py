"""How soon a watch reports a device that goes bad in production, and that a healthy one raises no alarm.

Each trial watches the CPU (bursts every INTERVAL_S seconds at DUTY) whose worker runs the self-test's
late_bitflip fault: healthy until a random moment, then flipping bits in its fp32 products. The figure
is the median number of intervals from that moment to the burst event that reports it (ceil of the
delay over the interval; a trial that never reports counts as infinite). A clean watch as long as all
trials together follows, and must report nothing.

Reporting home: as many trials again, where a process named with --watch-pid (as a job holding the
device would be) connects to a listener on loopback at a random moment; the holders' sampler
(sensors/procwatch.py) must report it. The clean watch watches a quiet process the same way.

usage: PYTHONPATH=src python benchmarks/watch_detection.py [--trials 10]
Last line: watch_detection_intervals: X (must be at most 2).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from chipaudit.checks.behaviour.allowlist import Allowlist
from chipaudit.process.child import Wrapper
from chipaudit.runner.watch import WatchConfig, Watcher
from chipaudit.selftest.faults import LateBitFlip, worker_wrapper
from chipaudit.sensors.samplers import Sampler, samplers_for
from chipaudit.stats import median

INTERVAL_S = 2.0
DUTY = 0.05  # 0.1 s per burst at 2 s: room for a burst's least (a product, an operator case, a memory block)
ONSET_INTERVALS = (1.0, 6.0)  # the fault starts this many intervals after the first burst, uniformly
GIVE_UP_INTERVALS = 8
# The watcher's start-up (torch in the worker, its sensors) on the loaded 2-core host, at most.
STARTUP_S = 8.0


def burst_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == "burst"]


def watch(folder: Path, wrappers: list[Wrapper], samplers: list[Sampler], until: Any) -> list[dict[str, Any]]:
    """Watch until `until(bursts)` is true; the burst events."""
    config = WatchConfig(device="cpu", db=folder / "db.sqlite3", events=folder / "events.jsonl",
                         interval_s=INTERVAL_S, duty=DUTY, syscalls=False)
    watcher = Watcher(config, samplers, wrappers)
    runner = threading.Thread(target=watcher.run, daemon=True)
    runner.start()
    while runner.is_alive() and not until(burst_events(config.events)):
        time.sleep(0.1)
    watcher.stop()
    runner.join()
    return burst_events(config.events)


def reported(bursts: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((b for b in bursts if any(f["severity"] in ("medium", "high", "critical") for f in b["findings"])),
                None)


def corruption_trial(folder: Path, rng: random.Random) -> tuple[float, int]:
    """(intervals until reported, bursts watched). The moment is drawn after the watcher's start-up
    (STARTUP_S), so that it falls in the watch; a slower start-up only counts against the watch."""
    onset = time.time() + STARTUP_S + rng.uniform(*ONSET_INTERVALS) * INTERVAL_S
    fault = worker_wrapper(LateBitFlip(rate=1e-3, at=onset))
    bursts = watch(folder, [fault], [],
                   lambda b: reported(b) is not None or time.time() > onset + GIVE_UP_INTERVALS * INTERVAL_S)
    hit = reported(bursts)
    if hit is None or _unix(hit["time"]) < onset:  # never reported, or an alarm before the fault began
        return math.inf, len(bursts)
    return max(1.0, math.ceil((_unix(hit["time"]) - onset) / INTERVAL_S)), len(bursts)


def beacon_trial(folder: Path, rng: random.Random) -> float:
    """Intervals until a watched process's connection to a collector, made at a random moment after
    the watcher's start-up, is reported by the holders' sampler."""
    collector = socket.socket()
    collector.bind(("127.0.0.1", 0))
    collector.listen()
    port = collector.getsockname()[1]
    delay = STARTUP_S + rng.uniform(*ONSET_INTERVALS) * INTERVAL_S
    holder = subprocess.Popen([sys.executable, "-c", f"import socket, time; time.sleep({delay}); "
                               f"s = socket.create_connection(('127.0.0.1', {port})); time.sleep(60)"])
    try:
        samplers = samplers_for("cpu", [holder.pid], [], Allowlist())
        onset = time.time() + delay
        bursts = watch(folder, [], samplers, lambda b: reported(b) is not None or time.time() > onset + 20)
        hit = reported(bursts)
        if hit is None or _unix(hit["time"]) < onset:  # never reported, or an alarm before the connection
            return math.inf
        return max(1.0, math.ceil((_unix(hit["time"]) - onset) / INTERVAL_S))
    finally:
        holder.kill()
        collector.close()


def _unix(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    delays: list[float] = []
    watched = 0
    with tempfile.TemporaryDirectory(prefix="watch-detection-") as tmp:
        for i in range(args.trials):
            folder = Path(tmp) / f"corrupt-{i}"
            folder.mkdir()
            delay, bursts = corruption_trial(folder, rng)
            delays.append(delay)
            watched += bursts
            print(f"corruption trial {i + 1}: reported after {delay} interval(s), {bursts} bursts", flush=True)
        for i in range(args.trials):
            folder = Path(tmp) / f"beacon-{i}"
            folder.mkdir()
            beacon = beacon_trial(folder, rng)
            delays.append(beacon)
            print(f"reporting-home trial {i + 1}: reported after {beacon} interval(s)", flush=True)
        clean = Path(tmp) / "clean"
        clean.mkdir()
        quiet = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        try:
            bursts = watch(clean, [], samplers_for("cpu", [quiet.pid], [], Allowlist()), lambda b: len(b) >= watched)
        finally:
            quiet.kill()
        alarms = sum(1 for b in bursts if reported([b]) is not None)
        print(f"clean watch: {len(bursts)} bursts, {alarms} false alarm(s)")
    middle = median(delays)
    print(f"median intervals until reported: {middle} over {len(delays)} trial(s); false alarms: {alarms}")
    print(f"watch_detection_intervals: {middle:g}")


if __name__ == "__main__":
    main()
