"""The check registry. Each family module under checks/<category>/ exports CHECKS; add yours here."""

from __future__ import annotations

from chipaudit.checks.base import Check


def all_checks() -> list[Check]:
    from chipaudit.checks.integrity import gemm

    return [*gemm.CHECKS]


def by_id() -> dict[str, Check]:
    return {c.id: c for c in all_checks()}


def select(patterns: list[str] | None) -> list[Check]:
    """Checks whose id equals a pattern or starts with it followed by a dot ('integrity' selects all
    integrity checks, 'integrity.gemm' the matrix products)."""
    checks = all_checks()
    if not patterns:
        return checks
    return [c for c in checks if any(c.id == p or c.id.startswith(p + ".") for p in patterns)]
