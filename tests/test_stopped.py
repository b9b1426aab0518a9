"""A device that stops answering in the middle of a check: a high finding when it stops again at the
same point in a fresh worker on a host whose load does not explain it, an error otherwise. The
devices are stacks built as a trojan would be (tests/test_core_gemm.py `trojan`): a sitecustomize.py
whose CPU matrix kernels answer, then never return."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import chipaudit, load
from test_core_gemm import trojan

from chipaudit.checks import stopped
from chipaudit.report.model import Category
from chipaudit.sensors.hostload import Sample, Window

KINDS = ("mm", "addmm", "bmm", "baddbmm")


def stops_after(dtype: str, answers: int, when: str = "True") -> str:
    """A payload: the `answers`+1-th product of `dtype` in a process, and every later one, never returns
    while `when` holds."""
    return f"""
        if a.dtype == torch.{dtype}:
            state["{dtype}"] = state.get("{dtype}", 0) + 1
            if state["{dtype}"] > {answers} and ({when}):
                import time
                while True:
                    time.sleep(60)
    """


def audit(tmp_path: Path, env: dict[str, str], *only: str) -> tuple[int, dict]:
    out = tmp_path / "r.json"
    args = [a for check in only for a in ("--only", check)]
    p = chipaudit("run", "--device", "cpu", "--level", "quick", *args, "--seed", "5", "--json", str(out), env=env,
                  timeout=600)
    return p.returncode, load(out)


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "answers", "check"), [
    ("float64", 12, "integrity.gemm.fp64"),
    ("float32", 20, "integrity.gemm.fp32"),
])
def test_a_device_that_stops_answering_after_its_first_answers_fails_the_audit(
        tmp_path: Path, dtype: str, answers: int, check: str) -> None:
    t0 = time.monotonic()
    code, report = audit(tmp_path, trojan(tmp_path, stops_after(dtype, answers), KINDS), check)
    elapsed = time.monotonic() - t0
    assert code == 1 and report["verdict"] == "fail", report["checks"]
    [result] = report["checks"]
    assert result["status"] == "failed"
    [f] = [f for f in report["findings"] if f["severity"] == "high"]
    assert f["check"] == check and f["category"] == "integrity"
    assert f["title"] == f"the device stopped answering in {check}"
    first, again = f["evidence"]["stopped"], f["evidence"]["retest"]
    assert first["point"] == again["point"] and first["answers_before"] >= 1
    assert first["silent_s"] >= first["limit_s"] >= stopped.FLOOR_S
    assert f["evidence"]["seed"] == result["seed"] and f"--only {check} --seed 5" in f["evidence"]["replay"]
    assert first["host"]["control_slowdown"] < stopped.CONTROL_EXPLAINS
    # Two silences of the floor, two starts and the way to the point: well inside the check's limit twice.
    assert elapsed < 150


@pytest.mark.slow
def test_a_stop_that_does_not_repeat_in_a_fresh_worker_stays_an_error(tmp_path: Path) -> None:
    """A trigger keyed on what the process did before (fp32 products in it): the audit's worker runs
    fp32 before fp64 and stops; the fresh worker runs fp64 alone and answers throughout."""
    env = trojan(tmp_path, stops_after("float64", 12, when='state.get("float32", 0) > 0')
                 + stops_after("float32", 10**9), KINDS)
    code, report = audit(tmp_path, env, "integrity.gemm.fp32", "integrity.gemm.fp64")
    assert code == 3 and report["verdict"] == "inconclusive"
    status = {c["id"]: c for c in report["checks"]}
    assert status["integrity.gemm.fp32"]["status"] == "passed"
    fp64 = status["integrity.gemm.fp64"]
    assert fp64["status"] == "error"
    assert "a fresh process with the same seed did not stop there: it ended passed" in fp64["reason"]
    assert not [f for f in report["findings"] if f["severity"] in ("medium", "high", "critical")]


@pytest.mark.slow
def test_a_slow_device_that_answers_passes(tmp_path: Path) -> None:
    """Every fp64 product late by up to 0.15 s, at random: slower than any honest one, and answering."""
    payload = """
        if a.dtype == torch.float64:
            import random, time
            time.sleep(random.uniform(0.0, 0.15))
    """
    code, report = audit(tmp_path, trojan(tmp_path, payload, KINDS), "integrity.gemm.fp64")
    assert code == 0 and report["verdict"] == "pass", report["checks"]


def _stall(control_during: float, memory_us: int = 0) -> stopped.Stall:
    before = Sample(at=0.0, control=0.004, stalls_us={"memory": 0, "io": 0})
    start = Sample(at=10.0, stalls_us={"memory": 0, "io": 0})
    end = Sample(at=30.0, control=control_during, stalls_us={"memory": memory_us, "io": 0})
    return stopped.Stall(point={"done": 3, "total": 30, "note": "pow2 64"}, answers=3, expect_s=0.01,
                         limit_s=stopped.FLOOR_S, silent_s=20.0, reached_s=10.0, host=Window(before, start, end))


def test_a_stop_that_the_hosts_load_explains_stays_an_error() -> None:
    quiet = _stall(0.005)
    finding, _ = stopped.judge("integrity.gemm.fp64", Category.integrity, 1, quiet, _stall(0.006), "")
    assert finding is not None and finding.severity.value == "high"
    for loaded, why in ((_stall(0.004 * 8), "control workload 8.0x slower"),
                        (_stall(0.005, memory_us=5_000_000), "waited for memory 25%")):
        finding, reason = stopped.judge("integrity.gemm.fp64", Category.integrity, 1, quiet, loaded, "")
        assert finding is None and why in reason and "again in a fresh process" in reason
    elsewhere = _stall(0.005)
    elsewhere.point = {"done": 4, "total": 30, "note": "pow2 256"}
    finding, reason = stopped.judge("integrity.gemm.fp64", Category.integrity, 1, quiet, elsewhere, "")
    assert finding is None and "stopped elsewhere, at step 4 of 30 (pow2 256)" in reason


def test_the_limit_is_a_multiple_of_the_measured_time_over_a_floor() -> None:
    assert stopped.limit_s(0.001) == stopped.FLOOR_S
    assert stopped.limit_s(1.0) == stopped.FACTOR
    pace = stopped.Pace()
    assert pace.step("fp32") is None  # no answer yet
    time.sleep(0.01)
    assert pace.step("fp32") >= 0.01
    assert pace.step("fp16") is None and pace.step(None) is None
