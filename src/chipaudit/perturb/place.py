"""Where the machine itself says it is: the location signals software reads from the system rather
than from its environment. A device stack that wants to know the country it runs in need not look
at TZ or LANG; it can read the configured zone (/etc/localtime, as a link or by its bytes, and
/etc/timezone), the system locale (/etc/default/locale, /etc/locale.conf), the host's names (the
kernel's host and domain names, /etc/hostname, /etc/hosts) and the DNS search domain
(/etc/resolv.conf).

A `Place` is one value of all of them; the neutral place (the default) names no country, and every
world starts from it, so that the reference is neutral even on a machine that is itself configured
for China. `files` writes a place as the private /etc of a world (process/isolation.py); `seen`
reads back what a process sees, so that the tool can tell a world that took effect from one that
did not (`mismatches`).

The neutral names: UTC as Debian and most images configure it (a link to Etc/UTC); C.UTF-8, the
locale every glibc has; the DNS domain `compute.internal`, under `.internal`, the top-level domain
ICANN reserved in 2024 for private networks (no country), in the shape cloud providers' internal
names take; and the same node name in every world, so that worlds differ only in their country
(a fixed name, which a stack that knows this tool can recognise, as it can recognise a private
world: the location probe's limits say so).
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from chipaudit.process.isolation import EtcFile

ZONEINFO = Path("/usr/share/zoneinfo")
RESOLV_CONF = "/etc/resolv.conf"
NODE = "gpu-node-07"
NEUTRAL_ZONE, NEUTRAL_LOCALE, NEUTRAL_DOMAIN = "Etc/UTC", "C.UTF-8", "compute.internal"
# /etc/hosts as Debian's netbase installs it, with the node's own names on 127.0.1.1 (Debian
# reference manual, 5.1.1: "The hostname resolution"), so that resolving the host's own name never
# needs the network in any world.
HOSTS = """127.0.0.1\tlocalhost
127.0.1.1\t{fqdn} {node}
::1\tlocalhost ip6-localhost ip6-loopback
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""
LOCAL_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback", "ip6-allnodes", "ip6-allrouters"})
# Files read back whole are small; anything longer is not one we wrote.
READ_LIMIT = 1 << 16


@dataclass(frozen=True)
class Place:
    zone: str = NEUTRAL_ZONE
    zone_copied: bool = False  # /etc/localtime as a copy of the zone file (older images), not a link
    locale: str = NEUTRAL_LOCALE
    domain: str = NEUTRAL_DOMAIN  # the host's DNS domain: its full name and the kernel's domain name
    search: str = NEUTRAL_DOMAIN  # resolv.conf's search and domain

    @property
    def hostname(self) -> str:
        return f"{NODE}.{self.domain}"

    def changes(self) -> dict[str, Any]:
        """What differs from the neutral place, for a world's description."""
        mine, neutral = asdict(self), asdict(Place())
        return {k: v for k, v in mine.items() if v != neutral[k]}

    def files(self, nameservers: list[str]) -> tuple[EtcFile, ...]:
        """The world's /etc: every file of every signal, neutral ones included, so that every world
        has the same files and only their contents differ."""
        zone = str(ZONEINFO / self.zone)
        lang = f"LANG={self.locale}\n"
        resolv = "".join([f"domain {self.search}\n", f"search {self.search}\n",
                          *(f"nameserver {n}\n" for n in nameservers)])
        return (
            EtcFile("localtime", copy_of=zone) if self.zone_copied else EtcFile("localtime", link=zone),
            EtcFile("timezone", text=f"{self.zone}\n"),
            EtcFile("default/locale", text=lang),
            EtcFile("locale.conf", text=lang),
            EtcFile("hostname", text=f"{self.hostname}\n"),
            EtcFile("hosts", text=HOSTS.format(fqdn=self.hostname, node=NODE)),
            EtcFile("resolv.conf", text=resolv),
        )

    def expected(self) -> dict[str, Any]:
        """What `seen` must return inside a world of this place."""
        zone = ZONEINFO / self.zone
        return {
            "hostname": self.hostname, "domainname": self.domain, "etc_hostname": self.hostname,
            "hosts": [self.hostname, NODE],
            "localtime_link": None if self.zone_copied else str(zone), "localtime_sha256": zone_digest(str(zone)),
            "timezone": self.zone, "default_locale": self.locale, "locale_conf": self.locale,
            "search": [self.search], "domain": self.search,
        }


@cache
def zone_digest(path: str) -> str | None:
    return _digest(path)


def _digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read(READ_LIMIT)).hexdigest()
    except OSError:
        return None


def _read(path: str) -> str | None:
    try:
        with open(path, errors="replace") as f:
            return f.read(READ_LIMIT).strip()
    except OSError:
        return None


def _lang(path: str) -> str | None:
    """LANG from a shell-style assignments file (/etc/default/locale, /etc/locale.conf)."""
    for line in (_read(path) or "").splitlines():
        key, _, value = line.strip().partition("=")
        if key == "LANG":
            return value.strip().strip("\"'")
    return None


def resolver(text: str) -> dict[str, Any]:
    """resolv.conf's nameservers, search list and domain; of several search or domain lines the last
    one counts, as in glibc's resolver (resolv.conf(5))."""
    out: dict[str, Any] = {"nameservers": [], "search": None, "domain": None}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) < 2:
            continue
        if words[0] == "nameserver":
            out["nameservers"].append(words[1])
        elif words[0] == "search":
            out["search"] = words[1:]
        elif words[0] == "domain":
            out["domain"] = words[1]
    return out


def host_nameservers() -> list[str]:
    """The machine's own nameservers, for a world given no nameserver of its own: the only lines of
    the machine's resolv.conf a world keeps (its search and domain are the machine's location)."""
    return resolver(_read(RESOLV_CONF) or "")["nameservers"]


def _hosts_names() -> list[str]:
    names = []
    for line in (_read("/etc/hosts") or "").splitlines():
        words = line.split("#", 1)[0].split()
        names += [w for w in words[1:] if w not in LOCAL_NAMES]
    return names[:50]


def seen() -> dict[str, Any]:
    """Every system location signal as this process sees it, read the ways software reads them."""
    try:
        link: str | None = os.readlink("/etc/localtime")
    except OSError:
        link = None
    resolv = resolver(_read(RESOLV_CONF) or "")
    return {
        "hostname": socket.gethostname(), "domainname": _read("/proc/sys/kernel/domainname"),
        "etc_hostname": _read("/etc/hostname"), "hosts": _hosts_names(),
        "localtime_link": link, "localtime_sha256": _digest("/etc/localtime"),
        "timezone": _read("/etc/timezone"), "default_locale": _lang("/etc/default/locale"),
        "locale_conf": _lang("/etc/locale.conf"), "search": resolv["search"], "domain": resolv["domain"],
    }


def mismatches(expected: dict[str, Any], got: dict[str, Any] | None) -> list[str]:
    """Each signal that a process did not see as its world says, e.g. "timezone 'Etc/UTC', not
    'Asia/Shanghai'"."""
    if not isinstance(got, dict):
        return ["no system signals reported"]
    out = []
    for key, want in expected.items():
        have = got.get(key)
        if key == "hosts":
            if not set(want) <= set(have or []):
                out.append(f"/etc/hosts names {have}, without {want}")
        elif have != want:
            out.append(f"{key} {have!r}, not {want!r}")
    return out
