"""Matrix products, by every path a model asks for them, in every number format, checked against the
host oracle.

Threat: a device that returns wrong products — silent data corruption from a weak part, or a trojan
that corrupts results only for some values, structures, shapes or formats.

Method: operands are drawn on the host from a recorded seed, rounded in NumPy onto the format's grid,
moved to the device, multiplied there, and the result is compared in float64 NumPy with an error bound
per element (oracle/tolerance.py). Products too large to recompute are checked by Freivalds
projections plus secretly sampled rows (oracle/matmul.py). Every path runs in every format that has
it (fp8 and int8 products exist only as 2-D products, torch._scaled_mm and torch._int_mm):
- torch.mm, torch.bmm, and linear layers with bias (F.linear);
- torch.baddbmm as attention code calls it: GPT-2's scores, baddbmm(empty, q, k^T, beta=0,
  alpha=1/sqrt(head_dim)), whose ignored input holds NaN that must not show, with the keys a
  transposed view; and BLOOM's ALiBi scores, baddbmm(bias, q, k^T, beta=1, alpha=1/sqrt(head_dim));
- torch.matmul broadcasting, (B,H,m,k) @ (k,n) and (B,1,m,k) @ (H,k,n);
- torch.einsum, 'bhqd,bhkd->bhqk' (scores) and 'bhqk,bhkd->bhqd' (attention times values).
Each is one batched product to the oracle, its scale and added input included as operands: [alpha*q,
1] @ [k^T; bias]. The bound also allows the roundings an honest device may give the bare product before
the scale and the bias (oracle/matmul.Epilogue). Cases cover tiny, odd and prime shapes, powers of two,
training-sized products, the layer widths of well-known LLMs and CNNs and the attention shapes of
GPT-2, BLOOM, ViT and Llama; small shapes carry every path at quick, larger ones follow at standard
and deep. Operands vary between signed, positive, sparse and mixed magnitudes, and at every level
some products carry operands with the statistics of real models (operands.py: activations with
outlier feature channels, normalised activations, attention probabilities, trained and quantised
weights), as a model multiplies them. Integer-valued operands
whose exact result is representable (a power-of-two alpha included) must come back bit-exact. Chosen
cases run twice and must agree bit for bit. A failing case is re-run to tell a reproducible fault from
an intermittent one. The fp8 bound depends on the device class (oracle/formats.as_computed_on).

Pass: every element of every case within its bound, exact cases exact, repeats identical.
Fail (high): any element out of bound, or the device refusing (raising or hanging on) a product it
computes for other inputs, or refusing the format outright while declaring it (devices/capability.py).
Fail (medium): the format refused outright where only the torch backend's table implies it.
Warning (low): repeats that differ but both stay within bound (non-determinism); the format refused
where nothing declares it either way.
Not run: only when the device declares that it lacks the format; the reason names the declaration.

Cannot see: errors below the bound (a deliberately tiny bias hides under rounding noise); inputs,
shapes, scales and call forms this check never draws (other einsum strings, other strides, out=
variants; real-model statistics other than those in operands.py, realistic data at a shape drawn only
with random data, a particular model's own weights: see integrity.weights); faults that need longer
use than a check lasts (see the burn-in); in a projection-checked product, an error smaller than the
row bound outside the sampled rows. Scaled-dot-product attention is integrity.ops.attention's.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from chipaudit.checks.base import Check, CheckContext, Outcome
from chipaudit.checks.integrity.operands import DISTRIBUTIONS, draw, draw_pair
from chipaudit.checks.integrity.products import PATHS, SCALED, Operands, attention_scale, compute, operand_shapes
from chipaudit.checks.refusal import REFUSALS, answer_within, refusal, refused_or_skip
from chipaudit.devices import capability, torchdev
from chipaudit.oracle import matmul as oracle
from chipaudit.oracle.formats import FORMATS, NumberFormat, as_computed_on
from chipaudit.perf import timing
from chipaudit.report.model import Category, Level, Severity

Q, S, D = Level.quick, Level.standard, Level.deep
QSD = (Q, S, D)
SD = (S, D)
# Level smoke (a job's prolog, seconds in all) multiplies a few small shapes of the main paths, with
# over a million outputs checked: a weak part flipping one element in 10^5 shows about ten times.
SQSD = (Level.smoke, Q, S, D)

# Above this many multiply-adds the host stops recomputing whole products (two float64 GEMMs on the
# host: about 0.2 s on two cores) and switches to projections plus sampled rows.
FULL_CHECK_MACS = 2**31
# Each format's check stops drawing new cases when its estimated cost exceeds this share of its time
# limit, so that a slow format (fp16 on a CPU) skips its largest shapes instead of timing out.
CASE_BUDGET_SHARE = 0.5
RETESTS = 2
# Square size of the probe that measures the device's and the host's speeds: large enough to run the
# format's real kernel, small enough to cost milliseconds on any device.
PROBE_SIZE = 128
# torch < 2.5 only has the CUDA-specific name.
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


@dataclass(frozen=True)
class Case:
    op: str  # a key of PATHS
    batch: int
    m: int
    k: int
    n: int
    label: str
    levels: tuple[Level, ...] = QSD
    every_format: bool = True  # False: only the main formats (fp32, tf32) at this size
    repeat: bool = False  # run twice and require bitwise-identical results
    heads: int = 1  # heads within the batch, for the paths that see (B, H, ...) tensors
    data: str = ""  # a realistic operand pair (operands.PAIRS); empty: the rotating random distributions

    @property
    def macs(self) -> int:
        return self.batch * self.m * self.k * self.n

    @property
    def alpha(self) -> float:
        return attention_scale(self.k) if self.op in SCALED else 1.0


# Shapes, with where they come from. Data, not code: add a model's widths here.
CASES: tuple[Case, ...] = (
    Case("mm", 1, 1, 1, 1, "tiny 1x1x1"),
    Case("mm", 1, 3, 5, 7, "odd 3x5x7", SQSD),
    Case("mm", 1, 17, 31, 13, "prime 17x31x13"),
    Case("mm", 1, 61, 127, 67, "prime 61x127x67", SQSD),
    Case("mm", 1, 64, 64, 64, "pow2 64", SQSD, repeat=True),
    Case("mm", 1, 256, 256, 256, "pow2 256", SQSD),
    Case("bmm", 8, 128, 64, 128, "attention scores QK^T, 8 heads, head_dim 64", SQSD, repeat=True),
    Case("bmm", 8, 128, 128, 64, "attention PV, 8 heads"),
    Case("linear", 2, 64, 768, 3072, "BERT-base / GPT-2 MLP up with bias", data="normed_linear"),
    Case("linear", 1, 129, 1000, 1001, "odd linear 1000->1001 with bias"),
    Case("mm", 1, 1024, 1024, 1024, "training 1024", every_format=False, repeat=True),
    Case("mm", 1, 3136, 576, 64, "ResNet-50 conv2_x 3x3 as im2col GEMM", every_format=False),
    Case("mm", 1, 32, 4096, 11008, "Llama-2-7B MLP up (32 tokens)", every_format=False, data="llm_outliers"),
    Case("mm", 1, 32, 11008, 4096, "Llama-2-7B MLP down (32 tokens)", every_format=False),
    Case("bmm", 12, 197, 64, 197, "ViT-B/16 attention scores, 12 heads", every_format=False),
    Case("linear", 4, 16, 4096, 4096, "Llama attention q_proj with bias", every_format=False, data="normed_linear"),
    Case("mm", 1, 2048, 2048, 2048, "training 2048", every_format=False),
    Case("mm", 1, 1000, 1000, 1000, "odd 1000", SD),
    Case("mm", 1, 1023, 1025, 1027, "off-by-one 1023x1025x1027", SD),
    Case("mm", 1, 16, 4096, 14336, "Llama-3-8B / Mistral-7B MLP up", SD, every_format=False),
    Case("mm", 1, 16, 14336, 4096, "Llama-3-8B / Mistral-7B MLP down", SD, every_format=False),
    Case("mm", 1, 16, 5120, 13824, "Llama-2-13B MLP up", SD, every_format=False),
    Case("mm", 1, 16, 3584, 18944, "Qwen2-7B MLP up", SD, every_format=False),
    Case("mm", 1, 16, 7168, 18432, "DeepSeek-V3 dense MLP up", SD, every_format=False),
    Case("mm", 1, 16, 8192, 28672, "Llama-3-70B MLP up", SD, every_format=False),
    Case("linear", 8, 64, 4096, 1024, "Llama-3-8B k_proj (GQA) with bias", SD, every_format=False),
    Case("bmm", 32, 512, 128, 512, "attention scores, 32 heads, head_dim 128", SD, every_format=False),
    Case("mm", 1, 4096, 4096, 4096, "training 4096", SD, every_format=False, repeat=True),
    Case("bmm", 4, 2048, 128, 2048, "attention scores, 2k context", (D,), every_format=False),
    Case("mm", 1, 8192, 8192, 8192, "training 8192", (D,), every_format=False),
    # Attention and broadcasting paths: small at every level in every format, model-sized later.
    Case("baddbmm", 8, 64, 64, 64, "GPT-2 attention scores by baddbmm, beta=0 over NaN, alpha=1/8"),
    Case("baddbmm_bias", 8, 32, 128, 48, "BLOOM ALiBi scores by baddbmm, beta=1, alpha=1/sqrt(128)"),
    Case("matmul", 8, 16, 64, 96, "matmul (2,4,16,64) @ (64,96) broadcast", heads=4),
    Case("matmul_heads", 8, 16, 64, 32, "matmul (2,1,16,64) @ (4,64,32) broadcast both sides", heads=4),
    Case("einsum_scores", 8, 48, 64, 80, "einsum attention scores bhqd,bhkd->bhqk, 4 heads", heads=4),
    Case("einsum_pv", 8, 48, 80, 64, "einsum attention PV bhqk,bhkd->bhqd, 4 heads", heads=4),
    Case("baddbmm", 32, 512, 64, 512, "GPT-2 medium attention scores by baddbmm, 16 heads x 2, 512 tokens", SD,
         every_format=False),
    Case("baddbmm_bias", 16, 1024, 64, 1024, "BLOOM-560m ALiBi scores by baddbmm, 16 heads, 1024 tokens", SD,
         every_format=False),
    Case("einsum_scores", 32, 512, 128, 512, "Llama-2-7B attention scores by einsum, 32 heads, 512 tokens", SD,
         every_format=False, heads=32),
    Case("einsum_pv", 32, 512, 512, 128, "Llama-2-7B attention PV by einsum, 32 heads, 512 tokens", SD,
         every_format=False, heads=32),
    Case("matmul", 32, 128, 1024, 1024, "matmul (2,16,128,1024) @ (1024,1024) broadcast", SD, every_format=False,
         heads=16),
    Case("matmul_heads", 16, 256, 128, 256, "matmul (2,1,256,128) @ (8,128,256) broadcast both sides", SD,
         every_format=False, heads=8),
    Case("baddbmm_bias", 32, 2048, 128, 2048, "BLOOM-7B ALiBi scores by baddbmm, 32 heads, 2k tokens", (D,),
         every_format=False),
    # Many outputs for few multiply-adds: a million elements checked for a weak part's rare flips at
    # smoke, which has no room for the training-sized products that check as many at the other levels.
    Case("mm", 1, 1024, 64, 1024, "LoRA rank-64 update B @ A, 1024x64x1024", (Level.smoke,)),
)

EXACT_CASES: tuple[Case, ...] = (
    Case("mm", 1, 64, 64, 64, "exact integers 64", SQSD),
    Case("mm", 1, 33, 48, 80, "exact integers 33x48x80"),
    Case("bmm", 4, 32, 48, 32, "exact integers batched"),
    Case("linear", 1, 16, 64, 64, "exact integers linear with bias"),
    Case("baddbmm_bias", 4, 16, 64, 24, "exact integers baddbmm with bias, alpha 1/8"),
    Case("matmul_heads", 4, 8, 32, 16, "exact integers broadcast matmul", heads=2),
    Case("einsum_scores", 4, 16, 32, 24, "exact integers einsum scores", heads=2),
)

# Products with the statistics of real models (operands.PAIRS) besides the model layers above that
# carry them, in every format at every level: the outlier activations as 2-D A operands of mm and
# linear (addmm), k >= 64 and m >= 4, as an LLM's hidden states meet a linear layer; for int8 and fp8
# (mm only) the aligned ones. Small, so that they cost the quick level little; never skipped for time,
# so that a device slow on other cases cannot push them out.
REALISTIC_CASES: tuple[Case, ...] = (
    Case("linear", 2, 16, 768, 768, "GPT-2 attention projection with bias, outlier activations", SQSD,
         data="llm_outliers"),
    Case("mm", 1, 32, 512, 256, "int8 weight-only layer, outlier activations", data="int8_weights"),
    Case("mm", 1, 32, 256, 512, "fp8 weight layer after LayerNorm", data="fp8_weights"),
    Case("mm", 1, 64, 128, 64, "one head's causal attention probabilities x values", data="causal_attention_values"),
    Case("bmm", 8, 64, 64, 64, "attention probabilities x values, 8 heads", data="attention_values"),
    Case("bmm", 8, 64, 64, 64, "attention scores Q K^T of normalised q, k, 8 heads", data="attention_scores"),
    Case("mm", 1, 64, 2048, 512, "linear layer on the residual stream, outlier activations", SD,
         data="llm_outliers"),
    Case("mm", 1, 16, 4096, 11008, "Llama-2-7B MLP up, int8 weights, outlier activations", SD,
         every_format=False, data="int8_weights"),
    Case("mm", 1, 64, 4096, 4096, "Llama-2-7B o_proj after RMSNorm", SD, every_format=False,
         data="normed_linear"),
    Case("bmm", 32, 512, 512, 128, "causal attention probabilities x values, 32 heads, 512 tokens", SD,
         every_format=False, data="causal_attention_values"),
)
# Formats whose kernels take a restricted shape (torch._int_mm and torch._scaled_mm on CUDA).
ALIGNED_FORMATS = frozenset({"int8", "fp8_e4m3"})
ALIGNMENT = 16


def draw_exact(rng: np.random.Generator, shape: tuple[int, ...], fmt: NumberFormat, k: int) -> np.ndarray:
    operand_max, result_max = fmt.exact_int_limits()
    v = max(1, min(operand_max, int(np.sqrt(result_max / k))))
    return rng.integers(-v, v + 1, shape).astype(np.float64)


def to_host(t: torch.Tensor) -> np.ndarray:
    """Device result as a NumPy array of a type that holds it exactly (bf16 widens to float32).

    Widening happens in NumPy, not in torch's kernels; the oracle widens further to float64 in blocks
    as it reads, so a large result is never copied whole.
    """
    t = t.detach().to("cpu")
    if t.dtype == torch.bfloat16:
        bits = t.contiguous().view(torch.int16).numpy().astype(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32)
    return t.numpy()


def bits_of(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()


class GemmCheck(Check):
    category = Category.integrity

    def __init__(self, fmt_name: str, levels: tuple[Level, ...] = QSD):
        self.fmt = FORMATS[fmt_name]
        self.id = f"integrity.gemm.{fmt_name}"
        self.levels = levels

    def is_supported(self, device: str) -> str | None:
        declared = capability.of_format(device, self.fmt.name)
        return declared.reason if declared.lacking else None

    def cases(self, level: Level) -> list[Case]:
        main = self.fmt.name in ("fp32", "tf32")
        picked = [c for c in CASES if level in c.levels and (main or c.every_format)]
        if not self.fmt.integer:
            picked += [c for c in EXACT_CASES if level in c.levels]
        picked += [c for c in REALISTIC_CASES if level in c.levels and (main or c.every_format)]
        if self.fmt.name in ALIGNED_FORMATS:
            picked = [
                c for c in picked
                if c.op == "mm" and c.m >= 2 * ALIGNMENT and c.k % ALIGNMENT == 0 and c.n % ALIGNMENT == 0
            ]
        return picked

    def run(self, ctx: CheckContext) -> Outcome:
        precision = torchdev.tf32_allowed() if self.fmt.name == "tf32" else torchdev.strict_precision()
        with precision:
            return self._run(ctx)

    def _probe(self, device: str) -> tuple[float, float]:
        """Multiply-adds per second of this format on this device and of float64 on the host, from
        small warm products; they size the cases to the time limit. The device's first products of
        the format: a refusal here (an error, or no answer in time) refuses the whole format."""
        case = Case("mm", 1, PROBE_SIZE, PROBE_SIZE, PROBE_SIZE, "probe")
        ops = Operands(case, self.fmt, np.ones((1, PROBE_SIZE, PROBE_SIZE)), np.ones((1, PROBE_SIZE, PROBE_SIZE)), None)
        tensors = ops.upload(device)
        device_s = answer_within(lambda: timing.fastest(lambda: compute(self.fmt, "mm", tensors), device))
        host = np.ones((2 * PROBE_SIZE, 2 * PROBE_SIZE))
        host_s = timing.fastest(lambda: host @ host, "cpu")
        return case.macs / max(device_s, 1e-6), 8 * case.macs / max(host_s, 1e-6)

    def _run(self, ctx: CheckContext) -> Outcome:
        fmt = as_computed_on(self.fmt, ctx.device)
        try:
            macs_per_s, host_macs_per_s = self._probe(ctx.device)
        except _OUT_OF_MEMORY:
            raise  # a full device is not a refusal: the check errs
        except REFUSALS as e:
            declared = capability.of_format(ctx.device, self.fmt.name)
            finding = refused_or_skip(self, f"{self.fmt.name} products", e, declared, dtype=self.fmt.name,
                                      op="mm", shape=[1, PROBE_SIZE, PROBE_SIZE, PROBE_SIZE], seed=ctx.seed)
            return Outcome(findings=[finding], coverage={"dtype": self.fmt.name, "cases": 0, "refused": finding.title})
        budget = self.timeout_s[ctx.level] * CASE_BUDGET_SHARE
        cases = self.cases(ctx.level)
        out = Outcome()
        tally: Counter[str] = Counter()
        distributions: Counter[str] = Counter()
        skipped: list[str] = []
        worst_ratio = 0.0
        started = time.perf_counter()
        for i, case in enumerate(cases):
            exact = case in EXACT_CASES
            # A fully recomputed case costs the host two float64 products (value and bound).
            host_macs = 2 * case.macs if case.macs <= FULL_CHECK_MACS else 0
            estimate = case.macs / macs_per_s + host_macs / host_macs_per_s
            # The product and its repeat, each verified (the re-tests of a wrong one are within the factor).
            ctx.progress(i, len(cases), case.label, expect_s=(1 + case.repeat) * estimate)
            if not exact and case not in REALISTIC_CASES and time.perf_counter() - started + estimate > budget:
                skipped.append(f"{case.label} (about {estimate:.0f} s at the measured rate)")
                continue
            dist = case.data or DISTRIBUTIONS[i % len(DISTRIBUTIONS)]
            rng = np.random.default_rng([ctx.seed, i])
            evidence = {
                "case": case.label, "op": case.op, "call": PATHS[case.op],
                "shape": [case.batch, case.m, case.k, case.n], "heads": case.heads,
                "dtype": self.fmt.name, "distribution": "exact integers" if exact else dist,
                "seed": ctx.seed, "case_index": i,
            }
            ops = draw_operands(case, fmt, rng, dist, exact)
            try:
                ratio = self.verify_case(ctx, ops, exact, evidence, out, tally)
            except _OUT_OF_MEMORY:
                skipped.append(f"{case.label} (device out of memory)")
                continue
            except REFUSALS as e:
                out.findings.append(refusal(self, f"a {self.fmt.name} {case.op}", e, where=case.label, **evidence))
                continue
            worst_ratio = max(worst_ratio, ratio)
            tally[case.op] += 1
            distributions[evidence["distribution"]] += 1
        ctx.progress(len(cases), len(cases), "done")
        out.coverage = {
            "dtype": self.fmt.name,
            "cases": sum(tally[op] for op in PATHS),
            "ops": {op: tally[op] for op in PATHS if tally[op]},
            "exact_cases": tally["exact_cases"],
            "determinism_repeats": tally["repeat"],
            "methods": {m: tally[m] for m in ("full", "projection", "rows", "exact") if tally[m]},
            "elements_checked": tally["elements"],
            "distributions": dict(sorted(distributions.items())),
            "shapes": sorted({c.label for c in cases} - {s.split(" (")[0] for s in skipped}),
            "skipped_cases": skipped,
        }
        out.measurements = {
            "max_error_to_bound": worst_ratio,
            "probe_macs_per_s": macs_per_s,
            # Throughput over every case the device computed: a throttled or capped device shows here.
            "device_macs_per_s": tally["device_macs"] / max(tally["device_ns"] * 1e-9, 1e-9),
        }
        return out

    def verify_case(
        self, ctx: CheckContext, ops: Operands, exact: bool, evidence: dict[str, Any], out: Outcome,
        tally: Counter[str],
    ) -> float:
        """Run one case (twice when it is a repeat case), verify it, and record what went wrong."""
        tensors = ops.upload(ctx.device)
        first, seconds = product_on_device(ops, tensors, ctx.device)
        tally["device_ns"] += int(seconds * 1e9)
        tally["device_macs"] += ops.case.macs
        results = [first]
        if ops.case.repeat:
            results.append(compute(self.fmt, ops.case.op, tensors))
            tally["repeat"] += 1
        torchdev.synchronize(ctx.device)
        verifications = [verify_result(ops, r, exact) for r in results]
        v = verifications[0]
        tally[v.method] += 1
        tally["elements"] += ops.case.batch * ops.case.m * ops.case.n
        if exact:
            tally["exact_cases"] += 1
        if not v.ok:
            reproduced = 1 + sum(not verify_result(ops, compute(self.fmt, ops.case.op, tensors), exact).ok
                                 for _ in range(RETESTS))
            kind = "not bit-exact on exact integer operands" if exact else "outside the error bound"
            unit = "column projections" if v.method == "projection" else "elements"
            out.findings.append(self.finding(
                Severity.high, f"wrong {self.fmt.name} {ops.case.op} results: {kind}",
                f"{ops.case.label}: {v.bad} of {v.checked} checked {unit} "
                f"wrong ({v.method} check); the fault reproduced in {reproduced} of {1 + RETESTS} runs.",
                **evidence, method=v.method, bad=v.bad, checked=v.checked, worst=v.worst,
                secret_seed=v.secret_seed, reproduced=f"{reproduced}/{1 + RETESTS}"))
        if len(results) == 2 and bits_of(results[0]) != bits_of(results[1]):
            second = verifications[1]
            within = second.ok and v.ok
            out.findings.append(self.finding(
                Severity.low if within else Severity.high,
                f"non-deterministic {self.fmt.name} {ops.case.op}",
                f"{ops.case.label}: the same inputs gave different bits on a second run"
                + (", both within the error bound." if within else ", beyond the error bound."),
                **evidence, second_run_worst=second.worst))
        return max(x.max_ratio for x in verifications if x.ok) if any(x.ok for x in verifications) else 0.0


def draw_operands(case: Case, fmt: NumberFormat, rng: np.random.Generator, dist: str, exact: bool) -> Operands:
    """A case's operands on the host, from the case's own generator so that a finding can be replayed."""
    a_shape, b_shape, bias_shape = operand_shapes(case)
    if exact:
        k = case.k + (1 if bias_shape else 0)
        a, b = (draw_exact(rng, s, fmt, k) for s in (a_shape, b_shape))
        bias = draw_exact(rng, bias_shape, fmt, k) if bias_shape else None
    else:
        # A linear layer's bias is drawn with its pair; baddbmm's added input is a tensor of its own.
        vector = bias_shape is not None and len(bias_shape) == 1
        a, b, bias = draw_pair(rng, dist, a_shape, b_shape, fmt, bias_shape[0] if bias_shape and vector else 0)
        if bias_shape and not vector:
            bias = draw(rng, dist if dist in DISTRIBUTIONS else "normal", bias_shape, fmt)
    return Operands(case, fmt, a, b, bias)


def product_on_device(ops: Operands, tensors: tuple[torch.Tensor, ...], device: str) -> tuple[torch.Tensor, float]:
    """The device's product and its seconds, synchronised on both sides so that queued work neither
    before nor after is counted: the check's throughput (device_macs_per_s) is made of these."""
    torchdev.synchronize(device)
    t0 = time.perf_counter()
    result = compute(ops.fmt, ops.case.op, tensors)
    torchdev.synchronize(device)
    return result, time.perf_counter() - t0


def verify_result(ops: Operands, result: torch.Tensor, exact: bool) -> oracle.Verification:
    """Everything the host does once the device has answered: read the result back, bring the operands
    to one product's form, and verify (operand norms included, computed here because nothing is
    prepared before the device answers). benchmarks/verify_overhead.py times exactly this."""
    a, b = ops.host_augmented()
    c = to_host(result).reshape(a.shape[0], a.shape[1], -1)
    return verify_product(a, b, c, ops.fmt, exact, epilogue=ops.epilogue)


def verify_product(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, fmt: NumberFormat, exact: bool = False,
    norms: oracle.OperandNorms | None = None, epilogue: oracle.Epilogue | None = None,
) -> oracle.Verification:
    """The check's choice of method by cost: exact, full recompute, or projections plus sampled rows."""
    if exact or fmt.integer:
        return oracle.verify_exact(a, b, c)
    if a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2] <= FULL_CHECK_MACS:
        return oracle.verify_full(a, b, c, fmt, epilogue)
    projection, rows = oracle.verify_sampled(a, b, c, fmt, norms, epilogue=epilogue)
    return projection if not projection.ok or rows.ok else rows


# At smoke, the formats jobs train and serve in most: fp32 and bf16.
CHECKS = [
    GemmCheck("fp32", SQSD),
    GemmCheck("fp64"),
    GemmCheck("tf32"),
    GemmCheck("fp16"),
    GemmCheck("bf16", SQSD),
    GemmCheck("fp8_e4m3"),
    GemmCheck("int8"),
]
