"""The one Jinja environment that the audit page, the fleet page and their plots are rendered with.

Autoescaping is on for every template, so a device name or a finding's text from someone else's report
stays text. The style and the one small script are read from the templates folder and inlined, and the
page's Content Security Policy allows exactly those two (by hash) and nothing else: no fetch can leave a
page, even one that someone has edited to try.
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import cache
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from chipaudit.report.figures import format_figure

# Longer lists (or lists of structures) fold away under their length.
INLINE_LIST = 6


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _flat(values: list[Any] | tuple[Any, ...]) -> bool:
    """A list short and plain enough to read inline in a table cell; longer ones fold away."""
    return len(values) <= INLINE_LIST and not any(isinstance(v, dict | list) for v in values)


def _count(value: int) -> str:
    return f"{value:,}"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)


def _px(value: float) -> str:
    """SVG coordinates to a tenth of a pixel: finer changes nothing on screen and bloats the page."""
    return f"{value:.1f}"


@cache
def environment() -> Environment:
    env = Environment(loader=PackageLoader(__package__ or "chipaudit.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(figure=format_figure, count=_count, px=_px, flat=_flat, pretty=_pretty)
    return env


@cache
def _asset(name: str) -> str:
    return (resources.files(__package__ or "chipaudit.report") / "templates" / name).read_text(encoding="utf-8")


def render_page(template: str, **context: Any) -> str:
    """A whole self-contained page: the shared style and script inlined, and a policy that forbids the
    page to load anything at all."""
    style, script = _asset("style.css"), _asset("page.js")
    csp = (f"default-src 'none'; style-src {_csp_hash(style)}; script-src {_csp_hash(script)}; img-src data:; "
           "base-uri 'none'; form-action 'none'")
    page = environment().get_template(template).render(style=Markup(style), script=Markup(script), csp=Markup(csp),
                                                         **context)
    return page.rstrip("\n") + "\n"


def render_macro(template: str, macro: str, *args: Any) -> str:
    """One macro's output alone (a plot's SVG), for callers that build a page piece by piece."""
    return str(getattr(environment().get_template(template).module, macro)(*args))
