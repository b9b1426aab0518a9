"""Matrix products on corner and structured inputs, against exact answers and IEEE 754 rules.

Threat: a device whose products are right on ordinary random data but wrong on the inputs real
workloads also hold: padding (zero rows and columns), identities and constants (initialisation, test
vectors), powers of two (scales), values near overflow and underflow, subnormals, signed zeros, and
the NaN and Inf that mark a diverging training run. A trojan keyed to such values, a kernel that skips
zero blocks and forgets a NaN, or hardware that drops a rarely used path all hide from random operands.

Method: for each format (fp64, fp32, fp16, bf16, and int8 where the device has it), build each corner
on the host, exactly on the format's grid, multiply it on the device, and judge every element in float64
NumPy (oracle/ieee.py):
- exact answers where the operands make every partial sum exact (zeros, identity, integer constants,
  scaled permutations, int8 extremes): zero tolerance;
- the deterministic worst-case bound elsewhere (oracle/tolerance.worst_case_bound): structured operands
  break the probabilistic model the random-operand checks use;
- IEEE 754 rules for special values: NaN propagates (NaN operands, 0*Inf, Inf-Inf), infinite operands
  give the right infinity, exact results beyond the format's range overflow; where the kind of a
  non-finite result depends on summation order, any non-finite result is accepted.
A device that flushes subnormals to zero (FTZ/DAZ, common on accelerators and in oneDNN's bf16
kernels) is judged against the flushed answer and reported as flushing, not failed.

Pass: every element of every corner right by its rule.
Fail (high): any element wrong, e.g. a finite number where NaN or Inf was due, or a wrong zero row; or
the device refusing (raising on) a corner input of a format it computes; or refusing a format outright
(raising, or no answer within refusal.FIRST_ANSWER_S) that it declares (devices/capability.py).
Fail (medium): a format refused outright that only the torch backend's table implies.
Warning (low): a format refused outright that nothing declares either way.
Info: subnormals flushed to zero.
Not run: a format the device declares that it lacks is listed with that declaration in the coverage;
the whole check is skipped only when it lacks every format.

Cannot see: the sign of a zero sum (IEEE 754 leaves it to the summation order's starting value); corners
never built here; errors within the worst-case bound; fp8 (its e4m3 format has no infinity).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from chipaudit.checks.base import Check, CheckContext, NotApplicable, Outcome
from chipaudit.checks.integrity.gemm import RETESTS, Case, Operands, compute, to_host
from chipaudit.checks.refusal import REFUSALS, answer_within, refusal
from chipaudit.checks.stopped import Pace
from chipaudit.devices import capability, torchdev
from chipaudit.oracle import ieee
from chipaudit.oracle.formats import FORMATS, NumberFormat
from chipaudit.oracle.matmul import Verification, verify_exact
from chipaudit.report.model import Category, Level, Severity

FLOAT_FORMATS = ("fp64", "fp32", "fp16", "bf16")
# Binary exponent ranges, per format, that keep each corner's products inside the format's range
# (fp16 tops out at 2**16) while spreading magnitudes as widely as that allows.
WIDE_EXPONENT = {"fp64": 500, "fp32": 60, "bf16": 60, "fp16": 7}
RANDOM_BITS_EXPONENT = {"fp64": 200, "fp32": 30, "bf16": 30, "fp16": 4}
# Shapes (m, k, n) per level: cache-sized, then odd, then a longer inner dimension.
SHAPES: dict[Level, tuple[tuple[int, int, int], ...]] = {
    Level.quick: ((64, 64, 64),),
    Level.standard: ((64, 64, 64), (61, 257, 37)),
    Level.deep: ((64, 64, 64), (61, 257, 37), (128, 1024, 96)),
}
# int8 products go through torch._int_mm, which needs m > 16 and k, n multiples of 8.
INT8_SHAPE = (32, 64, 32)

Arrays = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]


@dataclass(frozen=True)
class Corner:
    name: str
    build: Callable[[np.random.Generator, NumberFormat, int, int, int], Arrays]
    # exact | worst (oracle.ieee.dot_expectation) | integer: exact while every partial sum is an integer
    # the format holds (fmt.exact_int_limits), else worst
    bound: str
    formats: tuple[str, ...] = FLOAT_FORMATS
    op: str = "mm"


def _normal(rng: np.random.Generator, fmt: NumberFormat, *shape: int) -> np.ndarray:
    return fmt.quantize(rng.standard_normal(shape))


def _unit(rng: np.random.Generator, fmt: NumberFormat, *shape: int) -> np.ndarray:
    """Positive values in [0.5, 1) on the grid: no cancellation, so partial sums grow monotonically."""
    return fmt.quantize(rng.uniform(0.5, 1.0, shape))


def _scale_for(fmt: NumberFormat, k: int, target_log2: float) -> tuple[int, int]:
    """Power-of-two scales (sa, sb) that put k products of [0.5,1) x [0.5,1) operands near 2**target."""
    total = round(float(target_log2 - np.log2(k * 0.5625)))
    return total - total // 2, total // 2


def _zeros(rng: np.random.Generator, fmt: NumberFormat, m: int, k: int, n: int) -> Arrays:
    return np.zeros((m, k)), _normal(rng, fmt, k, n), None


def _padding(rng: np.random.Generator, fmt: NumberFormat, m: int, k: int, n: int) -> Arrays:
    a, b = _normal(rng, fmt, m, k), _normal(rng, fmt, k, n)
    a[rng.random(m) < 0.25] = 0.0
    a[:, rng.random(k) < 0.25] = 0.0
    b[:, rng.random(n) < 0.25] = 0.0
    return a, b, None


def _identity_right(rng: np.random.Generator, fmt: NumberFormat, m: int, k: int, n: int) -> Arrays:
    return _normal(rng, fmt, m, k), np.eye(k, n), None


def _identity_left(rng: np.random.Generator, fmt: NumberFormat, m: int, k: int, n: int) -> Arrays:
    return np.eye(m, k), _normal(rng, fmt, k, n), None


def _constant_integers(rng: np.random.Generator, fmt: NumberFormat, m: int, k: int, n: int) -> Arrays:
    return np.full((m, k), 3.0), np.full((k, n), -5.0), None


def _constant_fraction(rng: np.random.Generator, fmt: NumberFormat, m: int, k: int, n: int) -> Arrays:
    return np.full((m, k), fmt.quantize(np.array(0.1))), np.full((k, n), fmt.quantize(np.array(-1 / 3))), None


def _powers_of_two(rng: np.random.Generator, fmt: NumberFormat, m: int, k: int, n: int) -> Arrays:
    spread = min(WIDE_EXPONENT[fmt.name], 7) // 2

    def draw(*shape: int) -> np.ndarray:
        return rng.choice((-1.0, 1.0), shape) * np.exp2(rng.integers(-spread, spread + 1, shape))

    return draw(m, k), draw(k, n), None


def _scaled_permutation(rng: np.random.Generator, fmt: NumberFormat, m: int, k: int, n: int) -> Arrays:
    """One power of two per row of A, at a random column: each result row is an exactly scaled row of B."""
    spread = WIDE_EXPONENT[fmt.name]
    a = np.zeros((m, k))
    a[np.arange(m), rng.integers(0, k, m)] = rng.choice((-1.0, 1.0), m) * np.exp2(
        rng.integers(-spread, spread + 1, m))
    return a, rng.choice((-1.0, 1.0), (k, n)) * _unit(rng, fmt, k, n), None


def _near_overflow(rng: np.random.Generator, fmt: NumberFormat, m: int, k: int, n: int) -> Arrays:
    """Positive products summing to about an eighth of the largest finite value: finite, no overflow."""
    sa, sb = _scale_for(fmt, k, np.log2(fmt.max_finite) - 3)
    return _unit(rng, fmt, m, k) * 2.0**sa, _unit(rng, fmt, k, n) * 2.0**sb, None


def _overflow(rng: np.random.Generator, fmt: NumberFormat, m: int, k: int, n: int) -> Arrays:
    """Sums beyond the largest finite value, positive rows and negative rows: they must overflow to
    the right infinity."""
    sa, sb = _scale_for(fmt, k, np.log2(fmt.max_finite) + 3)
    a = _unit(rng, fmt, m, k) * 2.0**sa * rng.choice((-1.0, 1.0), (m, 1))
    return a, _unit(rng, fmt, k, n) * 2.0**sb, None


def _underflow(rng: np.random.Generator, fmt: NumberFormat, m: int, k: int, n: int) -> Arrays:
    """Products and sums below the smallest normal number: gradual underflow into subnormals."""
    tiny = np.log2(ieee.smallest_normal(fmt))
    sa, sb = _scale_for(fmt, k, tiny - 4)
    return _unit(rng, fmt, m, k) * 2.0**sa, rng.choice((-1.0, 1.0), (k, n)) * _unit(rng, fmt, k, n) * 2.0**sb, None


def _subnormal_operands(rng: np.random.Generator, fmt: NumberFormat, m: int, k: int, n: int) -> Arrays:
    """Subnormal operands lifted back into the normal range by large partners."""
    tiny = ieee.smallest_normal(fmt)
    a = fmt.quantize(rng.uniform(-1.0, 1.0, (m, k)) * tiny)
    a[rng.random((m, k)) < 0.25] = 0.0
    lift = 2.0 ** (WIDE_EXPONENT[fmt.name] // 2 + 2)
    return a, _unit(rng, fmt, k, n) * lift, None


def _signed_zeros(rng: np.random.Generator, fmt: NumberFormat, m: int, k: int, n: int) -> Arrays:
    a, b = _normal(rng, fmt, m, k), _normal(rng, fmt, k, n)
    a[rng.random((m, k)) < 0.3] = -0.0
    b[rng.random((k, n)) < 0.3] = 0.0
    b[rng.random((k, n)) < 0.1] = -0.0
    a[0], b[:, 0] = -0.0, -0.0
    return a, b, None


def _specials(rng: np.random.Generator, fmt: NumberFormat, m: int, k: int, n: int) -> Arrays:
    """NaN and both infinities sprinkled so that some rows hold none, some one, some several; zeros
    in B make 0*Inf; a row of +Inf against positive columns must give +Inf."""
    a, b = _normal(rng, fmt, m, k), _normal(rng, fmt, k, n)
    for value, rate in ((np.nan, 0.4), (np.inf, 0.5), (-np.inf, 0.5)):
        rows = np.flatnonzero(rng.random(m) < rate)
        a[rows, rng.integers(0, k, rows.size)] = value
    cols = np.flatnonzero(rng.random(n) < 0.3)
    b[rng.integers(0, k, cols.size), cols] = np.nan
    b[rng.random((k, n)) < 0.02] = 0.0
    b[rng.random((k, n)) < 0.01] = np.inf
    a[1] = np.inf
    b[:, 1] = np.abs(b[:, 1]) + 1.0
    return a, b, None


def random_bits(
    rng: np.random.Generator, fmt: NumberFormat, shape: tuple[int, ...] | None, spread: int | None
) -> np.ndarray:
    """Random bit patterns of the format as float64 values; with `spread`, exponents limited to +-spread.
    shape None: every pattern of a 16-bit format, in order."""
    width, mantissa, bias = {"fp64": (64, 52, 1023), "fp32": (32, 23, 127), "fp16": (16, 10, 15),
                             "bf16": (16, 7, 127)}[fmt.name]
    if shape is None:
        bits = np.arange(2**width, dtype=np.uint64)
        shape = bits.shape
    else:
        bits = rng.integers(0, 2**width, shape, dtype=np.uint64)
    if spread is not None:
        exponent = rng.integers(bias - spread, bias + spread + 1, shape).astype(np.uint64)
        keep = np.uint64((1 << mantissa) - 1) | np.uint64(1 << (width - 1))
        bits = (bits & keep) | (exponent << np.uint64(mantissa))
    with np.errstate(invalid="ignore"):  # signalling NaN patterns widen quietly
        if fmt.name == "fp64":
            return bits.view(np.float64).copy()
        if fmt.name == "fp32":
            return bits.astype(np.uint32).view(np.float32).astype(np.float64)
        if fmt.name == "fp16":
            return bits.astype(np.uint16).view(np.float16).astype(np.float64)
        return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32).astype(np.float64)


def _random_bits_finite(rng: np.random.Generator, fmt: NumberFormat, m: int, k: int, n: int) -> Arrays:
    spread = RANDOM_BITS_EXPONENT[fmt.name]
    return random_bits(rng, fmt, (m, k), spread), random_bits(rng, fmt, (k, n), spread), None


def _random_bits_any(rng: np.random.Generator, fmt: NumberFormat, m: int, k: int, n: int) -> Arrays:
    """Every bit pattern, NaN, Inf, subnormals and the extremes included."""
    return random_bits(rng, fmt, (m, k), None), random_bits(rng, fmt, (k, n), None), None


def _special_bias(rng: np.random.Generator, fmt: NumberFormat, m: int, k: int, n: int) -> Arrays:
    """A linear layer whose bias holds NaN and both infinities: those columns must follow."""
    bias = _normal(rng, fmt, n)
    bias[rng.choice(n, 3, replace=False)] = (np.nan, np.inf, -np.inf)
    return _normal(rng, fmt, m, k), _normal(rng, fmt, k, n), bias


def _int8_extremes(rng: np.random.Generator, fmt: NumberFormat, m: int, k: int, n: int) -> Arrays:
    a = rng.choice((-128.0, 127.0, 0.0, 1.0, -1.0), (m, k), p=(0.4, 0.4, 0.1, 0.05, 0.05))
    b = rng.choice((-128.0, 127.0, 0.0, 1.0, -1.0), (k, n), p=(0.4, 0.4, 0.1, 0.05, 0.05))
    a[0], b[:, 0] = -128.0, -128.0
    a[1] = 0.0
    return a, b, None


def _int8_identity(rng: np.random.Generator, fmt: NumberFormat, m: int, k: int, n: int) -> Arrays:
    return rng.integers(-128, 128, (m, k)).astype(np.float64), np.eye(k, n), None


CORNERS: tuple[Corner, ...] = (
    Corner("zeros", _zeros, "exact"),
    Corner("zero rows and columns (padding)", _padding, "worst"),
    Corner("identity on the right", _identity_right, "exact"),
    Corner("identity on the left", _identity_left, "exact"),
    Corner("constant integers", _constant_integers, "integer"),
    Corner("constant fractions", _constant_fraction, "worst"),
    Corner("powers of two", _powers_of_two, "worst"),
    Corner("scaled permutation, wide exponents", _scaled_permutation, "exact"),
    Corner("near overflow", _near_overflow, "worst"),
    Corner("overflow to infinity", _overflow, "worst", ("fp32", "fp16", "bf16")),
    Corner("underflow to subnormal results", _underflow, "worst", ("fp32", "fp16", "bf16")),
    Corner("subnormal operands", _subnormal_operands, "worst"),
    Corner("signed zeros", _signed_zeros, "worst"),
    Corner("NaN and infinities", _specials, "worst"),
    Corner("random bit patterns, finite", _random_bits_finite, "worst"),
    Corner("random bit patterns, any", _random_bits_any, "worst", ("fp32", "fp16", "bf16")),
    Corner("linear layer with NaN and infinite bias", _special_bias, "worst", op="linear"),
    Corner("int8 extremes", _int8_extremes, "exact", ("int8",)),
    Corner("int8 identity", _int8_identity, "exact", ("int8",)),
)


class CornerGemmCheck(Check):
    id = "integrity.corner.gemm"
    category = Category.integrity

    def run(self, ctx: CheckContext) -> Outcome:
        with torchdev.strict_precision():
            return self._run(ctx)

    def _run(self, ctx: CheckContext) -> Outcome:
        out = Outcome()
        lacking: dict[str, str] = {}
        formats = []
        for f in (*FLOAT_FORMATS, "int8"):
            declared = capability.of_format(ctx.device, f)
            if declared.lacking:
                lacking[f] = declared.reason
                continue
            try:
                self._first_product(ctx.device, FORMATS[f])
            except REFUSALS as e:
                out.findings.append(refusal(self, f"{f} products", e, declared, dtype=f, op="mm",
                                            shape=[1, *INT8_SHAPE], seed=ctx.seed))
                continue
            formats.append(f)
        if not formats and not out.findings:
            raise NotApplicable("; ".join(lacking.values()))
        plan = [(FORMATS[f], corner, shape)
                for f in formats for corner in CORNERS if f in corner.formats
                for shape in ((INT8_SHAPE,) if f == "int8" else SHAPES[ctx.level])]
        tally: Counter[str] = Counter()
        flushing: dict[str, list[str]] = {}
        worst_ratio = 0.0
        pace = Pace()
        for i, (fmt, corner, (m, k, n)) in enumerate(plan):
            ctx.progress(i, len(plan), f"{fmt.name} {corner.name}", expect_s=pace.step(fmt.name))
            rng = np.random.default_rng([ctx.seed, i])
            # Rounding onto the grid is the identity for operands built on it, and makes sure of it.
            a, b, bias = (None if x is None else fmt.quantize(x) for x in corner.build(rng, fmt, m, k, n))
            case = Case(corner.op, 1, m, k, n, corner.name)
            ops = Operands(case, fmt, a[None], b[None], bias)
            evidence = {"case": corner.name, "dtype": fmt.name, "op": corner.op, "shape": [1, m, k, n],
                        "seed": ctx.seed, "case_index": i}
            try:
                v, flushed = self._verify(ctx.device, ops, corner)
            except REFUSALS as e:
                out.findings.append(refusal(self, f"a {fmt.name} {corner.op} on {corner.name}", e, where=corner.name,
                                            **evidence))
                continue
            tally["cases"] += 1
            tally["elements"] += m * n
            if flushed and corner.name not in flushing.setdefault(fmt.name, []):
                flushing[fmt.name].append(corner.name)
            if v.ok:
                worst_ratio = max(worst_ratio, v.max_ratio)
                continue
            reproduced = 1 + sum(not self._verify(ctx.device, ops, corner)[0].ok for _ in range(RETESTS))
            out.findings.append(self.finding(
                Severity.high, f"wrong {fmt.name} {corner.op} results on {corner.name}",
                f"{v.bad} of {v.checked} elements break their rule ({v.method}); worst: expected "
                f"{v.worst.get('rule', 'exact')} {v.worst.get('expected')}, got {v.worst.get('observed')}; "
                f"the fault reproduced in {reproduced} of {1 + RETESTS} runs.",
                **evidence, method=v.method, bad=v.bad, checked=v.checked, worst=v.worst,
                reproduced=f"{reproduced}/{1 + RETESTS}"))
        ctx.progress(len(plan), len(plan), "done", expect_s=pace.step(None))
        for name, corners in flushing.items():
            out.findings.append(self.finding(
                Severity.info, f"{name} products flush subnormals to zero",
                "Subnormal operands or results were treated as zero (FTZ/DAZ), a common non-IEEE mode; "
                f"these corners were judged against the flushed answer instead: {', '.join(corners)}.",
                dtype=name, corners=corners))
        out.coverage = {
            "cases": tally["cases"], "elements_checked": tally["elements"],
            "formats": formats, "corners": sorted({c.name for _, c, _ in plan}),
            "shapes": sorted({f"{m}x{k}x{n}" for _, _, (m, k, n) in plan}),
            "skipped_formats": lacking,
            "refused_formats": [f for f in (*FLOAT_FORMATS, "int8") if f not in formats and f not in lacking],
        }
        out.measurements = {"max_error_to_bound": worst_ratio}
        return out

    def _first_product(self, device: str, fmt: NumberFormat) -> None:
        """The format's first product here: raises (or Hung) when the device refuses the format."""
        m, k, n = INT8_SHAPE
        ops = Operands(Case("mm", 1, m, k, n, "probe"), fmt, np.ones((1, m, k)), np.ones((1, k, n)), None)
        tensors = ops.upload(device)

        def product() -> None:
            compute(fmt, "mm", tensors)
            torchdev.synchronize(device)

        answer_within(product)

    def _verify(self, device: str, ops: Operands, corner: Corner) -> tuple[Verification, bool]:
        result = compute(ops.fmt, corner.op, ops.upload(device))
        torchdev.synchronize(device)
        a, b = ops.host_augmented()
        c = to_host(result).astype(np.float64).reshape(a.shape[0], a.shape[1], -1)
        if ops.fmt.integer:
            return verify_exact(a, b, c), False
        bound = corner.bound
        if bound == "integer":
            bound = "exact" if (np.abs(a) @ np.abs(b)).max() <= ops.fmt.exact_int_limits()[1] else "worst"
        expectation = ieee.dot_expectation(a, b, ops.fmt, bound)
        return ieee.judge_flushing(c, expectation, lambda: ieee.flushed(a, b, ops.fmt), bound)


CHECKS = [CornerGemmCheck()]
