"""Device memory test: classic RAM test patterns over a level-dependent share of free device memory.

Threat: memory that does not hold what was written: stuck or weak bits, coupling between cells, broken
address lines that alias two locations, and corruption that a result checksum of one computation would
blame on the arithmetic. A model's weights sit in this memory for months.

Method (memtest86 and cuda_memtest's patterns, as device tensor operations): the memory under test is
allocated as 32-bit words in chunks and walked in blocks. Each pattern is a march: a sequence of passes,
each over the blocks in ascending or descending order, each pass reading (comparing with the expected
words) and writing:
- March C-: up(w0); up(r0,w1); up(r1,w0); down(r0,w1); down(r1,w0); up(r0) (van de Goor, 1991);
- moving inversions with ones and zeros, with each of the eight walking 8-bit patterns, and with a
  seeded random word: up(w p); up(r p, w ~p); down(r ~p, w p);
- walking ones: each of the 32 single-bit words written and read back, over a window at the start of
  the region (a data-line test: every bit of a word alone);
- address in address: every word holds its own index, then its complement (address lines);
- seeded random data: a random block, varied per block, then its complement.
Block order is the address order; within a block the device writes in parallel, so the march order
holds per block, not per word. The device compares each block with the expected block itself (moving
every byte to the host would cost more than the test); in addition, blocks chosen with a secret random
seed are read back to the host after each pass and compared there, so a device that misreports its own
comparisons is caught with the probability of the sample. Every error is recorded with its address,
expected and observed word.

Size: share of free memory per level (MEMORY_SHARE; deep >= 90%; the audit's `memory_share` parameter,
`chipaudit run --memory-share`, replaces it, e.g. for a short deep run), of the device's free memory as its
driver reports it, or on the CPU of the process's limits: the smallest of available RAM, the cgroup's
memory limit less its usage, and RLIMIT_AS / RLIMIT_DATA less what the process already maps. Smoke, quick and
standard also stop where the estimated time would exceed a share of the time limit.

Pass: every word read back as written, the host samples agreeing.
Fail (high): any word wrong (its address, expected and observed value, and the bits that differ are
reported), or the host readback disagreeing with the device's own comparison.

Cannot see: memory outside the allocation (held by the driver, other processes, or reserved); faults
that need a specific timing or temperature not reached here (run deep, after the burn-in); errors that
ECC corrects silently (the corrected counts are a driver counter, read elsewhere).
"""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import psutil
import torch

from chipaudit.checks.base import ALL_LEVELS, Check, CheckContext, NotApplicable, Outcome
from chipaudit.devices import torchdev
from chipaudit.report.model import Category, Finding, Level, Severity

# Smoke tests a slice: on an 80 GB device 0.001 is 80 MB, seconds of marching at device bandwidth.
MEMORY_SHARE: dict[Level, float] = {Level.smoke: 0.001, Level.quick: 0.01, Level.standard: 0.25, Level.deep: 0.90}
# Smoke, quick and standard size the region so that the estimated run time is this share of the time
# limit, and stop before a pattern that would start after it (the rate of a shared host can fall mid-run).
TIME_SHARE: dict[Level, float | None] = {Level.smoke: 0.05, Level.quick: 0.1, Level.standard: 0.5, Level.deep: None}
PROBE_S = 0.25
MIN_BYTES = 16 << 20
CHUNK_BYTES = 1 << 30  # allocated in chunks: one huge allocation fails on fragmented device memory
BLOCK_BYTES = {"cpu": 4 << 20}  # cache-sized on the CPU
DEVICE_BLOCK_BYTES = 256 << 20  # large enough on an accelerator to hide launch and sync latency
WALKING_WINDOW_BYTES = 16 << 20  # data lines: every bit of a word alone, over 4 million words
HOST_SAMPLES = 2  # blocks per pass read back to the host and compared there
MAX_RECORDED_ERRORS = 32
WORD = 4
ALL_ONES = -1  # 0xFFFFFFFF as int32
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _signed(word: int) -> int:
    """A 32-bit pattern as the int32 that holds it."""
    word &= 0xFFFFFFFF
    return word - (1 << 32) if word >= 1 << 31 else word


# ----- expected contents -----

class Words:
    """What a block must hold: built on the device for the device's comparison, and on the host
    for the sampled readbacks."""

    def device(self, region: Region, block: int) -> torch.Tensor:
        raise NotImplementedError

    def host(self, region: Region, block: int) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Words):
    word: int

    def device(self, region: Region, block: int) -> torch.Tensor:
        return region.constant(self.word, region.length(block))

    def host(self, region: Region, block: int) -> np.ndarray:
        return np.full(region.length(block), self.word, dtype=np.int32)

    def describe(self) -> str:
        return f"0x{self.word & 0xFFFFFFFF:08x}"


@dataclass(frozen=True)
class OwnAddress(Words):
    """Each word holds the low 31 bits of its own index in the region (complemented on request)."""

    complement: bool = False

    def _index(self, region: Region, block: int, device: str) -> torch.Tensor:
        start = region.word_offset(block)
        return torch.arange(start, start + region.length(block), dtype=torch.int64, device=device) % (1 << 31)

    def device(self, region: Region, block: int) -> torch.Tensor:
        words = self._index(region, block, region.device).to(torch.int32)
        return torch.bitwise_not(words) if self.complement else words

    def host(self, region: Region, block: int) -> np.ndarray:
        start = region.word_offset(block)
        words = (np.arange(start, start + region.length(block), dtype=np.int64) % (1 << 31)).astype(np.int32)
        return ~words if self.complement else words

    def describe(self) -> str:
        return "~own address" if self.complement else "own address"


@dataclass(frozen=True)
class RandomWords(Words):
    """A seeded random block, XORed with a per-block key so that no two blocks hold the same words."""

    seed: int
    complement: bool = False

    def _key(self, block: int) -> int:
        return _signed(block * 0x9E3779B1 + self.seed)

    def device(self, region: Region, block: int) -> torch.Tensor:
        words = torch.bitwise_xor(region.random_block(self.seed)[: region.length(block)], self._key(block))
        return torch.bitwise_not(words) if self.complement else words

    def host(self, region: Region, block: int) -> np.ndarray:
        words = region.random_host(self.seed)[: region.length(block)] ^ np.int32(self._key(block))
        return ~words if self.complement else words

    def describe(self) -> str:
        return f"{'~' if self.complement else ''}random (seed {self.seed})"


# ----- the memory under test -----

class Region:
    """The memory under test: chunks of int32 words on the device, walked in blocks."""

    def __init__(self, chunks: list[torch.Tensor], block_words: int):
        self.chunks, self.device = chunks, str(chunks[0].device)
        self.blocks: list[tuple[int, int, int]] = []  # (chunk, start word in chunk, words)
        self._offsets: list[int] = []  # start word of each block in the whole region
        offset = 0
        for c, chunk in enumerate(chunks):
            for start in range(0, chunk.numel(), block_words):
                length = min(block_words, chunk.numel() - start)
                self.blocks.append((c, start, length))
                self._offsets.append(offset)
                offset += length
        self.words = offset
        self.block_words = block_words
        self._constants: dict[tuple[int, int], torch.Tensor] = {}
        self._random: dict[int, tuple[np.ndarray, torch.Tensor]] = {}

    @property
    def bytes(self) -> int:
        return self.words * WORD

    def length(self, block: int) -> int:
        return self.blocks[block][2]

    def word_offset(self, block: int) -> int:
        return self._offsets[block]

    def view(self, block: int) -> torch.Tensor:
        c, start, length = self.blocks[block]
        return self.chunks[c][start : start + length]

    def address(self, block: int, word: int) -> int:
        """The device address of a word (the pointer the device's allocator returned, plus the offset)."""
        c, start, _ = self.blocks[block]
        return self.chunks[c].data_ptr() + (start + word) * WORD

    def constant(self, word: int, length: int) -> torch.Tensor:
        key = (word, length)
        if key not in self._constants:
            self._constants[key] = torch.full((length,), word, dtype=torch.int32, device=self.device)
        return self._constants[key]

    def random_host(self, seed: int) -> np.ndarray:
        return self._random_pair(seed)[0]

    def random_block(self, seed: int) -> torch.Tensor:
        return self._random_pair(seed)[1]

    def _random_pair(self, seed: int) -> tuple[np.ndarray, torch.Tensor]:
        if seed not in self._random:
            host = np.random.default_rng(seed).integers(-(1 << 31), 1 << 31, self.block_words, dtype=np.int64)
            host = host.astype(np.int32)
            self._random[seed] = (host, torch.from_numpy(host).to(self.device))
        return self._random[seed]

    # The operations a march performs. A test double overrides write to model a faulty cell.
    def write(self, block: int, words: torch.Tensor) -> None:
        self.view(block).copy_(words)

    def matches(self, block: int, words: torch.Tensor) -> bool:
        return torch.equal(self.view(block), words)

    def read_host(self, block: int) -> np.ndarray:
        return self.view(block).to("cpu").numpy()

    def release(self) -> None:
        self.chunks.clear()
        self._constants.clear()
        self._random.clear()


# ----- patterns as marches -----

Op = tuple[str, Words]  # ("r" | "w", expected or written words)


@dataclass(frozen=True)
class Pass:
    order: str  # up | down
    ops: tuple[Op, ...]
    window: bool = False  # only the walking-ones window


@dataclass(frozen=True)
class Pattern:
    name: str
    passes: tuple[Pass, ...]

    def cost(self, region_words: int, window_words: int) -> int:
        """Words moved (read or written) by the whole pattern."""
        return sum(len(p.ops) * (window_words if p.window else region_words) for p in self.passes)


def _moving_inversions(name: str, p: int) -> Pattern:
    """memtest86's moving inversions: up(w p); up(r p, w ~p); down(r ~p, w p)."""
    word, inverse = Constant(_signed(p)), Constant(_signed(~p))
    return Pattern(name, (Pass("up", (("w", word),)), Pass("up", (("r", word), ("w", inverse))),
                          Pass("down", (("r", inverse), ("w", word)))))


def patterns(seed: int) -> list[Pattern]:
    """Every pattern, the broadest first (stuck and coupled cells, address lines, data), so that a run
    cut short by its time budget has still run those."""
    zero, one = Constant(0), Constant(ALL_ONES)
    march = Pattern("March C-", (
        Pass("up", (("w", zero),)), Pass("up", (("r", zero), ("w", one))), Pass("up", (("r", one), ("w", zero))),
        Pass("down", (("r", zero), ("w", one))), Pass("down", (("r", one), ("w", zero))), Pass("up", (("r", zero),)),
    ))
    address = Pattern("address in address", (
        Pass("up", (("w", OwnAddress()),)), Pass("up", (("r", OwnAddress()),)),
        Pass("up", (("w", OwnAddress(True)),)), Pass("up", (("r", OwnAddress(True)),))))
    data, inverse = RandomWords(seed), RandomWords(seed, complement=True)
    random = Pattern("seeded random data", (
        Pass("up", (("w", data),)), Pass("up", (("r", data),)), Pass("up", (("w", inverse),)),
        Pass("up", (("r", inverse),))))
    walking = Pattern("walking ones", tuple(
        Pass("up", (("w", Constant(_signed(1 << b))), ("r", Constant(_signed(1 << b)))), window=True)
        for b in range(32)))
    return [
        march, address, random,
        _moving_inversions("moving inversions, ones and zeros", 0xFFFFFFFF),
        _moving_inversions("moving inversions, random word", seed & 0xFFFFFFFF),
        walking,
        *(_moving_inversions(f"moving inversions, 8-bit pattern 0x{0x01010101 << b:08x}", 0x01010101 << b)
          for b in range(8)),
    ]


# ----- running a march -----

@dataclass
class WordError:
    pattern: str
    address: int
    offset: int
    expected: int
    observed: int
    seen_by: str  # device | host

    def as_dict(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "address": f"0x{self.address:x}", "offset_bytes": self.offset,
                "expected": f"0x{self.expected & 0xFFFFFFFF:08x}", "observed": f"0x{self.observed & 0xFFFFFFFF:08x}",
                "differing_bits": f"0x{(self.expected ^ self.observed) & 0xFFFFFFFF:08x}", "seen_by": self.seen_by}


@dataclass
class MarchResult:
    words_moved: int = 0
    errors: list[WordError] = field(default_factory=list)
    error_count: Counter[str] = field(default_factory=Counter)  # by pattern
    host_disagreements: int = 0
    host_blocks_checked: int = 0
    differing_bits: int = 0  # OR of every wrong bit seen

    def record(self, error: WordError) -> None:
        self.error_count[error.pattern] += 1
        self.differing_bits |= (error.expected ^ error.observed) & 0xFFFFFFFF
        if len(self.errors) < MAX_RECORDED_ERRORS:
            self.errors.append(error)


def _order(n: int, order: str) -> range:
    return range(n) if order == "up" else range(n - 1, -1, -1)


def run_pattern(region: Region, pattern: Pattern, result: MarchResult, window_blocks: int,
                progress: Callable[[], None] = lambda: None, deadline: float | None = None) -> bool:
    """Run the pattern's passes; False when the deadline (time.perf_counter) came first and the pattern
    was cut short between two blocks (the blocks read until then were still checked)."""
    for p in pattern.passes:
        n = window_blocks if p.window else len(region.blocks)
        sampled = {secrets.randbelow(n) for _ in range(HOST_SAMPLES)}
        for block in _order(n, p.order):
            if deadline is not None and time.perf_counter() > deadline:
                return False
            for kind, words in p.ops:
                result.words_moved += region.length(block)
                if kind == "w":
                    region.write(block, words.device(region, block))
                    continue
                expected = words.device(region, block)
                matched = region.matches(block, expected)
                if not matched:
                    _locate(region, block, expected, pattern.name, result)
                if block in sampled:
                    _host_check(region, block, words, pattern.name, result, matched)
        progress()
    return True


def _locate(region: Region, block: int, expected: torch.Tensor, pattern: str, result: MarchResult) -> None:
    observed = region.view(block)
    wrong = torch.nonzero(observed != expected).flatten()
    for index in wrong[:MAX_RECORDED_ERRORS].tolist():
        result.record(WordError(pattern, region.address(block, index), (region.word_offset(block) + index) * WORD,
                                   int(expected[index]), int(observed[index]), "device"))
    result.error_count[pattern] += max(0, wrong.numel() - MAX_RECORDED_ERRORS)


def _host_check(
    region: Region, block: int, words: Words, pattern: str, result: MarchResult, device_matched: bool
) -> None:
    """Compare a block on the host; errors the device's own comparison missed are recorded too."""
    observed, expected = region.read_host(block), words.host(region, block)
    result.host_blocks_checked += 1
    wrong = np.flatnonzero(observed != expected)
    if wrong.size and device_matched:
        result.host_disagreements += 1
        for index in wrong[:MAX_RECORDED_ERRORS]:
            result.record(WordError(pattern, region.address(block, int(index)),
                                       (region.word_offset(block) + int(index)) * WORD, int(expected[index]),
                                       int(observed[index]), "host"))


def march_findings(check: Check, result: MarchResult, seed: int, bytes_tested: int) -> list[Finding]:
    """What a march found: wrong words (with their addresses and bits), and blocks the device called
    right that the host read back wrong. The memory check's, and a watcher burst's slice's."""
    found = []
    errors = sum(result.error_count.values())
    if errors:
        first = result.errors[0].as_dict()
        found.append(check.finding(
            Severity.high, f"memory errors: {errors} wrong words",
            f"Words read back differently from what was written, in {len(result.error_count)} pattern(s) "
            f"({', '.join(sorted(result.error_count))}); bits that differed: 0x{result.differing_bits:08x}. "
            f"First at {first['address']}: expected {first['expected']}, observed {first['observed']}.",
            errors=[e.as_dict() for e in result.errors], errors_by_pattern=dict(result.error_count),
            differing_bits=f"0x{result.differing_bits:08x}", seed=seed, bytes_tested=bytes_tested))
    if result.host_disagreements:
        found.append(check.finding(
            Severity.high, "the device's own memory comparison disagrees with the host",
            f"{result.host_disagreements} block(s) that the device reported as correct read back wrong on "
            "the host: the device misreports its own comparisons, or corrupts data on the way out.",
            seed=seed))
    return found


# ----- sizing -----

def cgroup_headroom(membership: Path = Path("/proc/self/cgroup"), sysfs: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory cgroup's limit less its usage, the tightest over the process's cgroup and its parents
    (cgroup v2 memory.max / memory.current, or v1 memory.limit_in_bytes / memory.usage_in_bytes)."""
    best: int | None = None
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            root, limit_name, usage_name = sysfs, "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            root = sysfs / "memory"
            limit_name, usage_name = "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        node = root / path.lstrip("/")
        for directory in (node, *node.parents):
            if not str(directory).startswith(str(root)):
                break
            with contextlib.suppress(OSError, ValueError):
                limit = (directory / limit_name).read_text().strip()
                if limit != "max" and int(limit) < 1 << 60:
                    headroom = int(limit) - int((directory / usage_name).read_text().strip())
                    best = headroom if best is None else min(best, headroom)
    return best


def cpu_headroom() -> tuple[int, str]:
    """(bytes this process may still allocate, what limits it): available RAM, the cgroup and the rlimits."""
    candidates = {"available RAM": int(psutil.virtual_memory().available)}
    cgroup = cgroup_headroom()
    if cgroup is not None:
        candidates["cgroup memory limit"] = cgroup
    mapped = psutil.Process(os.getpid()).memory_info().vms
    for name, which in (("RLIMIT_AS", resource.RLIMIT_AS), ("RLIMIT_DATA", resource.RLIMIT_DATA)):
        soft, _ = resource.getrlimit(which)
        if soft != resource.RLIM_INFINITY:
            candidates[name] = soft - mapped
    source = min(candidates, key=lambda k: candidates[k])
    return max(0, candidates[source]), source


def device_headroom(device: str) -> tuple[int, str]:
    kind = torch.device(device).type
    if kind == "cpu":
        return cpu_headroom()
    backend = getattr(torch, kind, None)
    with contextlib.suppress(Exception):
        backend.empty_cache()  # type: ignore[union-attr]
    get_info = getattr(backend, "mem_get_info", None)
    if get_info is not None:
        free, _ = get_info(torch.device(device).index or 0)
        return int(free), f"{kind}.mem_get_info"
    total = torchdev.describe(device).memory_bytes
    if total:
        return int(total) // 2, "half of the device's total memory (its driver reports no free figure)"
    raise NotApplicable(f"the {kind} backend reports neither free nor total memory")


def allocate(device: str, target_bytes: int) -> tuple[list[torch.Tensor], str]:
    """Chunks of int32 words up to the target; stops early, and says so, when the device refuses."""
    chunks: list[torch.Tensor] = []
    allocated = 0
    while allocated < target_bytes:
        size = min(CHUNK_BYTES, target_bytes - allocated) // WORD
        try:
            chunks.append(torch.empty(size, dtype=torch.int32, device=device))
        except (_OUT_OF_MEMORY, RuntimeError) as e:
            return chunks, f"allocation stopped at {allocated} of {target_bytes} bytes: {str(e).splitlines()[0][:200]}"
        allocated += size * WORD
    return chunks, ""


# ----- the check -----

class MemoryCheck(Check):
    id = "integrity.memory"
    category = Category.integrity
    levels = (Level.smoke, *ALL_LEVELS)
    timeout_s: ClassVar[dict[Level, float]] = {Level.smoke: 20.0, Level.quick: 60.0, Level.standard: 300.0,
                                               Level.deep: 3600.0}

    def run(self, ctx: CheckContext) -> Outcome:
        free, limited_by = device_headroom(ctx.device)
        share = float(ctx.params.get("memory_share", MEMORY_SHARE[ctx.level]))
        block_bytes = BLOCK_BYTES.get(torch.device(ctx.device).type, DEVICE_BLOCK_BYTES)
        seed = ctx.seed & 0xFFFFFFFF
        pats = patterns(seed)
        bandwidth = self._probe(ctx.device, block_bytes)
        target = int(free * share)
        budget = TIME_SHARE[ctx.level]
        window_words = WALKING_WINDOW_BYTES // WORD
        time_capped = False
        if budget is not None:
            per_byte = sum(p.cost(1, 0) for p in pats) * WORD / bandwidth
            walking = sum(p.cost(0, window_words) for p in pats) * WORD / bandwidth
            affordable = int((budget * self.timeout_s[ctx.level] - walking) / per_byte)
            time_capped = affordable < target
            target = min(target, affordable)
        target = max(MIN_BYTES, target - target % block_bytes)
        if target > free:
            raise NotApplicable(f"only {free} bytes free ({limited_by}); the memory test needs {MIN_BYTES}")
        chunks, shortfall = allocate(ctx.device, target)
        if not chunks:
            raise NotApplicable(f"the device allocated no memory to test: {shortfall}")
        region = Region(chunks, block_bytes // WORD)
        try:
            return self._test(ctx, region, pats, free, limited_by, share, shortfall, time_capped)
        finally:
            region.release()
            with contextlib.suppress(Exception):
                getattr(torch, torch.device(ctx.device).type).empty_cache()

    def _probe(self, device: str, block_bytes: int) -> float:
        """Words-moved bytes per second of the march's own operations (a block write and a block
        comparison), over PROBE_S, to size the runs with a time budget."""
        words = block_bytes // WORD
        a = torch.empty(4 * words, dtype=torch.int32, device=device)
        b = torch.zeros(words, dtype=torch.int32, device=device)
        moved = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < PROBE_S:
            for block in range(4):
                a[block * words : (block + 1) * words].copy_(b)
                torch.equal(a[block * words : (block + 1) * words], b)
                moved += 2 * words * WORD
            torchdev.synchronize(device)
        return moved / max(time.perf_counter() - t0, 1e-6)

    def _test(self, ctx: CheckContext, region: Region, pats: list[Pattern], free: int, limited_by: str,
              share: float, shortfall: str, time_capped: bool) -> Outcome:
        window_blocks = max(1, min(len(region.blocks), -(-WALKING_WINDOW_BYTES // (region.block_words * WORD))))
        total = sum(len(p.passes) for p in pats)
        done = 0
        result = MarchResult()

        def step() -> None:
            nonlocal done
            done += 1
            ctx.progress(done, total, f"{pattern.name} over {region.bytes >> 20} MiB")

        t0 = time.perf_counter()
        budget = TIME_SHARE[ctx.level]
        deadline = t0 + budget * self.timeout_s[ctx.level] if budget is not None else None
        skipped: list[str] = []
        cut_short = ""
        for pattern in pats:
            if deadline is not None and time.perf_counter() > deadline:
                skipped.append(pattern.name)
                continue
            # The deadline is checked between blocks: a shared host whose rate falls after the probe
            # stops the test at its budget, never at the watchdog's limit.
            if not run_pattern(region, pattern, result, window_blocks, step, deadline):
                cut_short = pattern.name
        torchdev.synchronize(ctx.device)
        elapsed = time.perf_counter() - t0
        out = Outcome()
        if skipped or cut_short:
            partly = f"; cut short: {cut_short}" if cut_short else ""
            out.findings.append(self.finding(
                Severity.info, f"memory test stopped at its time budget: {len(skipped)} pattern(s) not run"
                + (", one cut short" if cut_short else ""),
                f"The device (or the shared host) moved memory more slowly than its probe promised; not run: "
                f"{', '.join(skipped) or 'none'}{partly}. Run at level deep for every pattern without a time "
                "budget.", patterns_not_run=skipped, pattern_cut_short=cut_short))
        errors = sum(result.error_count.values())
        out.findings += march_findings(self, result, ctx.seed, region.bytes)
        out.coverage = {
            "bytes_tested": region.bytes, "share_of_free": round(region.bytes / free, 4) if free else None,
            "free_bytes": free, "free_limited_by": limited_by, "target_share": share,
            "patterns": [p.name for p in pats if p.name not in skipped], "patterns_not_run": skipped,
            "pattern_cut_short": cut_short,
            "walking_ones_window_bytes": window_blocks * region.block_words * WORD,
            "blocks": len(region.blocks), "block_bytes": region.block_words * WORD,
            "host_blocks_checked": result.host_blocks_checked,
            "limited_by_time": time_capped, "allocation": shortfall or "as planned",
        }
        out.measurements = {
            "bandwidth_bytes_per_s": result.words_moved * WORD / max(elapsed, 1e-9),
            "bytes_moved": result.words_moved * WORD, "seconds": round(elapsed, 3),
            "errors": errors,
        }
        return out


CHECKS = [MemoryCheck()]
