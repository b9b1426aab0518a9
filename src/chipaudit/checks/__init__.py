"""The check registry. Each family module under checks/<category>/ exports CHECKS; add yours here.

Modules named in CHIPAUDIT_CHECK_MODULES (comma-separated import paths, each exporting CHECKS) are
added after the built-in ones: site-specific checks plug in without touching the package. Workers
inherit the variable, so the parent and its workers always agree on the registry.
"""

from __future__ import annotations

import importlib
import os

from chipaudit.checks.base import Check

PLUGIN_ENV = "CHIPAUDIT_CHECK_MODULES"


def all_checks() -> list[Check]:
    from chipaudit.checks import behaviour
    from chipaudit.checks.integrity import burnin, corner, gemm, memory, operators
    from chipaudit.checks.performance import micro, workloads
    from chipaudit.checks.stack import capabilities, fingerprint

    # The stack checks come first: their probe then starts while no other process of this audit holds
    # the device (a GPU in exclusive-process mode admits one).
    checks: list[Check] = [*fingerprint.CHECKS, *capabilities.CHECKS, *gemm.CHECKS,
                           *corner.CHECKS, *operators.CHECKS, *memory.CHECKS, *burnin.CHECKS, *micro.CHECKS,
                           *workloads.CHECKS, *behaviour.CHECKS]
    for name in filter(None, (m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(","))):
        checks.extend(importlib.import_module(name).CHECKS)
    return checks


def by_id() -> dict[str, Check]:
    return {c.id: c for c in all_checks()}


def select(patterns: list[str] | None) -> list[Check]:
    """Checks whose id equals a pattern or starts with it followed by a dot ('integrity' selects all
    integrity checks, 'integrity.gemm' the matrix products)."""
    checks = all_checks()
    if not patterns:
        return checks
    return [c for c in checks if any(c.id == p or c.id.startswith(p + ".") for p in patterns)]
