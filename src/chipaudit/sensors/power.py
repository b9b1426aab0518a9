"""Power, clocks, temperature and throttle reasons through a sustained load, and the hidden-cap rule.

A device held below what it can do, by a firmware cap, a driver or a seller's setting it does not
report, computes right and only slower; the burn-in's verified throughput shows that it is slow but not
why. The device's own management library says how hard it is working: a background thread reads the
power drawn and the limit enforced, the compute and memory clocks, the temperature and the reasons
the device gives for holding its clocks down (NVIDIA's clock-event reasons through NVML, AMD's active
limiters through amdsmi), every PERIOD_S, with the clocks' maxima once. On a CPU it reads what psutil
offers (clock and temperature; no power, no reasons) or says that nothing is available.

The rule (`judge_hidden_cap`). A GPU's boost raises its clocks until one of three ceilings holds them:
the maximum clock, the enforced power limit, or heat, and the driver names the last two as clock-event
reasons (sw_power_cap, sw/hw_thermal_slowdown; amdsmi's package power and thermal limiters). So a busy
device whose clocks stay far below their maximum while it draws well below its power limit and names no
reason is held by something it does not report: a possible hidden cap. The rule judges clocks, with
power only as an explanation, because power depends on the load: an fp32 burn-in leaves the tensor cores
idle and draws far below the limit at full clocks (the recorded H200 burned fp32 at 0.51 of its fp32
peak at its maximum clock), while a tensor-core load reaches the limit and lowers its clocks, saying so.

Calibration: the healthy H200 of docs/validation/nvidia-h200-2026-11-27 held its SM clock at its
maximum, 1980 MHz, with no reason in every reading taken under load (behaviour.drift's telemetry in
quick.json) and its memory clock at its maximum, 3201 MHz, even at rest (nvml.json). The thresholds
sit far below that, under the base clocks of the data-centre GPUs (COMPUTE_CLOCK_FLOOR), so a healthy
card never trips them; tests/fixtures/telemetry holds that recording and says what in it is measured.

Cannot see: a cap that also lowers the clocks and power the device reports (the driver's word is taken);
a cap the device names as a reason (reported, not hidden: the throughput checks weigh it); a device
whose library gives no clocks or no reasons (the rule then says it could not judge); a CPU's caps
(no reasons to read: governors lower clocks by design).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from chipaudit.devices.vendor_reads import Reader
from chipaudit.report.model import Severity
from chipaudit.sensors.events import SensorStatus
from chipaudit.sensors.telemetry import cpu_clock, cpu_temperature, open_nvml
from chipaudit.stats import median

# One reading every PERIOD_S: a quarter of NVML's one-second power average, so no change of state is
# missed, at a few NVML calls (microseconds each) per reading.
PERIOD_S = 0.25
# Readings kept in the report: a deep burn-in's 2400 are thinned to this many, evenly (all are judged).
MAX_REPORTED = 600
# Readings of the first second are not judged: the clocks ramp up from rest, and NVML's power is an
# average over the last second (nvmlDeviceGetPowerUsage, Ampere and newer).
RAMP_S = 1.0
# The rule judges at least this many readings (2 s at PERIOD_S), or says it could not judge.
MIN_JUDGED = 8
# A compute clock below this share of its maximum is held down. Base clocks, which a busy card holds at
# least unless power or heat stops it (and then it says so), sit above it: H100 and H200 SXM 1590 of
# 1980 MHz (0.80), A100 SXM 1095 of 1410 (0.78), per NVIDIA's data sheets; the healthy H200 under load
# ran at 1.0 (quick.json, behaviour.drift). 0.75 is below all of them, with margin.
COMPUTE_CLOCK_FLOOR = 0.75
# A memory clock below this share of its maximum is held down. Memory clocks change little under load:
# 1.0 on the H200 (nvml.json, at rest too), about 0.97 on GeForce cards in CUDA's P2 state, and the
# lowest seen, an MI300X at rest, 900 of 1300 MHz (0.69, tests/fixtures/vendor/amdsmi_mi300x.json).
MEMORY_CLOCK_FLOOR = 0.6
# Drawing at least this share of the enforced limit explains low clocks although no reason is named:
# NVML's power is a one-second average, so a reading at the limit may lag the power-cap reason.
POWER_CEILING_SHARE = 0.90
# Held down in at least this share of the judged readings: sustained, as the burn-in's own throughput
# rule asks of its last third (throttle.SUSTAINED_QUANTILE); a few low readings are moments, not a cap.
HELD_SHARE = 0.75
# Reasons that say the device had no work, not that it was held: a reading with one is not judged.
IDLE_REASONS = frozenset({"gpu_idle"})
SAMPLE_FIELDS = ("power_w", "power_limit_w", "compute_clock_mhz", "memory_clock_mhz", "temperature_c")


@dataclass
class Sample:
    t_s: float
    power_w: float | None = None
    power_limit_w: float | None = None
    compute_clock_mhz: float | None = None  # NVIDIA's SM clock, AMD's graphics clock, a CPU's clock
    memory_clock_mhz: float | None = None
    temperature_c: float | None = None
    reasons: list[str] | None = None  # None: the device gives none to read; []: it names none

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t_s": round(self.t_s, 3)}
        out.update({k: round(v, 3) for k in SAMPLE_FIELDS if (v := getattr(self, k)) is not None})
        if self.reasons is not None:
            out["reasons"] = self.reasons
        return out

    @classmethod
    def of(cls, t_s: float, values: dict[str, Any]) -> Sample:
        """From a vendor reading or a recorded one; anything that is not a finite number is not read."""
        reasons = values.get("reasons")
        return cls(t_s, *(_number(values.get(k)) for k in SAMPLE_FIELDS),
                   reasons=[str(r) for r in reasons] if isinstance(reasons, list) else None)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


class Source(Protocol):
    name: str

    def ceilings(self) -> dict[str, Any]: ...

    def reading(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class VendorSource:
    """A vendor library's readings of one device (devices/nvml.py, devices/amd.py)."""

    def __init__(self, name: str, reader: Reader, index: int, read: Callable[[Reader, int], dict[str, Any]],
                 ceilings: Callable[[Reader, int], dict[str, Any]]):
        self.name, self.reader, self.index = name, reader, index
        self._read, self._ceilings = read, ceilings

    def ceilings(self) -> dict[str, Any]:
        return self._ceilings(self.reader, self.index)

    def reading(self) -> dict[str, Any]:
        return self._read(self.reader, self.index)

    def close(self) -> None:
        close = getattr(self.reader, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


class CpuSource:
    name = "psutil"

    def ceilings(self) -> dict[str, Any]:
        return {"max_compute_clock_mhz": cpu_clock("max")}

    def reading(self) -> dict[str, Any]:
        return {"compute_clock_mhz": cpu_clock(), "temperature_c": cpu_temperature()}

    def close(self) -> None:
        pass


def open_source(device: str) -> tuple[Source | None, str]:
    """The source for `device`, or None and why not (said in the report as 'not available')."""
    kind, _, number = device.partition(":")
    if kind == "cpu":
        if cpu_clock() is None and cpu_temperature() is None:
            return None, "not available: this machine reports neither CPU clock nor temperature"
        return CpuSource(), "CPU clock and temperature (psutil); no power or throttle reasons on a CPU"
    if kind != "cuda":
        return None, f"not available: no management library for {kind} devices"
    import torch

    if torch.version.hip:
        from chipaudit.devices import amd
        from chipaudit.devices.vendor_reads import Unavailable

        index = int(number or 0)
        try:
            reader = amd.open_live()
        except Unavailable as e:
            return None, f"not available: {e}"
        if index >= reader.device_count():
            return None, f"not available: amdsmi lists {reader.device_count()} device(s), not index {index}"
        return VendorSource("amdsmi", reader, index, amd.load_reading, amd.load_ceilings), \
            "amdsmi socket power, power cap, clocks, hotspot temperature and active limiters"
    from chipaudit.devices import nvml

    nvml_reader, index, why = open_nvml(device)
    if nvml_reader is None:
        return None, f"not available: {why}"
    return VendorSource("nvml", nvml_reader, index, nvml.load_reading, nvml.load_ceilings), \
        "NVML power, enforced power limit, SM and memory clocks, temperature and clock-event reasons"


@dataclass
class Recording:
    source: str | None
    detail: str
    period_s: float = PERIOD_S
    ceilings: dict[str, float | None] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)

    @property
    def status(self) -> SensorStatus:
        return SensorStatus("power_telemetry", self.source is not None and bool(self.samples), self.detail)

    def summary(self) -> dict[str, Any]:
        """What a reader wants first: power as a share of the enforced limit, clocks as shares of their
        maxima, the hottest reading, how often each reason was named, and what the rule concluded."""
        shares = _shares(self)
        reasons: dict[str, int] = {}
        for s in self.samples:
            for r in s.reasons or []:
                reasons[r] = reasons.get(r, 0) + 1
        temperatures = [s.temperature_c for s in self.samples if s.temperature_c is not None]
        limits = [s.power_limit_w for s in self.samples if s.power_limit_w is not None]
        return {
            "source": self.source or "none", "detail": self.detail, "period_s": self.period_s,
            "samples": len(self.samples), "enforced_limit_w": limits[-1] if limits else None,
            **self.ceilings,
            **{f"{name}_median": _round(median(v)) for name, v in shares.items() if v},
            "power_share_max": _round(max(shares["power_share"])) if shares["power_share"] else None,
            "temperature_max_c": max(temperatures, default=None),
            "reasons_named": [[r, round(n / len(self.samples), 3)] for r, n in sorted(reasons.items())],
            "hidden_cap_rule": assess(self).verdict,
        }

    def measurements(self) -> dict[str, Any]:
        """For a check's measurements: the readings (thinned to MAX_REPORTED) as `telemetry`, plotted beside
        the check's own series over the same seconds, and the summary as `power`."""
        step = max(1, math.ceil(len(self.samples) / MAX_REPORTED))
        return {"telemetry": [s.as_dict() for s in self.samples[::step]], "power": self.summary()}

    def limits(self) -> list[str]:
        """What the report must list as not observed."""
        if not self.status.ran:
            return [f"power and clock telemetry {self.detail}"]
        verdict = assess(self)
        return [] if verdict.judged else [f"hidden-cap rule not judged: {verdict.verdict}"]

    @classmethod
    def from_measurements(cls, measurements: dict[str, Any]) -> Recording:
        """A recording as a check reported it (a recorded run's measurements, or a fixture)."""
        summary = measurements.get("power") or {}
        samples = [Sample.of(float(r["t_s"]), r) for r in measurements.get("telemetry") or []
                   if isinstance(r, dict) and _number(r.get("t_s")) is not None]
        ceilings = {k: _number(summary.get(k)) for k in ("max_compute_clock_mhz", "max_memory_clock_mhz")}
        source = summary.get("source")
        return cls(source if isinstance(source, str) and source != "none" else None, str(summary.get("detail", "")),
                   _number(summary.get("period_s")) or PERIOD_S, ceilings, samples)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _share(value: float | None, ceiling: float | None) -> float | None:
    return value / ceiling if value is not None and ceiling else None


def _shares(recording: Recording) -> dict[str, list[float]]:
    c = recording.ceilings
    pairs = {"power_share": [_share(s.power_w, s.power_limit_w) for s in recording.samples],
             "compute_clock_share": [_share(s.compute_clock_mhz, c.get("max_compute_clock_mhz"))
                                     for s in recording.samples],
             "memory_clock_share": [_share(s.memory_clock_mhz, c.get("max_memory_clock_mhz"))
                                    for s in recording.samples]}
    return {k: [x for x in v if x is not None] for k, v in pairs.items()}


class PowerRecorder:
    """Readings in a background thread while the caller loads the device: `with PowerRecorder(device) as r:`,
    then `r.recording`. Times count from the start, as the burn-in's throughput windows do."""

    def __init__(self, device: str, period_s: float | None = None, source: Source | None = None):
        self.period_s = period_s or PERIOD_S
        self.source, detail = (source, f"{source.name} readings") if source is not None else open_source(device)
        self.recording = Recording(self.source.name if self.source else None, detail, self.period_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def __enter__(self) -> PowerRecorder:
        if self.source is None:
            return self
        with contextlib.suppress(Exception):  # a library that fails here gives no ceilings, not an error
            self.recording.ceilings = {k: _number(v) for k, v in self.source.ceilings().items()}
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="power-telemetry", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self.source is not None
        while True:
            t = time.perf_counter() - self._start
            try:
                values = self.source.reading()
            except Exception as e:  # the library failed mid-run: the recording ends, and says why
                self.recording.detail += f"; readings stopped after {t:.1f} s ({type(e).__name__}: {e})"
                return
            self.recording.samples.append(Sample.of(t, values))
            if self._stop.wait(self.period_s):
                return

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 4 * self.period_s))
        if self.source is not None:
            self.source.close()


@dataclass
class Assessment:
    judged: bool
    verdict: str
    held: list[Sample] = field(default_factory=list)
    judged_samples: int = 0


def assess(recording: Recording) -> Assessment:
    """Which readings under load show clocks held down that neither power nor a named reason explains."""
    c = recording.ceilings
    max_compute, max_memory = c.get("max_compute_clock_mhz"), c.get("max_memory_clock_mhz")
    if recording.source is None or recording.source == CpuSource.name:
        return Assessment(False, "no throttle reasons to read on this device")
    if not max_compute:
        return Assessment(False, "the device gives no maximum compute clock")
    loaded = [s for s in recording.samples if s.t_s >= RAMP_S and s.compute_clock_mhz is not None]
    busy = [s for s in loaded if not IDLE_REASONS & set(s.reasons or [])]
    if len(busy) < MIN_JUDGED:
        idle = len(loaded) - len(busy)
        return Assessment(False, f"{len(busy)} readings under load, fewer than {MIN_JUDGED}"
                                 + (f" ({idle} named the device idle)" if idle else ""))
    low, unknown = [], 0
    for s in busy:
        compute = (s.compute_clock_mhz or 0.0) / max_compute
        memory = _share(s.memory_clock_mhz, max_memory)
        power = _share(s.power_w, s.power_limit_w)
        if compute >= COMPUTE_CLOCK_FLOOR and (memory is None or memory >= MEMORY_CLOCK_FLOOR):
            continue
        if (power is not None and power >= POWER_CEILING_SHARE) or s.reasons:
            continue
        if s.reasons is None:
            unknown += 1
        else:
            low.append(s)
    if unknown / len(busy) >= HELD_SHARE:
        return Assessment(False, f"clocks were low in {unknown} of {len(busy)} readings and the device gives no "
                                 "throttle reasons to read", judged_samples=len(busy))
    share = len(low) / len(busy)
    verdict = (f"clocks held down with no reason named in {len(low)} of {len(busy)} readings under load"
               if share >= HELD_SHARE else f"no cap: {len(busy) - len(low)} of {len(busy)} readings under load "
               "at full clocks, at the power limit, or with a reason named")
    return Assessment(True, verdict, low if share >= HELD_SHARE else [], len(busy))


def judge_hidden_cap(recording: Recording) -> tuple[Severity, str, str, dict[str, Any]] | None:
    """A possible hidden cap as (severity, title, detail, evidence), or None (see the module's rule)."""
    verdict = assess(recording)
    if not verdict.held:
        return None
    c = recording.ceilings
    held = verdict.held
    compute = median([(s.compute_clock_mhz or 0.0) / (c.get("max_compute_clock_mhz") or 1.0) for s in held])
    memory = [m for s in held if (m := _share(s.memory_clock_mhz, c.get("max_memory_clock_mhz"))) is not None]
    power = [p for s in held if (p := _share(s.power_w, s.power_limit_w)) is not None]
    clocks = [f"{name} clock at {share:.0%}" for name, share, floor in (
        ("compute", compute, COMPUTE_CLOCK_FLOOR), ("memory", median(memory) if memory else 1.0, MEMORY_CLOCK_FLOOR))
        if share < floor] or [f"compute clock at {compute:.0%}"]
    drawn = f"{median(power):.0%} of its enforced power limit" if power else "an unknown share of its power limit"
    return (Severity.medium,
            f"possible hidden cap: {' and '.join(clocks)} of the maximum under sustained load, no reason named",
            f"In {len(held)} of {verdict.judged_samples} readings under load the median {' and '.join(clocks)} "
            f"of its maximum (compute {compute:.0%}), while the device drew {drawn} and named no throttle "
            f"reason ({recording.source}). A busy device's clocks rise until the maximum, the power limit or heat "
            "holds them, and the last two are named; something the device does not report held these.",
            {"source": recording.source, "ceilings": c, "held_readings": len(held),
             "judged_readings": verdict.judged_samples, "compute_clock_share_median": round(compute, 4),
             "memory_clock_share_median": round(median(memory), 4) if memory else None,
             "power_share_median": round(median(power), 4) if power else None,
             "thresholds": {"compute_clock_floor": COMPUTE_CLOCK_FLOOR, "memory_clock_floor": MEMORY_CLOCK_FLOOR,
                            "power_ceiling_share": POWER_CEILING_SHARE, "held_share": HELD_SHARE,
                            "ramp_s": RAMP_S},
             "first_held": [s.as_dict() for s in held[:5]]})
