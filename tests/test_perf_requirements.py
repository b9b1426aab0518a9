"""Requirements files: parsing, one-line errors that name the field, and the fitness evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import chipaudit
from perf_support import figure, perf_report, write

from chipaudit.perf import requirements as reqs
from chipaudit.perf.bench import evaluate
from chipaudit.perf.metrics import DEFAULT_LLM
from chipaudit.report.model import Category, Status

GOOD = """
[scenario]
name = "radiology drafting"

[[need]]
metric = "gemm.bf16.tflops"
min = 500
unit = "GFLOP/s"

[[need]]
metric = "llm_decode.tokens_per_s"
batch = 8
min = 100

[[need]]
metric = "launch.latency_us"
max = 20
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "needs.toml"
    path.write_text(text)
    return path


def test_parse_units_defaults_and_params(tmp_path: Path) -> None:
    scenario = reqs.load(_write(tmp_path, GOOD))
    assert scenario.name == "radiology drafting"
    gemm, decode, launch = scenario.needs
    assert gemm.limit == pytest.approx(0.5)  # 500 GFLOP/s in TFLOP/s
    assert decode.params == {"model": DEFAULT_LLM, "batch": 8}
    assert launch.bound == "max" and launch.unit == "us"
    assert reqs.perf_cases(scenario) == [{"metric": "llm_decode.tokens_per_s", "model": DEFAULT_LLM, "batch": 8}]
    assert "batch 8" in decode.describe() and ">=" in decode.describe()


@pytest.mark.parametrize(("text", "names"), [
    ('[[need]]\nmetric = "gemm.bf16.tflops"\nmin = 1\nspeed = 3\n', ["need #1", "speed"]),
    ('[[need]]\nmetric = "gemm.bf17.tflops"\nmin = 1\n', ["need #1.metric", "gemm.bf17.tflops"]),
    ('[[need]]\nmetric = "gemm.bf16.tflops"\nmin = 1\nunit = "TFLOPS"\n', ["need #1", "unit", "TFLOPS"]),
    ('[[need]]\nmetric = "gemm.bf16.tflops"\nmin = 1\nmax = 2\n', ["need #1", "min or max"]),
    ('[[need]]\nmetric = "gemm.bf16.tflops"\n', ["need #1", "min or max"]),
    ('[[need]]\nmin = 1\n', ["need #1.metric", "missing"]),
    ('[[need]]\nmetric = "gemm.bf16.tflops"\nmin = "fast"\n', ["need #1", ".min"]),
    ('[[need]]\nmetric = "gemm.bf16.tflops"\nmin = 1\n[[need]]\nmetric = "llm_decode.tokens_per_s"\n'
     'min = 1\nbatch = 0\n', ["need #2", ".batch"]),
    ('[[need]]\nmetric = "llm_decode.tokens_per_s"\nmin = 1\nmodel = "gpt-5"\n', ["need #1", ".model", "gpt-5"]),
    ('[[need]]\nmetric = "gemm.bf16.tflops"\nmin = 1\nbatch = 8\n', ["need #1", ".batch", "no batch"]),
    ('[scenario]\nname = "x"\nowner = "y"\n[[need]]\nmetric = "gemm.bf16.tflops"\nmin = 1\n', ["scenario.owner"]),
    ('needs = 3\n', ["needs", "unknown top-level"]),
    ('[scenario]\nname = "nothing needed"\n', ["need", "at least one"]),
    ('[[need]\nmetric = \n', ["not valid TOML"]),
])
def test_malformed_files_name_the_field(tmp_path: Path, text: str, names: list[str]) -> None:
    with pytest.raises(reqs.RequirementsError) as caught:
        reqs.load(_write(tmp_path, text))
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path) in message
    for name in names:
        assert name in message


def test_fitness_margins_pass_fail_and_not_measured(tmp_path: Path) -> None:
    scenario = reqs.load(_write(tmp_path, GOOD))
    report = perf_report({
        "performance.gemm.bf16": [figure("gemm.bf16.tflops", "TFLOP/s", [0.6, 0.61, 0.59])],
        "performance.launch": [figure("launch.latency_us", "us", [25.0, 26.0, 24.0], better="lower")],
        "performance.workload.llm_decode": [
            figure("llm_decode.tokens_per_s", "tokens/s", [500.0] * 3, {"model": DEFAULT_LLM, "batch": 1})],
    })
    gemm, decode, launch = evaluate(report, scenario)
    assert gemm.passed and gemm.measured == pytest.approx(600.0) and gemm.margin == pytest.approx(0.2)
    assert not launch.passed and launch.margin == pytest.approx(-0.25)
    # Batch 1 was measured, batch 8 was asked for: not the same measurement.
    assert not decode.passed and decode.measured is None and "not measured" in decode.note


def test_bench_rejects_a_bad_requirements_file_before_measuring(tmp_path: Path) -> None:
    bad = _write(tmp_path, '[[need]]\nmetric = "gemm.bf16.tflops"\nmin = 1\nunit = "furlongs"\n')
    done = chipaudit("bench", "--device", "cpu", "--requirements", str(bad), timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "unit" in lines[0] and "furlongs" in lines[0] and "Traceback" not in done.stderr


def test_bench_judges_a_saved_report(tmp_path: Path) -> None:
    report = write(perf_report({
        "performance.gemm.bf16": [figure("gemm.bf16.tflops", "TFLOP/s", [0.6, 0.61, 0.59])],
        "performance.launch": [figure("launch.latency_us", "us", [5.0, 5.1, 4.9], better="lower")],
    }), tmp_path / "r.json")
    ok = _write(tmp_path, '[[need]]\nmetric = "gemm.bf16.tflops"\nmin = 0.5\n'
                          '[[need]]\nmetric = "launch.latency_us"\nmax = 10\nunit = "us"\n')
    done = chipaudit("bench", "--requirements", str(ok), "--from", str(report), timeout=60)
    assert done.returncode == 0, done.stderr
    assert "2 of 2 need(s) met" in done.stdout and "pass" in done.stdout
    too_much = _write(tmp_path, '[[need]]\nmetric = "gemm.bf16.tflops"\nmin = 2\nunit = "PFLOP/s"\n')
    done = chipaudit("bench", "--requirements", str(too_much), "--from", str(report), timeout=60)
    assert done.returncode == 1 and "FAIL" in done.stdout and "0 of 1" in done.stdout


def test_unmeasured_needs_say_why(tmp_path: Path) -> None:
    report = perf_report({})
    report.checks.append(report.checks[0].model_copy(update={
        "id": "performance.gemm.tf32", "category": Category.performance, "status": Status.skipped,
        "reason": "TF32 is an NVIDIA mode"}))
    scenario = reqs.parse({"need": [{"metric": "gemm.tf32.tflops", "min": 1}]})
    (result,) = evaluate(report, scenario)
    assert not result.passed and "TF32 is an NVIDIA mode" in result.note
