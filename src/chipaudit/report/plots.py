"""Plots drawn from whatever a check measured, as inline SVG (no scripts, no fetches).

No check has to know about plotting: any measurement shaped like a series becomes a plot.
- a list of numbers: a line over its index (throughput over a burn-in);
- a dict from numbers to numbers ({"0": 0.1, "1": 0.4, ...}): a line over those numbers (per-bit curves);
- a dict of lists of numbers: several lines on one plot (a differential probe's baseline vs perturbed);
- a list of records with numeric fields: one line per field over the first of X_KEYS they share, fields
  in one of SHARED_UNITS on one plot (a device's power and its limit, its two clocks), and fields that
  hold lists of names (a device's throttle reasons) shaded as spans on each of those plots;
- a dict of named numbers, one level down: bars (throughput per format, efficiency against spec).
Anything else is left to the tables. Long series are reduced to the minimum and maximum of each of
MAX_POINTS/2 buckets, so a short dip in a long run still shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chipaudit.report.model import CheckResult
from chipaudit.report.templating import render_macro

X_KEYS = ("t", "t_s", "time_s", "elapsed_s", "seconds", "step", "iteration", "round", "minute", "bit",
          "index", "x", "size", "n", "k")
MAX_POINTS = 400
# A CPU burn-in's throughput table alone gives seven, its device telemetry two more.
MAX_PLOTS_PER_CHECK = 12
MAX_SERIES = 8
MAX_BARS = 40
# Fields of records measured in one of these units (by their name's suffix) share a plot: watts, MHz, °C.
SHARED_UNITS = ("_w", "_mhz", "_c")
# Spans (named states over a stretch of x) are drawn this opaque, under the lines.
SPAN_OPACITY = 0.22
MAX_SPAN_NAMES = 6
# Spans take the palette from here on, whatever the lines take, so a name has one colour on every plot of
# a check (its telemetry's plots share one list of spans).
SPAN_COLOURS_FROM = 3
# Okabe & Ito (2008), a palette that colour-blind readers can tell apart.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
# Beyond these magnitudes a value is no measurement, and axis arithmetic would overflow or underflow.
HUGE, TINY = 1e300, 1e-280
WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 70, 16, 16, 44
# A generous width of one character of a tick label, in viewBox pixels, and the most characters that a
# slanted label can have before it runs off the bottom of the plot.
CHAR_WIDTH, SLANTED_CHARS = 7.0, 10


@dataclass
class Plot:
    check: str
    title: str
    x_label: str = ""
    lines: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    bars: list[tuple[str, float]] = field(default_factory=list)
    # One colour per bar where the bars are kinds of things (outcomes), not one quantity.
    colours: list[str] = field(default_factory=list)
    # (x from, x to, name): a state that held over that stretch, such as a throttle reason.
    spans: list[tuple[float, float, str]] = field(default_factory=list)


@dataclass
class Line:
    name: str
    colour: str
    points: list[tuple[float, float]]
    dots: list[tuple[float, float, str]]


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    tip: str


@dataclass
class Span:
    x: float
    width: float
    colour: str
    tip: str


@dataclass
class Drawing:
    """A plot laid out in SVG pixels; plot.svg.j2 only draws it, so every string is escaped once, there."""

    label: str
    y_ticks: list[tuple[float, str]]
    x_ticks: list[tuple[float, str]]
    x_label: str
    # Slanted tick labels, for bars too narrow to carry their names level.
    slanted: bool = False
    lines: list[Line] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    span_names: list[tuple[str, str]] = field(default_factory=list)  # (name, colour), for the legend
    span_opacity: float = SPAN_OPACITY
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if abs(value) <= HUGE else None


def _numbers(values: Any) -> list[float | None] | None:
    """A list of numbers (nulls allowed: JSON's spelling of NaN) with at least two of them, else None."""
    if not isinstance(values, list) or len(values) < 2:
        return None
    if not all(v is None or _num(v) is not None for v in values):
        return None
    numbers = [None if v is None else _num(v) for v in values]
    return numbers if sum(v is not None for v in numbers) >= 2 else None


def _indexed(values: list[float | None]) -> list[tuple[float, float]]:
    return [(float(i), v) for i, v in enumerate(values) if v is not None]


def _record_plots(check: str, name: str, records: list[Any]) -> list[Plot]:
    if len(records) < 2 or not all(isinstance(r, dict) for r in records):
        return []
    everywhere = set.intersection(*(set(k for k, v in r.items() if _num(v) is not None) for r in records))
    x_key = next((k for k in X_KEYS if k in everywhere), None)
    numeric = [k for k in dict.fromkeys(k for r in records for k in r)
               if k != x_key and sum(_num(r.get(k)) is not None for r in records) >= 2]
    xs = [float(r[x_key]) if x_key else float(i) for i, r in enumerate(records)]
    spans = _spans(records, xs)
    groups: dict[str, list[str]] = {}
    for key in numeric:
        groups.setdefault(next((u for u in SHARED_UNITS if key.endswith(u)), key), []).append(key)
    return [Plot(check, _title(name, ", ".join(keys)), x_key or "index",
                 {k: [(x, float(r[k])) for x, r in zip(xs, records, strict=True) if _num(r.get(k)) is not None]
                  for k in keys}, spans=spans)
            for keys in groups.values()]


def _spans(records: list[dict[str, Any]], xs: list[float]) -> list[tuple[float, float, str]]:
    """Stretches over which a record's list of names held a name: from a record that names it to the next
    record's x."""
    fields = [k for k in dict.fromkeys(k for r in records for k in r)
              if any(isinstance(r.get(k), list) and r[k] and all(isinstance(v, str) for v in r[k]) for r in records)]
    spans: list[tuple[float, float, str]] = []
    open_at: dict[str, int] = {}  # a name's span that reaches the current record
    for i, r in enumerate(records):
        end = xs[i + 1] if i + 1 < len(xs) else xs[i]
        names = {n for key in fields if isinstance(r.get(key), list) for n in r[key] if isinstance(n, str)}
        for n in sorted(names):
            if n in open_at and spans[open_at[n]][1] == xs[i]:
                spans[open_at[n]] = (spans[open_at[n]][0], end, n)  # the same state goes on
            elif end > xs[i]:
                open_at[n] = len(spans)
                spans.append((xs[i], end, n))
    return spans


def _numeric_key(key: str) -> float | None:
    try:
        return _num(float(key))
    except ValueError:
        return None


def _title(name: str, part: str) -> str:
    return f"{name}: {part}" if name else part


def _columns(check: str, name: str, columns: dict[str, list[float | None]]) -> list[Plot]:
    """Columns of one table (one of them an X_KEYS axis: a plot per other column), or series to compare
    on one plot (no axis column)."""
    x_key = next((k for k in X_KEYS if k in columns), None)
    if x_key is None or len({len(v) for v in columns.values()}) != 1:
        return [Plot(check, name or "series", "index", {k: _indexed(v) for k, v in columns.items()})]
    plots = []
    for key, values in columns.items():
        points = [(x, y) for x, y in zip(columns[x_key], values, strict=True) if x is not None and y is not None]
        if key != x_key and len(points) >= 2:
            plots.append(Plot(check, _title(name, key), x_key, {key: points}))
    return plots


def _walk(check: str, name: str, value: Any, depth: int) -> list[Plot]:
    numbers = _numbers(value)
    if numbers is not None:
        return [Plot(check, name, "index", {name.rsplit(".", 1)[-1]: _indexed(numbers)})]
    if isinstance(value, list):
        return _record_plots(check, name, value)
    if not isinstance(value, dict) or not value:
        return []
    scalars = {k: _num(v) for k, v in value.items()}
    if len(value) >= 2 and all(v is not None for v in scalars.values()):
        xs = {k: _numeric_key(k) for k in value}
        if all(x is not None for x in xs.values()):
            return [Plot(check, name, "", {name.rsplit(".", 1)[-1]: sorted((xs[k], scalars[k]) for k in value)})]  # type: ignore[misc]
        if depth > 0:
            return [Plot(check, name, bars=[(k, v) for k, v in scalars.items() if v is not None][:MAX_BARS])]
        return []
    lists = {k: _numbers(v) for k, v in value.items()}
    if all(v is not None for v in lists.values()):
        return _columns(check, name, lists)  # type: ignore[arg-type]
    if depth >= 2:
        return []
    return [p for k, v in value.items() for p in _walk(check, f"{name}.{k}" if name else k, v, depth + 1)]


def plots_for(check: CheckResult) -> list[Plot]:
    return _walk(check.id, "", check.measurements, 0)[:MAX_PLOTS_PER_CHECK]


def _reduce(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    buckets = MAX_POINTS // 2
    reduced: list[tuple[float, float]] = []
    for b in range(buckets):
        chunk = points[b * len(points) // buckets:(b + 1) * len(points) // buckets]
        if chunk:
            low, high = min(chunk, key=lambda p: p[1]), max(chunk, key=lambda p: p[1])
            reduced += sorted({low, high})
    return reduced


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not high - low > max(abs(low), abs(high), TINY) * 1e-9:  # flat, or finer than floats resolve
        low, high = low - max(abs(low), 1.0) / 2, high + max(abs(high), 1.0) / 2
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(count + 3) if first + i * step <= high + step * 0.999]


def short(value: float, digits: int = 3) -> str:
    """1.25G, 350k, 0.25: tick labels that fit."""
    if value == 0:
        return "0"
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g}{suffix}"
    return f"{value:.{digits}g}"  # below 1000 plainly: 0.5 is clearer than 500m on a unitless axis


def _labels(ticks: list[float]) -> list[str]:
    """The shortest labels that still tell the ticks apart (1.2345k and 1.2346k, not 1.23k twice)."""
    for digits in range(3, 12):
        labels = [short(t, digits) for t in ticks]
        if len(set(labels)) == len(labels):
            return labels
    return labels


def _drawing(plot: Plot, y_ticks: list[float], y_of: Callable[[float], float],
             x_ticks: list[tuple[float, str]]) -> Drawing:
    return Drawing(f"{plot.check}: {plot.title}", [(y_of(t), label) for t, label in zip(y_ticks, _labels(y_ticks),
                                                                                          strict=True)],
                   x_ticks, "" if plot.bars else plot.x_label)


def _y_scale(values: list[float]) -> tuple[list[float], Callable[[float], float]]:
    low, high = min(values), max(values)
    if low >= 0:
        low = 0.0
    ticks = _nice_ticks(low, high)
    bottom, top = ticks[0], max(ticks[-1], high)
    span = (top - bottom) or 1.0
    return ticks, lambda v: HEIGHT - BOTTOM - (v - bottom) / span * (HEIGHT - TOP - BOTTOM)


def _line_drawing(plot: Plot) -> Drawing:
    series = {k: _reduce(v) for k, v in list(plot.lines.items())[:MAX_SERIES] if v}
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    y_ticks, y_of = _y_scale(ys)
    x_ticks = _nice_ticks(min(xs), max(xs))
    x_low = x_ticks[0]
    x_high = max(xs) if max(xs) > x_low else x_ticks[-1]
    x_span = (x_high - x_low) or 1.0

    def x_of(v: float) -> float:
        return LEFT + (v - x_low) / x_span * (WIDTH - LEFT - RIGHT)

    shown = [t for t in x_ticks if t <= x_high]
    drawing = _drawing(plot, y_ticks, y_of, [(x_of(t), label) for t, label in zip(shown, _labels(shown), strict=True)])
    names = list(dict.fromkeys(n for _, _, n in plot.spans))[:MAX_SPAN_NAMES]
    colour = {n: PALETTE[(SPAN_COLOURS_FROM + i) % len(PALETTE)] for i, n in enumerate(names)}
    drawing.span_names = [(n, colour[n]) for n in names]
    for start, end, n in plot.spans[:MAX_POINTS]:  # a hostile report's flicker stays a bounded drawing
        if n in colour and end > x_low and start < x_high:
            left, right = x_of(max(start, x_low)), x_of(min(end, x_high))
            drawing.spans.append(Span(left, right - left, colour[n], f"{n}: {short(start)} to {short(end)}"))
    for i, (name, points) in enumerate(series.items()):
        # Dots (each with its value on hover) only where they stay apart.
        dots = [(x_of(x), y_of(y), f"{name}: {short(x)} → {y:.6g}") for x, y in points] if len(points) <= 40 else []
        drawing.lines.append(Line(name, PALETTE[i % len(PALETTE)], [(x_of(x), y_of(y)) for x, y in points], dots))
    return drawing


def _clip(label: str, width: int) -> str:
    return label if len(label) <= width else label[:width - 1] + "…"


def _bar_drawing(plot: Plot) -> Drawing:
    y_ticks, y_of = _y_scale([v for _, v in plot.bars])
    slot = (WIDTH - LEFT - RIGHT) / len(plot.bars)
    # Names level under their bars where they fit; slanted and clipped (full on hover) where they do not.
    slanted = any(len(name) * CHAR_WIDTH > slot for name, _ in plot.bars)
    names = [_clip(name, SLANTED_CHARS) if slanted else name for name, _ in plot.bars]
    drawing = _drawing(plot, y_ticks, y_of, [(LEFT + slot * (i + 0.5), name) for i, name in enumerate(names)])
    drawing.slanted = slanted
    zero = y_of(max(0.0, y_ticks[0]))
    for i, (name, value) in enumerate(plot.bars):
        top = y_of(value)
        colour = plot.colours[i] if i < len(plot.colours) else PALETTE[0]
        drawing.bars.append(Bar(LEFT + slot * (i + 0.15), min(top, zero), slot * 0.7, abs(zero - top), colour,
                                f"{name}: {value:.6g}"))
    return drawing


def drawing(plot: Plot) -> Drawing:
    return _bar_drawing(plot) if plot.bars else _line_drawing(plot)


def to_svg(plot: Plot) -> str:
    return render_macro("plot.svg.j2", "svg", drawing(plot))
