"""Power and clocks under load: the recorder, the vendor readings, and the hidden-cap rule on recorded
H200 telemetry (tests/fixtures/telemetry, README there says what is measured and what synthesized)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest

from chipaudit.devices import amd, nvml
from chipaudit.devices.vendor_reads import ReplayReader
from chipaudit.report.model import Severity
from chipaudit.sensors import power
from chipaudit.sensors.power import PowerRecorder, Recording, VendorSource, judge_hidden_cap

FIXTURES = Path(__file__).parent / "fixtures"


def _fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "telemetry" / f"{name}.json").read_text())


def _modified(name: str, **changes: Any) -> Recording:
    """A copy of a healthy recording with every reading after the first second changed."""
    m = copy.deepcopy(_fixture(name))
    for row in m["telemetry"]:
        if row["t_s"] >= power.RAMP_S:
            row.update(changes)
    return Recording.from_measurements(m)


@pytest.mark.parametrize("name", ["h200_fp32_burnin", "h200_bf16_power_capped"])
def test_the_healthy_h200_is_no_finding(name: str) -> None:
    recording = Recording.from_measurements(_fixture(name))
    assert judge_hidden_cap(recording) is None
    verdict = power.assess(recording)
    assert verdict.judged and verdict.verdict.startswith("no cap")
    assert recording.limits() == []


def test_clocks_held_low_with_no_reason_is_a_finding() -> None:
    recording = _modified("h200_fp32_burnin", compute_clock_mhz=1100.0, power_w=300.0)
    cap = judge_hidden_cap(recording)
    assert cap is not None
    severity, title, detail, evidence = cap
    assert severity is Severity.medium and "compute clock at 56%" in title
    assert "43% of its enforced power limit" in detail
    assert evidence["held_readings"] == evidence["judged_readings"] == 37
    assert evidence["thresholds"]["compute_clock_floor"] == power.COMPUTE_CLOCK_FLOOR


def test_a_power_cap_that_stops_naming_itself_is_a_finding() -> None:
    # The bf16 run with its reasons removed, its power held well below the limit and its clocks below the
    # floor: nothing explains the lowered clocks any more.
    cap = judge_hidden_cap(_modified("h200_bf16_power_capped", reasons=[], power_w=450.0, compute_clock_mhz=1300.0))
    assert cap is not None and "compute clock at 66%" in cap[1]
    # Clocks lowered as the power cap left them (median 0.76 of the maximum) stay above the floor in most
    # readings: the rule leaves a moderate drop to the throughput checks rather than risk a false alarm.
    assert judge_hidden_cap(_modified("h200_bf16_power_capped", reasons=[], power_w=450.0)) is None


def test_power_at_the_limit_explains_low_clocks_without_a_reason() -> None:
    # NVML's power is a one-second average: a reading at the limit may lag the reason.
    assert judge_hidden_cap(_modified("h200_bf16_power_capped", reasons=[])) is None


def test_a_memory_clock_held_low_is_a_finding() -> None:
    cap = judge_hidden_cap(_modified("h200_fp32_burnin", memory_clock_mhz=1600.0))
    assert cap is not None and "memory clock at 50%" in cap[1] and "compute" not in cap[1]


def test_a_few_low_readings_are_moments_not_a_cap() -> None:
    m = copy.deepcopy(_fixture("h200_fp32_burnin"))
    for row in m["telemetry"][10:17]:  # 7 of 37 readings under load
        row["compute_clock_mhz"] = 900.0
    assert judge_hidden_cap(Recording.from_measurements(m)) is None


def test_without_reasons_to_read_the_rule_says_it_could_not_judge() -> None:
    m = copy.deepcopy(_fixture("h200_fp32_burnin"))
    for row in m["telemetry"]:
        row.pop("reasons")
        row["compute_clock_mhz"] = 1100.0
    recording = Recording.from_measurements(m)
    assert judge_hidden_cap(recording) is None
    assert recording.limits() == ["hidden-cap rule not judged: clocks were low in 37 of 37 readings and the "
                                  "device gives no throttle reasons to read"]


def test_a_short_or_idle_recording_is_not_judged() -> None:
    m = _fixture("h200_fp32_burnin")
    short = Recording.from_measurements({**m, "telemetry": m["telemetry"][:6]})
    assert not power.assess(short).judged and judge_hidden_cap(short) is None
    idle = _modified("h200_fp32_burnin", reasons=["gpu_idle"], compute_clock_mhz=345.0)
    assert judge_hidden_cap(idle) is None
    assert "named the device idle" in idle.limits()[0]


def test_the_summary_reports_power_as_a_share_of_the_enforced_limit() -> None:
    summary = Recording.from_measurements(_fixture("h200_bf16_power_capped")).summary()
    assert summary["enforced_limit_w"] == 700.0 and summary["max_compute_clock_mhz"] == 1980.0
    assert 0.98 < summary["power_share_median"] <= 1.01 and summary["power_share_max"] <= 1.01
    assert summary["compute_clock_share_median"] < 0.85 and summary["memory_clock_share_median"] == 1.0
    assert dict(summary["reasons_named"])["sw_power_cap"] > 0.7
    assert summary["hidden_cap_rule"].startswith("no cap")


class _SeriesReader:
    """NVML as a reader, answering each reading from the next recorded row (the recorded static values
    from the H200's real NVML recording, the series from the fixture)."""

    source = "nvml"

    def __init__(self, rows: list[dict[str, Any]]):
        self.static = ReplayReader.from_file(FIXTURES / "vendor" / "nvml_h200_recorded.json")
        self.rows, self.i = rows, -1

    def device_count(self) -> int:
        return 1

    def read(self, function: str, *args: str, device: int | None = None) -> Any:
        if function == "nvmlDeviceGetPowerUsage":  # the first call of each reading
            self.i = min(self.i + 1, len(self.rows) - 1)
        row = self.rows[max(self.i, 0)]
        by_call = {"nvmlDeviceGetPowerUsage": round(row["power_w"] * 1000),
                   "nvmlDeviceGetEnforcedPowerLimit": round(row["power_limit_w"] * 1000),
                   "nvmlDeviceGetClockInfo": row["compute_clock_mhz" if "SM" in args[0] else "memory_clock_mhz"]
                   if args else None,
                   "nvmlDeviceGetTemperature": row["temperature_c"],
                   "nvmlDeviceGetCurrentClocksEventReasons": sum(
                       bit for bit, name in nvml.CLOCK_EVENT_REASONS.items() if name in row["reasons"])}
        if function in by_call:
            return by_call[function]
        return self.static.read(function, *args, device=device)


def test_the_recorder_samples_nvml_in_the_background() -> None:
    rows = _fixture("h200_bf16_power_capped")["telemetry"]
    source = VendorSource("nvml", _SeriesReader(rows), 0, nvml.load_reading, nvml.load_ceilings)
    with PowerRecorder("cuda:0", period_s=0.01, source=source) as recorder:
        time.sleep(0.3)
    recording = recorder.recording
    assert recording.ceilings == {"max_compute_clock_mhz": 1980.0, "max_memory_clock_mhz": 3201.0}
    assert len(recording.samples) >= 10 and recording.status.ran
    first, second = recording.samples[:2]
    assert first.reasons == ["gpu_idle"] and first.power_w == pytest.approx(80.006)
    assert second.reasons == ["sw_power_cap"] and second.power_limit_w == 700.0
    assert all(b.t_s > a.t_s for a, b in zip(recording.samples, recording.samples[1:], strict=False))
    reported = recording.measurements()
    assert reported["telemetry"][0]["reasons"] == ["gpu_idle"] and reported["power"]["source"] == "nvml"


def test_recorded_vendor_libraries_give_readings_and_ceilings() -> None:
    h200 = ReplayReader.from_file(FIXTURES / "vendor" / "nvml_h200_recorded.json")
    assert nvml.load_ceilings(h200, 0) == {"max_compute_clock_mhz": 1980, "max_memory_clock_mhz": 3201}
    reading = nvml.load_reading(h200, 0)
    assert reading["power_limit_w"] == 700.0 and reading["reasons"] == ["gpu_idle"]
    assert reading["temperature_c"] is None  # not in the inventory's recording: not read, never invented
    mi300x = ReplayReader.from_file(FIXTURES / "vendor" / "amdsmi_mi300x.json")
    assert amd.load_ceilings(mi300x, 0) == {"max_compute_clock_mhz": 2100, "max_memory_clock_mhz": 1300}
    reading = amd.load_reading(mi300x, 0)
    assert reading["power_limit_w"] == 750.0 and reading["compute_clock_mhz"] == 137
    assert reading["reasons"] is None  # amdsmi_get_violation_status: NOT_SUPPORTED on this part


def test_on_the_cpu_it_records_what_psutil_offers_or_says_it_cannot() -> None:
    with PowerRecorder("cpu", period_s=0.02) as recorder:
        time.sleep(0.1)
    recording = recorder.recording
    if recording.source is None:
        assert recording.limits()[0].startswith("power and clock telemetry not available")
        assert recording.samples == []
    else:
        assert recording.source == "psutil" and recording.samples
        assert all(s.power_w is None and s.reasons is None for s in recording.samples)
        assert recording.limits() == ["hidden-cap rule not judged: no throttle reasons to read on this device"]
    assert judge_hidden_cap(recording) is None


def test_an_unknown_device_kind_is_not_available() -> None:
    with PowerRecorder("xpu:0") as recorder:
        pass
    assert not recorder.recording.status.ran
    assert "no management library for xpu" in recorder.recording.detail


def _burn_in_with(monkeypatch: pytest.MonkeyPatch, rows: list[dict[str, Any]]) -> Any:
    """A short CPU burn-in whose device telemetry is NVML answering from `rows`, one row per reading."""
    from chipaudit.checks.base import CheckContext
    from chipaudit.checks.integrity import burnin
    from chipaudit.report.model import Level

    monkeypatch.setattr(burnin, "SIZES", (128,))
    monkeypatch.setattr(burnin, "SETTLE_S", 0.0)
    monkeypatch.setattr(power, "PERIOD_S", 0.05)
    monkeypatch.setattr(power, "RAMP_S", 0.05)
    monkeypatch.setattr(power, "open_source", lambda device: (
        VendorSource("nvml", _SeriesReader(rows), 0, nvml.load_reading, nvml.load_ceilings), "NVML (recorded)"))
    return burnin.BurnInCheck().run(CheckContext(device="cpu", level=Level.quick, seed=3,
                                                 params={"burn_in_seconds": 1.5}))


def test_the_burn_in_reports_its_telemetry_and_a_hidden_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    healthy = _fixture("h200_fp32_burnin")["telemetry"]
    out = _burn_in_with(monkeypatch, healthy)
    assert not [f for f in out.findings if "hidden cap" in f.title]
    assert out.measurements["power"]["source"] == "nvml" and len(out.measurements["telemetry"]) >= 10
    assert out.measurements["power"]["hidden_cap_rule"].startswith("no cap")
    capped = [{**r, "compute_clock_mhz": 1100.0} if r["t_s"] else r for r in healthy]
    out = _burn_in_with(monkeypatch, capped)
    assert [f.severity for f in out.findings if "possible hidden cap" in f.title] == [Severity.medium]
