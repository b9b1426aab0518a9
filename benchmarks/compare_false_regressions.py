"""Does `chipaudit compare` call two back-to-back benches of one healthy machine a regression?

Runs `chipaudit bench --device cpu --level LEVEL --json ...` twice in a row, through the real CLI in
subprocesses, compares the pair with `chipaudit compare A B --json ...`, and repeats for --pairs pairs.
Nothing changed between the two runs of a pair, so every figure the comparison calls a regression
is a false one, and so is every check verdict it calls worse. A pair that could not be compared (a
bench or the comparison that wrote nothing) counts as one, so that a broken run is never a pass.
The whole level is benched (no --only): the false alarms of interest are those of every figure the
level measures. The history store goes to a temporary folder, not the user's.

Last line: `compare_false_regressions: N`, N = the sum over all pairs (issue 14 asks for 0).

    python benchmarks/compare_false_regressions.py [--pairs 5] [--level quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PAIRS = 5
RUN_TIMEOUT_S = 3600


def chipaudit(args: list[str], env: dict[str, str]) -> tuple[int, float]:
    t0 = time.monotonic()
    try:
        code = subprocess.run([sys.executable, "-m", "chipaudit", *args], capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S, env=env).returncode
    except subprocess.TimeoutExpired:
        code = -1
    return code, time.monotonic() - t0


def read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe(row: dict[str, Any]) -> str:
    ref, new = row["columns"][0], row["columns"][1]
    if new.get("ratio") is None:
        return f"{row['key']}: not compared"
    return (f"{row['key']}: x{new['ratio']:.3f} (noise {ref.get('noise', 0):.1%} / {new.get('noise', 0):.1%}, "
            f"threshold {new.get('threshold', 0):.1%}, p {new.get('p_value')}) {new.get('change')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=PAIRS, help="pairs of back-to-back benches")
    parser.add_argument("--level", default="quick", choices=("quick", "standard", "deep"))
    args = parser.parse_args()
    total = 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="compare-false-regressions-") as tmp:
        folder = Path(tmp)
        env = {**os.environ, "XDG_DATA_HOME": str(folder / "data")}
        for pair in range(args.pairs):
            paths = [folder / f"pair{pair}-{side}.json" for side in "ab"]
            runs = [chipaudit(["bench", "--device", "cpu", "--level", args.level, "--json", str(p)], env)
                    for p in paths]
            verdict = folder / f"pair{pair}-compare.json"
            code, _ = chipaudit(["compare", *map(str, paths), "--json", str(verdict)], env)
            comparison = read(verdict)
            summary = comparison.get("summary")
            times = ", ".join(f"bench {c} in {s:.0f} s" for c, s in runs)
            if not isinstance(summary, dict):
                total += 1
                print(f"pair {pair}: {times}; no comparison (compare exited {code}): counted as 1", flush=True)
                continue
            false = int(summary.get("regressions", 0)) + int(summary.get("worse_checks", 0))
            total += false
            print(f"pair {pair}: {times}; compare exited {code}; {summary.get('regressions')} figure(s) "
                  f"worse, {summary.get('improvements')} better, {summary.get('worse_checks')} check(s) worse"
                  + "".join(f"\n    {describe(row)}" for row in comparison.get("figures", [])), flush=True)
    print(f"pairs: {args.pairs} at level {args.level}, {time.monotonic() - started:.0f} s in all")
    print(f"compare_false_regressions: {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
