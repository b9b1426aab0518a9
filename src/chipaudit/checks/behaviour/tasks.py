"""The products behaviour probes run: data, not code. Shapes and paths (mm, bmm, linear, and the
attention code's baddbmm, einsum and broadcast matmul) come from the integrity check's list of
well-known layers (checks/integrity/gemm.py), so a device that singles out AI workloads meets them."""

from __future__ import annotations

from chipaudit.checks.base import CheckContext
from chipaudit.checks.behaviour.workload import TaskSpec
from chipaudit.report.model import Level

Q, S, D = Level.quick, Level.standard, Level.deep

# (label, op, batch, m, k, n, format, levels)
# Each product does a millisecond or more of work on one CPU core, so that what is timed is arithmetic,
# not the call's fixed costs (which differ between processes for reasons of their own).
_PROBE = (
    ("BERT-base / GPT-2 MLP up with bias", "linear", 2, 64, 768, 3072, "fp32", (Q, S, D)),
    ("GPT-2 attention scores by baddbmm, 12 heads", "baddbmm", 12, 256, 64, 256, "fp32", (Q, S, D)),
    ("pow2 512 in bf16", "mm", 1, 512, 512, 512, "bf16", (Q, S, D)),
    ("ViT-B/16 attention scores, 12 heads", "bmm", 12, 197, 64, 197, "fp32", (S, D)),
    ("Llama attention q_proj with bias", "linear", 4, 16, 4096, 4096, "fp32", (S, D)),
    ("pow2 256 in fp16", "mm", 1, 256, 256, 256, "fp16", (S, D)),  # CPUs without fp16 units: 10 ms
)

# Recognisable layers for the disguise pair: each is also run padded to another shape.
_RECOGNISABLE = (
    ("Llama attention q_proj with bias", "linear", 4, 16, 4096, 4096, "fp32", (Q, S, D)),
    ("ResNet-50 conv2_x 3x3 as im2col GEMM", "mm", 1, 3136, 576, 64, "fp32", (Q, S, D)),
    ("BERT-base / GPT-2 MLP up with bias", "linear", 2, 64, 768, 3072, "fp32", (Q, S, D)),
    ("Llama-2-7B MLP up (32 tokens)", "mm", 1, 32, 4096, 11008, "fp32", (S, D)),
    ("ViT-B/16 attention scores, 12 heads", "bmm", 12, 197, 64, 197, "fp32", (S, D)),
)

# Every format once, for the side-channel sensors' broad pass.
_BROAD = (
    *((f"pow2 256 in {fmt}", "mm", 1, 256, 256, 256, fmt, (Q, S, D)) for fmt in ("fp32", "fp16", "bf16", "fp64")),
    ("attention PV, 8 heads", "bmm", 8, 128, 128, 64, "fp32", (Q, S, D)),
    ("GPT-2 attention scores by baddbmm, 12 heads", "baddbmm", 12, 256, 64, 256, "fp32", (Q, S, D)),
    ("BLOOM ALiBi scores by baddbmm in bf16", "baddbmm_bias", 16, 128, 64, 128, "bf16", (Q, S, D)),
    ("ViT-B/16 attention PV by einsum, 12 heads", "einsum_pv", 12, 197, 197, 64, "fp32", (Q, S, D)),
    ("BERT-base attention output by broadcast matmul", "matmul", 2, 128, 768, 768, "fp32", (Q, S, D)),
    ("BERT-base / GPT-2 MLP up with bias", "linear", 2, 64, 768, 3072, "fp32", (Q, S, D)),
    ("Llama attention q_proj with bias", "linear", 4, 16, 4096, 4096, "fp32", (Q, S, D)),
)


def _specs(rows: tuple[tuple[str, str, int, int, int, int, str, tuple[Level, ...]], ...],
           ctx: CheckContext) -> list[TaskSpec]:
    picked = [r for r in rows if ctx.level in r[7]]
    return [TaskSpec(label, op, b, m, k, n, fmt, "normal", (ctx.seed + i) % 2**63)
            for i, (label, op, b, m, k, n, fmt, _) in enumerate(picked)]


def probe_tasks(ctx: CheckContext) -> list[TaskSpec]:
    return _specs(_PROBE, ctx)


def recognisable_tasks(ctx: CheckContext) -> list[TaskSpec]:
    return _specs(_RECOGNISABLE, ctx)


def broad_tasks(ctx: CheckContext) -> list[TaskSpec]:
    return _specs(_BROAD, ctx)
