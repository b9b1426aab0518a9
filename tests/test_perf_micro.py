"""The matrix-product sweep and the memory kernels on this machine's CPU: the figure is the best shape
(or kernel), every shape not measured is named with its reason, int8 and fp8 take the operand layouts
of torch's private paths, and an honest CPU draws no finding. No assertion depends on how fast this
machine is."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from chipaudit.checks.base import CheckContext
from chipaudit.checks.performance import micro
from chipaudit.checks.performance.common import CAP_EFFICIENCY
from chipaudit.perf import specs, timing
from chipaudit.report.model import Level

# The H200's 8192-cube products in the validation run (docs/validation/nvidia-h200-2026-11-27), TFLOP/s.
H200_8192 = {"fp32": 51, "fp64": 60, "tf32": 357, "bf16": 673, "fp16": 655, "fp8_e4m3": 1244, "int8": 128}


def _ctx(level: Level = Level.quick, scale: float = 0.3) -> CheckContext:
    return CheckContext(device="cpu", level=level, seed=5, params={"perf_budget_scale": scale})


def test_the_sweep_shapes_suit_every_private_path() -> None:
    """_int_mm needs M > 16 and K, N multiples of 8; _scaled_mm multiples of 16; none is a partial tile."""
    assert len(set(micro.SWEEP)) == len(micro.SWEEP)
    for shape in micro.SWEEP:
        assert shape[0] > 16 and all(d % 256 == 0 for d in shape)


def test_the_figure_is_the_best_shape_and_every_other_shape_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    huge, refused = (16384, 16384, 16384), (512, 256, 256)
    monkeypatch.setattr(micro, "SWEEP", ((256, 256, 128), huge, refused, (128, 256, 256)))
    monkeypatch.setattr(micro, "MAX_N", 256)  # the ladder's square is small beside the budget on any machine

    class Check(micro.GemmThroughput):
        def _fits(self, shape: micro.Shape, device: str) -> str | None:
            return "needs 9.0 GB, over 25% of the 1.0 GB free" if shape == refused else super()._fits(shape, device)

    out = Check("fp32").run(_ctx(Level.standard, 0.5))  # a 0.12 s cap: room for a busy machine's probe
    (fig,) = out.measurements["figures"]
    sweep = fig["details"]["sweep"]
    assert [s["shape"] for s in sweep] == [[256, 256, 256], [256, 256, 128], [128, 256, 256]]  # square first
    best = max(sweep, key=lambda s: s["value"])
    assert fig["value"] == best["value"] and fig["details"]["shape"] == best["shape"]
    assert all(s["value"] > 0 and s["noise"] >= 0 for s in sweep)
    assert fig["noise"] == best["noise"] and fig["repeats"] >= timing.MIN_REPEATS
    skipped = out.coverage["skipped_cases"]
    assert any(s.startswith("16384x16384x16384: budget: one product predicted") for s in skipped)
    assert any(s.startswith("512x256x256: memory: needs 9.0 GB") for s in skipped)
    assert not [f for f in out.findings if "cap" in f.title]  # the CPU's rating is an estimate


def test_on_the_cpu_only_the_ladder_square_runs_and_the_large_shapes_are_named() -> None:
    out = micro.GemmThroughput("fp32", levels=(Level.quick,)).run(_ctx())
    (fig,) = out.measurements["figures"]
    assert len(fig["details"]["sweep"]) == 1 and fig["details"]["shape"][0] <= micro.MAX_N
    named = [s.split(":")[0] for s in out.coverage["skipped_cases"]]
    assert all(micro._name(shape) in named for shape in micro.SWEEP)


@pytest.mark.parametrize("fmt", sorted(H200_8192))
def test_the_plan_fits_the_budget_and_sweeps_every_shape_on_a_gpu(fmt: str) -> None:
    """Planned at the H200's own rates, standard level: every other shape runs, within half the
    budget at their least; a quick budget drops the shapes whose product is too long; the CPU's rate
    leaves the ladder's square alone."""
    check = micro.GemmThroughput(fmt)
    rate = H200_8192[fmt] * 1e12
    least = timing.WARMUP_CALLS + timing.MIN_REPEATS
    square = (8192, 8192, 8192)

    def cost(shapes: list[micro.Shape]) -> float:
        return sum(least * 2.0 * math.prod(s) / rate for s in shapes)

    shapes, skipped = check.plan(rate, 5.0, 5.0 * micro.PRODUCT_SHARE, "cuda:0", square)
    assert len(shapes) == len(micro.SWEEP) - 1 and square not in shapes and skipped == []
    assert cost(shapes) <= micro.SWEEP_COST_SHARE * 5.0
    shapes, skipped = check.plan(rate, 2.0, 2.0 * micro.PRODUCT_SHARE, "cuda:0", square)
    assert cost(shapes) <= micro.SWEEP_COST_SHARE * 2.0
    assert len(shapes) + len(skipped) == len(micro.SWEEP) - 1
    shapes, skipped = check.plan(27e9, 2.0, 2.0 * micro.PRODUCT_SHARE, "cpu", (512, 512, 512))
    assert shapes == [] and len(skipped) == len(micro.SWEEP)


def test_int8_and_fp8_operands_take_the_private_paths_layout() -> None:
    """The second operand is column-major (K contiguous), and the product is still the right one: int8
    exactly, fp8 to bf16's rounding of the exact sum (NumPy on the host)."""
    gen = torch.Generator().manual_seed(3)
    (a, b), = micro.GemmThroughput("int8")._operands((32, 48, 64), "cpu", gen, 1)
    assert a.shape == (32, 64) and b.shape == (64, 48) and b.stride() == (1, 64)
    exact = a.numpy().astype(np.int64) @ b.numpy().astype(np.int64)
    assert np.array_equal(micro.GemmThroughput("int8")._product(a, b).numpy(), exact)
    fp8 = micro.GemmThroughput("fp8_e4m3")
    (a, b), = fp8._operands((32, 48, 64), "cpu", gen, 1)
    assert b.shape == (64, 48) and b.stride() == (1, 64) and a.dtype == torch.float8_e4m3fn
    try:
        c = fp8._product(a, b)
    except RuntimeError as e:  # a torch without a CPU _scaled_mm
        pytest.skip(f"torch._scaled_mm on the CPU: {e}")
    exact = a.float().double().numpy() @ b.float().double().numpy()
    assert c.dtype == torch.bfloat16
    assert np.allclose(c.double().numpy(), exact, rtol=2**-7, atol=1e-6)


def _vendor(device: str) -> specs.DeviceSpec:
    """A rating no CPU reaches, from a vendor: fp32 far below it is a possible cap, int8 and fp8 never."""
    high = specs.Rating(1e4, "a datasheet", "vendor")
    return specs.DeviceSpec(id="test", name="Test GPU", dense={"fp32": high, "int8": high, "fp8_e4m3": high})


@pytest.mark.parametrize("fmt", ["int8", "fp8_e4m3"])
def test_int8_and_fp8_are_rated_but_never_a_finding(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    out = micro.GemmThroughput(fmt).run(_ctx(Level.standard, 0.12))
    assert out.findings == []  # an honest CPU
    monkeypatch.setattr(micro, "device_spec", _vendor)
    out = micro.GemmThroughput(fmt).run(_ctx(Level.standard, 0.12))
    (fig,) = out.measurements["figures"]
    assert fig["rated"] == 1e4 and fig["efficiency"] < CAP_EFFICIENCY
    assert out.measurements["rating"]["rated"]["value"] == 1e4
    assert out.findings == []


def test_a_judged_format_far_below_a_vendor_rating_is_a_possible_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(micro, "device_spec", _vendor)
    out = micro.GemmThroughput("fp32", levels=(Level.quick,)).run(_ctx())
    assert any("possible hidden cap" in f.title for f in out.findings)


def test_memory_bandwidth_is_the_better_stream_kernel() -> None:
    out = micro.DeviceMemoryBandwidth().run(_ctx(Level.standard, 0.2))
    (fig,) = out.measurements["figures"]
    kernels: list[dict[str, Any]] = fig["details"]["kernels"]
    assert [k["kernel"] for k in kernels] == [k for k, _ in micro.STREAM_KERNELS]
    best = max(kernels, key=lambda k: k["value"])
    assert fig["value"] == best["value"] and fig["details"]["kernel"] == best["kernel"]
    assert fig["details"]["counted"] == "bytes read + bytes written"
    assert fig["details"]["bytes_per_buffer"] >= 64 * 2**20  # far larger than this CPU's caches
    assert out.findings == []
