"""The samplers `chipaudit watch` calls every interval, made for one device.

Each sampler answers `sample()` with the findings that are new since its previous sample, `metrics()`
with gauges for Prometheus (snake_case, the unit in the name), `status()` with what it watches or
why it cannot, and is closed once with `close()`. NVML is opened once and shared: its process list
finds holders (sensors/procwatch.py), its counters and events are the device's health
(sensors/devicewatch.py). A device NVML does not know is watched through its device files and the
processes named, and its health sampler says what it lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Protocol

from chipaudit.checks.behaviour.allowlist import Allowlist
from chipaudit.devices import nvml
from chipaudit.devices.vendor_reads import LiveReader, Reader
from chipaudit.report.model import Finding
from chipaudit.sensors.devicewatch import TelemetrySampler
from chipaudit.sensors.events import SensorStatus
from chipaudit.sensors.procwatch import HolderSampler, check_targets
from chipaudit.sensors.telemetry import open_nvml


class Sampler(Protocol):
    def sample(self) -> list[Finding]: ...

    def metrics(self) -> dict[str, float]: ...

    def status(self) -> SensorStatus: ...

    def close(self) -> None: ...


def samplers_for(device: str, pids: list[int], cgroups: list[Path], allow: Allowlist,
                 reader: Reader | None = None, own: Callable[[], set[int]] | None = None) -> list[Sampler]:
    """The holders' sampler and the device-health sampler of `device`; `reader` replaces live NVML
    (a ReplayReader in tests); `own` names the watcher's own processes, which hold the device for its
    bursts (default: the calling process and its descendants). Raises InputError for a --watch-pid
    or --watch-cgroup that names nothing."""
    check_targets(pids, cgroups)
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    why = ""
    if reader is None and device.startswith("cuda"):
        reader, index, why = open_nvml(device)
        why = why and f"NVML: {why}"
    events = nvml.Events(reader, index) if isinstance(reader, LiveReader) else None
    nvml_pids = partial(_listed, reader, index) if reader is not None else None
    return [HolderSampler(device, pids, cgroups, allow, nvml_pids, own),
            TelemetrySampler(device, reader, index, events, why)]


def _listed(reader: Reader, index: int) -> set[int] | None:
    return nvml.running_pids(reader, index)[0]
