"""How often do the integrity and performance checks cry wolf on a healthy CPU?

Runs `chipaudit run --device cpu --only integrity --only performance --json ...` through the real CLI,
in a subprocess, at each level asked for: quick and standard over --seeds distinct seeds each, deep
over --deep-seeds (with a shortened burn-in and a small memory share, so that it ends in minutes).
The CPU has no fault: anything a run reports is a false alarm. Counted, per run:

- every finding of low severity or above (a failure or a warning; info findings are only listed);
- every check in error (a watchdog timeout, an exception);
- every check the level plans that did not run: skipped, or missing from the report, unless it cannot
  apply to a CPU at all (EXPECTED_SKIPS: TF32, an NVIDIA mode; a host-to-device link, when the device
  is the host);
- a run that wrote no complete report.

Last line: `false_alarms: N`, N = the sum over all runs (issue 12 asks for 0).

    python benchmarks/false_alarms.py [--seeds 10] [--levels quick,standard,deep] [--deep-seeds 1]
                                      [--seed-offset 0] [--burn-in-seconds 30] [--memory-share 0.005]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chipaudit.checks import select
from chipaudit.report.model import Level, Severity

SEEDS = 10
ONLY = ("integrity", "performance")
# Seeds per level start here, so that no two runs of the benchmark's levels share one.
FIRST_SEED = {Level.quick: 1000, Level.standard: 2000, Level.deep: 3000}
DEEP_BURN_IN_S = 30.0
DEEP_MEMORY_SHARE = 0.005  # of free RAM: about 100 MB on a 20 GB host, minutes of march patterns
RUN_TIMEOUT_S = 3 * 3600
# Checks that cannot apply to a CPU, whatever its health: their skip is no alarm.
EXPECTED_SKIPS = {
    "integrity.gemm.tf32": "TF32 is an NVIDIA tensor-core mode",
    "performance.gemm.tf32": "TF32 is an NVIDIA tensor-core mode",
    "performance.memory.transfer": "the device is the host",
}


def planned(level: Level) -> list[str]:
    return [c.id for c in select(list(ONLY)) if level in c.levels]


def alarms_of(report: dict, level: Level) -> tuple[list[str], list[str]]:
    """(alarms, notes) of one report: what counts, and the info findings that do not."""
    alarms, notes = [], []
    if not report.get("complete"):
        alarms.append("report incomplete")
    by_id = {c["id"]: c for c in report.get("checks", [])}
    for check_id in planned(level):
        check = by_id.get(check_id)
        if check is None:
            alarms.append(f"{check_id}: did not run")
        elif check["status"] == "error":
            alarms.append(f"{check_id}: error: {check.get('reason')}")
        elif check["status"] == "skipped" and check_id not in EXPECTED_SKIPS:
            alarms.append(f"{check_id}: skipped: {(check.get('reason') or '')[:300]}")
        elif check["status"] == "skipped" and EXPECTED_SKIPS[check_id] not in (check.get("reason") or ""):
            alarms.append(f"{check_id}: skipped for another reason: {(check.get('reason') or '')[:300]}")
    for finding in report.get("findings", []):
        line = f"{finding['check']}: {finding['severity']}: {finding['title']}"
        if Severity(finding["severity"]).rank >= Severity.low.rank:
            alarms.append(line + f" ({finding.get('detail', '')[:300]})")
        else:
            notes.append(line)
    return alarms, notes


def run_audit(level: Level, seed: int, folder: Path, burn_in_s: float | None, memory_share: float | None
              ) -> tuple[dict, float, int]:
    path = folder / f"{level.value}-{seed}.json"
    command = [sys.executable, "-m", "chipaudit", "run", "--device", "cpu", "--level", level.value,
               "--seed", str(seed), "--json", str(path), "--db", str(folder / "history.sqlite3")]
    command += [arg for prefix in ONLY for arg in ("--only", prefix)]
    if burn_in_s is not None:
        command += ["--burn-in-seconds", f"{burn_in_s:g}"]
    if memory_share is not None:
        command += ["--memory-share", f"{memory_share:g}"]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = -1
    elapsed = time.monotonic() - t0
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        report = {}
    return report, elapsed, code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=SEEDS, help="runs per level for quick and standard")
    parser.add_argument("--deep-seeds", type=int, default=1, help="runs of deep")
    parser.add_argument("--seed-offset", type=int, default=0, help="start each level's seeds this far on, to "
                        "extend an earlier run with new seeds")
    parser.add_argument("--levels", default="quick,standard,deep", help="comma-separated levels")
    parser.add_argument("--burn-in-seconds", type=float, default=DEEP_BURN_IN_S, help="deep's burn-in")
    parser.add_argument("--memory-share", type=float, default=DEEP_MEMORY_SHARE, help="deep's memory share")
    args = parser.parse_args()
    levels = [Level(name.strip()) for name in args.levels.split(",") if name.strip()]
    total = 0
    runs: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="false-alarms-") as tmp:
        folder = Path(tmp)
        for level in levels:
            deep = level is Level.deep
            count = args.deep_seeds if deep else args.seeds
            for i in range(count):
                seed = FIRST_SEED[level] + args.seed_offset + i
                report, elapsed, code = run_audit(level, seed, folder, args.burn_in_seconds if deep else None,
                                                  args.memory_share if deep else None)
                alarms, notes = alarms_of(report, level)
                if code not in (0, 1):
                    alarms.append(f"chipaudit exited with {code}")
                total += len(alarms)
                runs[level.value] = runs.get(level.value, 0) + 1
                checks = len(report.get("checks", []))
                print(f"{level.value:8s} seed {seed}: {elapsed:6.0f} s, {checks} checks, verdict "
                      f"{report.get('verdict', '-')}, {len(alarms)} alarm(s)"
                      + "".join(f"\n    ALARM {a}" for a in alarms) + "".join(f"\n    note  {n}" for n in notes),
                      flush=True)
    print("runs: " + ", ".join(f"{level} {n}" for level, n in runs.items()))
    print(f"false_alarms: {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
