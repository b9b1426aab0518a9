"""The torch device layer: naming, finding and describing a device, and the few knobs that change
what a device is asked to compute.

Every vendor reaches torch through the same `torch.device` strings; the only vendor-specific part is
which plugin module registers the backend (`torch_npu` for Ascend, `torch_mlu` for Cambricon, ...).
"""

from __future__ import annotations

import contextlib
import importlib
import platform
from collections.abc import Iterator
from types import ModuleType

import torch

from chipaudit.report.model import DeviceInfo

# Order in which `auto` looks for an accelerator. ROCm builds of torch expose AMD GPUs as "cuda".
ACCELERATOR_TYPES = ("cuda", "xpu", "npu", "mlu", "musa", "mps")

# Out-of-tree backends register themselves when their plugin is imported.
_PLUGINS = {"npu": "torch_npu", "mlu": "torch_mlu", "musa": "torch_musa"}


class DeviceError(ValueError):
    """A device string that does not name a usable device; its message is shown as one line."""


def _backend(device_type: str) -> ModuleType | None:
    plugin = _PLUGINS.get(device_type)
    if plugin is not None:
        try:
            importlib.import_module(plugin)
        except Exception:  # an absent or broken plugin means "not available", not a crash
            return None
    if device_type == "mps":
        return getattr(torch.backends, "mps", None)
    return getattr(torch, device_type, None)


def available(device_type: str) -> bool:
    if device_type == "cpu":
        return True
    backend = _backend(device_type)
    try:
        return bool(backend is not None and backend.is_available())
    except Exception:
        return False


def _count(device_type: str) -> int:
    backend = _backend(device_type)
    return int(backend.device_count()) if backend is not None and hasattr(backend, "device_count") else 1


def parse(spec: str) -> torch.device:
    """The device a string names, without asking whether this machine has it: a fleet's devices are on
    other machines, yet a typo should be caught before connecting to them."""
    try:
        return torch.device(spec)
    except (RuntimeError, ValueError) as e:
        raise DeviceError(f"'{spec}' is not a PyTorch device string (try cpu, cuda:0, npu:0, mps)") from e


def resolve(spec: str) -> str:
    """'auto' becomes the first accelerator present, else 'cpu'; anything else is validated."""
    if spec == "auto":
        for kind in ACCELERATOR_TYPES:
            if available(kind):
                return f"{kind}:0" if kind != "mps" else "mps"
        return "cpu"
    dev = parse(spec)
    if not available(dev.type):
        raise DeviceError(f"device type '{dev.type}' is not available on this machine")
    if dev.index is not None and dev.type != "cpu" and dev.index >= _count(dev.type):
        raise DeviceError(f"'{spec}': this machine has {_count(dev.type)} {dev.type} device(s)")
    return str(dev)


def synchronize(spec: str) -> None:
    dev = torch.device(spec)
    if dev.type == "cpu":
        return
    backend = _backend(dev.type)
    sync = getattr(torch, dev.type, backend)
    if hasattr(sync, "synchronize"):
        sync.synchronize()


def describe(spec: str) -> DeviceInfo:
    dev = torch.device(spec)
    info = DeviceInfo(spec=spec, type=dev.type, index=dev.index, torch_version=torch.__version__)
    if dev.type == "cpu":
        info.name = platform.processor() or platform.machine()
        info.properties["threads"] = torch.get_num_threads()
        try:
            import psutil

            info.memory_bytes = int(psutil.virtual_memory().total)
        except Exception:
            pass
        return info
    backend = _backend(dev.type)
    index = dev.index or 0
    with contextlib.suppress(Exception):
        props = backend.get_device_properties(index)  # type: ignore[union-attr]
        info.name = str(getattr(props, "name", ""))
        info.memory_bytes = getattr(props, "total_memory", None)
        for key in ("major", "minor", "multi_processor_count", "gcnArchName"):
            if hasattr(props, key):
                info.properties[key] = getattr(props, key)
    if dev.type == "cuda":
        if torch.version.cuda:
            info.driver["cuda_runtime"] = torch.version.cuda
        if getattr(torch.version, "hip", None):
            info.driver["hip"] = str(torch.version.hip)
        with contextlib.suppress(Exception):
            info.driver["cudnn"] = str(torch.backends.cudnn.version())
    return info


@contextlib.contextmanager
def strict_precision() -> Iterator[None]:
    """Ask for IEEE fp32 products and fp32 accumulation of half-precision products.

    torch lets CUDA/ROCm use TF32 for fp32 matmuls and reduced-precision split-K reductions for
    fp16/bf16 by default on some versions. The audit's tolerance model assumes neither, so a device
    that still computes that way is doing less arithmetic than it was asked for. TF32 is audited
    explicitly by its own check.
    """
    cuda_mm = torch.backends.cuda.matmul
    saved = {
        name: getattr(cuda_mm, name)
        for name in (
            "allow_tf32",
            "allow_fp16_reduced_precision_reduction",
            "allow_bf16_reduced_precision_reduction",
        )
        if hasattr(cuda_mm, name)
    }
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    try:
        for name in saved:
            setattr(cuda_mm, name, False)
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        for name, value in saved.items():
            setattr(cuda_mm, name, value)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


@contextlib.contextmanager
def tf32_allowed() -> Iterator[None]:
    cuda_mm = torch.backends.cuda.matmul
    saved = cuda_mm.allow_tf32
    try:
        cuda_mm.allow_tf32 = True
        yield
    finally:
        cuda_mm.allow_tf32 = saved
