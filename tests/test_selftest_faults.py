"""The simulated faulty devices: each fault model's behaviour, its spec, and its installation through
torch.library in a separate process (registrations would otherwise outlive the test)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from chipaudit.selftest import faults
from chipaudit.selftest.faults import (
    AfterUse,
    BitFlip,
    ExpCorruption,
    Fault,
    IntegerTrigger,
    NanSuppression,
    PrecisionDowngrade,
    ShapeTrigger,
    Throttle,
    ZeroRowTrigger,
)


@pytest.mark.parametrize("cls", list(faults.FAULTS.values()), ids=lambda c: c.name)
def test_spec_round_trip(cls: type[Fault]) -> None:
    fault = cls()
    spec = json.loads(json.dumps(fault.spec()))
    again = faults.from_spec(spec)
    assert type(again) is cls and again.spec() == fault.spec()
    assert not any(k.startswith("_") for k in spec["params"])


def test_parameters_are_adjustable() -> None:
    throttle = faults.from_spec({"name": "throttle", "params": {"factor": 3.0, "after_busy_s": 0.0}})
    assert isinstance(throttle, Throttle) and throttle.after_busy_s == 0.0


def test_bit_flip_flips_the_chosen_bit_at_the_chosen_rate() -> None:
    out = torch.ones(100, 100)
    BitFlip(bit=22, rate=0.01, min_elements=1).after("mm", (out, out), out, 0.0)
    changed = (out != 1.0).sum().item()
    assert 1 <= changed <= 100 and set(out[out != 1.0].tolist()) == {1.5}  # bit 22: the top mantissa bit
    small = torch.ones(4, 4)
    BitFlip().after("mm", (small, small), small, 0.0)
    assert (small == 1.0).all()  # below min_elements


def test_flip_bits_covers_the_sign_of_every_format() -> None:
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        x = torch.ones(4, dtype=dtype)
        faults.flip_bits(x, torch.tensor([1]), torch.finfo(dtype).bits - 1)
        assert x.tolist() == [1.0, -1.0, 1.0, 1.0]


def test_value_structure_and_shape_triggers() -> None:
    a = torch.arange(16.0).reshape(4, 4)
    out = a @ a
    IntegerTrigger().after("mm", (a, a), out, 0.0)
    assert (out != a @ a).sum() == 1
    fractional = a + 0.5
    out = fractional @ fractional
    IntegerTrigger().after("mm", (fractional, fractional), out, 0.0)
    assert torch.equal(out, fractional @ fractional)

    padded = torch.tensor([[0.0] * 4, [1.0, 2.0, 3.0, 4.0]])
    out = padded @ a
    ZeroRowTrigger().after("mm", (padded, a), out, 0.0)
    assert (out[0] != 0).all() and torch.equal(out[1], (padded @ a)[1])

    out = torch.tensor([[float("nan"), 1.0]])
    NanSuppression().after("mm", (a, a), out, 0.0)
    assert out.tolist() == [[0.0, 1.0]]

    wide = torch.ones(2, 768)
    out = torch.ones(2, 2)
    ShapeTrigger().after("mm", (wide, wide.T), out, 0.0)
    assert out[0, 0].item() == pytest.approx(1.001)


def test_precision_downgrade_rounds_fp32_operands_to_bf16() -> None:
    x = torch.tensor([1.0 + 2.0**-10])
    (y,) = PrecisionDowngrade().before("mm", (x,))
    assert y.dtype == torch.float32 and y.item() == 1.0


def test_after_use_corrupts_only_past_its_threshold() -> None:
    fault = AfterUse(after_macs=100)
    a = torch.ones(4, 4)
    first = fault.after("mm", (a, a), a @ a, 0.0)
    assert (first == 4).all()  # 64 multiply-adds done
    second = fault.after("mm", (a, a), a @ a, 0.0)
    assert (second != 4).sum() == 1  # 128 > 100
    by_count = AfterUse(after_calls=2)
    assert [(by_count.after("mm", (a, a), a @ a, 0.0) != 4).sum().item() for _ in range(4)] == [0, 0, 1, 1]


def test_throttle_waits_only_after_continuous_load() -> None:
    fault = Throttle(factor=3.0, after_busy_s=0.05, pause_s=0.5, busy=False)
    a = torch.ones(2, 2)
    t0 = time.monotonic()
    fault.after("mm", (a, a), a, 0.01)  # the streak starts
    assert time.monotonic() - t0 < 0.015
    time.sleep(0.06)
    t0 = time.monotonic()
    fault.after("mm", (a, a), a, 0.01)
    assert time.monotonic() - t0 >= 0.02  # (factor - 1) * 0.01 s


def test_exp_corruption_hits_its_interval_only() -> None:
    x = torch.tensor([1.0, 2.5])
    out = torch.exp(x)
    ExpCorruption().after("exp", (x,), out, 0.0)
    assert out[0].item() == torch.exp(x)[0].item() and out[1].item() > torch.exp(x)[1].item()


PROBE = """
import torch
a = torch.full((64, 64), 0.5)
b = torch.full((64, 64), 0.25)
c = torch.mm(a, b)
print(int((c != 8.0).sum()), float(torch.exp(torch.tensor([2.5]))[0]))
"""


def _run_on(fault: Fault, tmp_path: Path) -> tuple[int, float]:
    (tmp_path / "probe_mod.py").write_text(PROBE)
    command = [*faults.worker_wrapper(fault).prefix, sys.executable, "-m", "probe_mod"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    wrong, e = done.stdout.split()
    return int(wrong), float(e)


def test_installed_faults_are_seen_through_torch(tmp_path: Path) -> None:
    honest_exp = float(torch.exp(torch.tensor([2.5]))[0])
    assert _run_on(Fault(), tmp_path) == (0, honest_exp)
    wrong, _ = _run_on(BitFlip(bit=30, rate=0.01), tmp_path)
    assert wrong >= 1
    assert _run_on(ExpCorruption(), tmp_path)[1] > honest_exp


def test_inject_rejects_a_malformed_command() -> None:
    done = subprocess.run([sys.executable, "-m", "chipaudit.selftest.inject", "{}"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and "usage" in done.stderr
