"""Behaviour probes: kill switches, tracking and monitoring, found by how the device behaves when its
world changes (issue #3). Each module's docstring is its check's contract."""

from __future__ import annotations

from chipaudit.checks.base import Check
from chipaudit.checks.behaviour import clock, cotenants, disguise, drift, location, sealed, sidechannel

CHECKS: list[Check] = [
    *sidechannel.CHECKS, *sealed.CHECKS, *clock.CHECKS, *location.CHECKS, *disguise.CHECKS, *drift.CHECKS,
    *cotenants.CHECKS,
]
