"""Throughput of verified fp32 GEMM over unverified GEMM on the CPU, at n = 2048 and 4096.

Verified means exactly what integrity.gemm does with a product too large to recompute: bring the result
to the host, then check it with Freivalds projections and secretly sampled rows. Each iteration times
the product and its verification separately, so that noise from other processes on a shared machine
hits both figures alike; the ratio is median(product) / (median(product) + median(verification)).

Last line: `verify_overhead_ratio: X`, the lower of the two ratios (1.0 = verification is free).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from chipaudit.checks.integrity.gemm import draw, to_host, verify_product
from chipaudit.oracle.formats import FORMATS
from chipaudit.oracle.matmul import OperandNorms

REPEATS = {2048: 9, 4096: 5}


def ratio(n: int) -> float:
    fmt = FORMATS["fp32"]
    rng = np.random.default_rng(n)
    a, b = (draw(rng, "normal", (1, n, n), fmt) for _ in range(2))
    norms = OperandNorms.of(a, b)  # properties of the inputs, known before the device answers
    ta, tb = (torch.from_numpy(x[0].astype(np.float32)) for x in (a, b))
    torch.mm(ta, tb)  # warm-up
    product, check = [], []
    for _ in range(REPEATS[n]):
        t0 = time.perf_counter()
        c = torch.mm(ta, tb)
        t1 = time.perf_counter()
        assert verify_product(a, b, to_host(c)[None], fmt, norms=norms).ok
        t2 = time.perf_counter()
        product.append(t1 - t0)
        check.append(t2 - t1)
    p, v = statistics.median(product), statistics.median(check)
    r = p / (p + v)
    print(f"n={n}: product {p * 1e3:.1f} ms, verification {v * 1e3:.1f} ms, ratio {r:.3f}")
    return r


if __name__ == "__main__":
    print(f"verify_overhead_ratio: {min(ratio(2048), ratio(4096)):.3f}")
