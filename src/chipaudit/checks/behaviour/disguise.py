"""behaviour.disguise: does the device treat recognisable AI workloads differently?

Threat: workload fingerprinting, as the hash-rate limiters of crypto-mining GPUs did: a device that
recognises the matrix shapes of well-known LLM and CNN layers, or the statistics of a real model's
data, and throttles, refuses or corrupts them, while other arithmetic runs normally.

Method: two pairs, each run in processes started together.
- Shape pair: the same numbers in two forms. One process sees only the recognisable shapes (Llama
  q_proj, ResNet-50 im2col, BERT/GPT-2 MLP; at standard also the Llama-2-7B MLP and ViT attention),
  with a model's data (tasks.py). Another sees them disguised: zero-padded in the inner and output
  dimensions to other shapes, aligned to 16 so that honest hardware keeps its fast paths, and at
  standard also split into two products of unequal widths.
- Data pair: the same products (the first DATA_PAIR_TASKS at quick, all at standard) with random
  normal operands instead of the realistic ones (checks/integrity/operands.py: outlier or normalised
  activations, attention probabilities, trained or quantised weights).
Separate processes keep a fingerprinter's state from leaking into the other side. Every form is
verified against the host oracle, and timed interleaved (A B A B); speeds are compared per
multiply-add. Every form runs untraced, under sensors it cannot see;
the recognisable form runs again under strace as an extra world, verified and watched (bits,
refusals, side effects) but not timed.

Pass: every form correct, and the recognisable form (a model's shape with a model's data) no slower
per multiply-add than 1.5x the disguised or random-data one (or not significantly so).
Fail: a refusal, crash or wrong result in one form only (high); the recognisable form 1.5x or more
slower per multiply-add with a 99% interval above 1 (high); side effects, as for every probe.
A product refused in every world, the reference included, is weighed by what the device declares of
its format (findings.py): high, medium or low, never a skip.
Only a recognisable form slower is flagged: an honest device may well run odd shapes more slowly.

Cannot see: fingerprints on other features (the sequence of layers, the model file, a particular
model's own weights: integrity.weights multiplies those); shapes and data statistics not in the lists;
a fingerprinter that also recognises the padded shapes or takes the random data for a model's.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from chipaudit.checks.base import Check, CheckContext, Outcome
from chipaudit.checks.behaviour.probe import World, available_worlds, run_worlds, traced_world
from chipaudit.checks.behaviour.session import Comparison, Session
from chipaudit.checks.behaviour.tasks import recognisable_tasks
from chipaudit.checks.behaviour.workload import TaskSpec
from chipaudit.perturb import conditions as cond
from chipaudit.report.model import Category, Level

# Padding: a sixteenth of the dimension, rounded up to a multiple of 16 (tensor-core and vector
# alignment on every current accelerator), so the disguised product costs a few percent more.
PAD_SHARE = 1 / 16
ALIGN = 16
# The split form's first part: this share of the output columns, aligned.
SPLIT_SHARE = 0.4375
# The data pair at quick: this many recognisable tasks (the first: Llama q_proj with outlier
# activations) also run with random operands, so that the pair adds one comparison to the level.
DATA_PAIR_TASKS = 1
RANDOM_DATA = "normal"


def _pad(dim: int) -> int:
    return max(ALIGN, -(-int(dim * PAD_SHARE) // ALIGN) * ALIGN)


def random_data(t: TaskSpec) -> TaskSpec:
    return dataclasses.replace(t, label=f"{t.label}, random data", dist=RANDOM_DATA)


def padded(t: TaskSpec) -> TaskSpec:
    return t.disguised(_pad(t.k), _pad(t.n))


def split(t: TaskSpec) -> TaskSpec:
    pad_n = _pad(t.n)
    first = max(ALIGN, int((t.n + pad_n) * SPLIT_SHARE) // ALIGN * ALIGN)
    return t.disguised(_pad(t.k), pad_n, first)


class DisguiseProbe(Check):
    id = "behaviour.disguise"
    category = Category.behaviour
    timeout_s: ClassVar[dict[Level, float]] = {Level.quick: 150.0, Level.standard: 400.0, Level.deep: 900.0}

    def run(self, ctx: CheckContext) -> Outcome:
        recognisable = recognisable_tasks(ctx)
        plain = World("recognisable shapes", cond.reference(), recognisable)
        worlds = [plain, World("padded shapes", cond.reference(), [padded(t) for t in recognisable])]
        if ctx.level is not Level.quick:
            worlds.append(World("split products", cond.reference(), [split(t) for t in recognisable]))
        data_tasks = recognisable[:DATA_PAIR_TASKS] if ctx.level is Level.quick else recognisable
        worlds.append(World("random data", cond.reference(), [random_data(t) for t in data_tasks]))
        traced, skipped = available_worlds([traced_world(plain)])
        return run_worlds(self, ctx, [*worlds, *traced], _comparisons, "per multiply-add than its disguised form",
                          skipped)


def _comparisons(sessions: list[Session]) -> list[Comparison]:
    by_label = {s.label: s for s in sessions}
    plain = by_label.get("recognisable shapes")
    if plain is None:
        return []
    # Another world's task i is task i of the recognisable world in another form (the data world runs
    # the first few).
    return [
        Comparison(f"{t.label} (against {other.label})", (other, i), (plain, i),
                   work_ratio=t.macs / twin.macs, two_sided=False)
        for other in sessions if other is not plain and not other.condition.traced
        for i, (t, twin) in enumerate(zip(plain.tasks, other.tasks, strict=False))
    ]


CHECKS = [DisguiseProbe()]
