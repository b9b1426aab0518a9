"""The memory test keeps to its time budget on a host whose rate falls after the probe: it stops
between blocks, reports what it did not run, and never reaches the watchdog's limit (seen on a shared
2-core host: 'did not finish within 300 s (watchdog)' at level standard)."""

from __future__ import annotations

import time

import pytest
import torch

from chipaudit.checks.base import CheckContext
from chipaudit.checks.integrity import memory
from chipaudit.report.model import Level, Severity


class SlowRegion(memory.Region):
    def write(self, block: int, words: torch.Tensor) -> None:
        time.sleep(0.01)
        super().write(block, words)


def test_a_pattern_stops_between_blocks_at_its_deadline() -> None:
    region = SlowRegion([torch.empty(64 * 1024, dtype=torch.int32)], 1024)
    result = memory.MarchResult()
    t0 = time.perf_counter()
    assert not memory.run_pattern(region, memory.patterns(1)[0], result, 4, deadline=t0 + 0.1)
    assert time.perf_counter() - t0 < 0.5  # the whole March C- would take about 3 s
    assert memory.run_pattern(region, memory.patterns(1)[0], memory.MarchResult(), 4)


def test_the_check_keeps_to_its_budget_when_the_probe_promised_too_much(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory.MemoryCheck, "timeout_s", {**memory.MemoryCheck.timeout_s, Level.standard: 2.0})
    monkeypatch.setattr(memory.MemoryCheck, "_probe", lambda self, device, block_bytes: 1e13)
    monkeypatch.setattr(memory, "Region", SlowRegion)  # the host slows after the probe, whatever its load
    ctx = CheckContext(device="cpu", level=Level.standard, seed=1, params={"memory_share": 0.001})
    t0 = time.perf_counter()
    out = memory.MemoryCheck().run(ctx)
    assert time.perf_counter() - t0 < 2.0  # the budget is half the limit, 1 s, plus one block
    assert [f.severity for f in out.findings] == [Severity.info]
    assert out.coverage["pattern_cut_short"] or out.coverage["patterns_not_run"]
    assert out.measurements["errors"] == 0
