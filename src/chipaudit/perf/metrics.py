"""The performance metrics chipaudit reports: their names, units and direction, the parameters that
identify a measurement (model, batch), and the units a user may state a requirement in.

One catalogue serves the checks that produce figures, the requirements that judge them and the
comparison that lines them up, so that a name means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chipaudit.perf.specs import DTYPES

# Units by dimension, as factors to the dimension's canonical unit (the first).
UNITS: dict[str, dict[str, float]] = {
    "flops": {"TFLOP/s": 1.0, "GFLOP/s": 1e-3, "PFLOP/s": 1e3},
    "ops": {"TOP/s": 1.0, "GOP/s": 1e-3, "POP/s": 1e3},
    "bandwidth": {"GB/s": 1.0, "MB/s": 1e-3, "TB/s": 1e3, "GiB/s": 2**30 / 1e9, "TiB/s": 2**40 / 1e9},
    "tokens": {"tokens/s": 1.0},
    "images": {"images/s": 1.0},
    "latency": {"us": 1.0, "ns": 1e-3, "ms": 1e3, "s": 1e6},
}


@dataclass(frozen=True)
class Metric:
    name: str
    dimension: str
    better: str  # "higher" | "lower"
    description: str
    params: tuple[str, ...] = ()  # what a requirement may pin down: model, batch
    defaults: tuple[tuple[str, Any], ...] = ()  # the measurement a requirement means when it pins nothing

    @property
    def unit(self) -> str:
        return next(iter(UNITS[self.dimension]))


# Workload models (checks/performance/workloads.py holds their shapes and sources).
DEFAULT_LLM = "qwen2.5-0.5b"
DEFAULT_LAYER_MODEL = "llama-3-8b"
DEFAULT_CNN = "resnet-50"


def _catalogue() -> dict[str, Metric]:
    metrics = [
        Metric(f"gemm.{d}.{'tops' if d == 'int8' else 'tflops'}", "ops" if d == "int8" else "flops", "higher",
               f"dense {d} matrix-product throughput")
        for d in DTYPES
    ]
    metrics += [
        Metric("memory.device.bandwidth", "bandwidth", "higher",
               "device memory bandwidth: a large device-to-device copy, bytes read plus bytes written"),
        Metric("memory.h2d.bandwidth", "bandwidth", "higher", "host-to-device copy bandwidth (pinned host memory)"),
        Metric("memory.d2h.bandwidth", "bandwidth", "higher", "device-to-host copy bandwidth (pinned host memory)"),
        Metric("launch.latency_us", "latency", "lower",
               "time per tiny kernel launched back to back (launch overhead)"),
        Metric("launch.sync_latency_us", "latency", "lower",
               "one tiny kernel launched and waited for (round trip to the device)"),
        Metric("transformer.prefill.tokens_per_s", "tokens", "higher",
               "one transformer layer's forward pass over a prompt", ("model", "batch"),
               (("model", DEFAULT_LAYER_MODEL), ("batch", 1))),
        Metric("transformer.decode.tokens_per_s", "tokens", "higher",
               "one transformer layer's forward pass for one new token per sequence, with a KV cache",
               ("model", "batch"), (("model", DEFAULT_LAYER_MODEL), ("batch", 8))),
        Metric("llm_decode.tokens_per_s", "tokens", "higher",
               "a whole LLM decode step (embedding, every layer, LM head, greedy pick), tokens per second",
               ("model", "batch"), (("model", DEFAULT_LLM), ("batch", 1))),
        Metric("cnn_train.images_per_s", "images", "higher",
               "a CNN training step (forward, loss, backward, SGD update)", ("model", "batch"),
               (("model", DEFAULT_CNN), ("batch", 32))),
    ]
    return {m.name: m for m in metrics}


METRICS: dict[str, Metric] = _catalogue()


def figure_key(figure: dict[str, Any]) -> str:
    """Figures with the same key are the same measurement, whichever device made them."""
    params = figure.get("params") or {}
    inner = ",".join(f"{k}={params[k]}" for k in sorted(params))
    return f"{figure['metric']}[{inner}]" if inner else str(figure["metric"])


def value_name(figure: dict[str, Any]) -> str:
    """The figure's name among a check's plain numbers (measurements["values"]), for views that show
    any check's scalar measurements (history, replay, Prometheus); the parameters go before the unit
    so that names end in it."""
    head, _, unit = str(figure["metric"]).rpartition(".")
    params = "".join(f".{k}={v}" for k, v in sorted((figure.get("params") or {}).items()))
    return f"{head}{params}.{unit}"


def convert(value: float, unit: str, metric: Metric) -> float:
    """A value in `unit` expressed in the metric's canonical unit."""
    return value * UNITS[metric.dimension][unit]


def figures_of(checks: list[Any]) -> list[dict[str, Any]]:
    """Every figure in a report's checks (CheckResult models or their JSON dicts)."""
    out = []
    for check in checks:
        measurements = check.get("measurements", {}) if isinstance(check, dict) else check.measurements
        check_id = check.get("id") if isinstance(check, dict) else check.id
        for figure in measurements.get("figures", []) or []:
            if isinstance(figure, dict) and "metric" in figure and "value" in figure:
                out.append({**figure, "check": check_id})
    return out


def check_for(metric: str) -> str:
    """The id of the check that measures `metric` (checks/performance/)."""
    head = metric.split(".")[0]
    if head == "gemm":
        return "performance.gemm." + metric.split(".")[1]
    if head == "memory":
        return "performance.memory.device" if metric.startswith("memory.device") else "performance.memory.transfer"
    if head == "launch":
        return "performance.launch"
    return {"transformer": "performance.workload.transformer", "llm_decode": "performance.workload.llm_decode",
            "cnn_train": "performance.workload.cnn_train"}[head]
