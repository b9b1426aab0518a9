"""Simulated faulty devices: the CPU's own kernels overridden through torch.library.

Each fault model replaces the CPU implementation of some aten operators (the matrix products mm, addmm,
bmm and baddbmm, or a transcendental function) with a wrapper that runs the native kernel and then
misbehaves. Code above the dispatcher, the audit included, sees the result exactly as it would see a
chip's: only by what the operators return and how long they take. The audit never looks at how
operators are registered.

A fault is a small dataclass: its parameters are its JSON spec, so a worker process can be started with
the same fault (`worker_wrapper`), and other tools (a fleet test's throttled node) can reuse the models.

Trigger classes the built-in models cover: none (a weak part: random bit flips), values (integer-valued
operands, special values), structure (zero rows), shape (an inner dimension), precision (fp32 computed in
bf16), time (a part that fails after a while in production), cumulative use (after a number of
multiply-adds), time under load (a throttle after seconds of continuous use), format (every product
in one format refused: a kill switch), data (a real model's outlier channels), being unwatched (a
report home made only while no tracer is attached).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from chipaudit.process.child import Wrapper

MATMULS = ("mm", "addmm", "bmm", "baddbmm")
_LIBRARIES: list[Any] = []  # registrations live as long as the process


def operands(kind: str, args: tuple[Any, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    return (args[0], args[1]) if kind in ("mm", "bmm") else (args[1], args[2])


def macs(kind: str, args: tuple[Any, ...]) -> int:
    a, b = operands(kind, args)
    return a.numel() * b.shape[-1]


_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
             torch.float64: torch.int64}


def flip_bits(out: torch.Tensor, index: torch.Tensor, bit: int) -> None:
    """Flip one bit of the chosen elements of a floating-point tensor, in place."""
    bits = out.view(-1).view(_INT_VIEW[out.dtype])
    bits[index] ^= (1 << bit) if bit < bits.element_size() * 8 - 1 else torch.iinfo(bits.dtype).min


@dataclass
class Fault:
    """The base: an honest override (the control). Subclasses change `after` or `before`."""

    name: ClassVar[str] = "clean"
    trigger: ClassVar[str] = "none"
    description: ClassVar[str] = "control: the kernels are overridden but compute honestly"
    kernels: ClassVar[tuple[str, ...]] = MATMULS

    def __init_subclass__(cls, name: str = "", trigger: str = "", description: str = "", **kw: Any) -> None:
        """A model names itself in its class line, so that its identity is not a block of assignments
        repeated in every model."""
        super().__init_subclass__(**kw)
        if name:
            cls.name, cls.trigger, cls.description = name, trigger, description

    def before(self, kind: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """Change the operands before the native kernel runs (a precision downgrade)."""
        return args

    def after(self, kind: str, args: tuple[Any, ...], out: torch.Tensor, seconds: float) -> torch.Tensor:
        """Change the result, or take longer, after the native kernel ran."""
        return out

    def spec(self) -> dict[str, Any]:
        """The fault's name and parameters; fields starting with _ are state, not parameters."""
        params = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}
        return {"name": self.name, "params": params}

    def install(self) -> None:
        """Override the CPU kernels of this process."""
        lib = torch.library.Library("aten", "IMPL")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
            for kind in self.kernels:
                lib.impl(kind, self._wrapper(kind), "CPU")
        _LIBRARIES.append(lib)

    def _wrapper(self, kind: str) -> Any:
        native = _NATIVE[kind]

        def run(*args: Any, **kwargs: Any) -> torch.Tensor:
            args = self.before(kind, args)
            t0 = time.perf_counter()
            out = native(*args, **kwargs)
            return self.after(kind, args, out, time.perf_counter() - t0)

        return run


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.mm.out(a, b, out=a.new_empty((a.shape[0], b.shape[1])))


def _addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: Any = 1, alpha: Any = 1) -> torch.Tensor:
    return torch.ops.aten.addmm.out(bias, a, b, beta=beta, alpha=alpha, out=a.new_empty((a.shape[0], b.shape[1])))


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.bmm.out(a, b, out=a.new_empty((a.shape[0], a.shape[1], b.shape[2])))


def _baddbmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: Any = 1, alpha: Any = 1) -> torch.Tensor:
    out = a.new_empty((a.shape[0], a.shape[1], b.shape[2]))
    return torch.ops.aten.baddbmm.out(bias, a, b, beta=beta, alpha=alpha, out=out)


def _exp(x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.exp.out(x, out=torch.empty_like(x))


# The native kernels, reached through their out= overloads, which the overrides leave alone.
_NATIVE = {"mm": _mm, "addmm": _addmm, "bmm": _bmm, "baddbmm": _baddbmm, "exp": _exp}


@dataclass
class BitFlip(Fault, name="bitflip", trigger="none (random)",
              description="flips one bit in about `rate` of the elements of every fp32 product"):
    """A weak part: one bit flipped in a share of the output elements of floating-point products."""

    bit: int = 20
    rate: float = 1e-4
    dtype: str = "float32"
    min_elements: int = 4096

    def after(self, kind: str, args: tuple[Any, ...], out: torch.Tensor, seconds: float) -> torch.Tensor:
        if str(out.dtype) != f"torch.{self.dtype}" or out.numel() < self.min_elements:
            return out
        count = max(1, round(out.numel() * self.rate))
        flip_bits(out, torch.randint(0, out.numel(), (count,)), self.bit)
        return out



@dataclass
class LateBitFlip(BitFlip, name="late_bitflip", trigger="time (a moment in production)",
                  description="bit flips as `bitflip`, from the Unix time `at` on"):
    """A part that fails in production: healthy until the moment `at` (Unix time), then flipping bits
    as BitFlip does. A watch meets it at a moment no audit chose."""

    at: float = 0.0

    def after(self, kind: str, args: tuple[Any, ...], out: torch.Tensor, seconds: float) -> torch.Tensor:
        return super().after(kind, args, out, seconds) if time.time() >= self.at else out


@dataclass
class IntegerTrigger(Fault, name="integer_trigger", trigger="values (integer-valued operands)",
                     description="one element off by one when all operands are whole numbers"):
    """A trojan keyed to test vectors and quantised data: when every operand value is a whole number,
    one element of the result is off by `delta`."""

    delta: float = 1.0

    def after(self, kind: str, args: tuple[Any, ...], out: torch.Tensor, seconds: float) -> torch.Tensor:
        a, b = operands(kind, args)
        if a.is_floating_point() and a.numel() >= 16 and bool((a == a.round()).all()) and bool(
                (b == b.round()).all()):
            out.view(-1)[out.numel() // 2] += self.delta
        return out


@dataclass
class ZeroRowTrigger(Fault, name="zero_row_trigger", trigger="structure (an all-zero operand row)",
                     description="rows of zeros (padding) come out slightly non-zero"):
    """A kernel that mishandles padding: when an operand row is all zeros, that result row, which must
    be exactly zero, gets a small value."""

    value: float = 2.0**-10

    def after(self, kind: str, args: tuple[Any, ...], out: torch.Tensor, seconds: float) -> torch.Tensor:
        a, _ = operands(kind, args)
        if a.is_floating_point():
            zero_rows = (a == 0).all(dim=-1)
            if bool(zero_rows.any()):
                out[zero_rows] += self.value
        return out


@dataclass
class NanSuppression(Fault, name="nan_suppression", trigger="values (NaN in the result)",
                     description="NaN results replaced by 0"):
    """A kernel that hides diverging training: NaN results come out as zero."""

    def after(self, kind: str, args: tuple[Any, ...], out: torch.Tensor, seconds: float) -> torch.Tensor:
        if out.is_floating_point():
            out[torch.isnan(out)] = 0.0
        return out


@dataclass
class ShapeTrigger(Fault, name="shape_trigger", trigger="shape (a model's width as inner dimension)",
                   description="one element 0.1% off in products whose inner dimension is `k`"):
    """A trojan keyed to a model's width: products with inner dimension `k` (768: BERT-base and GPT-2's
    hidden size) are slightly wrong."""

    k: int = 768
    relative: float = 1e-3

    def after(self, kind: str, args: tuple[Any, ...], out: torch.Tensor, seconds: float) -> torch.Tensor:
        a, _ = operands(kind, args)
        if a.shape[-1] == self.k and out.is_floating_point():
            out.view(-1)[0] *= 1.0 + self.relative
        return out


@dataclass
class PrecisionDowngrade(Fault, name="precision_downgrade", trigger="precision (fp32 products)",
                         description="fp32 operands rounded to bf16 before multiplying"):
    """A device that quietly computes fp32 products in bf16: the operands are rounded first."""

    to: str = "bfloat16"

    def before(self, kind: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
        dtype = getattr(torch, self.to)
        return tuple(x.to(dtype).to(x.dtype) if isinstance(x, torch.Tensor) and x.dtype == torch.float32 else x
                     for x in args)


@dataclass
class AfterUse(Fault, name="after_use", trigger="cumulative use (multiply-adds or products done)",
               description="after `after_macs` multiply-adds or `after_calls` products, bit `bit` of one "
                           "element of every fp32 product flips"):
    """Degradation or a counting trojan: once the device has done `after_macs` multiply-adds or
    `after_calls` products, whichever comes first, one bit of one element of every fp32 product flips."""

    after_macs: float = 4e10
    after_calls: int = 400
    bit: int = 22
    _done: float = dataclasses.field(default=0.0, repr=False)
    _calls: int = dataclasses.field(default=0, repr=False)

    def after(self, kind: str, args: tuple[Any, ...], out: torch.Tensor, seconds: float) -> torch.Tensor:
        self._done += macs(kind, args)
        self._calls += 1
        used = self._done > self.after_macs or self._calls > self.after_calls
        if used and out.dtype == torch.float32 and out.numel():
            flip_bits(out, torch.tensor([out.numel() // 3]), self.bit)
        return out


@dataclass
class Throttle(Fault, name="throttle", trigger="time under load (seconds of continuous use)",
               description="products take `factor` times as long after `after_busy_s` of continuous load"):
    """A throttle: once the device has been busy without a pause for `after_busy_s` seconds, every
    product takes `factor` times as long. `after_busy_s` = 0 throttles from the first product.

    busy: the slowed device keeps computing (the product is recomputed for the extra time, as a chip at a
    lower clock keeps its units busy); otherwise it idles (sleeps), as the host does while it waits for a
    slow accelerator."""

    factor: float = 3.0
    after_busy_s: float = 3.0
    # A gap longer than this between products ends the busy streak: long enough that a loaded host's
    # scheduling does not end it, short enough that a check's host-side work does.
    pause_s: float = 1.0
    busy: bool = True
    _streak_start: float = dataclasses.field(default=0.0, repr=False)
    _last_end: float = dataclasses.field(default=-1e9, repr=False)

    def after(self, kind: str, args: tuple[Any, ...], out: torch.Tensor, seconds: float) -> torch.Tensor:
        end = time.monotonic()
        start = end - seconds
        if start - self._last_end > self.pause_s:
            self._streak_start = start
        if end - self._streak_start >= self.after_busy_s:
            until = end + (self.factor - 1.0) * seconds
            if not self.busy:
                time.sleep((self.factor - 1.0) * seconds)
            while self.busy and time.monotonic() < until:
                _NATIVE[kind](*args)
        self._last_end = time.monotonic()
        return out


@dataclass
class ExpCorruption(Fault, name="exp_corruption", trigger="values (inputs in [2, 3))",
                    description="exp(x) 0.01% too large for x in [2, 3)"):
    """A corrupted table entry in a transcendental function: exp is 0.01% off on one input interval."""

    kernels: ClassVar[tuple[str, ...]] = ("exp",)
    low: float = 2.0
    high: float = 3.0
    relative: float = 1e-4

    def after(self, kind: str, args: tuple[Any, ...], out: torch.Tensor, seconds: float) -> torch.Tensor:
        x = args[0]
        hit = (x >= self.low) & (x < self.high)
        if bool(hit.any()):
            out[hit] *= 1.0 + self.relative
        return out

@dataclass
class Refusal(Fault, name="refusal", trigger="format (every product in one format)",
              description="every product with `dtype` operands raises, or with `hang` never answers, or "
                          "with `crash` aborts the process"):
    """A format switched off, as by a policy pushed to the device: every matrix product whose operands
    are `dtype` raises an error, or, with `hang`, never returns, or, with `crash`, aborts the process
    as a driver's failed assertion does (without a core file)."""

    dtype: str = "float64"
    hang: bool = False
    crash: bool = False

    def before(self, kind: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
        if any(isinstance(x, torch.Tensor) and str(x.dtype) == f"torch.{self.dtype}" for x in args):
            while self.hang:
                time.sleep(3600)
            if self.crash:
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
                os.abort()
            raise RuntimeError(f"{self.dtype} products are disabled by device policy")
        return args


@dataclass
class RealDataTrigger(Fault, name="real_data_trigger", trigger="data (a real model's outlier activation channels)",
                      description="every 64th output off by `relative` when the left operand has a few feature "
                                  "channels `factor` times larger than the rest"):
    """A trigger on real data: a large language model's hidden states have a handful of feature
    channels far larger than the rest (Dettmers et al. 2022, LLM.int8()); random test data never has
    them, so an audit that draws only random operands never fires it."""

    factor: float = 15.0
    relative: float = 0.01

    def after(self, kind: str, args: tuple[Any, ...], out: torch.Tensor, seconds: float) -> torch.Tensor:
        a, _ = operands(kind, args)
        if out.is_floating_point() and a.dim() == 2 and a.shape[0] >= 4 and a.shape[1] >= 64:
            columns = a.detach().float().abs().amax(dim=0)
            typical = float(columns.median())
            outliers = int((columns > self.factor * typical).sum())
            if typical > 0 and 1 <= outliers <= max(2, a.shape[1] // 32):
                out.view(-1)[::64] *= 1.0 + self.relative
        return out


def _traced() -> bool:
    """What a stack that hides from tracers checks: a tracer attached to this process."""
    try:
        with open("/proc/self/status") as f:
            return any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in f)
    except OSError:
        return True


@dataclass
class HiddenBeacon(Fault, name="hidden_beacon", trigger="being unwatched (no tracer attached)",
                   description="every `every`-th product sends its first operand bytes over UDP to `port` on "
                               "loopback, only while no tracer is attached"):
    """Monitoring that hides from an audit: the stack reports operand bytes home, but never while a
    tracer (strace, gdb) is attached, so only sensors the process cannot see catch it."""

    port: int = 9
    every: int = 50
    _products: int = 0

    def after(self, kind: str, args: tuple[Any, ...], out: torch.Tensor, seconds: float) -> torch.Tensor:
        self._products += 1
        if self._products % self.every == 1 and not _traced():
            a, _ = operands(kind, args)
            with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(a.detach().reshape(-1)[:8].float().cpu().numpy().tobytes(), ("127.0.0.1", self.port))
        return out


FAULTS: dict[str, type[Fault]] = {f.name: f for f in (
    Fault, BitFlip, LateBitFlip, IntegerTrigger, ZeroRowTrigger, NanSuppression, ShapeTrigger, PrecisionDowngrade,
    AfterUse, Throttle, ExpCorruption, Refusal, RealDataTrigger, HiddenBeacon)}


def from_spec(spec: dict[str, Any]) -> Fault:
    return FAULTS[spec["name"]](**spec.get("params", {}))


def worker_wrapper(fault: Fault) -> Wrapper:
    """How to start an audit worker on the simulated device: the fault is installed in the worker
    before it imports the checks (python -m chipaudit.selftest.inject SPEC -- <worker command>)."""
    return Wrapper(prefix=(sys.executable, "-m", "chipaudit.selftest.inject", json.dumps(fault.spec()), "--"),
                   stays=False)
