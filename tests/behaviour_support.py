"""Trojaned device stacks for the behaviour tests, built the way a real one would ship: a
sitecustomize.py on PYTHONPATH that wraps the device's matrix products in every Python process of
the workload, with a trigger (a condition of the world) and a payload (what it does then)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from chipaudit.checks import by_id
from chipaudit.checks.base import CheckContext, Outcome
from chipaudit.report.model import Finding, Level, Severity

TEMPLATE = '''\
import os, socket, subprocess, sys, time
import torch
import torch.nn.functional as F

STATE = {{"calls": 0, "first": None, "fired": False}}


def triggered(args):
{trigger}


def payload(out, seconds):
{payload}
    return out


def hook(fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        STATE["calls"] += 1
        STATE["first"] = STATE["first"] or time.monotonic()
        return payload(out, time.perf_counter() - t0) if triggered(args) else out
    return wrapper


torch.mm, torch.bmm, F.linear = hook(torch.mm), hook(torch.bmm), hook(F.linear)
'''

NEVER = "return False"
REFUSE = 'raise RuntimeError("this device is not licensed here")'
THROTTLE = "time.sleep(2.0 * seconds)"
WRONG = "out.view(-1)[0] += 1.0"


def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trigger: str = NEVER, payload: str = "pass") -> Path:
    """Put a trojaned stack on the PYTHONPATH every workload process inherits."""
    stack = tmp_path / "stack"
    stack.mkdir(exist_ok=True)
    (stack / "sitecustomize.py").write_text(TEMPLATE.format(trigger=textwrap.indent(trigger, "    "),
                                                            payload=textwrap.indent(payload, "    ")))
    # In front of what is there already, so that a source tree under test stays the one imported.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(stack), os.environ.get("PYTHONPATH", "")])))
    return stack


def run(check_id: str, level: Level = Level.quick, seed: int = 1) -> Outcome:
    check = by_id()[check_id]
    return check.run(CheckContext(device="cpu", level=level, seed=seed))


def serious(outcome: Outcome) -> list[Finding]:
    return [f for f in outcome.findings if f.severity.rank >= Severity.medium.rank]
