"""The performance checks on this machine's CPU, with small budgets: they measure, say why they skip,
and stay within their share of a quick audit. No assertion depends on how fast this machine is."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from conftest import chipaudit

from chipaudit.checks import all_checks, select
from chipaudit.checks.base import CheckContext, NotApplicable
from chipaudit.checks.performance import micro, workloads
from chipaudit.perf import timing
from chipaudit.perf.metrics import DEFAULT_LLM, METRICS, check_for
from chipaudit.report.model import Category, Level


def _ctx(level: Level = Level.quick, scale: float = 0.5, **params: object) -> CheckContext:
    return CheckContext(device="cpu", level=level, seed=11, params={"perf_budget_scale": scale, **params})


def test_registered_in_the_performance_category_and_light_at_quick() -> None:
    perf = [c for c in all_checks() if c.category is Category.performance]
    assert {c.id for c in perf} == {c.id for c in select(["performance"])}
    quick = sorted(c.id for c in perf if Level.quick in c.levels)
    assert quick == ["performance.gemm.fp32", "performance.launch"]
    ids = {c.id for c in perf}
    assert all(check_for(m) in ids for m in METRICS)  # every metric has a check that measures it


def test_fp32_products_are_measured_rated_and_cross_checked_with_numpy() -> None:
    out = micro.GemmThroughput("fp32", levels=(Level.quick,)).run(_ctx())
    (fig,) = out.measurements["figures"]
    assert fig["metric"] == "gemm.fp32.tflops" and fig["value"] > 0 and fig["unit"] == "TFLOP/s"
    assert fig["repeats"] >= 5 and fig["ci95"][0] <= fig["value"] <= fig["ci95"][1]
    assert 0 <= fig["noise"] < 10
    n = fig["details"]["shape"][0]
    assert n >= micro.FIRST_N and fig["details"]["rotated_inputs"] >= 2
    assert fig["rated"] > 0 and "estimate" in fig["rated_source"]  # the CPU's estimated peak
    cross = out.measurements["cross_check"]
    assert cross["numpy_blas"]["value"] > 0 and cross["torch_over_numpy_throughput"] > 0
    assert out.coverage["cases"] == 1


def test_launch_latency_and_memory_bandwidth() -> None:
    out = micro.LaunchLatency().run(_ctx())
    (fig,) = out.measurements["figures"]
    assert fig["metric"] == "launch.latency_us" and fig["better"] == "lower" and fig["value"] > 0
    assert fig["details"]["calls_per_repeat"] > 1  # tiny calls are batched to outrun the clock
    assert any("round-trip" in s for s in out.coverage["skipped_cases"])
    out = micro.DeviceMemoryBandwidth().run(_ctx(Level.standard, 0.2))
    (fig,) = out.measurements["figures"]
    assert fig["metric"] == "memory.device.bandwidth" and fig["value"] > 0
    assert fig["details"]["bytes_per_buffer"] >= 64 * 2**20  # far larger than this CPU's caches


def test_checks_that_do_not_apply_say_why() -> None:
    assert "host" in (micro.HostTransfer().is_supported("cpu") or "")
    assert "NVIDIA" in (micro.GemmThroughput("tf32").is_supported("cpu") or "")


def test_a_workload_that_cannot_fit_is_skipped_with_its_reason() -> None:
    class Nothing(workloads.WorkloadCheck):
        id = "performance.workload.test"

        def cases(self, ctx: CheckContext) -> list[workloads.Case]:
            return []

    with pytest.raises(NotApplicable, match="nothing to measure"):
        Nothing().run(_ctx(Level.standard))


def test_workload_budget_rules_measure_skip_and_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in steps, probe and timer, so that no assertion depends on this machine's speed or load: a
    case predicted far over the budget is skipped and named, the first case of each kind is tried,
    requested ones first. (The real probe and timer spent the whole 0.75 s budget on a busy CI machine
    before the second case, which was then skipped.)"""
    ran: list[str] = []
    monkeypatch.setattr(workloads, "_probe_seconds_per_flop", lambda device, dtype: 1e-9)

    def timer(op: Callable[[int], object], device: str, budget_s: float) -> timing.Timing:
        op(0)
        return timing.Timing(seconds=[1e-6] * timing.MIN_REPEATS, inner=1, warmup=0, clock="stand-in")

    monkeypatch.setattr(workloads.timing, "measure", timer)

    def case(name: str, flop: float, kind: str, requested: bool = False) -> workloads.Case:
        def build() -> object:
            ran.append(name)
            return lambda i: sum(range(50))
        return workloads.Case("llm_decode.tokens_per_s", {"model": name, "batch": 1}, {}, 1.0, flop, 1, kind,
                              int(flop), build, requested)  # type: ignore[arg-type]

    class Stand(workloads.WorkloadCheck):
        id = "performance.workload.stand_in"

        def cases(self, ctx: CheckContext) -> list[workloads.Case]:
            return [case("huge", 1e30, "a"), case("small", 1.0, "a"), case("other", 1e30, "b"),
                    case("asked", 1.0, "a", requested=True)]

    out = Stand().run(_ctx(Level.standard, 0.05))
    measured = [f["params"]["model"] for f in out.measurements["figures"]]
    assert ran == ["asked", "small"] and measured == ["asked", "small"]
    skipped = " ".join(out.coverage["skipped_cases"])
    assert "model=huge" in skipped and "model=other" in skipped and "would take about" in skipped


def test_requested_workload_cases_come_first() -> None:
    wanted = {"metric": "llm_decode.tokens_per_s", "model": DEFAULT_LLM, "batch": 3}
    cases = workloads.LlmDecode().cases(_ctx(Level.standard, perf_cases=[wanted]))
    asked = [c for c in cases if c.requested]
    assert [c.params for c in asked] == [{"model": DEFAULT_LLM, "batch": 3}]
    assert {c.params["batch"] for c in cases if not c.requested} == set(workloads.LLM_BATCHES)


@pytest.mark.slow
def test_every_workload_step_runs_on_this_device() -> None:
    """Build the cheapest case of each kind and take two steps: the model code itself works."""
    ctx = _ctx(Level.standard)
    for check in workloads.CHECKS:
        by_kind: dict[str, workloads.Case] = {}
        for c in sorted(check.cases(ctx), key=lambda c: c.flop):
            by_kind.setdefault(c.kind, c)
        for c in by_kind.values():
            step = c.build()
            for i in range(2):
                out = step(i)
            assert bool(torch.isfinite(out.float()).all()), c.metric


@pytest.mark.slow
def test_transformer_layers_measure_prefill_and_decode_within_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """In fp32, which every CPU runs at full speed: a CPU without AVX-512 BF16 multiplies bf16 (the
    format it declares, and the workloads' choice) at about 1 GFLOP/s, where even the smallest layer's
    prefill takes 15 s a call and no standard budget holds it (CI measured that)."""
    monkeypatch.setattr(workloads, "workload_dtype", lambda device: torch.float32)
    out = workloads.TransformerLayer().run(_ctx(Level.standard, 1.0))
    figures = out.measurements["figures"]
    assert {f["metric"] for f in figures} == {"transformer.prefill.tokens_per_s", "transformer.decode.tokens_per_s"}
    assert all(f["value"] > 0 and f["params"]["model"] for f in figures)
    # The standard budget cannot hold the 70B layer on this CPU: it is named, not silently dropped.
    assert any("llama-3-70b" in s for s in out.coverage["skipped_cases"])


def test_bench_rejects_checks_that_are_not_performance_checks() -> None:
    done = chipaudit("bench", "--device", "cpu", "--only", "frobnicate", timeout=60)
    assert done.returncode == 2 and "frobnicate" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_checks_passes_merge_into_one_result_and_a_broken_pass_stands_for_the_check() -> None:
    """perf/passes.py: the launch check run as three passes of a bench (each a third of the budget)
    gives one result: its figure from all three, each finding once, a note once per thing it names."""
    from chipaudit.perf import passes
    from chipaudit.report.model import CheckResult, Finding, Severity, Status

    params = passes.pass_params({passes.PASSES_PARAM: 3, "perf_budget_scale": 0.3})
    assert params["perf_budget_scale"] == pytest.approx(0.1)
    check = micro.LaunchLatency()
    cap = Finding(check=check.id, category=Category.performance, severity=Severity.low, title="slow")
    runs = []
    for k in range(3):
        outcome = check.run(_ctx(scale=params["perf_budget_scale"]))
        outcome.coverage["skipped_cases"] = [f"n=8: budget: one product predicted at {k} s"]
        runs.append((CheckResult(id=check.id, category=Category.performance, status=Status.warning, seed=11,
                                 duration_s=1.0, coverage=outcome.coverage, measurements=outcome.measurements),
                     [cap]))
    result, findings = passes.merge(runs)
    (fig,) = result.measurements["figures"]
    assert len(fig["pass_values"]) == 3 and fig["noise"] >= fig["pass_noise"]
    assert sorted(fig["samples"]) == sorted(s for r, _ in runs for s in r.measurements["figures"][0]["samples"])
    assert result.measurements["values"] == {"launch.latency_us": fig["value"]}
    assert findings == [cap] and result.status is Status.warning and result.duration_s == 3.0
    assert result.coverage["skipped_cases"] == ["n=8: budget: one product predicted at 0 s"]
    broken = CheckResult(id=check.id, category=Category.performance, status=Status.error, reason="hung")
    result, findings = passes.merge([runs[0], (broken, [])])
    assert result.status is Status.error and result.reason == "hung" and findings == [cap]
