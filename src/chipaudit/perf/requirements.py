"""Requirements: the user's statement of what a scenario needs, in TOML, and its evaluation against
measured figures (a fitness table: need, measured, margin, pass or fail).

    [scenario]
    name = "radiology report drafting"

    [[need]]
    metric = "gemm.bf16.tflops"
    min = 10

    [[need]]
    metric = "llm_decode.tokens_per_s"
    batch = 8                     # measured at this batch (bench adds it if it is not a default)
    model = "qwen2.5-0.5b"        # optional: the metric's default model otherwise
    min = 100

    [[need]]
    metric = "launch.latency_us"
    max = 20
    unit = "us"                   # optional: the metric's own unit otherwise

Every mistake (unknown field, metric, unit or model, a missing bound) is reported as one line that
names the need and the field.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipaudit.perf import models
from chipaudit.perf.metrics import METRICS, UNITS, Metric, convert, figure_key

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

NEED_FIELDS = ("metric", "min", "max", "unit", "batch", "model", "name")
SCENARIO_FIELDS = ("name", "description")
MAX_BATCH = 4096


class RequirementsError(ValueError):
    """A malformed requirements file; the message is one line naming the file, need and field."""


@dataclass(frozen=True)
class Need:
    number: int  # 1-based position in the file
    metric: Metric
    bound: str  # "min" or "max"
    given: float  # as written, in `unit`
    unit: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def limit(self) -> float:
        """The bound in the metric's canonical unit."""
        return convert(self.given, self.unit, self.metric)

    def describe(self) -> str:
        params = ", ".join(f"{k} {v}" for k, v in self.params.items())
        sign = ">=" if self.bound == "min" else "<="
        what = self.label or self.metric.name
        return f"{what}{f' ({params})' if params else ''} {sign} {self.given:g} {self.unit}"


@dataclass(frozen=True)
class Scenario:
    name: str
    needs: list[Need]


def load(path: Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RequirementsError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RequirementsError(f"{path}: not valid TOML: {e}") from None
    return parse(data, str(path))


def parse(data: dict[str, Any], origin: str = "requirements") -> Scenario:
    def bad(where: str, message: str) -> RequirementsError:
        return RequirementsError(f"{origin}: {where}: {message}")

    for key in data:
        if key not in ("scenario", "need"):
            raise bad(key, "unknown top-level field (expected [scenario] and [[need]] tables)")
    scenario = data.get("scenario", {})
    if not isinstance(scenario, dict):
        raise bad("scenario", "must be a table: [scenario]")
    for key in scenario:
        if key not in SCENARIO_FIELDS:
            raise bad(f"scenario.{key}", f"unknown field (expected one of {', '.join(SCENARIO_FIELDS)})")
    raw = data.get("need")
    if not isinstance(raw, list) or not raw or not all(isinstance(n, dict) for n in raw):
        raise bad("need", "at least one [[need]] table is required")
    needs = [_need(i + 1, n, bad) for i, n in enumerate(raw)]
    return Scenario(name=str(scenario.get("name", "")), needs=needs)


def _need(number: int, raw: dict[str, Any], bad: Any) -> Need:
    where = f"need #{number}"
    for key in raw:
        if key not in NEED_FIELDS:
            raise bad(f"{where}.{key}", f"unknown field (expected {', '.join(NEED_FIELDS)})")
    name = raw.get("metric")
    if not isinstance(name, str):
        raise bad(f"{where}.metric", "missing; name a metric, e.g. gemm.bf16.tflops")
    metric = METRICS.get(name)
    if metric is None:
        raise bad(f"{where}.metric", f"unknown metric {name!r} (known: {', '.join(METRICS)})")
    where = f"need #{number} ({name})"
    bounds = [b for b in ("min", "max") if b in raw]
    if len(bounds) != 1:
        raise bad(where, "give exactly one of min or max")
    bound = bounds[0]
    value = raw[bound]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise bad(f"{where}.{bound}", f"must be a non-negative number, not {value!r}")
    unit = raw.get("unit", metric.unit)
    if unit not in UNITS[metric.dimension]:
        raise bad(f"{where}.unit", f"unknown unit {unit!r} for this metric (use {', '.join(UNITS[metric.dimension])})")
    params: dict[str, Any] = {}
    for key in ("model", "batch"):
        if key in raw and key not in metric.params:
            raise bad(f"{where}.{key}", f"this metric takes no {key}")
    if metric.params:
        defaults = dict(metric.defaults)
        model = raw.get("model", defaults["model"])
        known = models.CNNS if name.startswith("cnn") else models.LLMS
        if not isinstance(model, str) or model not in known:
            raise bad(f"{where}.model", f"unknown model {model!r} (known: {', '.join(known)})")
        batch = raw.get("batch", defaults["batch"])
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
            raise bad(f"{where}.batch", f"must be a whole number from 1 to {MAX_BATCH}, not {batch!r}")
        params = {"model": model, "batch": batch}
    label = raw.get("name", "")
    if not isinstance(label, str):
        raise bad(f"{where}.name", "must be text")
    return Need(number, metric, bound, float(value), unit, params, label)


def perf_cases(scenario: Scenario) -> list[dict[str, Any]]:
    """The workload measurements the needs ask for, for the workload checks to add to their cases."""
    return [{"metric": n.metric.name, **n.params} for n in scenario.needs if n.params]


@dataclass(frozen=True)
class Fitness:
    need: Need
    measured: float | None  # in the need's unit
    noise: float | None
    margin: float | None  # relative: positive means room to spare
    passed: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "need": self.need.describe(), "metric": self.need.metric.name, "params": self.need.params,
            "bound": self.need.bound, "limit": self.need.given, "unit": self.need.unit,
            "measured": self.measured, "noise": self.noise, "margin": self.margin, "passed": self.passed,
            "note": self.note,
        }


def evaluate(scenario: Scenario, figures: list[dict[str, Any]], why_missing: dict[str, str] | None = None
             ) -> list[Fitness]:
    """Judge every need against the figures of a report (perf.metrics.figures_of)."""
    by_key = {figure_key(f): f for f in figures}
    out = []
    for need in scenario.needs:
        key = figure_key({"metric": need.metric.name, "params": need.params})
        figure = by_key.get(key)
        if figure is None:
            reason = (why_missing or {}).get(need.metric.name, "")
            out.append(Fitness(need, None, None, None, False,
                               "not measured" + (f": {reason}" if reason else " in this run")))
            continue
        if figure.get("unit") != need.metric.unit:
            out.append(Fitness(need, None, None, None, False,
                               f"the report gives this metric in {figure.get('unit')!r}, not {need.metric.unit!r}"))
            continue
        measured = float(figure["value"]) / UNITS[need.metric.dimension][need.unit]
        limit = need.given
        if need.bound == "min":
            margin = (measured - limit) / limit if limit else float("inf")
        else:
            margin = (limit - measured) / limit if limit else (0.0 if measured == 0 else float("-inf"))
        noise = float(figure.get("noise") or 0.0)
        note = "within the measurement's noise of the limit" if abs(margin) < 2 * noise else ""
        out.append(Fitness(need, measured, noise, margin, margin >= 0, note))
    return out
