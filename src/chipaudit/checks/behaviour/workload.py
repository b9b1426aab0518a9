"""The device workload that behaviour probes run, watch and perturb: seeded, host-verified products.

It runs in a process of its own, started by the probe (session.py) inside whatever world the probe
builds for it (a namespace, a shifted clock, another locale), under the probe's sensors. Operands
are drawn, computed and verified exactly as the integrity checks do (checks/integrity/gemm.py and
oracle/): only the world around them changes.

Protocol (process/child.py): the job is the first message from the probe, every later one a request;
each request is answered by one message. First comes `hello`, with what
the process sees of its world (clock, time zone, locale, network interfaces, and the system's own
location signals: host and domain names, zone and locale files, DNS search domain) so the probe can
tell whether its perturbation took effect. Requests:
  {"op": "verify", "task": i}          compute once, check against the host oracle, digest the bits
  {"op": "time", "task": i, "reps": r} compute r times and synchronise; the probe times the round trip
  {"op": "exit"}
A request the device refuses (it raises) is answered with {"error": ...}: a refusal is an answer.
Timing is taken by the probe, outside this process, with a clock no perturbation touches.
"""

from __future__ import annotations

import hashlib
import locale
import os
import select
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from chipaudit.checks.integrity.gemm import Case, bits_of, draw_operands, verify_result
from chipaudit.checks.integrity.products import Operands, compute
from chipaudit.checks.refusal import one_line
from chipaudit.devices import torchdev
from chipaudit.oracle.formats import FORMATS, as_computed_on
from chipaudit.perturb import place
from chipaudit.process.child import Channel, child_main

ENV_SEEN = ("TZ", "LANG", "LC_ALL", "LANGUAGE", "FAKETIME")


@dataclass(frozen=True)
class TaskSpec:
    """One product. `pad` adds zero rows/columns to the inner and output dimensions and `split`
    computes the output columns in two products: the same numbers in another shape."""

    label: str
    op: str  # a path of checks/integrity/products.py; pad and split only for mm, bmm and linear
    batch: int
    m: int
    k: int
    n: int
    format: str = "fp32"
    dist: str = "normal"
    seed: int = 0
    pad_k: int = 0
    pad_n: int = 0
    split: int = 0  # first part's output columns; 0: one product

    @property
    def macs(self) -> int:
        return self.batch * self.m * (self.k + self.pad_k) * (self.n + self.pad_n)

    @property
    def shapes(self) -> list[list[int]]:
        k, n = self.k + self.pad_k, self.n + self.pad_n
        parts = [n] if not self.split else [self.split, n - self.split]
        return [[self.batch, self.m, k, p] for p in parts]

    def disguised(self, pad_k: int, pad_n: int, split: int = 0) -> TaskSpec:
        return replace(self, label=f"{self.label}, disguised", pad_k=pad_k, pad_n=pad_n, split=split)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Task:
    def __init__(self, spec: TaskSpec, device: str) -> None:
        self.spec, self.device = spec, device
        self.fmt = as_computed_on(FORMATS[spec.format], device)
        case = Case(spec.op, spec.batch, spec.m, spec.k, spec.n, spec.label)
        ops = draw_operands(case, self.fmt, np.random.default_rng(spec.seed), spec.dist, exact=False)
        if spec.pad_k or spec.pad_n:
            ops = _padded(ops, spec.pad_k, spec.pad_n)
        self.ops = ops
        self.tensors: tuple[torch.Tensor, ...] | None = None

    def compute(self) -> torch.Tensor:
        if self.tensors is None:
            self.tensors = self.ops.upload(self.device)
        fmt, op, split = self.fmt, self.spec.op, self.spec.split
        if not split:
            return compute(fmt, op, self.tensors)
        if op == "linear":
            x, w, bias = self.tensors
            parts = [compute(fmt, op, (x, w[:split], bias[:split])), compute(fmt, op, (x, w[split:], bias[split:]))]
        else:
            a, b = self.tensors
            parts = [compute(fmt, op, (a, b[..., :split])), compute(fmt, op, (a, b[..., split:]))]
        return torch.cat(parts, dim=-1)

    def verify(self) -> dict[str, Any]:
        result = self.compute()
        torchdev.synchronize(self.device)
        v = verify_result(self.ops, result, exact=False)
        return {"ok": v.ok, "bad": v.bad, "checked": v.checked, "method": v.method, "worst": v.worst,
                "max_ratio": v.max_ratio, "digest": hashlib.blake2b(bits_of(result), digest_size=16).hexdigest()}


def _padded(ops: Operands, pad_k: int, pad_n: int) -> Operands:
    """Zeros appended to the inner and output dimensions: every original element of the product is
    the same sum plus exact zeros, and the new elements are exactly zero."""
    case = ops.case
    a = np.pad(ops.a, ((0, 0), (0, 0), (0, pad_k)))
    b = np.pad(ops.b, ((0, 0), (0, pad_k), (0, pad_n)))
    bias = None if ops.bias is None else np.pad(ops.bias, (0, pad_n))
    padded = replace(case, k=case.k + pad_k, n=case.n + pad_n)
    return Operands(padded, ops.fmt, a, b, bias)


def _interfaces() -> list[str]:
    """Network interfaces of this process's namespace, read from a file (no socket of our own)."""
    try:
        with open("/proc/self/net/dev") as f:
            return [line.split(":", 1)[0].strip() for line in f.readlines()[2:] if ":" in line]
    except OSError:
        return []


def _relative_sleep(seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while (left := deadline - time.perf_counter()) > 0:
        select.select([], [], [], left)


def repair_sleep() -> bool:
    """libfaketime 0.9.10 turns absolute monotonic sleeps, which Python >= 3.11 uses for time.sleep,
    into EINVAL (libfaketime issue #426): a shifted clock would then break every sleeping program,
    honest or not. Where that happens, time.sleep waits the same time through a relative wait.
    True when the repair was needed."""
    try:
        time.sleep(1e-4)
    except OSError:
        time.sleep = _relative_sleep
        return True
    return False


def hello() -> dict[str, Any]:
    try:
        # An application asks the C library for the user's locale; a device stack then sees it too.
        locale.setlocale(locale.LC_ALL, "")
        installed = True
    except locale.Error:
        installed = False
    now = time.time()
    return {
        "type": "hello", "pid": os.getpid(), "uid": os.getuid(), "time": now,
        "gmtoff": time.localtime(now).tm_gmtoff, "tzname": list(time.tzname),
        "env": {k: os.environ[k] for k in ENV_SEEN if k in os.environ}, "locale_installed": installed,
        "interfaces": _interfaces(), "threads": torch.get_num_threads(), "sleep_repaired": repair_sleep(),
        "system": place.seen(),
    }


def serve(job: dict[str, Any], channel: Channel) -> None:
    send = channel.send
    device = job["device"]
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    send(hello())
    tasks: list[Task | str] = []
    for spec in job["tasks"]:
        try:
            tasks.append(Task(TaskSpec(**spec), device))
        except Exception as e:  # a device that refuses to take operands refuses the task
            tasks.append(one_line(e))
    with torchdev.strict_precision():
        for request in channel:
            if request["op"] == "exit":
                break
            task = tasks[request["task"]]
            try:
                if isinstance(task, str):
                    raise RuntimeError(task)
                if request["op"] == "verify":
                    send(task.verify())
                    continue
                for _ in range(int(request["reps"])):
                    task.compute()
                torchdev.synchronize(device)
                send({"ok": True})
            except Exception as e:
                send({"error": one_line(e)})


if __name__ == "__main__":
    sys.exit(child_main(serve))
