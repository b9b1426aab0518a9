"""Fleet consensus: every device of one model computes the same seeded products, and the devices are
compared with each other, so that a fleet verifies products at the devices' own speed, even products
too large for the host oracle to recompute.

Threat: a device that returns products slightly unlike its peers' — a weak part or a trojan whose
error hides under the oracle's error bound, or shows only in products too large for the host to check
in full.

Method (the check, `fleet.consensus`, run inside every fleet audit): in every product format the device
does not declare lacking, one square product (mm) of operands drawn, as integrity.gemm draws them
(checks/integrity/gemm.py, operands.py, products.py), from the check's seed, which a fleet run gives
every device alike. Each product is computed twice; the check reports the SHA-256 of each result's bits,
a block of the result at seeded positions (the same on every device) with its oracle bound, and the
oracle's verdict on that block and on a second block at positions drawn in secret after the product
exists. The comparison (`compare`, in the fleet report) is per model (the device name) and product:
- Determinism is established by the devices themselves: a model's product is deterministic when a
  majority of its devices computed it twice bit for bit (torch's declaration,
  torch.are_deterministic_algorithms_enabled, is recorded beside).
- Deterministic: the majority digest among those devices is the model's answer; a device with another
  digest in either run, or none where the majority has one (refused, absent), is a high finding.
- Not deterministic: recorded as such, and the seeded blocks are compared instead: a device whose
  block is outside the oracle's bound, or further from the model's median than twice the bound (the
  most two honest devices can differ), is a high finding.

Pass: every device agrees with its model's majority. Fail (high): a device unlike its majority, or a
sampled block outside the oracle's bound. Cannot see: a fault every device of the model shares (the
majority is then wrong; the sampled blocks still meet the oracle); in a non-deterministic product,
errors below the bound or outside the sampled blocks; models with fewer than MIN_DEVICES devices.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import Counter
from typing import Any, ClassVar

import numpy as np
import torch

from chipaudit.checks.base import Check, CheckContext, Outcome
from chipaudit.checks.integrity import gemm
from chipaudit.checks.integrity.products import compute
from chipaudit.checks.refusal import REFUSALS, answer_within
from chipaudit.devices import capability, torchdev
from chipaudit.oracle import matmul as oracle
from chipaudit.oracle import tolerance
from chipaudit.oracle.formats import FORMATS, as_computed_on
from chipaudit.report.model import Category, Level, Severity

CHECK_ID = "fleet.consensus"
MODULE = __name__  # named in CHIPAUDIT_CHECK_MODULES by the fleet's audits
# Square sizes of the product per level. On accelerators beyond what the host oracle recomputes at full
# speed (gemm.FULL_CHECK_MACS is 2**31 multiply-adds; 4096^3 is 2**36): the digests are the check there.
SIZES = {"cpu": {Level.quick: 256, Level.standard: 512, Level.deep: 1024},
         "accelerator": {Level.quick: 4096, Level.standard: 8192, Level.deep: 8192}}
# Side of the square blocks of each result read back as values and checked by the oracle.
BLOCK = 8
# Realistic operands (an LLM's linear layer with outlier channels) for every format: the data a
# served model feeds a device, which a trojan keyed to real workloads waits for.
OPERANDS = "llm_outliers"
# A model needs this many devices before a majority can single one out.
MIN_DEVICES = 3


def _formats() -> list[str]:
    return [c.fmt.name for c in gemm.CHECKS]


class ConsensusCheck(Check):
    id = CHECK_ID
    category = Category.integrity
    timeout_s: ClassVar[dict[Level, float]] = {Level.quick: 120.0, Level.standard: 300.0, Level.deep: 900.0}

    def run(self, ctx: CheckContext) -> Outcome:
        size = SIZES["cpu" if ctx.device.startswith("cpu") else "accelerator"][ctx.level]
        products: dict[str, dict[str, Any]] = {}
        out = Outcome()
        for i, name in enumerate(_formats()):
            ctx.progress(i, len(gemm.CHECKS), name)
            declared = capability.of_format(ctx.device, name)
            if declared.lacking:
                products[name] = {"absent": declared.reason}
                continue
            precision = torchdev.tf32_allowed() if name == "tf32" else torchdev.strict_precision()
            with precision:
                try:
                    products[name] = self._product(ctx, name, size, i, out)
                except REFUSALS as e:
                    products[name] = {"refused": f"{type(e).__name__}: {e}"[:300]}
        out.measurements = {"consensus": {"declared_deterministic": torch.are_deterministic_algorithms_enabled(),
                                          "size": size, "operands": OPERANDS, "products": products}}
        out.coverage = {"formats": [n for n, p in products.items() if "digests" in p], "size": size,
                        "limits": ["compared with the other devices of its model in the fleet report only"]}
        return out

    def _product(self, ctx: CheckContext, name: str, size: int, index: int, out: Outcome) -> dict[str, Any]:
        fmt = as_computed_on(FORMATS[name], ctx.device)
        case = gemm.Case("mm", 1, size, size, size, f"consensus {size}^3")
        rng = np.random.default_rng([ctx.seed, index])
        ops = gemm.draw_operands(case, fmt, rng, OPERANDS, exact=False)
        tensors = ops.upload(ctx.device)
        first = answer_within(lambda: compute(fmt, "mm", tensors))
        second = compute(fmt, "mm", tensors)
        torchdev.synchronize(ctx.device)
        digests = [hashlib.sha256(gemm.bits_of(r)).hexdigest() for r in (first, second)]
        a, b = ops.host_augmented()
        seeded = (np.sort(rng.choice(size, BLOCK, replace=False)), np.sort(rng.choice(size, BLOCK, replace=False)))
        hidden = np.random.default_rng(secrets.randbits(64))  # drawn now that the product exists
        secret = tuple(np.sort(hidden.choice(size, BLOCK, replace=False)) for _ in range(2))
        result: dict[str, Any] = {"format": name, "shape": [size, size, size], "digests": digests}
        for label, (rows, cols) in (("seeded", seeded), ("secret", secret)):
            where = (torch.from_numpy(rows)[:, None].to(first.device), torch.from_numpy(cols)[None, :].to(first.device))
            block = gemm.to_host(first[where]).astype(np.float64)
            sub_a, sub_b = a[:, rows, :], b[:, :, cols]
            v = gemm.verify_product(sub_a, sub_b, block[None], fmt)
            if label == "seeded":
                expected = np.matmul(sub_a, sub_b)[0]
                bound = tolerance.element_bound(fmt, size, np.abs(expected), np.sqrt(np.matmul(
                    sub_a * sub_a, sub_b * sub_b))[0]) * oracle.oracle_factor(fmt)
                result["block"] = {"rows": rows.tolist(), "cols": cols.tolist(), "values": block.ravel().tolist(),
                                   "bound": bound.ravel().tolist()}
            result[f"{label}_ratio"] = v.max_ratio
            if not v.ok:
                out.findings.append(self.finding(
                    Severity.high, f"wrong {name} product in the consensus sample",
                    f"{v.bad} of {v.checked} sampled elements of a {size}^3 {name} product outside the error bound.",
                    dtype=name, shape=[1, size, size, size], seed=ctx.seed, case_index=index, block=label,
                    rows=rows.tolist(), cols=cols.tolist(), worst=v.worst))
        return result


CHECKS = [ConsensusCheck()]


def with_this_check(modules: str) -> str:
    """A CHIPAUDIT_CHECK_MODULES value (checks/__init__.py) with this module among its plugins."""
    names = [m.strip() for m in modules.split(",") if m.strip()]
    return ",".join(names if MODULE in names else [*names, MODULE])


def compare(devices: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One model's consensus from its devices' measurements (device label, the check's "consensus"):
    per product, how determinism was established, the majority, and the devices unlike it."""
    names = sorted({n for _, c in devices for n, p in c["products"].items() if "digests" in p})
    products, deviants = [], {}
    for name in names:
        entries = [(label, c["products"].get(name, {})) for label, c in devices]
        computed = [(label, p) for label, p in entries if "digests" in p]
        repeatable = [(label, p) for label, p in computed if p["digests"][0] == p["digests"][1]]
        deterministic = len(repeatable) * 2 > len(devices)
        row: dict[str, Any] = {"format": name, "devices": len(devices), "repeatable": len(repeatable),
                               "deterministic": deterministic,
                               "established": f"{len(repeatable)} of {len(devices)} devices computed it twice bit "
                                              "for bit" + ("" if deterministic else "; compared on sampled blocks")}
        if len(devices) < MIN_DEVICES:
            row["judged"] = f"not judged: fewer than {MIN_DEVICES} devices"
            products.append(row)
            continue
        if deterministic:
            majority, count = Counter(p["digests"][0] for _, p in repeatable).most_common(1)[0]
            row.update(majority=majority[:16], majority_size=count)
            if count * 2 <= len(devices):
                row["judged"] = "not judged: no digest is a majority"
                products.append(row)
                continue
            for label, p in entries:
                if "digests" not in p:
                    why = p.get("refused") or p.get("absent") or "not computed"
                    deviants.setdefault(label, []).append(f"{name}: no result ({why}) where the majority has one")
                elif set(p["digests"]) != {majority}:
                    deviants.setdefault(label, []).append(
                        f"{name}: digest {' / '.join(d[:16] for d in p['digests'])} unlike the majority's "
                        f"{majority[:16]} ({count} of {len(devices)})")
        else:
            _compare_blocks(name, entries, deviants)
        row["judged"] = "judged"
        products.append(row)
    return {"products": products, "deviants": [{"device": d, "why": w} for d, w in sorted(deviants.items())],
            "declared_deterministic": sorted({str(c.get("declared_deterministic")) for _, c in devices})}


def _compare_blocks(name: str, entries: list[tuple[str, dict[str, Any]]], deviants: dict[str, list[str]]) -> None:
    """Where results differ honestly, each device's seeded block against the oracle's bound and against
    the model's median: two honest devices differ by at most twice the bound."""
    blocks = {label: p["block"] for label, p in entries if "block" in p}
    if not blocks:
        return
    values = np.array([b["values"] for b in blocks.values()])
    median = np.median(values, axis=0)
    for (label, block), row in zip(blocks.items(), values, strict=True):
        bound = np.array(block["bound"])
        apart = np.abs(row - median) > 2 * bound
        if apart.any():
            deviants.setdefault(label, []).append(
                f"{name}: {int(apart.sum())} of {row.size} sampled elements further from the model's median than "
                "twice the error bound")
    for label, p in entries:
        if "digests" in p and max(p.get("seeded_ratio", 0.0), p.get("secret_ratio", 0.0)) > 1.0:
            deviants.setdefault(label, []).append(f"{name}: sampled elements outside the oracle's error bound")
        elif "digests" not in p:
            deviants.setdefault(label, []).append(f"{name}: no result where other devices of its model have one")
