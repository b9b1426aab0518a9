"""Throughput of verified fp32 GEMM over unverified GEMM on the CPU, at n = 2048 and 4096.

Verified means exactly what integrity.gemm does with a product too large to recompute, through the
check's own functions in the check's order: operands drawn (gemm.draw_operands) and uploaded, the
product timed as the check times it (gemm.product_on_device), then everything the host does once the
device has answered (gemm.verify_result): read the result back and check it with Freivalds projections
and secretly sampled rows, the operand norms included (nothing is prepared before the device answers:
the passes over A and B that the projections make gather them, oracle/matmul._Pass). Each iteration
times the product and its verification separately, so that noise from other processes on a shared
machine hits both figures alike; the ratio is median(product) / (median(product) + median(verification)).
The floor is one read of A, B and C per product. The load average before and after is printed, since
other processes on the machine slow both figures.

Last line: `verify_overhead_ratio: X`, the lower of the two ratios (1.0 = verification is free).
"""

from __future__ import annotations

import os
import time

import numpy as np

from chipaudit.checks.integrity import gemm
from chipaudit.devices import torchdev
from chipaudit.oracle.formats import FORMATS
from chipaudit.stats import median

REPEATS = {2048: 9, 4096: 5}
DEVICE = "cpu"


def ratio(n: int) -> float:
    fmt = FORMATS["fp32"]
    case = gemm.Case("mm", 1, n, n, n, f"training {n}")
    ops = gemm.draw_operands(case, fmt, np.random.default_rng(n), "normal", exact=False)
    tensors = ops.upload(DEVICE)
    gemm.product_on_device(ops, tensors, DEVICE)  # warm-up
    product, check = [], []
    for _ in range(REPEATS[n]):
        c, seconds = gemm.product_on_device(ops, tensors, DEVICE)
        torchdev.synchronize(DEVICE)
        t0 = time.perf_counter()
        v = gemm.verify_result(ops, c, exact=False)
        check.append(time.perf_counter() - t0)
        assert v.ok and v.method in ("projection", "rows"), v
        product.append(seconds)
    p, v = median(product), median(check)
    r = p / (p + v)
    print(f"n={n}: product {p * 1e3:.1f} ms, verification {v * 1e3:.1f} ms, ratio {r:.3f}")
    return r


if __name__ == "__main__":
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    worst = min(ratio(2048), ratio(4096))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"verify_overhead_ratio: {worst:.3f}")
