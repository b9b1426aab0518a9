"""What a device declares it can compute, so that a format it refuses can be told from one it lacks.

A device that raises, hangs or crashes on a whole number format is either a device without that
format or a device with it switched off (a policy pushed to the device, a kill switch). Only its own
declarations tell the two apart, so an audit reads them before it judges a refusal:

- declared: the device itself says it has the format: the CPU's instruction-set flags (CPUID, as
  /proc/cpuinfo lists them), the CUDA compute capability, torch's own queries
  (torch.cuda.is_bf16_supported, an XPU's device properties), or the maker's rating of the SKU in
  the specification database (data/specs.toml, vendor sources only). A refusal is then high.
- backend: only the table of what each torch backend implements (BACKENDS) says so. A refusal is
  then medium: an honest stack of that backend computes it.
- lacks: the device or its backend declares the format absent (a compute capability below the unit's,
  a backend without the type, a torch older than the kernel). Only then may a check be skipped, and
  its reason names this declaration.
- undeclared: nothing says either way. A refusal is then low: reported, never a pass, not a failure.

Declarations are facts the stack states, not behaviour; a stack can lie in them too, but a stack that
claims a format and then refuses it has said two things that cannot both be true.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from functools import cache

import torch

from chipaudit.devices import cpu, torchdev
from chipaudit.perf import specs
from chipaudit.report.model import Severity


class Support(str, Enum):
    declared = "declared"
    backend = "backend"
    undeclared = "undeclared"
    lacks = "lacks"


# How hard a refusal weighs, by what the device said of the capability it refused.
SEVERITY = {Support.declared: Severity.high, Support.backend: Severity.medium, Support.undeclared: Severity.low}
_STRENGTH = (Support.lacks, Support.undeclared, Support.backend, Support.declared)


@dataclass(frozen=True)
class Capability:
    subject: str  # "fp16 products", "softmax in bf16"
    support: Support
    source: str  # the declaration, in words a reader can check

    @property
    def lacking(self) -> bool:
        return self.support is Support.lacks

    @property
    def severity(self) -> Severity:
        """Of a refusal of this capability; a lacking one is never refused, only absent."""
        return SEVERITY.get(self.support, Severity.info)

    @property
    def reason(self) -> str:
        """Why a check about this capability was skipped: the declaration that the device lacks it."""
        return f"the device declares that it lacks {self.subject}: {self.source}"

    @property
    def promise(self) -> str:
        """What the device said, for a refusal's detail."""
        if self.support is Support.declared:
            return f"the device declares {self.subject} ({self.source})"
        if self.support is Support.backend:
            return f"its torch backend implements {self.subject} ({self.source})"
        return f"nothing declares {self.subject} either way ({self.source})"

    def as_dict(self) -> dict[str, str]:
        return {"subject": self.subject, "support": self.support.value, "source": self.source}


@dataclass(frozen=True)
class Entry:
    support: Support
    source: str
    since: tuple[int, int] = (0, 0)  # the torch release from which the backend implements it


def _implements(source: str, since: tuple[int, int] = (0, 0)) -> Entry:
    return Entry(Support.backend, source, since)


def _lacks(source: str) -> Entry:
    return Entry(Support.lacks, source)


_TF32_CUDA_ONLY = _lacks("torch's TF32 mode (torch.backends.cuda.matmul.allow_tf32) is NVIDIA's tensor-core "
                         "mode; this backend has no TF32 switch for it to audit")

# What each torch backend implements for matrix products (formats as in oracle/formats.py), with the
# source of each row. The key is the device type; ROCm builds of torch name AMD GPUs "cuda" and are
# looked up as "rocm".
BACKENDS: dict[str, dict[str, Entry]] = {
    "cpu": {
        **{f: _implements(f"PyTorch's CPU backend computes {f} mm, bmm and addmm (ATen CPU BLAS and oneDNN "
                          "kernels, every release chipaudit supports)") for f in ("fp64", "fp32", "fp16", "bf16")},
        "int8": _implements("torch._int_mm on the CPU (pytorch/pytorch pull request 121792, torch 2.3)", (2, 3)),
        # Merged in March 2025 (pull request 139975); counted from the first release certain to hold it.
        "fp8_e4m3": _implements("torch._scaled_mm on the CPU, emulated where oneDNN has no fp8 kernel "
                                "(pytorch/pytorch pull request 139975, torch 2.8)", (2, 8)),
        "tf32": _TF32_CUDA_ONLY,
    },
    "cuda": {
        **{f: _implements(f"cuBLAS computes {f} GEMMs on every architecture torch's CUDA builds target")
           for f in ("fp64", "fp32", "fp16", "bf16")},
    },
    "rocm": {
        **{f: _implements(f"rocBLAS and hipBLASLt compute {f} GEMMs on every architecture torch's ROCm builds "
                          "target") for f in ("fp64", "fp32", "fp16", "bf16")},
        "tf32": _lacks("torch's TF32 switch (torch.backends.cuda.matmul.allow_tf32) is NVIDIA's; ROCm enables its "
                       "xf32 mode only through hipBLASLt's own environment, outside torch"),
        # hipBLASLt, which torch._int_mm needs on ROCm, supports only some architectures: a rating of the
        # SKU declares int8, the table alone does not.
        "int8": Entry(Support.undeclared, "torch._int_mm through hipBLASLt on the architectures hipBLASLt supports "
                                          "(pytorch/pytorch pull request 122431; counted from torch 2.4)", (2, 4)),
    },
    "mps": {
        "fp64": _lacks("the MPS backend has no float64 (Metal has no double type; torch raises on float64 "
                       "tensors on MPS)"),
        **{f: _implements(f"the MPS backend computes {f} matmul (Metal Performance Shaders)")
           for f in ("fp32", "fp16")},
        "tf32": _TF32_CUDA_ONLY,
    },
    "xpu": {
        **{f: _implements(f"torch's XPU backend computes {f} matmul (oneDNN)") for f in ("fp32", "bf16")},
        "tf32": _TF32_CUDA_ONLY,
    },
}

# CPU instruction-set flags that declare hardware for a format's products (Linux /proc/cpuinfo names):
# x86-64 makes SSE2 (fp32 and fp64 SIMD) part of the architecture, as Armv8 does Advanced SIMD (asimd).
CPU_FLAGS: dict[str, tuple[str, ...]] = {
    "fp64": ("sse2", "asimd"),
    "fp32": ("sse2", "asimd"),
    "fp16": ("avx512_fp16", "asimdhp"),  # Intel AVX512-FP16; Armv8.2 half-precision arithmetic
    "bf16": ("amx_bf16", "avx512_bf16", "bf16"),  # Intel AMX and AVX512-BF16; Armv8.6 BF16
    "int8": ("amx_int8", "avx512_vnni", "avx_vnni", "i8mm", "asimddp"),  # Intel AMX and VNNI; Arm I8MM, dot product
}

# NVIDIA compute capabilities from which a format has hardware (CUDA C++ Programming Guide,
# "Compute Capabilities", and the architecture whitepapers); below, `below` says what that means.
CUDA_ARCH: dict[str, tuple[tuple[int, int], str, Support | None]] = {
    "fp64": ((1, 3), "double precision from compute capability 1.3", Support.lacks),
    "fp32": ((1, 0), "single precision on every compute capability", Support.lacks),
    "fp16": ((5, 3), "half-precision arithmetic from compute capability 5.3", None),
    "bf16": ((8, 0), "bfloat16 tensor cores from compute capability 8.0 (Ampere)", None),
    "tf32": ((8, 0), "TF32 tensor cores from compute capability 8.0 (NVIDIA A100 whitepaper)", Support.lacks),
    "fp8_e4m3": ((8, 9), "fp8 tensor cores from compute capability 8.9 (Ada, Hopper), which torch._scaled_mm "
                         "requires", Support.lacks),
    "int8": ((7, 5), "int8 tensor cores from compute capability 7.5 (Turing)", None),
}

# AMD GPUs whose fp8 is the OCP e4m3fn audited here; MI300's gfx942 computes e4m3fnuz instead, a format
# with another bias and no negative zero (AMD CDNA3 ISA reference, "FP8 formats").
ROCM_OCP_FP8 = ("gfx950", "gfx12")
ROCM_FNUZ_FP8 = ("gfx94",)

# Operators that exist only from some torch release on, whatever the device.
OPERATORS: dict[str, Entry] = {
    "rms_norm": _implements("torch.nn.functional.rms_norm, new in torch 2.4", (2, 4)),
}


def torch_release(version: str | None = None) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", version or torch.__version__)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _from_table(entry: Entry, subject: str) -> Capability:
    if torch_release() < entry.since:
        return Capability(subject, Support.lacks,
                          f"torch {torch.__version__} predates it: {entry.source}")
    return Capability(subject, entry.support, entry.source)


@cache
def _cpu_flags() -> frozenset[str]:
    return frozenset(cpu.read().get("flags", []))


def _declared(device: str, fmt: str, subject: str) -> Capability | None:
    """What the device itself says of `fmt`: declared, lacking, or None for nothing."""
    kind = torch.device(device).type
    if kind == "cpu":
        flag = next((f for f in CPU_FLAGS.get(fmt, ()) if f in _cpu_flags()), None)
        return Capability(subject, Support.declared, f"the CPU lists {flag} in /proc/cpuinfo (CPUID)") if flag else None
    info = torchdev.describe(device)
    arch = str(info.properties.get("gcnArchName", ""))
    # Before the rating: MI300's rated fp8 is e4m3fnuz, another format than the one audited here.
    if kind == "cuda" and torch.version.hip and fmt == "fp8_e4m3" and arch.startswith(ROCM_FNUZ_FP8):
        return Capability(subject, Support.lacks, f"{arch} computes fp8 as e4m3fnuz, not the OCP e4m3fn audited")
    spec = specs.lookup(info.name or "")
    rating = spec.dense.get(fmt) if spec is not None else None
    if spec is not None and rating is not None and rating.kind == "vendor":
        return Capability(subject, Support.declared, f"{spec.name} is rated {rating.value:g} dense for {fmt} by "
                                                     f"{rating.source}")
    if kind == "cuda" and torch.version.hip:
        if fmt == "fp8_e4m3" and arch.startswith(ROCM_OCP_FP8):
            return Capability(subject, Support.declared, f"{arch} has OCP fp8 (e4m3fn) matrix cores")
        return None
    if kind == "cuda" and "major" in info.properties:
        have = (int(info.properties["major"]), int(info.properties.get("minor", 0)))
        least, what, below = CUDA_ARCH[fmt]
        where = f"compute capability {have[0]}.{have[1]} (torch.cuda.get_device_properties)"
        if have >= least:
            return Capability(subject, Support.declared, f"{where}; {what}")
        if fmt == "bf16" and not torch.cuda.is_bf16_supported():
            return Capability(subject, Support.lacks, f"torch.cuda.is_bf16_supported() is False on {where}")
        return Capability(subject, below, f"{where}; {what}") if below else None
    if kind == "xpu" and fmt in ("fp64", "fp16"):
        with contextlib.suppress(Exception):
            props = torch.xpu.get_device_properties(torch.device(device).index or 0)
            has = getattr(props, f"has_{fmt}", None)
            if has is not None:
                return Capability(subject, Support.declared if has else Support.lacks,
                                  f"torch.xpu.get_device_properties().has_{fmt} is {bool(has)}")
    return None


@cache
def of_format(device: str, fmt: str) -> Capability:
    """What the device says of matrix products in `fmt` (a name of oracle/formats.py)."""
    subject = f"{fmt} products"
    kind = torch.device(device).type
    entry = BACKENDS.get("rocm" if kind == "cuda" and torch.version.hip else kind, {}).get(fmt)
    # Hardware with the format is no use through a torch backend without it (no kernel in this release,
    # no switch to ask for it): the backend's lack decides first.
    if entry is not None and (entry.support is Support.lacks or torch_release() < entry.since):
        return _from_table(entry, subject)
    declared = _declared(device, fmt, subject)
    if declared is not None:
        return declared
    if entry is not None:
        return _from_table(entry, subject)
    return Capability(subject, Support.undeclared, f"neither the device nor the table of what torch's "
                                                   f"{kind} backend implements names {fmt}")


def weakest(capabilities: Iterable[Capability]) -> Capability:
    """An operation needs all its formats: it is promised only as strongly as the weakest of them."""
    return min(capabilities, key=lambda c: _STRENGTH.index(c.support))


def of_operator(device: str, operator: str, formats: Iterable[str]) -> Capability:
    """What the device says of `operator` on tensors of `formats`: an operator of a torch release that
    has it is promised as strongly as its formats' products (the backend that computes a format's
    products computes its elementwise, normalisation, reduction, convolution and attention kernels)."""
    names = tuple(formats)
    subject = f"{operator} in {'/'.join(names)}"
    entry = OPERATORS.get(operator)
    if entry is not None and torch_release() < entry.since:
        return _from_table(entry, subject)
    base = weakest(of_format(device, f) for f in names)
    return Capability(subject, base.support, base.source)
