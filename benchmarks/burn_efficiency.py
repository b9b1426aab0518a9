"""Burn-in throughput, every result verified, over the bench's measured peak in the same format.

For each format the burn-in runs on the device (its default formats, or --formats), in one process:
the bench's figure (performance.gemm.<format>: its best products, at the standard level's budget) and
the burn-in's verified throughput (integrity.burnin's loop for ROUND_S, one format at a time: the
device-side comparison of every result, the secret host checks, and on the CPU the host control, all
included) alternate in rounds, so that load from other processes and drift hit both alike. A format's
efficiency is the median burn-in rate over the median bench peak.

Last line: `burn_efficiency: X`, the lowest of the formats' (1.0: verification and rotation are free).
"""

from __future__ import annotations

import argparse
import os
import sys

from chipaudit.checks.base import CheckContext, Outcome
from chipaudit.checks.integrity import burnin
from chipaudit.checks.performance.micro import GemmThroughput
from chipaudit.devices import torchdev
from chipaudit.oracle.formats import FORMATS
from chipaudit.process.launch import HOST_BLAS
from chipaudit.report.model import Level
from chipaudit.stats import median

ROUNDS = 5
ROUND_S = 4.0


def peak_flops(device: str, fmt: str, seed: int) -> float:
    """The bench's figure, in FLOP/s."""
    out = GemmThroughput(fmt).run(CheckContext(device=device, level=Level.standard, seed=seed))
    (figure,) = out.measurements["figures"]
    return figure["value"] * 1e12


def burn_flops(ctx: CheckContext, prepared: burnin.BurnState) -> float:
    """The burn-in's verified rate in FLOP/s over one round, every overhead included."""
    lane = burnin.BurnState(prepared.fmt, prepared.n, prepared.pool)
    elapsed = burnin.burn(ctx, [lane], ROUND_S)
    assert lane.products == lane.exact and not lane.wrong and not lane.host_disagreements
    return 2.0 * lane.products * lane.n**3 / elapsed


def main() -> None:
    if any(os.environ.get(k) != v for k, v in HOST_BLAS.items()):  # as an audit's worker runs
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **HOST_BLAS})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--formats", help="comma-separated; default: the burn-in's own for the device")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    formats = args.formats.split(",") if args.formats else [f.name for f in burnin.burn_formats(args.device, {})]
    worst = float("inf")
    with torchdev.strict_precision():
        for name in formats:
            assert name in FORMATS, name
            ctx = CheckContext(device=args.device, level=Level.quick, seed=1, params={"burn_in_formats": [name]})
            out = Outcome()
            (lane,) = burnin.BurnInCheck()._lanes(ctx, out)
            assert not out.findings, out.findings
            peaks, burns = [], []
            for i in range(args.rounds):
                order = (peak_flops, burn_flops) if i % 2 == 0 else (burn_flops, peak_flops)
                for measure in order:
                    if measure is peak_flops:
                        peaks.append(peak_flops(args.device, name, seed=i))
                    else:
                        burns.append(burn_flops(ctx, lane))
                print(f"{name} round {i + 1} ({lane.n}^3 products): bench peak {peaks[-1] / 1e12:.4g} TFLOP/s, burn-in "
                      f"{burns[-1] / 1e12:.4g} TFLOP/s verified, ratio {burns[-1] / peaks[-1]:.3f}", flush=True)
            efficiency = median(burns) / median(peaks)
            print(f"{name}: burn-in {median(burns) / 1e12:.4g} TFLOP/s over the bench's {median(peaks) / 1e12:.4g} "
                  f"TFLOP/s: {efficiency:.3f}", flush=True)
            worst = min(worst, efficiency)
    print(f"burn_efficiency: {worst:.3f}")


if __name__ == "__main__":
    main()
