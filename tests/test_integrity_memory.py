"""The device memory test: every pattern catches a planted stuck bit, the host readback catches a device
that misreports its comparisons, and the CPU is sized to the process's limits."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest
import torch

from chipaudit.checks.base import CheckContext
from chipaudit.checks.integrity import memory
from chipaudit.report.model import Level, Severity

WORDS = 4096
BLOCK = 1024
STUCK_WORD = 2500


class StuckBit(memory.Region):
    """Memory with one cell stuck at 0 or 1: whatever is written, that bit keeps its value."""

    def __init__(self, word: int, bit: int, value: int):
        super().__init__([torch.zeros(WORDS, dtype=torch.int32)], BLOCK)
        self.word, self.mask, self.value = word, (1 << bit) if bit < 31 else -(1 << 31), value

    def write(self, block: int, words: torch.Tensor) -> None:
        super().write(block, words)
        start = self.word_offset(block)
        if start <= self.word < start + self.length(block):
            cell = self.view(block)[self.word - start : self.word - start + 1]
            cell.copy_(cell | self.mask if self.value else cell & ~self.mask)


class LyingComparator(memory.Region):
    """Memory that loses a word, on a device whose own comparison always says 'equal'."""

    def write(self, block: int, words: torch.Tensor) -> None:
        super().write(block, words)
        self.view(block)[7] ^= 1

    def matches(self, block: int, words: torch.Tensor) -> bool:
        return True


PATTERNS = memory.patterns(seed=1234)


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.name)
@pytest.mark.parametrize(("bit", "value"), [(0, 0), (13, 1), (31, 0), (31, 1)])
def test_every_pattern_catches_a_stuck_bit(pattern: memory.Pattern, bit: int, value: int) -> None:
    region = StuckBit(STUCK_WORD, bit, value)
    result = memory.MarchResult()
    memory.run_pattern(region, pattern, result, window_blocks=len(region.blocks))
    assert result.error_count[pattern.name] >= 1
    first = result.errors[0]
    assert first.offset == STUCK_WORD * memory.WORD
    assert first.address == region.chunks[0].data_ptr() + STUCK_WORD * memory.WORD
    assert (first.expected ^ first.observed) & 0xFFFFFFFF == 1 << bit
    assert first.as_dict()["differing_bits"] == f"0x{1 << bit:08x}"


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.name)
def test_healthy_memory_passes_every_pattern(pattern: memory.Pattern) -> None:
    region = memory.Region([torch.empty(WORDS, dtype=torch.int32), torch.empty(WORDS // 2, dtype=torch.int32)], BLOCK)
    result = memory.MarchResult()
    memory.run_pattern(region, pattern, result, window_blocks=2)
    assert not result.error_count and result.words_moved > 0


def test_march_c_minus_order_and_operations() -> None:
    assert len(PATTERNS) == 14 and len({p.name for p in PATTERNS}) == 14
    march = PATTERNS[0]
    assert march.name == "March C-"
    assert [p.order for p in march.passes] == ["up", "up", "up", "down", "down", "up"]
    assert [[kind for kind, _ in p.ops] for p in march.passes] == [["w"], ["r", "w"], ["r", "w"], ["r", "w"],
                                                                  ["r", "w"], ["r"]]


def test_host_readback_catches_a_device_that_misreports_its_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "HOST_SAMPLES", 64)  # sample every block
    region = LyingComparator([torch.empty(WORDS, dtype=torch.int32)], BLOCK)
    result = memory.MarchResult()
    memory.run_pattern(region, PATTERNS[0], result, window_blocks=4)
    assert result.host_disagreements > 0
    assert result.errors and all(e.seen_by == "host" for e in result.errors)


def test_cgroup_limits_v1_and_v2(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    (v2 / "user" / "job").mkdir(parents=True)
    (v2 / "user" / "memory.max").write_text("1000000\n")
    (v2 / "user" / "memory.current").write_text("400000\n")
    (v2 / "user" / "job" / "memory.max").write_text("max\n")
    (v2 / "user" / "job" / "memory.current").write_text("1\n")
    membership = tmp_path / "cgroup"
    membership.write_text("0::/user/job\n")
    assert memory.cgroup_headroom(membership, v2) == 600000
    v1 = tmp_path / "v1"
    (v1 / "memory" / "a").mkdir(parents=True)
    (v1 / "memory" / "a" / "memory.limit_in_bytes").write_text("5000\n")
    (v1 / "memory" / "a" / "memory.usage_in_bytes").write_text("1000\n")
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # unlimited
    membership.write_text("4:memory:/a\n3:cpu:/a\n")
    assert memory.cgroup_headroom(membership, v1) == 4000
    membership.write_text("3:cpu:/a\n")
    assert memory.cgroup_headroom(membership, v1) is None


def test_cpu_is_sized_to_the_address_space_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    real = resource.getrlimit

    def limited(which: int) -> tuple[int, int]:
        if which == resource.RLIMIT_AS:
            return memory.psutil.Process().memory_info().vms + (300 << 20), resource.RLIM_INFINITY
        return real(which)

    monkeypatch.setattr(memory.resource, "getrlimit", limited)
    free, source = memory.cpu_headroom()
    assert source == "RLIMIT_AS" and abs(free - (300 << 20)) < 64 << 20


def test_memory_check_on_the_cpu() -> None:
    out = memory.MemoryCheck().run(CheckContext(device="cpu", level=Level.quick, seed=5,
                                                params={"memory_share": 0.0}))
    assert not [f for f in out.findings if f.severity.rank >= Severity.medium.rank]
    assert out.coverage["bytes_tested"] >= memory.MIN_BYTES
    assert out.coverage["host_blocks_checked"] > 0
    assert out.measurements["bandwidth_bytes_per_s"] > 0 and out.measurements["errors"] == 0
    assert out.coverage["free_limited_by"]


def test_deep_takes_ninety_percent() -> None:
    assert memory.MEMORY_SHARE[Level.deep] >= 0.9 and memory.TIME_SHARE[Level.deep] is None
