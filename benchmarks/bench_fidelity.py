"""Does `chipaudit bench` report what the device really delivers?

1. Runs `chipaudit bench --device cpu --json FILE` (the whole benchmark, or the checks named with
   --only) and reports its wall time and its fp32 matrix-product figure.
2. Fidelity: the bench's fp32 check (the same code the bench's worker runs: size ladder, rotated
   inputs, warm-up, median of repeats) and a plain `torch.matmul` loop on the same shape, timed the
   same way (warm-up, then the median of per-call times on fixed operands), measured alternately in
   this process, ROUNDS times, the order swapped each round. On a machine other work shares, the load
   changes within seconds; alternating puts both measurements under the same load.

Last line: `bench_fidelity: X`, X = median over rounds of (check figure / plain-loop figure): a ratio,
1.0 is perfect agreement; the issue asks for 0.9 to 1.1.

    python benchmarks/bench_fidelity.py                       # full bench, then the rounds
    python benchmarks/bench_fidelity.py --only gemm.fp32       # the fp32 check only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from chipaudit.checks.base import CheckContext
from chipaudit.checks.performance.micro import GemmThroughput
from chipaudit.report.model import Level

WARMUP = 3
REPEATS = 15
ROUNDS = 6


def plain_loop_tflops(n: int) -> float:
    """Median TFLOP/s of torch.matmul calls on fixed random fp32 operands: no rotation, no harness."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(WARMUP):
        torch.matmul(a, b)
    rates = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        rates.append(2.0 * n**3 / (time.perf_counter() - t0) / 1e12)
    return statistics.median(rates)


def check_figure(seed: int) -> dict[str, Any]:
    """The bench's fp32 figure, from the bench's own check at its standard level."""
    out = GemmThroughput("fp32").run(CheckContext(device="cpu", level=Level.standard, seed=seed))
    return out.measurements["figures"][0]


def bench(only: list[str] | None) -> tuple[float, int, dict[str, Any]]:
    """(wall seconds, exit status, the fp32 figure) of one `chipaudit bench` run."""
    exe = shutil.which("chipaudit")
    argv = [exe] if exe else [sys.executable, "-c", "from chipaudit.cli import main; main()"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b.json"
        command = [*argv, "bench", "--device", "cpu", "--json", str(path)]
        command += [x for p in only or [] for x in ("--only", p)]
        env = {**os.environ, "XDG_DATA_HOME": tmp}  # keep benchmark runs out of the user's history
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if not path.exists():
            print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
            raise SystemExit(1)
        report = json.loads(path.read_text())
    figure = next(f for c in report["checks"] for f in c["measurements"].get("figures", [])
                  if f["metric"] == "gemm.fp32.tflops")
    return wall, done.returncode, figure


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=None,
                        help="bench only these performance checks (gemm.fp32 is always added)")
    args = parser.parse_args()
    only = sorted({*args.only, "gemm.fp32"}) if args.only else None
    wall, code, first = bench(only)
    n0 = first["details"]["shape"][0]
    print(f"bench wall time: {wall:.1f} s ({'subset ' + ' '.join(only) if only else 'full bench'}), exit {code}; "
          f"its fp32 figure {first['value']:.4g} TFLOP/s at n={n0} (noise {first['noise']:.1%}), "
          f"a plain loop right after: {plain_loop_tflops(n0):.4g} TFLOP/s")
    ratios = []
    for i in range(ROUNDS):
        if i % 2:
            plain_first = plain_loop_tflops(n0)
            figure = check_figure(seed=i)
        else:
            figure = check_figure(seed=i)
            plain_first = None
        n = figure["details"]["shape"][0]
        plain = plain_first if plain_first is not None and n == n0 else plain_loop_tflops(n)
        ratios.append(figure["value"] / plain)
        print(f"round {i}: check {figure['value']:.4g} TFLOP/s (noise {figure['noise']:.1%}, {figure['repeats']} "
              f"repeats) vs plain loop {plain:.4g} TFLOP/s at n={n}: ratio {ratios[-1]:.3f}")
    print(f"bench_seconds: {wall:.1f}")
    print(f"bench_fidelity: {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
