"""The specification database (data/specs.toml): what each accelerator is rated to deliver, with the
source of every figure, and, for CPUs, a peak estimated from cores, clock and SIMD width.

Lookups go by the name the device reports through PyTorch. A name the database does not know gives
None ("no spec"), never an error: an unknown chip is measured all the same, only not rated.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

SPECS_SCHEMA = "chipaudit.specs/1"
KINDS = ("vendor", "reported", "estimate")
# Format names a rating may use: chipaudit's matrix-product formats (oracle/formats.py).
DTYPES = ("fp64", "fp32", "tf32", "fp16", "bf16", "fp8_e4m3", "int8")

# CPU peak model. Two FMA pipes per core at the full vector width is the common server design
# (Intel Skylake-SP Gold/Platinum and later, AMD Zen 5; Zen 4 splits 512-bit work over 256-bit
# pipes, so the estimate is high there). An upper estimate: measured figures a little above it mean
# the cores run faster than the clock /proc/cpuinfo reports (turbo), not a fault.
FMA_PIPES = 2
# Intel AMX (Sapphire Rapids and later): 1,024 bf16 multiply-adds per cycle per core (Intel 64 and
# IA-32 Architectures Optimization Reference Manual, AMX chapter), i.e. 2,048 FLOP.
AMX_BF16_FLOP_PER_CYCLE = 2048


class SpecError(ValueError):
    """The specification database is malformed; the message names the entry and field."""


@dataclass(frozen=True)
class Rating:
    value: float
    source: str
    kind: str
    url: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "kind": self.kind, "url": self.url}


@dataclass(frozen=True)
class DeviceSpec:
    id: str
    name: str
    dense: dict[str, Rating] = field(default_factory=dict)
    memory_bandwidth: Rating | None = None
    match: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def matches(self, device_name: str) -> bool:
        name = device_name.lower()
        return (bool(self.match) and all(re.search(p, name) for p in self.match)
                and not any(re.search(p, name) for p in self.exclude))


def _parse(data: dict[str, Any], origin: str) -> list[DeviceSpec]:
    if data.get("schema") != SPECS_SCHEMA:
        raise SpecError(f"{origin}: schema is {data.get('schema')!r}, expected {SPECS_SCHEMA!r}")
    sources = data.get("sources", {})
    for key, src in sources.items():
        if not isinstance(src, dict) or not isinstance(src.get("title"), str) or src.get("kind") not in KINDS:
            raise SpecError(f"{origin}: sources.{key} needs a title and a kind in {KINDS}")

    def rating(where: str, entry: Any) -> Rating:
        if not isinstance(entry, dict) or not isinstance(entry.get("value"), (int, float)) or entry["value"] <= 0:
            raise SpecError(f"{origin}: {where}.value must be a positive number")
        src = sources.get(entry.get("source"))
        if src is None:
            raise SpecError(f"{origin}: {where}.source {entry.get('source')!r} is not a key of [sources]")
        return Rating(float(entry["value"]), src["title"], src["kind"], src.get("url", ""))

    devices = []
    for i, d in enumerate(data.get("device", [])):
        where = f"device[{i}]"
        if not isinstance(d.get("id"), str) or not isinstance(d.get("name"), str) or not d.get("match"):
            raise SpecError(f"{origin}: {where} needs id, name and match")
        for pattern in [*d["match"], *d.get("exclude", [])]:
            try:
                re.compile(pattern)
            except re.error as e:
                raise SpecError(f"{origin}: {where} ({d['id']}): bad pattern {pattern!r}: {e}") from e
        dense = {}
        for dtype, entry in d.get("dense", {}).items():
            if dtype not in DTYPES:
                raise SpecError(f"{origin}: {where} ({d['id']}).dense.{dtype}: unknown format (use {DTYPES})")
            dense[dtype] = rating(f"{where} ({d['id']}).dense.{dtype}", entry)
        bandwidth = d.get("memory_bandwidth")
        devices.append(DeviceSpec(
            id=d["id"], name=d["name"], dense=dense,
            memory_bandwidth=rating(f"{where} ({d['id']}).memory_bandwidth", bandwidth) if bandwidth else None,
            match=tuple(d["match"]), exclude=tuple(d.get("exclude", ())),
        ))
    return devices


def load(path: Path | None = None) -> list[DeviceSpec]:
    if path is None:
        return _packaged()
    return _parse(tomllib.loads(Path(path).read_text()), str(path))


@cache
def _packaged() -> list[DeviceSpec]:
    text = resources.files(__name__.split(".")[0]).joinpath("data/specs.toml").read_text()
    return _parse(tomllib.loads(text), "chipaudit/data/specs.toml")


def lookup(device_name: str, db: list[DeviceSpec] | None = None) -> DeviceSpec | None:
    """The first entry whose patterns match `device_name`; None when the database has no such chip."""
    if not device_name or not device_name.strip():
        return None
    return next((d for d in (db if db is not None else load()) if d.matches(device_name)), None)


# --- CPUs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuFacts:
    model: str
    cores: int
    ghz: float
    flags: frozenset[str]
    clock_source: str


def cpu_facts(cpuinfo: str | None = None, threads: int | None = None) -> CpuFacts:
    """Cores torch computes on, the highest clock the system states, and the SIMD flags."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags, mhz = "", set(), []
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
        elif key == "cpu mhz":
            with contextlib.suppress(ValueError):
                mhz.append(float(value))
    clock_source = "/proc/cpuinfo cpu MHz"
    try:  # the rated maximum (turbo), where the kernel exposes frequency scaling
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        mhz.append(khz / 1000)
        clock_source = "cpufreq cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    physical = _physical_cores(cpuinfo)
    cores = max(1, min(threads, physical) if physical else threads)
    return CpuFacts(model or "CPU", cores, max(mhz, default=0.0) / 1000, frozenset(flags), clock_source)


def _physical_cores(cpuinfo: str) -> int:
    """Distinct (package, core) pairs among the CPUs this process may run on; 0 if unknown."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    pairs, proc, package = set(), None, "0"
    for line in cpuinfo.splitlines():
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "processor":
            proc = int(value) if value.isdigit() else None
        elif key == "physical id":
            package = value
        elif key == "core id" and (allowed is None or proc in allowed):
            pairs.add((package, value))
    return len(pairs)


def cpu_estimate(facts: CpuFacts | None = None) -> DeviceSpec:
    """Rated-peak estimate for the CPU: cores x clock x SIMD lanes x 2 (FMA) x FMA pipes."""
    f = facts or cpu_facts()
    if "avx512f" in f.flags:
        width, isa = 512, "AVX-512"
    elif "avx2" in f.flags or "avx" in f.flags:
        width, isa = 256, "AVX2" if "avx2" in f.flags else "AVX"
    elif f.flags & {"sse2", "asimd", "neon"}:
        width, isa = 128, "SSE2" if "sse2" in f.flags else "NEON"
    else:
        return DeviceSpec(id="cpu-estimate", name=f.model)
    fma = bool(f.flags & {"fma", "asimd"})
    # Without FMA, one vector add and one vector multiply per cycle: the same two FLOP per lane.
    pipes = FMA_PIPES if fma else 1
    lanes32 = width // 32
    per_cycle = {"fp32": lanes32 * 2 * pipes, "fp64": lanes32 * pipes}
    notes = {"fp32": f"{lanes32} fp32 lanes", "fp64": f"{lanes32 // 2} fp64 lanes"}
    if "amx_bf16" in f.flags:
        per_cycle["bf16"], notes["bf16"] = AMX_BF16_FLOP_PER_CYCLE, "AMX-BF16 tile unit"
    elif "avx512_bf16" in f.flags:
        per_cycle["bf16"], notes["bf16"] = 2 * per_cycle["fp32"], "AVX512-BF16 dot products (2x fp32)"
    if f.ghz <= 0:
        return DeviceSpec(id="cpu-estimate", name=f.model)
    dense = {}
    for dtype, flop in per_cycle.items():
        tflops = f.cores * f.ghz * flop / 1e3
        simd = f"{isa}, {notes[dtype]}" + (f", FMA, {pipes} pipes" if fma and dtype != "bf16" else "")
        how = f"estimate: {f.cores} cores x {f.ghz:.2f} GHz ({f.clock_source}) x {flop} FLOP/cycle ({simd})"
        dense[dtype] = Rating(round(tflops, 4), how, "estimate")
    return DeviceSpec(id="cpu-estimate", name=f.model, dense=dense)
