"""The run-level ladder, after DCGM's: seconds, minutes, a quarter hour and more.

Budgets are the wall-clock targets of a whole audit on a 2-core CPU machine; checks size their
work to them and the watchdog enforces each check's own limit.
"""

from __future__ import annotations

from chipaudit.report.model import Level

BUDGET_S: dict[Level, float] = {Level.quick: 120.0, Level.standard: 600.0, Level.deep: 1800.0}

DESCRIPTION: dict[Level, str] = {
    Level.quick: "about a minute: every format on representative shapes, the most telling probes",
    Level.standard: "minutes: adds more shapes and model widths, and full probe sweeps",
    Level.deep: "half an hour: adds the largest products and long sustained runs",
}
