"""Burn-in throughput with every result verified, over raw matrix-product throughput, on the CPU.

Both run in one process on the same operands and the same size (the size the burn-in itself chooses):
raw is back-to-back torch.mm; verified is integrity.burnin's loop (device-side comparison of every result
with its golden result, secret host readbacks, throughput windows). The two alternate in short rounds,
in alternating order, so that load from other processes and drift hit both alike; the figure is the
median of the per-round ratios.

Last line: `burn_efficiency: X` (1.0 = verification is free).
"""

from __future__ import annotations

import statistics
import time

import torch

from chipaudit.checks.base import CheckContext
from chipaudit.checks.integrity import burnin
from chipaudit.oracle.formats import FORMATS
from chipaudit.report.model import Level

ROUNDS = 9
ROUND_S = 2.0


def raw_rate(pair: burnin.Pair, seconds: float) -> float:
    """Products per second, each result held until the next one exists, as any use of it (and the
    burn-in) holds it: discarding it at once changes how the allocator reuses memory."""
    products = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        c = torch.mm(pair.a, pair.b)
        products += 1
    del c
    return products / (time.perf_counter() - t0)


def main() -> None:
    fmt = FORMATS["fp32"]
    ctx = CheckContext(device="cpu", level=Level.quick, seed=1)
    n = burnin.choose_size("cpu", fmt)
    pool, bad = burnin.BurnInCheck()._pool(ctx, fmt, n)
    assert bad is None, bad
    ratios = []
    for i in range(ROUNDS):
        state = burnin.BurnState()
        if i % 2:
            elapsed = burnin.burn(ctx, pool, fmt, n, ROUND_S, state)
            raw = raw_rate(pool[i % len(pool)], ROUND_S)
        else:
            raw = raw_rate(pool[i % len(pool)], ROUND_S)
            elapsed = burnin.burn(ctx, pool, fmt, n, ROUND_S, state)
        assert state.products == state.exact and not state.wrong
        verified = state.products / elapsed
        ratios.append(verified / raw)
        print(f"round {i + 1}: n={n}, raw {raw:.2f} products/s, verified {verified:.2f} products/s "
              f"({state.host_checks} host readbacks), ratio {verified / raw:.3f}", flush=True)
    print(f"burn_efficiency: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
