"""What a watch costs the work it shares the device with.

A steady workload (fp32 matrix products of WORKLOAD_SIZE, in a process of its own, as a job would run
them) runs on the CPU for the whole benchmark, beside `chipaudit watch --duty 0.01` (bursts every
INTERVAL_S, its sensors included). The watcher is paused (SIGSTOP to its whole process tree) and
resumed in alternating periods of PERIOD_S, PAIRS times, so that the host's other load falls on both
sides alike; the workload's products per second in the periods without the watcher over those with it
is the slowdown: the median over adjacent pairs of periods (one with, one without) of their ratio, so
that other tenants' load, which moves the workload's rate by far more than a watch does on a shared
host, cancels within each pair.

usage: PYTHONPATH=src python benchmarks/watch_overhead.py [--pairs 8]
Last line: watch_slowdown: X (must be at most 1.03 on the CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from chipaudit.stats import median

INTERVAL_S = 5.0
DUTY = 0.01
PERIOD_S = 10.0
WORKLOAD_SIZE = 384
WORKLOAD = f"""
import sys, time, torch
a, b = torch.randn({WORKLOAD_SIZE}, {WORKLOAD_SIZE}), torch.randn({WORKLOAD_SIZE}, {WORKLOAD_SIZE})
while True:
    t0 = time.time()
    for _ in range(10):
        torch.mm(a, b)
    print(time.time(), 10, flush=True)
"""


def pause(pid: int, stop: bool) -> None:
    """SIGSTOP or SIGCONT to the watcher and every process under it (its worker, its sensors)."""
    try:
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGSTOP if stop else signal.SIGCONT)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args()
    done: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory(prefix="watch-overhead-") as tmp:
        events = Path(tmp) / "events.jsonl"
        workload = subprocess.Popen([sys.executable, "-c", WORKLOAD], stdout=subprocess.PIPE, text=True)
        reader = threading.Thread(target=lambda: [done.append((float(t), int(n))) for t, n in
                                                  (line.split() for line in workload.stdout or [])], daemon=True)
        reader.start()
        watcher = subprocess.Popen([sys.executable, "-m", "chipaudit", "watch", "--device", "cpu", "--duty", str(DUTY),
                                    "--interval", str(INTERVAL_S), "--db", str(Path(tmp) / "db.sqlite3"),
                                    "--events", str(events)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env=os.environ)
        try:
            deadline = time.time() + 120
            while time.time() < deadline and '"burst"' not in (events.read_text() if events.exists() else ""):
                time.sleep(0.5)  # the watcher's start-up (its sensors attaching) is not its steady cost
            periods: list[tuple[bool, float, float]] = []
            for i in range(2 * args.pairs):
                on = i % 2 == (1 if (i // 2) % 2 else 0)  # on, off, off, on, on, off, ...: no order bias
                pause(watcher.pid, stop=not on)
                t0 = time.time()
                time.sleep(PERIOD_S)
                periods.append((on, t0, time.time()))
            pause(watcher.pid, stop=False)
        finally:
            watcher.send_signal(signal.SIGTERM)
            watcher.wait(timeout=120)
            workload.kill()
            workload.wait()
        lines = [json.loads(line) for line in events.read_text().splitlines()]
    rates = []
    for on, t0, t1 in periods:
        products = sum(n for t, n in done if t0 + 1.0 < t <= t1)  # a second to settle after each switch
        rates.append((on, products / (t1 - t0 - 1.0)))
        print(f"{'with' if on else 'without'} the watcher: {rates[-1][1]:.1f} products/s", flush=True)
    ratios = sorted(dict(pair)[False] / dict(pair)[True] for pair in zip(rates[::2], rates[1::2], strict=True))
    print("pairs (without / with): " + ", ".join(f"{r:.3f}" for r in ratios))
    bursts = [e for e in lines if e["event"] == "burst"]
    busy = sum(e["busy_s"] for e in bursts)
    print(f"watcher: {len(bursts)} bursts, {sum(e['products'] for e in bursts)} products verified, "
          f"{busy:.2f} s busy; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"watch_slowdown: {median(ratios):.4f}")


if __name__ == "__main__":
    main()
