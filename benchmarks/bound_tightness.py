"""How close is the integrity oracle's error bound to the honest error, per number format?

For each format, products of m = n = 64 over inner dimensions k from 16 to 4096 (the gemm check's
fp8 cases reach k = 256 at every level, its other formats far beyond) are drawn as integrity.gemm
draws them (gemm.draw_operands, every operand distribution, --seeds seeds), computed on the device by
the check's own path (products.compute) and judged by the check's own verification
(gemm.verify_result), with the bound of the device's class (formats.as_computed_on). Each product
gives its worst |error| / bound: above 1 on an honest device is a false alarm; far below 1 leaves
room for a fault to hide (issue 13 asks for the bound within about 20x of the honest error, a ratio
of 0.05 or more). A product that comes back exact has ratio 0: no bound can be within any factor of
a zero error, so the share of exact products is printed apart.

Per format and k: products, false alarms, exact share, and the ratio's minimum, median, 90th
percentile and maximum over the inexact products. Last line: `bound_false_alarms: N`.

    python benchmarks/bound_tightness.py [--device cpu] [--seeds 10] [--formats fp32,fp16,bf16,fp64,fp8_e4m3]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from chipaudit.checks.integrity import gemm
from chipaudit.checks.integrity.products import compute
from chipaudit.devices import torchdev
from chipaudit.oracle.formats import FORMATS, as_computed_on

K_VALUES = (16, 64, 256, 1024, 4096)
SIDE = 64
SEEDS = 10
FORMAT_NAMES = ("fp32", "fp16", "bf16", "fp64", "fp8_e4m3")


def ratios(fmt_name: str, device: str, k: int, seeds: int) -> tuple[list[float], int]:
    """(worst error-to-bound ratio of each product, false alarms) for one format and k."""
    fmt = as_computed_on(FORMATS[fmt_name], device)
    case = gemm.Case("mm", 1, SIDE, k, SIDE, f"bound tightness k={k}")
    out: list[float] = []
    alarms = 0
    for seed in range(seeds):
        for dist in gemm.DISTRIBUTIONS:
            ops = gemm.draw_operands(case, fmt, np.random.default_rng([seed, k]), dist, exact=False)
            result = compute(fmt, "mm", ops.upload(device))
            torchdev.synchronize(device)
            v = gemm.verify_result(ops, result, exact=False)
            alarms += not v.ok
            out.append(v.max_ratio if v.ok else float("inf"))
    return out, alarms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=SEEDS, help="seeds per format, k and distribution")
    parser.add_argument("--formats", default=",".join(FORMAT_NAMES), help="comma-separated formats")
    args = parser.parse_args()
    total = 0
    print(f"{'format':9s} {'k':>5s} {'products':>8s} {'alarms':>6s} {'exact':>6s} "
          f"{'min':>7s} {'median':>7s} {'p90':>7s} {'max':>7s}")
    with torchdev.strict_precision():
        for name in args.formats.split(","):
            for k in K_VALUES:
                values, alarms = ratios(name, args.device, k, args.seeds)
                total += alarms
                inexact = np.array([r for r in values if r > 0])
                exact_share = 1 - inexact.size / len(values)
                stats = (np.quantile(inexact, [0, 0.5, 0.9, 1]) if inexact.size else [np.nan] * 4)
                print(f"{name:9s} {k:5d} {len(values):8d} {alarms:6d} {exact_share:6.0%} "
                      + " ".join(f"{s:7.3f}" for s in stats), flush=True)
    print(f"bound_false_alarms: {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
