"""The self-test end to end: simulated devices audited in their own workers, the detection matrix, the
JSON, and the command line."""

from __future__ import annotations

import json

import pytest
from conftest import chipaudit

from chipaudit.report.model import Verdict
from chipaudit.selftest import run
from chipaudit.selftest.faults import Fault, Throttle


@pytest.mark.slow
def test_selftest_detects_faults_and_passes_the_control() -> None:
    devices = [
        run.SimulatedDevice("control", Fault(), control=True, burn_in_seconds=run.LONG_BURN_IN_S),
        next(d for d in run.builtin_devices() if isinstance(d.fault, Throttle)),
    ]
    seen: list[str] = []
    result = run.run_selftest(devices, on_check=lambda device, check: seen.append(check))
    control, throttle = result.devices
    assert control.verdict is Verdict.pass_ and control.ok, control.findings
    assert throttle.verdict is Verdict.fail and throttle.caught_by == ["integrity.burnin"], (
        throttle.findings, throttle.throughput_curve)
    assert result.ok and result.required_curve.meets_requirement()
    data = json.loads(json.dumps(result.as_dict()))
    assert data["detection_matrix"][throttle.device.label]["integrity.burnin"] is True
    assert data["detection_matrix"]["control"] == {c: False for c in result.checks}
    assert len(data["per_bit"]["curves"]) == 6 and data["per_bit"]["requirement"]["met"]
    assert "integrity.burnin" in seen


def test_builtin_devices_cover_the_trigger_classes() -> None:
    devices = run.builtin_devices()
    assert sum(d.control for d in devices) == 1
    triggers = " ".join(d.fault.trigger for d in devices)
    for kind in ("none", "values", "structure", "shape", "precision", "cumulative use", "time under load", "format",
                 "data", "being unwatched"):
        assert kind in triggers


def test_cli_usage_error_is_one_line(tmp_path) -> None:
    done = chipaudit("selftest", "--json", str(tmp_path / "missing" / "out.json"), timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--json" in done.stderr
