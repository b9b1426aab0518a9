"""What the operator checks share: a case (one device computation and what it must return), the check
that runs, judges and re-runs its cases format by format, and the input makers. The checks themselves
are in operators.py (elementwise, conv2d, attention, conversions) and rowwise.py (softmax,
normalisation, reductions); operators.py describes them all.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from chipaudit.checks.base import Check, CheckContext, NotApplicable, Outcome
from chipaudit.checks.integrity.corner import random_bits
from chipaudit.checks.integrity.gemm import RETESTS, to_host
from chipaudit.checks.refusal import REFUSALS, one_line, refusal
from chipaudit.checks.stopped import Pace
from chipaudit.devices import capability, torchdev
from chipaudit.devices.capability import Capability
from chipaudit.oracle import ieee
from chipaudit.oracle.formats import FORMATS, NumberFormat
from chipaudit.oracle.ieee import Expectation
from chipaudit.oracle.matmul import Verification
from chipaudit.report.model import Category, Finding, Level, Severity

BIT_PATTERNS = 2048
# Cases of one operator and format refused, named in that refusal's finding.
MAX_REFUSED_CASES = 10


@dataclass
class OpCase:
    """One device computation and what it must return."""

    op: str
    label: str
    run: Callable[[str], torch.Tensor]
    expectation: Expectation
    ftz: Callable[[], Expectation] | None = None
    dtype: str = ""  # the formats to name in findings, when not the check's loop format
    evidence: dict[str, Any] = field(default_factory=dict)
    formats: tuple[str, ...] = ()  # the formats whose capability weighs a refusal, when not the loop format


Builder = Callable[[np.random.Generator, NumberFormat], OpCase]


@dataclass(frozen=True)
class Refused:
    """A case the device refused: what its finding needs, without the case's data."""

    label: str
    evidence: dict[str, Any]
    error: str
    declared: Capability


def upload(x: np.ndarray, fmt: NumberFormat, device: str) -> torch.Tensor:
    """Host values already on the format's grid, moved to the device exactly."""
    return fmt.host_buffer(x).to(device).to(fmt.torch_dtype)


class OperatorCheck(Check):
    category = Category.integrity
    formats: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "bf16")

    @abstractmethod
    def cases(self, level: Level, fmt: NumberFormat) -> list[Builder]: ...

    def run(self, ctx: CheckContext) -> Outcome:
        with torchdev.strict_precision():
            return self._run(ctx)

    def _run(self, ctx: CheckContext) -> Outcome:
        plan = [(FORMATS[name], builder) for name in self.formats for builder in self.cases(ctx.level, FORMATS[name])]
        out = Outcome()
        tally: Counter[str] = Counter()
        computed: set[tuple[str, str]] = set()
        lacking: dict[str, str] = {}
        refused: dict[tuple[str, str], list[Refused]] = {}
        worst_ratio = 0.0
        pace = Pace()
        for i, (fmt, builder) in enumerate(plan):
            case = builder(np.random.default_rng([ctx.seed, i]), fmt)
            ctx.progress(i, len(plan), f"{fmt.name} {case.label}", expect_s=pace.step(fmt.name))
            key = (case.op, case.dtype or fmt.name)
            declared = capability.of_operator(ctx.device, case.op, case.formats or (fmt.name,))
            if declared.lacking:
                lacking[f"{case.op} {key[1]}"] = declared.reason
                continue
            evidence = {"case": case.label, "op": case.op, "dtype": key[1], "seed": ctx.seed, "case_index": i,
                        **case.evidence}
            try:
                v = self.verify(ctx.device, case)
            except REFUSALS as e:
                refused.setdefault(key, []).append(Refused(case.label, evidence, one_line(e), declared))
                continue
            computed.add(key)
            tally["cases"] += 1
            tally["elements"] += v.checked
            tally[f"op:{case.op}"] += 1
            if v.method.endswith("+ftz"):
                tally["flushed"] += 1
            if v.ok:
                worst_ratio = max(worst_ratio, v.max_ratio)
                continue
            reproduced = 1 + sum(not self.verify(ctx.device, case).ok for _ in range(RETESTS))
            out.findings.append(self.finding(
                Severity.high, f"wrong {key[1]} {case.op} results",
                f"{case.label}: {v.bad} of {v.checked} elements break their rule; worst: expected "
                f"{v.worst.get('rule')} {v.worst.get('expected')}, got {v.worst.get('observed')} "
                f"(bound {v.worst.get('bound')}); the fault reproduced in {reproduced} of {1 + RETESTS} runs.",
                **evidence, bad=v.bad, checked=v.checked, worst=v.worst, reproduced=f"{reproduced}/{1 + RETESTS}"))
        ctx.progress(len(plan), len(plan), "done", expect_s=pace.step(None))
        out.findings += self._refusals(refused, computed)
        if not computed and not out.findings:
            raise NotApplicable("; ".join(dict.fromkeys(lacking.values()))[:400])
        out.coverage = {
            "cases": tally["cases"], "elements_checked": tally["elements"],
            "ops": {k[3:]: n for k, n in sorted(tally.items()) if k.startswith("op:")},
            "formats": sorted({f for _, f in computed}),
            "unsupported": lacking,
            "refused": sorted(f"{op} {dtype}" for op, dtype in refused),
            "cases_judged_flushed": tally["flushed"],
        }
        out.measurements = {"max_error_to_bound": worst_ratio}
        return out

    def _refusals(self, refused: dict[tuple[str, str], list[Refused]], computed: set[tuple[str, str]]) -> list[Finding]:
        """One finding per operator and format refused: for the inputs refused where the device computed
        that operator in that format for others (high), or for the whole operator in that format,
        weighed by what the device declares of it."""
        out = []
        for (op, dtype), cases in refused.items():
            first = cases[0]
            named = {**first.evidence, "refused_cases": [c.label for c in cases[:MAX_REFUSED_CASES]],
                     "refused_count": len(cases)}
            if (op, dtype) in computed:
                out.append(refusal(self, f"{op} in {dtype} on some inputs", first.error, where=first.label, **named))
            else:
                out.append(refusal(self, f"{op} in {dtype}", first.error, first.declared, where=first.label, **named))
        return out

    def verify(self, device: str, case: OpCase) -> Verification:
        result = case.run(device)
        torchdev.synchronize(device)
        observed = to_host(result).astype(np.float64).reshape(case.expectation.value.shape)
        return ieee.judge_flushing(observed, case.expectation, case.ftz, case.op)[0]


# ----- shared input makers -----

def special_values(fmt: NumberFormat) -> np.ndarray:
    """NaN, the infinities, signed zeros, the smallest subnormal and normal, the largest finite value,
    and powers of two across the whole exponent range."""
    tiny = ieee.smallest_normal(fmt)
    sub = float(torch.finfo(fmt.torch_dtype).smallest_normal) * float(torch.finfo(fmt.torch_dtype).eps)
    top = fmt.max_finite
    lo, hi = math.frexp(tiny)[1] - 1, math.frexp(top)[1] - 1
    powers = np.exp2(np.arange(lo, hi + 1, max(1, (hi - lo) // 48)))
    values = np.concatenate([[np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, 2.0, sub, -sub, tiny, -tiny,
                              top, -top], powers, -powers])
    return fmt.quantize(values)


def mixed(rng: np.random.Generator, fmt: NumberFormat, random: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """Random inputs, the special values, and random bit patterns (finite and any), shuffled."""
    bits = np.concatenate([random_bits(rng, fmt, (BIT_PATTERNS,), 8), random_bits(rng, fmt, (BIT_PATTERNS,), None)])
    x = np.concatenate([fmt.quantize(random), special_values(fmt), fmt.quantize(extra), bits])
    return x[rng.permutation(x.size)]
