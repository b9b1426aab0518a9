"""A check's key figures: the plain numbers among its measurements, by name.

Replay, history, Prometheus and the HTML report all show "figures" without knowing any check:
whatever a check measured as a number (at the top level, or one level down in a dict) is a figure.
Series and tables are left to the plots.
"""

from __future__ import annotations

import math
import re
from typing import Any

from chipaudit.report.model import CheckResult

# Figures whose value depends on how fast the machine is and how loaded it was, not on what the device
# computed: throughputs, rates, times. Replay shows them but never judges a device by them.
_TIMING = re.compile(r"(_per_s|_s|_ms|_us|_ns|seconds|time|rate|throughput|flops|tops|bandwidth|_bps|latency)$")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def scalar_figures(check: CheckResult) -> dict[str, float]:
    """Every finite number in the measurements, as 'name' or 'group.name'."""
    figures: dict[str, float] = {}
    for name, value in check.measurements.items():
        if isinstance(value, dict):
            for sub, inner in value.items():
                number = _number(inner)
                if number is not None:
                    figures[f"{name}.{sub}"] = number
        else:
            number = _number(value)
            if number is not None:
                figures[name] = number
    return figures


def is_timing(name: str) -> bool:
    return bool(_TIMING.search(name.lower()))


def format_figure(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:.4g}"
    return f"{value:.3e}"
