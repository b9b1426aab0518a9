"""The HTML report: series become plots, hostile strings stay text, and real Chromium renders it."""

from __future__ import annotations

import json
from pathlib import Path

from evidence_support import check_rendering, synthetic_report
from hypothesis import given, settings
from hypothesis import strategies as st
from page_support import assert_loads_nothing, embedded, page_requests, text_of

from chipaudit.report import html, plots
from chipaudit.report.model import Category, CheckResult, Finding, Report, Severity, Status


def _check(measurements: dict[str, object]) -> CheckResult:
    return CheckResult(id="x.y", category=Category.performance, status=Status.passed, measurements=measurements)


def test_series_of_every_shape_become_plots() -> None:
    found = plots.plots_for(_check({
        "throughput_per_s": [1.0, 2.0, None, 4.0],
        "per_bit": {"0": 0.0, "1": 0.5, "10": 1.0},
        "probe": {"baseline": [1, 2, 3], "perturbed": [1, 5, 3]},
        "samples": [{"t": 0, "temp_c": 40, "label": "a"}, {"t": 10, "temp_c": 45, "label": "b"}],
        "efficiency": {"fp32": 0.8, "fp16": 0.6},
        "max_error_to_bound": 0.2, "note": "text", "flags": [True, False], "empty": [], "single": [1.0],
    }))
    by_title = {p.title: p for p in found}
    assert set(by_title) == {"throughput_per_s", "per_bit", "probe", "samples: temp_c", "efficiency"}
    assert by_title["throughput_per_s"].lines["throughput_per_s"] == [(0.0, 1.0), (1.0, 2.0), (3.0, 4.0)]
    assert by_title["per_bit"].lines["per_bit"][-1] == (10.0, 1.0)
    assert set(by_title["probe"].lines) == {"baseline", "perturbed"}
    assert by_title["samples: temp_c"].x_label == "t"
    assert by_title["efficiency"].bars == [("fp32", 0.8), ("fp16", 0.6)]
    assert all(plots.to_svg(p).startswith("<svg") for p in found)
    assert plots.plots_for(_check({"a": 1.0, "b": 2.0})) == []  # unrelated figures are not a bar chart


def test_a_table_of_columns_plots_each_column_over_its_axis() -> None:
    found = plots.plots_for(_check({"curve": {"t_s": [0, 1, 2], "macs_per_s": [5e9, 6e9, None], "cores": [1, 2, 2]}}))
    assert [(p.title, p.x_label) for p in found] == [("curve: macs_per_s", "t_s"), ("curve: cores", "t_s")]
    assert found[0].lines["macs_per_s"] == [(0.0, 5e9), (1.0, 6e9)]
    assert plots._labels([2630.0, 2632.5, 2635.0]) == ["2.63k", "2.632k", "2.635k"]  # told apart


def test_extreme_values_plot_without_overflow() -> None:
    found = plots.plots_for(_check({
        "wide": [1e300, -1e300], "subnormal": [0.0, 5e-324], "keys": {"1e300": 1, "-1e300": 2},
        "big_ints": [2**70, 3], "flat": [5, 5, 5], "records": [{"t": 1e300, "y": 1}, {"t": -1e300, "y": 2}],
        "beyond": [1e308, -1e308, float("inf")],
    }))
    assert len(found) == 6
    for plot in found:
        svg = plots.to_svg(plot)
        assert "nan" not in svg and "inf" not in svg


def test_long_series_keep_their_extremes() -> None:
    points = [(float(i), 1.0) for i in range(100_000)]
    points[54_321] = (54_321.0, 0.2)  # a short dip in a long burn-in
    reduced = plots._reduce(points)
    assert len(reduced) <= plots.MAX_POINTS
    assert (54_321.0, 0.2) in reduced


def _hostile() -> Report:
    report = synthetic_report(failing=True)
    report.device.name = "<img src=x onerror=alert(1)>"
    report.findings.append(Finding(check="integrity.gemm.bf16", category=Category.integrity, severity=Severity.medium,
                                   title="</script><script>alert(2)</script>", detail="a & b < c",
                                   evidence={"payload": "</script>"}))
    return report


def test_hostile_strings_stay_text_and_nothing_is_fetched() -> None:
    report = _hostile()
    page = html.to_html(report)
    assert "<img src=x" not in page and "<script>alert" not in page
    assert "&lt;/script&gt;&lt;script&gt;alert(2)" in page
    seen = text_of(page)  # the hostile strings are there, as text a reader sees
    assert "<img src=x onerror=alert(1)>" in seen and "</script><script>alert(2)</script>" in seen
    assert embedded(page, "report-data") == json.loads(report.to_json())
    assert page.count("<script") == 2  # the data (never executed) and the one inline script
    assert_loads_nothing(page)


def test_chromium_renders_a_failing_report_with_plots(tmp_path: Path) -> None:
    report = _hostile()
    html.write(report, tmp_path / "fail.html")
    check_rendering(tmp_path / "fail.html", report.verdict.value, tmp_path)
    assert page_requests(tmp_path / "fail.html", tmp_path) == []


def test_chromium_renders_a_passing_report(tmp_path: Path) -> None:
    html.write(synthetic_report(), tmp_path / "pass.html")
    check_rendering(tmp_path / "pass.html", "pass", tmp_path)
    assert page_requests(tmp_path / "pass.html", tmp_path) == []


def test_the_network_check_sees_a_page_that_fetches(tmp_path: Path) -> None:
    """The check above would pass for a browser that logged nothing: a page that does fetch must show."""
    page = tmp_path / "fetches.html"
    page.write_text('<!doctype html><img src="http://example.invalid/x.png">'
                    '<link rel="stylesheet" href="https://fonts.example.invalid/a.css">')
    assert sorted(page_requests(page, tmp_path)) == ["http://example.invalid/x.png",
                                                     "https://fonts.example.invalid/a.css"]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=12)
    | st.dictionaries(st.text(max_size=6) | st.floats(allow_nan=False).map(str), inner, max_size=6),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None, database=None)
@given(st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=6))
def test_any_measurements_render_without_error(measurements: dict[str, object]) -> None:
    report = synthetic_report()
    report.checks = [report.checks[0]]
    report.checks[0].measurements = measurements
    for plot in plots.plots_for(report.checks[0]):
        assert plots.to_svg(plot).endswith("</svg>")
    assert html.to_html(report).endswith("</html>\n")


def test_burn_in_telemetry_plots_beside_its_throughput_and_chromium_draws_it(tmp_path: Path) -> None:
    telemetry = json.loads((Path(__file__).parent / "fixtures/telemetry/h200_bf16_power_capped.json").read_text())
    windows = [float(t) for t in range(1, 11)]
    burn_in = CheckResult(id="integrity.burnin", category=Category.integrity, status=Status.passed, measurements={
        "throughput_curve": {"t_s": windows, "macs_per_s": [3.1e14 + 1e12 * (i % 3) for i in range(10)]},
        **telemetry})
    found = plots.plots_for(burn_in)
    assert [p.title for p in found] == [
        "throughput_curve: macs_per_s", "telemetry: power_w, power_limit_w",
        "telemetry: compute_clock_mhz, memory_clock_mhz", "telemetry: temperature_c"]
    assert all(p.x_label == "t_s" for p in found)  # one time axis: seconds since the burn began
    power = found[1]
    assert set(power.lines) == {"power_w", "power_limit_w"} and power.lines["power_limit_w"][0] == (0.0, 700.0)
    assert {name for _, _, name in power.spans} == {"gpu_idle", "sw_power_cap"}
    assert power.spans[0] == (0.0, 0.25, "gpu_idle")
    svg = plots.to_svg(power)
    assert svg.count("fill-opacity") >= 8 and "sw_power_cap: " in svg and ">sw_power_cap</text>" in svg
    report = synthetic_report()
    report.add(burn_in, [])
    html.write(report, tmp_path / "telemetry.html")
    page = (tmp_path / "telemetry.html").read_text()
    assert "telemetry: power_w, power_limit_w" in text_of(page)
    assert_loads_nothing(page)
    check_rendering(tmp_path / "telemetry.html", "pass", tmp_path)
