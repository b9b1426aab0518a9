"""The self-test's terminal view: the detection matrix and the per-bit curves."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from chipaudit.selftest.curve import LAYOUT, Curve
from chipaudit.selftest.run import SelftestResult

PREFIX = "integrity."


def _short(check_id: str) -> str:
    return check_id.removeprefix(PREFIX)


def matrix_table(result: SelftestResult) -> Table:
    table = Table(title="detection matrix: simulated device by the checks that failed it")
    for column in ("simulated device", "trigger", "verdict", "caught by", "time"):
        table.add_column(column, overflow="fold")
    for d in result.devices:
        verdict = d.verdict.value.upper()
        style = "green" if d.ok else "bold red"
        expected = "expected PASS" if d.device.control else "expected FAIL"
        caught = ", ".join(_short(c) for c in d.caught_by) or ("—" if d.device.control else "NOT DETECTED")
        table.add_row(d.device.label, d.device.fault.trigger, f"[{style}]{verdict}[/] ({expected})", caught,
                      f"{d.seconds:.0f}s")
    return table


def _curve_row(c: Curve) -> list[str]:
    _, exponent, mantissa = LAYOUT[c.dtype]
    exp_rates = [c.rate("exponent", i) for i in range(exponent)]
    lowest = c.lowest_always_detected_mantissa()
    top = "none" if lowest is None else f"{mantissa - lowest} of {mantissa}"
    mantissa_rates = " ".join(f"{c.rate('mantissa', i):.2f}" for i in range(mantissa - 1, -1, -1))
    return [c.dtype, c.distribution.replace("_positive", " [0.5,1)"), f"{c.products:,}", f"{c.rate('sign', 0):.0%}",
            f"{min(exp_rates):.0%}", top, mantissa_rates, str(c.false_positives)]


def curve_table(result: SelftestResult) -> Table:
    table = Table(title="per-bit detection (single-bit flips in every product, k = 1024)")
    for column in ("format", "operands", "products", "sign", "exponent (min)", "mantissa always caught",
                   "mantissa rates, top bit first", "false positives"):
        table.add_column(column, overflow="fold")
    for c in result.curves:
        table.add_row(*_curve_row(c))
    return table


def render(result: SelftestResult, console: Console) -> None:
    console.print(matrix_table(result))
    console.print(curve_table(result))
    required = result.required_curve
    console.print(
        f"per-bit requirement (fp32, k = 1024, uniform [0.5, 1): sign, every exponent bit and the top 12 mantissa "
        f"bits at 100%, no false positive): {'met' if required.meets_requirement() else 'NOT MET'}",
        markup=False, highlight=False)
    console.print("With normally distributed operands, results near zero make low-order flips smaller than the "
                  "rounding error an honest device may make: no tolerance can detect them.",
                  markup=False, highlight=False)
    faults = [d for d in result.devices if not d.device.control]
    detected = sum(d.ok for d in faults)
    controls = [d for d in result.devices if d.device.control]
    false_alarms = sum(not d.ok for d in controls)
    style = "bold green" if result.ok else "bold red"
    verdict = "INTERRUPTED" if result.interrupted else "PASS" if result.ok else "FAIL"
    console.print(f"[{style}]selftest: {verdict}[/] — {detected} of {len(faults)} simulated "
                  f"faults detected, {false_alarms} false alarm(s) on {len(controls)} control(s), "
                  f"{sum(c.false_positives for c in result.curves)} false positive(s) on clean products; "
                  f"{result.seconds:.0f} s")
