"""integrity.weights: products of the user's own model weights, with realistic activations, checked
against the host oracle.

Threat: a device that corrupts or recognises one particular model: a trigger keyed to its weights
(their values, a tensor's contents, its shape with its data) that no generic test data meets. An
operator about to serve a model on a device checks the device on that very model.

Method: the safetensors file given with `chipaudit run --weights FILE` is read as raw tensors (never
unpickled). Its sha256 is recorded with the audit's parameters, and checked again here, so that a
replay multiplies the same bytes. Of its 2-D floating-point tensors (fp16, bf16, fp32, fp64), each
level takes the largest LARGEST[level] and a seeded sample of SAMPLED[level] others; of each, a
seeded sample of at most ROWS[level] rows (nn.Linear stores W as (out, in): a row is an output
channel; a tensor with fewer rows is taken whole). Each is multiplied as a linear layer computes it,
x @ W^T, with its bias where the file holds one (NAME.bias beside NAME.weight), by TOKENS[level]
tokens of activations with real models' statistics (operands.py: a few outlier feature channels 10 to
100 times larger, and LayerNorm output), in the file's format and in fp32 (which holds fp16 and bf16
values exactly), and every element is judged by the host oracle's error bound (oracle/matmul.py), as
integrity.gemm does. A failing product is re-run to tell a reproducible fault from an intermittent
one. The tensors and rows taken follow from the check's seed; their names are in the coverage.

Pass: every element of every product within its bound.
Fail (high): an element out of bound, or the device refusing a product of these weights.
Skipped: no --weights given.

Cannot see: rows and tensors not taken (a trigger keyed to a whole large tensor is met only where
the tensor is taken whole); the model's real activations (these are synthetic, with real statistics:
the model is not run); products other than x @ W^T of 2-D tensors (convolutions, attention's own
products); integer (quantised) and 1-D tensors.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from chipaudit.checks.base import Check, CheckContext, NotApplicable, Outcome
from chipaudit.checks.integrity import gemm
from chipaudit.checks.integrity.operands import in_range, realistic
from chipaudit.devices import torchdev
from chipaudit.errors import InputError
from chipaudit.oracle.formats import FORMATS
from chipaudit.report.model import Category, Level, Severity

WEIGHTS_PARAM = "weights"
SHA256_PARAM = "weights_sha256"
# safetensors dtype names (the format's header) of the tensors audited, and the format each is in.
FILE_FORMATS = {"F16": "fp16", "BF16": "bf16", "F32": "fp32", "F64": "fp64"}
# How much of the file each level multiplies: the largest tensors (a model's widest layers), a seeded
# sample of the others, rows per tensor, tokens of activations.
LARGEST = {Level.quick: 2, Level.standard: 4, Level.deep: 8}
SAMPLED = {Level.quick: 2, Level.standard: 8, Level.deep: 24}
ROWS = {Level.quick: 256, Level.standard: 1024, Level.deep: 4096}
TOKENS = {Level.quick: 16, Level.standard: 32, Level.deep: 64}
# Activations a linear layer of a transformer reads: the residual stream with its outlier channels,
# and a LayerNorm's output.
ACTIVATIONS = ("outlier_activations", "normalised_activations")
# The file is hashed here again; this slow a disk still fits the time limit.
HASH_BYTES_PER_S = 50e6
_CHUNK = 1 << 22


class WeightsError(InputError):
    """A --weights file that cannot be audited: one line, exit 2."""


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # safetensors' name: F16, BF16, F32, F64
    shape: tuple[int, int]

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]


@contextmanager
def _opened(path: Path) -> Iterator[Any]:
    from safetensors import SafetensorError, safe_open

    if not path.exists():
        raise WeightsError(f"--weights {path}: no such file")
    if not path.is_file():
        raise WeightsError(f"--weights {path}: not a file")
    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"--weights {path}: not a safetensors file ({' '.join(str(e).split())})") from None


def listing(path: Path) -> list[Tensor]:
    """The 2-D floating-point tensors of a safetensors file (read from its header alone)."""
    with _opened(path) as f:
        tensors = []
        for name in list(f.keys()):
            piece = f.get_slice(name)
            shape, dtype = tuple(piece.get_shape()), piece.get_dtype()
            if len(shape) == 2 and dtype in FILE_FORMATS and shape[0] > 0 and shape[1] > 0:
                tensors.append(Tensor(name, dtype, (int(shape[0]), int(shape[1]))))
    if not tensors:
        raise WeightsError(f"--weights {path}: no 2-D floating-point tensor (fp16, bf16, fp32 or fp64) to audit")
    return tensors


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def params_for(path: Path) -> dict[str, str]:
    """The audit parameters for a weights file, checked up front: its absolute path and its sha256."""
    listing(path)
    return {WEIGHTS_PARAM: str(path.resolve()), SHA256_PARAM: sha256(path)}


def choose(tensors: list[Tensor], level: Level, rng: np.random.Generator) -> list[Tensor]:
    """The largest few, then a seeded sample of the rest."""
    by_size = sorted(tensors, key=lambda t: (-t.size, t.name))
    largest, rest = by_size[: LARGEST[level]], by_size[LARGEST[level]:]
    picks = rng.choice(len(rest), size=min(SAMPLED[level], len(rest)), replace=False) if rest else []
    return largest + [rest[i] for i in sorted(picks)]


def _host(t: torch.Tensor) -> np.ndarray:
    return gemm.to_host(t).astype(np.float64)


def read_rows(f: Any, tensor: Tensor, rows: np.ndarray) -> np.ndarray:
    """Chosen rows of a tensor, as exact float64 values, read row by row from the file's mapping."""
    piece = f.get_slice(tensor.name)
    if len(rows) == tensor.shape[0]:
        return _host(piece[:])
    return np.concatenate([_host(piece[int(r) : int(r) + 1]) for r in rows])


def read_bias(f: Any, tensor: Tensor, rows: np.ndarray) -> tuple[str | None, np.ndarray | None]:
    """The bias beside a weight (NAME.bias for NAME.weight), at the chosen rows, when the file has one."""
    if not tensor.name.endswith("weight"):
        return None, None
    name = tensor.name[: -len("weight")] + "bias"
    if name not in set(f.keys()):
        return None, None
    piece = f.get_slice(name)
    if tuple(piece.get_shape()) != (tensor.shape[0],) or piece.get_dtype() not in FILE_FORMATS:
        return None, None
    return name, _host(piece[:])[rows]


class WeightsCheck(Check):
    id = "integrity.weights"
    category = Category.integrity
    timeout_s: ClassVar[dict[Level, float]] = {Level.quick: 120.0, Level.standard: 600.0, Level.deep: 1800.0}

    def time_limit(self, level: Level, params: dict[str, Any]) -> float:
        path = Path(str(params.get(WEIGHTS_PARAM, "")))
        size = path.stat().st_size if params.get(WEIGHTS_PARAM) and path.is_file() else 0
        return self.timeout_s[level] + size / HASH_BYTES_PER_S

    def run(self, ctx: CheckContext) -> Outcome:
        if not ctx.params.get(WEIGHTS_PARAM):
            raise NotApplicable("no model weights given: chipaudit run --weights FILE.safetensors audits products "
                                "of your own model's weights")
        path = Path(str(ctx.params[WEIGHTS_PARAM]))
        tensors = listing(path)
        digest = sha256(path)
        recorded = ctx.params.get(SHA256_PARAM)
        if recorded and recorded != digest:
            raise WeightsError(f"{path} changed since the audit recorded it: sha256 {digest}, recorded {recorded}")
        chosen = choose(tensors, ctx.level, ctx.rng)
        with torchdev.strict_precision(), _opened(path) as f:
            return self._audit(ctx, f, chosen, digest)

    def _audit(self, ctx: CheckContext, f: Any, chosen: list[Tensor], digest: str) -> Outcome:
        out = Outcome()
        tally: Counter[str] = Counter()
        worst_ratio = 0.0
        audited: list[dict[str, Any]] = []
        for ti, tensor in enumerate(chosen):
            ctx.progress(ti, len(chosen), tensor.name)
            out_rows, fan_in = tensor.shape
            rows = np.sort(np.random.default_rng([ctx.seed, ti]).choice(
                out_rows, size=min(ROWS[ctx.level], out_rows), replace=False))
            w = read_rows(f, tensor, rows)
            bias_name, bias = read_bias(f, tensor, rows)
            formats = list(dict.fromkeys([FILE_FORMATS[tensor.dtype], "fp32"]))
            entry = {"name": tensor.name, "dtype": tensor.dtype, "shape": list(tensor.shape), "rows": len(rows),
                     "bias": bias_name, "formats": formats}
            audited.append(entry)
            if not (np.isfinite(w).all() and (bias is None or np.isfinite(bias).all())):
                # A buffer of masks or infinities, not a layer's weights: its products have no finite answer.
                entry["formats"], entry["not_audited"] = [], "holds values that are not finite"
                continue
            for fmt_name in formats:
                for ai, activations in enumerate(ACTIVATIONS):
                    fmt = FORMATS[fmt_name]
                    case = gemm.Case("linear", 1, TOKENS[ctx.level], fan_in, len(rows),
                                     f"{tensor.name} x {activations} in {fmt_name}")
                    rng = np.random.default_rng([ctx.seed, ti, ai])
                    b = fmt.quantize(w.T)[None]
                    a = in_range(realistic(rng, activations, (1, case.m, fan_in), fmt), b, fmt)
                    bias_values = fmt.quantize(bias) if bias is not None else np.zeros(len(rows))
                    ops = gemm.Operands(case, fmt, a, b, bias_values)
                    evidence = {"tensor": tensor.name, "rows": [int(r) for r in rows], "bias": bias_name,
                                "dtype": fmt_name, "activations": activations, "tokens": case.m, "seed": ctx.seed,
                                "tensor_index": ti, "weights_sha256": digest}
                    try:
                        ratio = self._product(ctx, ops, bias is not None, evidence, out, tally)
                    except (RuntimeError, TypeError, ValueError) as e:
                        out.findings.append(gemm.refusal(self, fmt, "linear", case.label, e, evidence))
                        continue
                    worst_ratio = max(worst_ratio, ratio)
        ctx.progress(len(chosen), len(chosen), "done")
        out.coverage = {"weights_sha256": digest, "tensors": audited, "products": tally["products"],
                        "elements_checked": tally["elements"], "methods": {m: tally[m] for m in ("full", "projection",
                                                                                              "rows") if tally[m]}}
        out.measurements = {"max_error_to_bound": worst_ratio}
        return out

    def _product(self, ctx: CheckContext, ops: gemm.Operands, has_bias: bool, evidence: dict[str, Any],
                 out: Outcome, tally: Counter[str]) -> float:
        tensors = ops.upload(ctx.device)
        tensors = tensors if has_bias else tensors[:2]
        result, _ = gemm.product_on_device(ops, tensors, ctx.device)
        v = gemm.verify_result(ops, result, exact=False)
        tally["products"] += 1
        tally[v.method] += 1
        tally["elements"] += ops.case.m * ops.case.n
        if not v.ok:
            reproduced = 1 + sum(not gemm.verify_result(ops, gemm.compute(ops.fmt, "linear", tensors), False).ok
                                 for _ in range(gemm.RETESTS))
            out.findings.append(self.finding(
                Severity.high, f"wrong {ops.fmt.name} products of the model's weights",
                f"{ops.case.label}: {v.bad} of {v.checked} checked elements outside the error bound "
                f"({v.method} check); the fault reproduced in {reproduced} of {1 + gemm.RETESTS} runs.",
                **evidence, method=v.method, bad=v.bad, checked=v.checked, worst=v.worst,
                secret_seed=v.secret_seed, reproduced=f"{reproduced}/{1 + gemm.RETESTS}"))
            return 0.0
        return v.max_ratio


CHECKS = [WeightsCheck()]
