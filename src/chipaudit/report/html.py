"""The HTML report: one self-contained file that a buyer, a regulator or an operator can open anywhere.

Everything is inline (styles, the one small script, SVG plots, the report's own JSON), and a Content
Security Policy forbids the page from loading anything at all, so opening it never touches the network.
Every string from the report is escaped: a report may come from someone else.

Order of the page: the verdict at a glance, findings by severity, every check with its coverage,
plots where measurements form series, the limits of the audit, and how to reproduce it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from html import escape
from pathlib import Path
from typing import Any

from chipaudit.report import plots
from chipaudit.report.figures import format_figure, scalar_figures
from chipaudit.report.model import FAILING_SEVERITY, SHARED_MODE, Report, Severity, Status, Verdict, write_atomic

VERDICT_TEXT = {Verdict.pass_: "PASS", Verdict.fail: "FAIL", Verdict.inconclusive: "INCONCLUSIVE"}
VERDICT_MEANING = {
    Verdict.pass_: "Every check that ran agreed with the independent oracle and no finding reached "
                   f"{FAILING_SEVERITY.value} severity.",
    Verdict.fail: f"At least one finding of {FAILING_SEVERITY.value} severity or above: the device did something "
                  "it must not.",
    Verdict.inconclusive: "The audit cannot vouch for the device: it did not finish, a check errored, or "
                          "nothing was observed.",
}
MAX_LIST_INLINE = 6
# More informational findings than this are folded away, under their count.
FOLDED_INFO = 3

STYLE = """
:root{--pass:#1a7f37;--fail:#cf222e;--inconclusive:#9a6700;--muted:#57606a;--line:#d0d7de;--bg:#f6f8fa}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;background:#fff}
main{max-width:1100px;margin:0 auto;padding:0 20px 40px}
header.verdict{color:#fff;padding:22px 28px;display:flex;gap:28px;align-items:center;flex-wrap:wrap}
header.pass{background:var(--pass)}header.fail{background:var(--fail)}header.inconclusive{background:var(--inconclusive)}
#verdict-word{font-size:54px;font-weight:800;letter-spacing:2px;line-height:1}
header .what{font-size:18px;font-weight:600}header .meaning{opacity:.92}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid var(--line);padding:8px 20px;z-index:1}
nav a{margin-right:16px;color:#0969da;text-decoration:none}
h2{border-bottom:1px solid var(--line);padding-bottom:4px;margin-top:32px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:10px;margin-top:18px}
.card{background:var(--bg);border:1px solid var(--line);border-radius:6px;padding:8px 12px}
.card .k{color:var(--muted);font-size:12px;text-transform:uppercase}.card .v{font-weight:600;word-break:break-word}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:13px;font-weight:600;color:#fff}
.s-passed{background:var(--pass)}.s-failed{background:var(--fail)}.s-warning{background:#bf8700}
.s-skipped{background:#8c959f}.s-error{background:#8250df}
.sev-critical,.sev-high{background:var(--fail)}.sev-medium{background:#bc4c00}.sev-low{background:#bf8700}
.sev-info{background:#8c959f}
table{border-collapse:collapse;width:100%;margin-top:8px}
th,td{border-bottom:1px solid var(--line);padding:6px 8px;text-align:left;vertical-align:top}
th{background:var(--bg);font-size:13px}td.num{text-align:right;white-space:nowrap}
.finding{border-left:4px solid var(--line);padding:6px 12px;margin:8px 0;background:var(--bg)}
.finding.sev-critical,.finding.sev-high{border-color:var(--fail)}.finding.sev-medium{border-color:#bc4c00}
.finding.sev-low{border-color:#bf8700}
.finding{color:inherit}.finding .t{font-weight:600}
details>summary{cursor:pointer;color:#0969da}
pre{background:var(--bg);padding:8px;overflow:auto;font-size:12px;max-height:320px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px}
.muted{color:var(--muted)}.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:16px}
figure{margin:0;border:1px solid var(--line);border-radius:6px;padding:8px}
figcaption{font-size:13px;color:var(--muted);margin-bottom:4px}
svg.plot{width:100%;height:auto;font:11px system-ui,sans-serif}svg .grid{stroke:#eaeef2}
svg .axis{stroke:#57606a}svg text{fill:#424a53}svg .label{fill:#57606a}
body.hide-passed tr.row-passed{display:none}
details.group>summary h3{display:inline}td details>summary{color:inherit}
footer{color:var(--muted);font-size:13px;margin-top:40px}
@media print{nav{display:none}details{display:block}}
"""

SCRIPT = """
(function () {
  var box = document.getElementById("hide-passed");
  if (box) {
    box.addEventListener("change", function () { document.body.classList.toggle("hide-passed", box.checked); });
  }
  var all = document.getElementById("expand-all");
  if (all) { all.addEventListener("click", function () {
    var open = all.dataset.open !== "1";
    document.querySelectorAll("#checks details").forEach(function (d) { d.open = open; });
    all.dataset.open = open ? "1" : "0"; all.textContent = open ? "collapse all" : "expand all";
  }); }
  document.documentElement.setAttribute("data-rendered", "true");
})();
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _value(value: Any) -> str:
    """A coverage or evidence value, short enough for a table cell."""
    if isinstance(value, bool) or value is None:
        return _e(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return _e(format_figure(value))
    if isinstance(value, list):
        if len(value) <= MAX_LIST_INLINE and all(not isinstance(v, dict | list) for v in value):
            return _e(", ".join(str(v) for v in value)) or '<span class="muted">none</span>'
        items = "".join(f"<li>{_e(v)}</li>" for v in value)
        return f"<details><summary>{len(value)} items</summary><ul>{items}</ul></details>"
    if isinstance(value, dict):
        return ", ".join(f"{_e(k)} {_value(v)}" for k, v in value.items()) or '<span class="muted">none</span>'
    return _e(value)


def _coverage_summary(coverage: dict[str, Any]) -> str:
    keys = [k for k, v in coverage.items() if isinstance(v, int | float) and not isinstance(v, bool)][:4]
    return ", ".join(f"{_e(k.replace('_', ' '))} {_value(coverage[k])}" for k in keys)


def _header(report: Report) -> str:
    counts = {s: sum(c.status is s for c in report.checks) for s in Status}
    tally = ", ".join(f"{n} {s.value}" for s, n in counts.items() if n) or "no checks"
    serious = sum(f.severity.rank >= FAILING_SEVERITY.rank for f in report.findings)
    incomplete = " · INCOMPLETE: the audit was interrupted" if not report.complete else ""
    return (
        f'<header class="verdict {report.verdict.value}" id="verdict" data-verdict="{report.verdict.value}">'
        f'<div id="verdict-word">{VERDICT_TEXT[report.verdict]}</div><div>'
        f'<div class="what">{_e(report.level.value)} audit of {_e(report.device.spec)} '
        f"({_e(report.device.name or report.device.type)}){_e(incomplete)}</div>"
        f'<div>{_e(tally)} · {serious} finding(s) of {FAILING_SEVERITY.value} severity or above</div>'
        f'<div class="meaning">{_e(VERDICT_MEANING[report.verdict])}</div></div></header>'
    )


def _cards(report: Report) -> str:
    duration = (f"{(report.finished - report.started).total_seconds():.0f} s" if report.finished else "unfinished")
    memory = f"{report.device.memory_bytes / 2**30:.1f} GiB" if report.device.memory_bytes else "unknown"
    items = [("device", f"{report.device.spec} · {report.device.name}"), ("memory", memory),
             ("level", report.level.value), ("seed", report.seed),
             ("started", report.started.strftime("%Y-%m-%d %H:%M:%S %Z")), ("duration", duration),
             ("torch", report.device.torch_version or report.environment.torch), ("host", report.environment.hostname),
             ("tool", f"{report.tool.name} {report.tool.version}"), ("schema", report.schema_)]
    items += [(k, v) for k, v in report.device.driver.items()]
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>' for k, v in items
    ) + "</div>"


def _findings(report: Report) -> str:
    out = ['<section id="findings"><h2>Findings by severity</h2>']
    if not report.findings:
        out.append('<p class="muted">No findings: no check saw anything wrong.</p>')
    for severity in sorted(Severity, key=lambda s: -s.rank):
        group = [f for f in report.findings if f.severity is severity]
        if not group:
            continue
        heading = f'<span class="badge sev-{severity.value}">{severity.value}</span> {len(group)}'
        items = []
        for f in group:
            evidence = json.dumps(f.evidence, indent=2, default=str)
            items.append(
                f'<div class="finding sev-{severity.value}"><div class="t">{_e(f.check)}: {_e(f.title)}</div>'
                f"<div>{_e(f.detail)}</div><details><summary>evidence (to reproduce)</summary>"
                f"<pre>{_e(evidence)}</pre></details></div>")
        if severity.rank < Severity.low.rank and len(group) > FOLDED_INFO:
            # Informational notes must not push the checks off the first screen.
            out.append(f'<details class="group"><summary><h3>{heading} (show)</h3></summary>{"".join(items)}</details>')
        else:
            out.append(f"<h3>{heading}</h3>" + "".join(items))
    out.append("</section>")
    return "".join(out)


def _checks(report: Report, plot_ids: dict[str, list[str]]) -> str:
    out = ['<section id="checks"><h2>Checks</h2><p><label><input type="checkbox" id="hide-passed"> hide passed '
           'checks</label> · <button type="button" id="expand-all">expand all</button></p>',
           "<table><thead><tr><th>check</th><th>category</th><th>status</th><th>time</th>"
           "<th>coverage / reason</th></tr></thead><tbody>"]
    for c in report.checks:
        summary = _e(c.reason) if c.reason else _coverage_summary(c.coverage)
        shown = plot_ids.get(c.id, [])
        links = f' · <a href="#{_e(shown[0])}">{len(shown)} plot(s)</a>' if shown else ""
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_value(v)}</td></tr>" for k, v in c.coverage.items())
        figures = "".join(f"<tr><th>{_e(k)}</th><td>{_e(format_figure(v))}</td></tr>"
                          for k, v in scalar_figures(c).items())
        findings = sum(f.check == c.id for f in report.findings)
        trace = f"<pre>{_e(c.measurements['traceback'])}</pre>" if "traceback" in c.measurements else ""
        out.append(
            f'<tr class="row-{c.status.value}" id="check-{_e(c.id)}"><td><code>{_e(c.id)}</code></td>'
            f"<td>{_e(c.category.value)}</td><td><span class=\"badge s-{c.status.value}\">{c.status.value}"
            f'</span></td><td class="num">{c.duration_s:.1f} s</td><td><details><summary>'
            f'{summary or "details"}</summary><table><tr><th>seed</th><td><code>{_e(c.seed)}</code></td></tr>'
            f"<tr><th>findings</th><td>{findings}</td></tr>{rows}{figures}</table>{trace}</details>{links}</td></tr>")
    out.append("</tbody></table></section>")
    return "".join(out)


def _plots(report: Report) -> tuple[str, dict[str, list[str]]]:
    figures: list[str] = []
    ids: dict[str, list[str]] = {}
    for c in report.checks:
        for i, plot in enumerate(plots.plots_for(c)):
            pid = f"plot-{c.id}-{i}"
            ids.setdefault(c.id, []).append(pid)
            figures.append(f'<figure id="{_e(pid)}"><figcaption><code>{_e(c.id)}</code> · {_e(plot.title)}'
                           f"</figcaption>{plots.to_svg(plot)}</figure>")
    if not figures:
        body = '<p class="muted">No check in this audit recorded a series to plot.</p>'
    else:
        body = '<div class="plots">' + "".join(figures) + "</div>"
    return f'<section id="plots"><h2>Plots</h2>{body}</section>', ids


def _limits(report: Report) -> str:
    items = "".join(f"<li>{_e(limit)}</li>" for limit in report.limits) or "<li>none recorded</li>"
    return f'<section id="limits"><h2>Limits of this audit</h2><p>What this audit could not observe:</p>' \
           f"<ul>{items}</ul></section>"


def _reproduce(report: Report) -> str:
    env = report.environment
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in (
        ("os", env.os), ("python", env.python), ("torch", env.torch), ("numpy", env.numpy), ("host", env.hostname)))
    return (f'<section id="reproduce"><h2>Reproduce</h2><p>Repeat this audit with:</p><pre>{_e(report.replay)}</pre>'
            f"<p>or, from its bundle, <code>chipaudit replay BUNDLE</code>.</p><table>{rows}</table></section>")


def _embedded(report: Report) -> str:
    """The report's JSON, unexecuted, for tools that read the page; '<' escaped so no string in the
    report can end the script element."""
    data = report.to_json().replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="report-data">{data}</script>'


def to_html(report: Report) -> str:
    plot_section, plot_ids = _plots(report)
    csp = (f"default-src 'none'; style-src {_csp_hash(STYLE)}; script-src {_csp_hash(SCRIPT)}; img-src data:; "
           "base-uri 'none'; form-action 'none'")
    title = f"chipaudit: {VERDICT_TEXT[report.verdict]} — {report.level.value} audit of {report.device.spec}"
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
        + _header(report)
        + '<nav><a href="#verdict">Verdict</a><a href="#findings">Findings</a><a href="#checks">Checks</a>'
          '<a href="#plots">Plots</a><a href="#limits">Limits</a><a href="#reproduce">Reproduce</a></nav><main>'
        + _cards(report) + _findings(report) + _checks(report, plot_ids) + plot_section + _limits(report)
        + _reproduce(report)
        + f"<footer>Written by {_e(report.tool.name)} {_e(report.tool.version)} from a report of schema "
          f"{_e(report.schema_)}; the report's JSON is embedded in this page.</footer></main>"
        + _embedded(report) + f"<script>{SCRIPT}</script></body></html>\n"
    )


def write(report: Report, path: Path) -> None:
    write_atomic(path, to_html(report), mode=SHARED_MODE)
