"""One burst of the watcher: a short, verified sample of what an audit checks, on a device that is
busy with other work.

Threat: a part that fails after weeks, or a trojan that waits for long uptime, real workloads or the
absence of an auditor: nothing an audit of minutes can meet. Production bursts of milliseconds find
machines that out-of-production testing misses (Meta's Ripple).

Method: within its budget of seconds (the watcher sizes it so that the average duty stays within
--duty), a burst runs, in order:
- verified products: integrity.gemm's cases (small enough for a burst: MAX_BURST_MACS), its exact
  integer cases and its realistic ones, in the device's formats (those the burn-in rotates through,
  and fp32), operands of every kind in turn (random distributions and the realistic pairs of
  operands.py), each verified on the host by integrity.gemm's own code (retests and repeats
  included). Which case, format and operands come next is the watch's rotation position, which goes
  on from burst to burst, so that a watch crosses every combination in turn;
- a sample of operators: one case of integrity.ops, in turn, judged as those checks judge it;
- a slice of the memory test: a small region, freshly allocated, under one of integrity.memory's
  patterns, in turn, until the budget ends;
- more products, while the budget lasts.
Every draw comes from the burst's seed and its rotation position, both recorded: the watcher's replay
command repeats the burst's items in the same order.

Pass: every result within its bound (exact where exact), every word read back as written.
Fail (high): a wrong product, operator result or memory word; the device refusing a product or an
operator it declares (checks/refusal.py).

Cannot see: what a burst does not draw (each holds a few products; the rotation crosses the cases over
many bursts); memory other than the slice a burst can allocate while the workload holds the rest; faults
that need sustained load (the watcher's load is light by design; see the burn-in); errors under the
bounds, as every integrity check.
"""

from __future__ import annotations

import time
from collections import Counter
from functools import cache
from typing import Any

import numpy as np
import torch

from chipaudit.checks.base import Check, CheckContext, Outcome
from chipaudit.checks.integrity import memory, operators
from chipaudit.checks.integrity.burnin import burn_formats
from chipaudit.checks.integrity.gemm import _OUT_OF_MEMORY, EXACT_CASES, PATHS, Case, GemmCheck, draw_operands
from chipaudit.checks.integrity.opcheck import OperatorCheck
from chipaudit.checks.integrity.operands import OPERAND_KINDS
from chipaudit.checks.refusal import REFUSALS, one_line, refusal
from chipaudit.devices import capability, torchdev
from chipaudit.oracle.formats import FORMATS, as_computed_on
from chipaudit.report.model import Category, Level, Severity

BURST_ID = "watch.burst"
# Products larger than this many multiply-adds are left to audits: the host recomputes a burst's
# products in full (two float64 products of this size take about 50 ms on two cores).
MAX_BURST_MACS = 1 << 28
# Shares of the budget: products first, then the operator sample, then the memory slice; what is
# left goes to more products.
PRODUCT_SHARE = 0.5
OPERATOR_SHARE = 0.65
MEMORY_SHARE = 0.85
# The memory slice: small beside what a workload holds, in blocks small enough for one to fit any
# budget (integrity.memory's CPU block; an accelerator's bandwidth makes 16 MiB a fraction of a ms).
SLICE_BYTES = {"cpu": 8 << 20}
DEVICE_SLICE_BYTES = 128 << 20
DEVICE_SLICE_BLOCK_BYTES = 16 << 20
# A burst never runs more products than this, however large its budget.
MAX_PRODUCTS = 64
# The level whose cases a burst draws: the small ones.
LEVEL = Level.quick
# Seconds each case took last, verified (device and host together), by format and case, in this worker:
# a product that would end past the deadline waits for the next burst, which starts with it.
_SECONDS: dict[tuple[str, str], float] = {}


def formats(device: str) -> list[str]:
    """The formats a watch rotates through: where the device peaks (the burn-in's), and fp32."""
    names = [f.name for f in burn_formats(device, {})]
    return [*names, *(["fp32"] if "fp32" not in names else [])]


@cache
def product_cases(fmt: str) -> tuple[Case, ...]:
    return tuple(c for c in GemmCheck(fmt).cases(LEVEL) if c.macs <= MAX_BURST_MACS)


@cache
def operator_cases() -> tuple[tuple[OperatorCheck, str, int], ...]:
    """Every (check, format, case index) of integrity.ops at the burst's level, in a fixed order."""
    out = []
    for check in operators.CHECKS:
        for name in check.formats:
            out += [(check, name, i) for i in range(len(check.cases(LEVEL, FORMATS[name])))]
    return tuple(out)


class BurstCheck(Check):
    """Not in the registry: the watcher runs it in its own long-lived worker (runner/watch/worker.py)."""

    id = BURST_ID
    category = Category.integrity

    def run(self, ctx: CheckContext) -> Outcome:
        start = time.perf_counter()
        budget = float(ctx.params["budget_s"])
        rotation = int(ctx.params["rotation"])
        names = list(ctx.params.get("formats") or formats(ctx.device))
        out = Outcome()
        tally: Counter[str] = Counter()
        items: list[str] = []
        done = self._products(ctx, names, rotation, start + budget * PRODUCT_SHARE, out, tally, items)
        self._operator(ctx, rotation, start + budget * OPERATOR_SHARE, out, tally, items)
        memory_coverage = self._memory(ctx, rotation, start + budget * MEMORY_SHARE, out)
        done += self._products(ctx, names, rotation + done, start + budget, out, tally, items, least=0)
        busy = time.perf_counter() - start
        out.coverage = {"rotation": rotation, "rotation_end": rotation + done, "formats": names, "items": items,
                        "memory": memory_coverage, "elements_checked": tally["elements"],
                        "skipped": tally["skipped"]}
        out.measurements = {"busy_s": round(busy, 4), "budget_s": budget, "products": done,
                            "operator_cases": tally["operators"], "memory_words": memory_coverage.get("words", 0)}
        return out

    def _products(self, ctx: CheckContext, names: list[str], rotation: int, deadline: float, out: Outcome,
                  tally: Counter[str], items: list[str], least: int = 1) -> int:
        """Products in rotation until the deadline (at least `least`); how many rotation positions
        were used."""
        done = 0
        while done < least or (time.perf_counter() < deadline and done < MAX_PRODUCTS):
            position = rotation + done
            name = names[position % len(names)]
            cases = product_cases(name)
            case = cases[(position // len(names)) % len(cases)] if cases else None
            estimate = _SECONDS.get((name, case.label), 0.0) if case else 0.0
            if done >= least and time.perf_counter() + estimate > deadline:
                break
            done += 1
            if case is None:
                continue
            exact = case in EXACT_CASES
            fmt = as_computed_on(FORMATS[name], ctx.device)
            dist = "exact integers" if exact else case.data or OPERAND_KINDS[position % len(OPERAND_KINDS)]
            evidence = {"case": case.label, "op": case.op, "call": PATHS[case.op],
                        "shape": [case.batch, case.m, case.k, case.n], "heads": case.heads, "dtype": name,
                        "distribution": dist, "seed": ctx.seed, "rotation": position}
            gemm = GemmCheck(name)
            precision = torchdev.tf32_allowed() if name == "tf32" else torchdev.strict_precision()
            ops = draw_operands(case, fmt, np.random.default_rng([ctx.seed, position]), dist, exact)
            before = len(out.findings)
            t0 = time.perf_counter()
            try:
                with precision:
                    gemm.verify_case(ctx, ops, exact, evidence, out, tally)
                _SECONDS[(name, case.label)] = time.perf_counter() - t0
            except _OUT_OF_MEMORY:
                tally["skipped"] += 1  # the workload holds the memory: not the device's fault
                continue
            except REFUSALS as e:
                declared = capability.of_format(ctx.device, name)
                if declared.lacking:
                    tally["skipped"] += 1
                    continue
                out.findings.append(refusal(self, f"a {name} {case.op}", e, declared, where=case.label, **evidence))
            out.findings[before:] = [f.model_copy(update={"check": self.id}) for f in out.findings[before:]]
            items.append(f"{name} {case.label} ({dist})")
        return done

    def _operator(self, ctx: CheckContext, rotation: int, deadline: float, out: Outcome, tally: Counter[str],
                  items: list[str]) -> None:
        """Operator cases in rotation until the deadline, at least one."""
        plan = operator_cases()
        position = rotation
        while position == rotation or time.perf_counter() < deadline:
            check, name, index = plan[position % len(plan)]
            position += 1
            fmt = FORMATS[name]
            case = check.cases(LEVEL, fmt)[index](np.random.default_rng([ctx.seed, position]), fmt)
            dtype = case.dtype or name
            if capability.of_operator(ctx.device, case.op, case.formats or (name,)).lacking:
                continue
            evidence = {"case": case.label, "op": case.op, "dtype": dtype, "seed": ctx.seed,
                        "rotation": position - 1, "check": check.id, **case.evidence}
            try:
                with torchdev.strict_precision():
                    v = check.verify(ctx.device, case)
            except REFUSALS as e:
                out.findings.append(refusal(self, f"{case.op} in {dtype}", e, where=case.label, **evidence))
                continue
            tally["operators"] += 1
            tally["elements"] += v.checked
            items.append(f"{check.id} {dtype} {case.label}")
            if not v.ok:
                out.findings.append(self.finding(
                    Severity.high, f"wrong {dtype} {case.op} results",
                    f"{case.label}: {v.bad} of {v.checked} elements break their rule; worst: expected "
                    f"{v.worst.get('rule')} {v.worst.get('expected')}, got {v.worst.get('observed')} "
                    f"(bound {v.worst.get('bound')}).", **evidence, bad=v.bad, checked=v.checked, worst=v.worst))

    def _memory(self, ctx: CheckContext, rotation: int, deadline: float, out: Outcome) -> dict[str, Any]:
        """One of the memory test's patterns over a fresh slice, until the deadline (at least a block)."""
        kind = torch.device(ctx.device).type
        size = SLICE_BYTES.get(kind, DEVICE_SLICE_BYTES)
        block = memory.BLOCK_BYTES.get(kind, DEVICE_SLICE_BLOCK_BYTES)
        chunks, shortfall = memory.allocate(ctx.device, size)
        if not chunks:
            return {"not_run": one_line(shortfall)}
        region = memory.Region(chunks, block // memory.WORD)
        try:
            patterns = memory.patterns(ctx.seed & 0xFFFFFFFF)
            pattern = patterns[rotation % len(patterns)]
            result = memory.MarchResult()
            whole = memory.run_pattern(region, pattern, result, len(region.blocks),
                                       deadline=max(deadline, time.perf_counter() + 1e-3))
            torchdev.synchronize(ctx.device)
            out.findings += memory.march_findings(self, result, ctx.seed, region.bytes)
            return {"pattern": pattern.name, "bytes": region.bytes, "complete": whole,
                    "words": result.words_moved, "host_blocks_checked": result.host_blocks_checked,
                    **({"allocation": shortfall} if shortfall else {})}
        finally:
            region.release()
