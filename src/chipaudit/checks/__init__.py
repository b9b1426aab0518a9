"""The check registry. Each family module under checks/<category>/ exports CHECKS; add yours here.

Modules named in CHIPAUDIT_CHECK_MODULES (comma-separated import paths, each exporting CHECKS) are
added after the built-in ones: site-specific checks plug in without touching the package. Workers
inherit the variable, so the parent and its workers always agree on the registry.

Two checks with one id would share a seed, a row in the history and a line in every report, so a
collision is refused where the registry is built, naming both sources; so is a plugin that cannot
be found. A plugin that raises while it is imported is a crash of its own, not bad input.
"""

from __future__ import annotations

import importlib

from chipaudit.checks.base import Check
from chipaudit.errors import InputError
from chipaudit.process import child, neutral

PLUGIN_ENV = "CHIPAUDIT_CHECK_MODULES"


class CheckRegistryError(InputError):
    """The registry cannot be built from what CHIPAUDIT_CHECK_MODULES names; the message is one line."""


def _plugin(name: str) -> list[Check]:
    if neutral.root() != neutral.TOOL:
        name = neutral.stage().module(name)  # this package's own modules, by the stage's name
        neutral.alias()  # a site module imports the tool by its name
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
            raise  # the plugin exists but imports something missing: its own crash
        raise CheckRegistryError(f"{PLUGIN_ENV} names {name}, which cannot be imported: no module {e.name}") \
            from None
    checks = getattr(module, "CHECKS", None)
    if not isinstance(checks, (list, tuple)):
        raise CheckRegistryError(f"{PLUGIN_ENV} names {name}, which has no CHECKS list")
    return list(checks)


def all_checks() -> list[Check]:
    from chipaudit.checks import behaviour
    from chipaudit.checks.integrity import burnin, corner, gemm, health, memory, operators, resident, weights
    from chipaudit.checks.performance import micro, workloads
    from chipaudit.checks.stack import capabilities, fingerprint

    # The stack checks come first: their probe then starts while no other process of this audit holds
    # the device (a GPU in exclusive-process mode admits one).
    families = [fingerprint, capabilities, health, gemm, weights, corner, operators, memory, burnin, resident, micro,
                workloads, behaviour]
    sources = [(family.__name__, list(family.CHECKS)) for family in families]
    sources += [(name, _plugin(name)) for name in filter(None, (m.strip() for m in
                                                                 (child.setting(PLUGIN_ENV) or "").split(",")))]
    origin: dict[str, str] = {}
    checks: list[Check] = []
    for source, family_checks in sources:
        for check in family_checks:
            if check.id in origin:
                raise CheckRegistryError(f"two checks have the id {check.id}: one from {origin[check.id]}, "
                                         f"one from {source}")
            origin[check.id] = source
            checks.append(check)
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
