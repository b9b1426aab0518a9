"""The specification database: every required chip is there with a source for each figure, lookups by
the names devices report work, unknown names give "no spec", and the CPU's peak is estimated."""

from __future__ import annotations

from pathlib import Path

import pytest

from chipaudit.checks.performance import common
from chipaudit.checks.performance.micro import GemmThroughput, LaunchLatency
from chipaudit.perf import specs
from chipaudit.perf.timing import Figure
from chipaudit.report.model import Severity

# Names as torch.cuda/torch_npu/torch_mlu get_device_name() print them.
REPORTED_NAMES = {
    "NVIDIA H20": "nvidia-h20",
    "NVIDIA H100 80GB HBM3": "nvidia-h100-sxm",
    "NVIDIA H100 PCIe": "nvidia-h100-pcie",
    "NVIDIA H200": "nvidia-h200-sxm",
    "NVIDIA H800": "nvidia-h800-sxm",
    "NVIDIA A100-SXM4-80GB": "nvidia-a100-sxm-80gb",
    "NVIDIA A100 80GB PCIe": "nvidia-a100-pcie-80gb",
    "NVIDIA A100-PCIE-40GB": "nvidia-a100-40gb",
    "NVIDIA A100-SXM4-40GB": "nvidia-a100-40gb",
    "NVIDIA L20": "nvidia-l20",
    "NVIDIA L40S": "nvidia-l40s",
    "AMD Instinct MI300X": "amd-mi300x",
    "Ascend910B2": "huawei-ascend-910b",
    "Ascend910B4": "huawei-ascend-910b",
    "Ascend910C": "huawei-ascend-910c",
    "MLU370-X8": "cambricon-mlu370-x8",
}


@pytest.mark.parametrize(("name", "entry"), sorted(REPORTED_NAMES.items()))
def test_lookup_by_reported_name(name: str, entry: str) -> None:
    found = specs.lookup(name)
    assert found is not None and found.id == entry


@pytest.mark.parametrize("name", ["Tesla T4", "NVIDIA H100 NVL", "NVIDIA L40", "MLU370-S4", "Gaudi2",
                                  "", "   ", "Ascend310P3"])
def test_names_the_database_lacks_give_no_spec(name: str) -> None:
    assert specs.lookup(name) is None


def test_every_figure_has_a_source_and_the_required_chips_are_rated() -> None:
    db = specs.load()
    assert len({d.id for d in db}) == len(db)
    for device in db:
        ratings = [*device.dense.values(), *([device.memory_bandwidth] if device.memory_bandwidth else [])]
        assert device.memory_bandwidth is not None, device.id
        assert device.dense, device.id
        for r in ratings:
            assert r.value > 0 and r.source and r.kind in ("vendor", "reported"), device.id
    # H200 and H20 must not shadow each other, nor H100 PCIe and SXM.
    assert specs.lookup("NVIDIA H200").memory_bandwidth.value == 4800  # type: ignore[union-attr]
    assert specs.lookup("NVIDIA H20").dense["bf16"].value == 148  # type: ignore[union-attr]
    assert specs.lookup("NVIDIA H100 PCIe").dense["bf16"].value < specs.lookup(  # type: ignore[union-attr]
        "NVIDIA H100 80GB HBM3").dense["bf16"].value  # type: ignore[union-attr]


def test_malformed_database_names_the_field(tmp_path: Path) -> None:
    good = '''schema = "chipaudit.specs/1"
[sources.s]
title = "t"
kind = "vendor"
[[device]]
id = "x"
name = "X"
match = ['x1']
memory_bandwidth = { value = 10, source = "s" }
dense.fp32 = { value = 1, source = "s" }
'''
    path = tmp_path / "specs.toml"
    path.write_text(good)
    assert specs.lookup("the X1 card", specs.load(path)).id == "x"  # type: ignore[union-attr]
    for broken, expect in (
        (good.replace('source = "s" }\ndense', 'source = "nope" }\ndense'), "memory_bandwidth.source"),
        (good.replace("dense.fp32", "dense.fp12"), "dense.fp12"),
        (good.replace("specs/1", "specs/9"), "schema"),
        (good.replace('kind = "vendor"', 'kind = "rumour"'), "sources.s"),
        (good.replace("value = 1,", "value = -1,"), "dense.fp32.value"),
    ):
        path.write_text(broken)
        with pytest.raises(specs.SpecError, match=expect.replace(".", r"\.")):
            specs.load(path)


def _facts(flags: str, cores: int = 4, ghz: float = 3.0) -> specs.CpuFacts:
    return specs.CpuFacts("test cpu", cores, ghz, frozenset(flags.split()), "test")


def test_cpu_peak_from_cores_clock_and_simd_width() -> None:
    avx512 = specs.cpu_estimate(_facts("sse2 avx avx2 fma avx512f avx512_bf16"))
    assert avx512.dense["fp32"].value == pytest.approx(4 * 3.0 * 64 / 1e3)  # 16 lanes x FMA x 2 pipes
    assert avx512.dense["fp64"].value == pytest.approx(4 * 3.0 * 32 / 1e3)
    assert avx512.dense["bf16"].value == pytest.approx(2 * avx512.dense["fp32"].value)
    assert all(r.kind == "estimate" and "GHz" in r.source for r in avx512.dense.values())
    assert specs.cpu_estimate(_facts("sse2 avx avx2 fma")).dense["fp32"].value == pytest.approx(4 * 3.0 * 32 / 1e3)
    assert specs.cpu_estimate(_facts("sse2 avx")).dense["fp32"].value == pytest.approx(4 * 3.0 * 16 / 1e3)
    assert "bf16" not in specs.cpu_estimate(_facts("sse2 avx avx2 fma")).dense
    assert specs.cpu_estimate(_facts("")).dense == {}  # no known SIMD: no estimate, not a guess
    assert specs.cpu_estimate(_facts("avx2 fma", ghz=0)).dense == {}


def test_cpu_facts_parse_proc_cpuinfo() -> None:
    text = "\n".join(
        f"processor\t: {i}\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t\t: {i // 2}\n"
        f"cpu MHz\t\t: {2000 + i}.5\nflags\t\t: fpu sse2 avx2 fma\n" for i in range(4))
    facts = specs.cpu_facts(text, threads=8)
    assert facts.model == "Test CPU"
    assert facts.flags >= {"avx2", "fma"}
    assert facts.ghz >= 2.003
    assert 1 <= facts.cores <= 2  # four hardware threads on two cores (fewer if this process is pinned)


def test_the_cpu_is_rated_by_its_estimate_and_never_called_capped() -> None:
    spec = common.device_spec("cpu")
    assert spec is not None and spec.id == "cpu-estimate"
    fig = Figure.from_values("gemm.fp32.tflops", "TFLOP/s", [0.001] * 5)
    rating = specs.Rating(100.0, "estimate", "estimate")
    common.rate(fig, rating)
    assert fig.efficiency == pytest.approx(1e-5)
    assert common.cap_finding(LaunchLatency(), fig, rating, "cpu", "x") is None


def test_far_below_a_vendor_rating_is_a_possible_hidden_cap() -> None:
    check = GemmThroughput("bf16")
    fig = Figure.from_values("gemm.bf16.tflops", "TFLOP/s", [148.0, 150.0, 149.0])
    vendor = specs.Rating(989.5, "NVIDIA H100 datasheet", "vendor")
    common.rate(fig, vendor)
    finding = common.cap_finding(check, fig, vendor, "cpu", "bf16 matrix products")
    assert finding is not None and finding.severity is Severity.medium
    assert "possible hidden cap" in finding.title and finding.evidence["efficiency"] == pytest.approx(0.1506, abs=1e-3)
    reported = specs.Rating(989.5, "a press report", "reported")
    assert common.cap_finding(check, fig, reported, "cpu", "x").severity is Severity.low  # type: ignore[union-attr]
    fig.rate_against(200.0, "a lower rating")
    assert common.cap_finding(check, fig, specs.Rating(200.0, "s", "vendor"), "cpu", "x") is None
    assert common.cap_finding(check, fig, None, "cpu", "x") is None
