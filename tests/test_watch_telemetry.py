"""The watch's device-health sampler against NVML readings over five intervals (recorded, then
synthesized: tests/fixtures/telemetry/README.md), and on the CPU."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from chipaudit.devices import nvml
from chipaudit.devices.vendor_reads import ERROR_KEY, ReplayReader
from chipaudit.report.model import Severity
from chipaudit.sensors.devicewatch import CHECK, TelemetrySampler, xid_severity

SERIES = Path(__file__).parent / "fixtures/telemetry/watch_h200_series.json"


class Series:
    """A ReplayReader whose answers move to the next step of the series on `advance()`, and the
    step's events as an event source."""

    def __init__(self) -> None:
        self.doc = json.loads(SERIES.read_text())
        self.base = json.loads((SERIES.parent / self.doc["base"]).read_text())
        self.registered, self.unavailable = list(nvml.EVENT_TYPES.values()), ""
        self.step = -1
        self.reader = ReplayReader(copy.deepcopy(self.base))
        self.advance()

    def advance(self) -> None:
        self.step += 1
        change = self.doc["steps"][self.step]["device"]
        device = self.reader.devices[0]
        if isinstance(change, str):  # every read answers this error
            for key in list(device):
                device[key] = {ERROR_KEY: change}
        else:
            device.update(change)

    def poll(self) -> list[dict[str, Any]]:
        return self.doc["steps"][self.step]["events"]

    def close(self) -> None:
        pass


def test_series_reports_what_changed_and_only_that() -> None:
    series = Series()
    sampler = TelemetrySampler("cuda:0", series.reader, 0, series)
    found = []
    for step in range(5):
        if step:
            series.advance()
        found.append(sampler.sample())
        if step == 1:
            metrics = sampler.metrics()
    assert found[0] == [] and found[1] == []  # the baseline, then a healthy load
    assert metrics["compute_clock_hertz"] == 1980e6 and metrics["power_watts"] == 430.0
    assert metrics["temperature_celsius"] == 45.0 and metrics["throttle_gpu_idle"] == 0.0
    assert metrics["ecc_uncorrected_volatile_errors"] == 0.0 and metrics["remapped_rows_uncorrectable"] == 0.0
    assert metrics["telemetry_available"] == 1.0 and metrics["nvml_events_available"] == 1.0
    assert "retired_pages_single_bit_ecc" not in metrics  # NVML_ERROR_NOT_SUPPORTED on the H200

    ecc = {f.title: f for f in found[2]}
    assert all(f.check == CHECK and f.severity is Severity.high for f in found[2])
    assert any(f.evidence.get("xid") == 94 for f in found[2])
    assert {f.evidence.get("counter") for f in found[2]} >= {
        "ecc_uncorrected_volatile_errors", "ecc_uncorrected_aggregate_errors", "remapped_rows_uncorrectable"}
    assert any(f.evidence.get("flag") == "remapped_rows_pending" for f in found[2])
    assert not any("corrected_volatile" in t and "uncorrected" not in t for t in ecc)  # corrected: a gauge only

    thermal = {f.evidence.get("reason"): f.severity for f in found[3] if "reason" in f.evidence}
    assert thermal == {"hw_thermal_slowdown": Severity.medium}  # the power cap is not news
    assert [f.evidence["xid"] for f in found[3] if "xid" in f.evidence] == [13]
    assert next(f for f in found[3] if "xid" in f.evidence).severity is Severity.medium

    assert [f.title for f in found[4]] == ["the device stopped answering NVML (GPU is lost)"]
    assert sampler.metrics()["xid_events_total"] == 2.0
    assert sampler.status().ran and "xid_critical_error" in sampler.status().detail


def test_xid_classes() -> None:
    assert xid_severity(79) is Severity.high and xid_severity(48) is Severity.high
    assert xid_severity(31) is Severity.medium


def test_process_list_from_the_recording() -> None:
    series = Series()
    assert nvml.running_pids(series.reader, 0)[0] is None  # the base recording holds no process list
    series.advance()
    assert nvml.running_pids(series.reader, 0) == ({4242}, {})


def test_cpu_reports_nothing_and_says_why() -> None:
    sampler = TelemetrySampler("cpu")
    assert sampler.sample() == []
    assert sampler.metrics()["telemetry_available"] == 0.0
    status = sampler.status()
    assert not status.ran and "CPU" in status.detail
