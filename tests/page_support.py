"""Shared checks for the HTML pages (audit and fleet): that a page could load nothing, and that real
Chromium, opening it, asks the network for nothing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "header", "div", "nav", "a", "main", "section",
                "h2", "h3", "p", "span", "details", "summary", "pre", "code", "table", "thead", "tbody", "tr", "th",
                "td", "label", "input", "button", "ul", "li", "figure", "figcaption", "svg", "line", "text",
                "polyline", "circle", "rect", "script", "footer"}


def tags(page: str) -> list[tuple[str, list[tuple[str, str]]]]:
    found: list[tuple[str, list[tuple[str, str]]]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append((tag, [(k, v or "") for k, v in attrs]))

    Collect().feed(page)
    return found


def text_of(page: str) -> str:
    """What a reader sees (scripts and styles left out), whitespace collapsed: for asserting on content
    without depending on markup."""
    parts: list[str] = []

    class Collect(HTMLParser):
        skip = 0

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.skip += tag in ("script", "style")

        def handle_endtag(self, tag: str) -> None:
            self.skip -= tag in ("script", "style")

        def handle_data(self, data: str) -> None:
            if not self.skip:
                parts.append(data)

    Collect().feed(page)
    return " ".join(" ".join(parts).split())


def embedded(page: str, element_id: str) -> object:
    found = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>', page, re.S)
    assert found is not None
    return json.loads(found.group(1))


def assert_loads_nothing(page: str) -> None:
    """No element pointing anywhere but at an in-page anchor, no handlers, no url(), no @import, and a
    policy that forbids loading anything even so."""
    assert "default-src 'none'" in page
    found = tags(page)
    assert {t for t, _ in found} <= ALLOWED_TAGS, {t for t, _ in found} - ALLOWED_TAGS
    links = [(t, k, v) for t, attrs in found for k, v in attrs if k in ("src", "href", "action", "srcset", "data")]
    assert all(k == "href" and v.startswith("#") for _, k, v in links), links
    assert not any(k.startswith("on") for _, attrs in found for k, _ in attrs)
    assert "url(" not in page and "@import" not in page
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) <= {"http://www.w3.org/2000/svg"}


def page_requests(page: Path, tmp_path: Path) -> list[str]:
    """Every URL the page itself asked for while Chromium loaded it, from Chromium's own network log.

    The browser's background traffic (update and time checks) is left out: it is not the page's. Host
    names resolve to nothing, so even a page that did ask could reach nobody."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (.ci/run installs the Debian package 'chromium')")
    log = tmp_path / f"{page.stem}.netlog.json"
    p = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / 'netlog-profile'}",
         f"--log-net-log={log}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    data = json.loads(log.read_text())
    start = data["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in data["events"]
            if e["type"] == start and "url" in e.get("params", {})
            and e["params"].get("network_isolation_key", "").startswith("file://")]
