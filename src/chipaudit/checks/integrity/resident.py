"""The resident job: one device process that serves a small real model for the whole audit.

Threat: a device stack that corrupts products only in what looks like a user's job, and never in an
audit's: a trigger on a process's age (after a minute of computing), on its count of products, on a
weight matrix that has met many different inputs (as a served model's weights do), on the batch sizes
and formats of serving. Every other device process of an audit lives for seconds and gets fresh
random operands for every product, so such a trigger never fires in them.

Method: the audit starts this check first, in a process of its own under the same sensors as its
workers (runner/resident.py), and asks it to end after its last other check. It serves one decoder
block of Qwen2.5-0.5B (serving.py: F.linear with and without bias, torch.matmul and torch.bmm over a
growing KV cache) to sessions of typical serving batch sizes, a prompt's prefill and then a token at
a time, in the formats models are served in (bf16, fp16 and fp32 on an accelerator; fp32 most on a
CPU, which serves in it, with bf16 and fp16 steps between), the same weights for the whole job and
new hidden states every step. It keeps to DUTY of the device (a core on a CPU) by resting between
steps, so that the audit's other checks, whose timings matter, see the device nearly idle; when the
others are done before each served format's weights have met MIN_INPUTS[level] inputs, it goes on
at full pace until they have.

Verification, by the host oracle (oracle/matmul.py), with nothing drawn before the device answered:
each layer's products are gathered into windows of WINDOW_ROWS rows, and each window is checked by
Freivalds projections (r^T C against (r^T A) W^T, r drawn after the answers; every product is in one)
and a secret ROW_SHARE of its rows recomputed element by element, with the projections' and the rows'
error bounds of integrity.gemm and the bias as an epilogue; the weights' column norms, fixed, are
computed once. A failing window is checked again product by product to name the step. Attention's
products, whose second operand (the cache) changes every step, are recomputed in full at once.

Pass: every product within its bound. Fail (high): any product outside it (the finding names the
format, layer, step, shape, how often that weight had been used and the process's age, observed
against bound; the audit's seed replays the job step for step), a step refused by a format the job
served before (an error), and, judged by the runner, the process dying or not answering within its
deadline. Refusing a format at its first step is weighed by what the device declares of it
(checks/refusal.py).

Cannot see: a trigger that waits longer than the audit (hours of use, 10^6 products), or for the
share of the device a real job takes (the job rests for 1 - DUTY of the time), or for a model, shape
or format it does not serve (int8 and fp8 serving, other widths: integrity.weights multiplies your own
model's weights); errors below the bounds; in a window's projections, an error smaller than the row
bound outside the sampled rows.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import psutil
import torch

from chipaudit.checks.base import Check, CheckContext, NotApplicable, Outcome
from chipaudit.checks.integrity import serving
from chipaudit.checks.integrity.gemm import verify_product
from chipaudit.checks.integrity.operands import REALISTIC
from chipaudit.checks.refusal import REFUSALS, refusal
from chipaudit.devices import capability, torchdev
from chipaudit.oracle import matmul as oracle
from chipaudit.oracle.formats import FORMATS, NumberFormat, as_computed_on
from chipaudit.report.model import Category, Finding, Level, Severity

# The share of the device (of one core, on a CPU) the job keeps to while the audit's other checks run:
# the quick level must still fit its 180 s on a 2-core CPU, and the checks that time the device
# (performance, the behaviour probes' speed comparisons, the burn-in's throttle) must see it all but
# idle. Measured as the larger of the step's wall time and the process's CPU time.
DUTY = 0.1
# The formats each step serves in turn: where models are served (bf16 first, then fp16 and fp32) on an
# accelerator; on a CPU, where bf16 and fp16 products run 2-80x slower than fp32 without AMX, mostly fp32.
ROTATION = {"accelerator": ("bf16", "bf16", "fp16", "fp32"), "cpu": ("fp32", "fp32", "fp32", "bf16", "fp16")}
# Sessions: sequences per static batch (decode batch sizes of serving, smaller on a CPU), prompt tokens
# per sequence, decode steps after the prefill.
BATCHES = {"accelerator": (1, 4, 8, 16, 32, 64), "cpu": (1, 2, 4, 8, 16)}
PROMPTS = {"accelerator": (16, 64, 128), "cpu": (4, 8, 16)}
DECODE_STEPS = (8, 48)
# When the others end sooner, the job goes on until each served format's weights met this many inputs:
# twice the 32 of the red team's serving trigger at quick, more at the longer levels.
MIN_INPUTS = {Level.quick: 64, Level.standard: 256, Level.deep: 1024}
# Rows per verification window of a layer: one pass over the weights per window, so that the host's
# cost per product falls as the window grows, while a fault still shows within a few dozen steps.
WINDOW_ROWS = 256
# The share of each window's rows recomputed element by element, drawn in secret after the answers.
ROW_SHARE = 1 / 8
# Streams of the job's seed: the step's hidden states, a session's shape.
STEP_STREAM, SESSION_STREAM = 1, 2


@dataclass
class _Window:
    """A layer's products not yet verified, with the step each came from."""

    products: list[tuple[int, serving.Product]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(p.a.shape[1] for _, p in self.products)


@dataclass
class _Step:
    """What the evidence of a wrong product needs about the step that made it."""

    index: int  # the job's step
    format_step: int  # the format's own step: how many inputs its weights had met before
    age_s: float  # the process's age
    batch: int
    tokens: int


@dataclass
class _Served:
    """One format's replica of the model and its serving state."""

    replica: serving.Replica
    declared: capability.Capability
    steps: int = 0
    sessions: int = 0
    session: serving.Session | None = None
    windows: dict[str, _Window] = field(default_factory=dict)


class ResidentCheck(Check):
    id = "integrity.resident"
    category = Category.integrity
    resident = True
    # Its deadline is per step (runner/resident.py); this bounds a run in an ordinary worker.
    timeout_s: ClassVar[dict[Level, float]] = {Level.quick: 300.0, Level.standard: 900.0, Level.deep: 3600.0}

    def run(self, ctx: CheckContext) -> Outcome:
        kind = "cpu" if torch.device(ctx.device).type == "cpu" else "accelerator"
        with torchdev.strict_precision():
            return _Job(self, ctx, kind).serve()


class _Job:
    def __init__(self, check: ResidentCheck, ctx: CheckContext, kind: str):
        self.check, self.ctx, self.kind = check, ctx, kind
        self.not_served: dict[str, str] = {}
        names = list(dict.fromkeys(ROTATION[kind]))
        for name in names:
            declared = capability.of_format(ctx.device, name)
            if declared.lacking:
                self.not_served[name] = declared.reason
        self.rotation = [n for n in ROTATION[kind] if n not in self.not_served]
        if not self.rotation:
            raise NotApplicable(f"the device lacks every format the job serves: {self.not_served}")
        weights = serving.Weights.draw(np.random.default_rng([ctx.seed, 0]))
        self.served = {n: _Served(serving.Replica(weights, as_computed_on(FORMATS[n], ctx.device), ctx.device),
                                  capability.of_format(ctx.device, n)) for n in dict.fromkeys(self.rotation)}
        self.findings: dict[tuple[str, str], dict[str, Any]] = {}  # (format, product) -> first and count
        self.refused: list[Finding] = []
        self.tally: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.uses: Counter[tuple[str, str]] = Counter()
        self.batches: set[int] = set()
        self.worst = 0.0
        self.busy_s = 0.0
        self.born = psutil.Process().create_time()
        self.first: float | None = None
        self.last = 0.0

    # ----- the loop -----

    def serve(self) -> Outcome:
        minimum = MIN_INPUTS[self.ctx.level]
        step = 0
        while self.rotation:
            stopping = self.ctx.stop(0.0)
            if stopping and all(s.steps >= minimum for s in self.served.values() if s.replica.fmt.name
                                in self.rotation):
                break
            name = self.rotation[step % len(self.rotation)]
            wall, cpu = time.perf_counter(), time.process_time()
            self._step(name, step)
            busy = max(time.perf_counter() - wall, time.process_time() - cpu)
            self.busy_s += busy
            step += 1
            self.ctx.progress(step, minimum * len(self.rotation),
                              f"{name} step {step}: {self.tally['products']} products, "
                              f"{sum(f['count'] for f in self.findings.values())} wrong")
            if not stopping:
                self.ctx.stop(busy * (1 / DUTY - 1))
        for name, served in self.served.items():
            for layer, window in served.windows.items():
                self._verify_window(name, layer, window)
        return self._outcome(step)

    def _step(self, name: str, index: int) -> None:
        served = self.served[name]
        if served.session is None or served.session.done:
            served.session = self._session(name, served.sessions)
            served.sessions += 1
        session = served.session
        rng = np.random.default_rng([self.ctx.seed, STEP_STREAM, index])
        values = REALISTIC["outlier_activations"].values(rng, (session.batch, session.tokens, serving.HIDDEN), -1)
        now = time.time()
        self.first = self.first or now
        step = _Step(index, served.steps, now - self.born, session.batch, session.tokens)
        products: list[serving.Product] = []
        try:
            serving.forward(served.replica, session, served.replica.upload(values), products.append)
            torchdev.synchronize(self.ctx.device)
        except REFUSALS as e:
            first = served.steps == 0
            self.refused.append(refusal(
                self.check, f"a {name} serving step", e, served.declared if first else None,
                where=f"step {index}", seed=self.ctx.seed, dtype=name, step=index, format_step=served.steps,
                batch=session.batch, tokens=session.tokens))
            self.rotation = [n for n in self.rotation if n != name]
            return
        self.last = time.time()
        served.steps += 1
        self.batches.add(session.batch)
        for product in products:
            self._record(name, served, product, step)

    def _session(self, name: str, number: int) -> serving.Session:
        rng = np.random.default_rng([self.ctx.seed, SESSION_STREAM, list(FORMATS).index(name), number])
        return serving.Session(batch=int(rng.choice(BATCHES[self.kind])), prompt=int(rng.choice(PROMPTS[self.kind])),
                               decode_steps=int(rng.integers(*DECODE_STEPS)))

    # ----- verification -----

    def _record(self, name: str, served: _Served, product: serving.Product, step: _Step) -> None:
        self.tally["products"] += 1
        self.calls[serving.CALLS[product.name]] += 1
        self.uses[(name, product.name)] += 1
        if product.b is not None:  # attention, over the cache: at once, in full
            fmt = served.replica.fmt
            v = verify_product(product.a.astype(np.float64), product.b.astype(np.float64), product.c, fmt)
            self.tally["full"] += 1
            self._judge(name, product.name, v, step, product)
            return
        window = served.windows.setdefault(product.name, _Window())
        window.products.append((step, product))
        if window.rows >= WINDOW_ROWS:
            self._verify_window(name, product.name, window)

    def _verify_window(self, name: str, layer_name: str, window: _Window) -> None:
        if not window.products:
            return
        replica = self.served[name].replica
        host = replica.host[layer_name]
        bias = serving.LAYER[layer_name].bias
        a = np.concatenate([p.a for _, p in window.products], axis=1)
        c = np.concatenate([p.c for _, p in window.products], axis=1)
        projection, rows = self._verify_linear(a, c, host, replica.fmt, bias,
                                               max(oracle.SAMPLED_ROWS, math.ceil(a.shape[1] * ROW_SHARE)))
        self.tally["projected"] += len(window.products)
        self.tally["rows_recomputed"] += rows.checked // max(1, c.shape[2])
        self.tally["rows"] += a.shape[1]
        failed = projection if not projection.ok else rows
        if failed.ok:
            self.worst = max(self.worst, projection.max_ratio, rows.max_ratio)
        elif (name, layer_name) in self.findings:
            self.findings[(name, layer_name)]["count"] += len(window.products)
        else:  # the first failing window of this layer: which of its products are wrong
            for step, product in window.products:
                v = self._verify_linear(product.a, product.c, host, replica.fmt, bias, product.a.shape[1])
                self._judge(name, layer_name, v[0] if not v[0].ok else v[1], step, product)
            if (name, layer_name) not in self.findings:  # wrong only together: the window is the evidence
                self._judge(name, layer_name, failed, window.products[0][0], serving.Product(layer_name, a, c))
        window.products.clear()

    @staticmethod
    def _verify_linear(a: np.ndarray, c: np.ndarray, host: serving.HostLayer, fmt: NumberFormat, bias: bool,
                       rows: int) -> tuple[oracle.Verification, oracle.Verification]:
        """Projections and `rows` secret rows of x W^T (+ b) as one product of [x, 1] and [W^T; b]."""
        if bias:
            a = np.concatenate([a, np.ones((*a.shape[:2], 1), dtype=a.dtype)], axis=2)
        norms = oracle.OperandNorms(np.abs(a).max(axis=2).astype(np.float64), host.col_norm[None])
        return oracle.verify_sampled(a, host.b[None], c, fmt, norms, rows=min(rows, a.shape[1]),
                                     epilogue=oracle.Epilogue(added_terms=1) if bias else None)

    def _judge(self, name: str, product_name: str, v: oracle.Verification, step: _Step,
               product: serving.Product) -> None:
        if v.ok:
            self.worst = max(self.worst, v.max_ratio)
            return
        key = (name, product_name)
        if key in self.findings:
            self.findings[key]["count"] += 1
            return
        batch, m, k = product.a.shape
        self.findings[key] = {"count": 1, "evidence": {
            "seed": self.ctx.seed, "dtype": name, "layer": product_name, "call": serving.CALLS[product_name],
            "step": step.index, "weight_inputs_before": step.format_step,
            "process_age_s": round(step.age_s, 1), "session_batch": step.batch, "tokens": step.tokens,
            "shape": [batch, m, k, product.c.shape[2]], "method": v.method, "bad": v.bad, "checked": v.checked,
            "worst": v.worst, "secret_seed": v.secret_seed, "model": serving.SOURCE}}

    # ----- the report -----

    def _outcome(self, steps: int) -> Outcome:
        findings = list(self.refused)
        # One finding per format: its first wrong product as the evidence, every product it touched counted.
        for name in dict.fromkeys(n for n, _ in self.findings):
            found = {product: f for (n, product), f in self.findings.items() if n == name}
            e = min((f["evidence"] for f in found.values()), key=lambda e: e["step"])
            findings.append(self.check.finding(
                Severity.high, f"wrong {name} products in the resident job",
                f"{e['layer']} ({e['call']}) at step {e['step']}: {e['bad']} of {e['checked']} checked "
                f"{'column projections' if e['method'] == 'projection' else 'elements'} outside the error bound, "
                f"after its weights had met {e['weight_inputs_before']} inputs, {e['process_age_s']:.0f} s into the "
                f"process; {sum(f['count'] for f in found.values())} wrong {name} products in all, of "
                f"{', '.join(found)}. Replay the audit's seed to repeat the job step for step.",
                **e, wrong_products={product: f["count"] for product, f in found.items()}))
        uses = [n for (_, product), n in self.uses.items() if product in serving.LAYER]
        products = self.tally["products"]
        linear = products - self.tally["full"]
        coverage: dict[str, Any] = {
            "model": serving.SOURCE,
            "steps": steps,
            "products": products,
            "formats": {n: {"steps": s.steps, "sessions": s.sessions} for n, s in self.served.items()},
            "calls": dict(self.calls),
            "batch_sizes": sorted(self.batches),
            "process_age_s": round(self.last - self.born, 1) if self.first else 0.0,
            "serving_s": round(self.last - self.first, 1) if self.first else 0.0,
            "weights": len(self.served) * len(serving.LAYERS),
            "weight_reuse": {"least": min(uses, default=0), "most": max(uses, default=0)},
            "verified": {
                "projected_share": round(self.tally["projected"] / linear, 4) if linear else 0.0,
                "recomputed_rows_share": round(self.tally["rows_recomputed"] / self.tally["rows"], 4)
                if self.tally["rows"] else 0.0,
                "attention_recomputed": self.tally["full"],
            },
            "duty": DUTY,
        }
        if self.not_served:
            coverage["not_served"] = self.not_served
        measurements = {"busy_s": round(self.busy_s, 3), "max_error_to_bound": self.worst}
        return Outcome(findings=findings, coverage=coverage, measurements=measurements)


CHECKS = [ResidentCheck()]
