"""How often do the behaviour probes cry wolf on an honest device?

Runs every behaviour check that applies (at --level, quick by default) RUNS times on the CPU, which
has no trojan, each run with a new seed. Every other run shares the machine with a competing CPU load
in another process, alternately steady (one core spinning) and bursty (both cores, on and off every
fraction of a second, the worst case for timing comparisons). Every run also shares it with an
unrelated neighbour that talks TCP over loopback and writes files all along, as any busy host has:
the sensors must tell the device's processes from the rest of the machine. A false alarm is a
finding of medium severity or above.

A run counts only if every check that applies to the CPU ran to its end, in every one of its worlds.
A run in which one of them raised (an error), declared itself not applicable, or left a world out is
a FAILED run, printed with the reason: zero alarms from checks that did not run would claim a quiet
device that was never watched. A sensor that did not run is named in the run's line. Checks that
cannot apply to a CPU at all (behaviour.cotenants: a CPU has no device files) are named at the start
and are not expected to run.

Last line: `behaviour_false_alarms: N`, N = the number of findings of medium severity or above over
all runs (issue #3 asks for 0 over at least 20 runs); or, when any run failed or no check applies,
`behaviour_false_alarms: FAILED ...` with the counts, and the exit status is 1.

    python benchmarks/behaviour_false_alarms.py [--runs 20] [--level quick] [--only behaviour.clock]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

from chipaudit.checks import select
from chipaudit.checks.base import Check, CheckContext, NotApplicable, derive_seed
from chipaudit.report.model import Level, Severity

RUNS = 20
# A competing load, in another process. Steady: one core busy. Bursty: two threads, busy for 0.2 to
# 1.5 s, idle for 0.2 to 1.5 s, at random: load that changes faster than a probe's rounds.
LOADS = {
    "steady": "while True:\n    pass",
    "bursty": """
import random, threading, time
def burn():
    while True:
        end = time.monotonic() + random.uniform(0.2, 1.5)
        while time.monotonic() < end:
            pass
        time.sleep(random.uniform(0.2, 1.5))
for _ in range(2):
    threading.Thread(target=burn, daemon=True).start()
while True:
    time.sleep(60)
""",
}


# An unrelated program on the same host: a TCP echo over loopback and a file rewritten, ten times a second.
NEIGHBOUR = """
import os, socket, sys, threading, time
server = socket.create_server(("127.0.0.1", 0))
port = server.getsockname()[1]
def echo():
    while True:
        conn, _ = server.accept()
        with conn:
            conn.sendall(conn.recv(64))
threading.Thread(target=echo, daemon=True).start()
folder = sys.argv[1]
while True:
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(b"ping")
        c.recv(64)
    with open(os.path.join(folder, "state"), "w") as f:
        f.write(str(time.time()))
    time.sleep(0.1)
"""


def load_for(run: int) -> str | None:
    """None for even runs; odd runs alternate steady and bursty load."""
    return None if run % 2 == 0 else ("steady", "bursty")[(run // 2) % 2]


def run_checks(checks: list[Check], run: int, level: Level) -> tuple[int, list[str], list[str]]:
    """One run: its alarms, a note per check, and why each check that did not run did not."""
    alarms, notes, missed = 0, [], []
    for check in checks:
        ctx = CheckContext(device="cpu", level=level, seed=derive_seed(run, check.id))
        started = time.monotonic()
        name = check.id.removeprefix("behaviour.")
        try:
            outcome = check.run(ctx)
        except NotApplicable as e:
            missed.append(f"{name} skipped: {e}")
            continue
        except Exception as e:  # any failure of a check is a run that did not count
            missed.append(f"{name} error: {type(e).__name__}: {e}")
            continue
        missed += [f"{name} world '{w}' not run: {why}"
                   for w, why in outcome.coverage.get("worlds_not_run", {}).items()]
        blind = [line for line in outcome.coverage.get("limits", []) if line.startswith("sensor ")]
        serious = [f for f in outcome.findings if f.severity.rank >= Severity.medium.rank]
        alarms += len(serious)
        notes.append(f"{name} {time.monotonic() - started:.0f}s"
                     + "".join(f" ({line})" for line in blind)
                     + "".join(f" [{f.severity.value}: {f.title}]" for f in serious))
    return alarms, notes, missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--level", type=Level, default=Level.quick)
    parser.add_argument("--only", action="append", default=None, help="check id or prefix (default: behaviour)")
    args = parser.parse_args()
    selected = [c for c in select(args.only or ["behaviour"]) if args.level in c.levels]
    checks = [c for c in selected if c.is_supported("cpu") is None]
    for c in selected:
        if c not in checks:
            print(f"not for a CPU, not expected to run: {c.id} ({c.is_supported('cpu')})")
    if not checks:
        print("behaviour_false_alarms: FAILED: no selected check applies to the CPU, nothing was watched")
        return 1
    with tempfile.TemporaryDirectory(prefix="neighbour-") as folder:
        neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, folder])
        try:
            alarms, failed = runs(checks, args.runs, args.level)
        finally:
            neighbour.kill()
            neighbour.wait()
    if failed:
        print(f"behaviour_false_alarms: FAILED: {failed} of {args.runs} runs did not run every check "
              f"({alarms} alarms over all runs)")
        return 1
    print(f"behaviour_false_alarms: {alarms}")
    return 0


def runs(checks: list[Check], count: int, level: Level) -> tuple[int, int]:
    """(alarms, runs that did not run every check) over `count` runs."""
    alarms, failed = 0, 0
    for run in range(count):
        kind = load_for(run)
        competitor = subprocess.Popen([sys.executable, "-c", LOADS[kind]]) if kind else None
        try:
            t0 = time.monotonic()
            found, notes, missed = run_checks(checks, run, level)
            alarms += found
            failed += bool(missed)
            print(f"run {run + 1:2d}/{count} load={kind or 'none':6s} {time.monotonic() - t0:5.0f}s  "
                  + ", ".join(notes) + "".join(f"  FAILED: {m}" for m in missed), flush=True)
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
    return alarms, failed


if __name__ == "__main__":
    sys.exit(main())
