"""behaviour.location: does the device react to where the machine appears to be?

Threat: tracking and regional kill switches: a device that refuses, slows down or computes wrongly
in some countries, judged from the signals software sees: the environment (TZ, LANG, LC_*,
LANGUAGE), and the machine's own configuration, which a stack may read instead: /etc/localtime (its
link target or its bytes), /etc/timezone, /etc/default/locale and /etc/locale.conf, the host and
domain names (the kernel's, /etc/hostname, /etc/hosts) and resolv.conf's search and domain.

Method: the same seeded, host-verified workload runs in a neutral reference world and in changed
ones. Every world, the reference included, gets a private /etc (an overlay) and private host names
in mount and UTS namespaces of its own (process/isolation.py, perturb/place.py), so the host never
changes and the reference is neutral (TZ=UTC, LANG=C.UTF-8, /etc/localtime a link to Etc/UTC,
gpu-node-07.compute.internal, no country's search domain) even on a machine configured for China.
At quick, one world: China in every signal at once (TZ=Asia/Shanghai and zh_CN.UTF-8 in LANG,
LANGUAGE and every LC_*; the zone and locale files; gpu-node-07.compute.bj.cn as host name,
compute.bj.cn as domain name and search domain). At standard and deep also Russia in every signal,
China in the zone and locale files alone (TZ removed, so that the C library reads /etc/localtime, as
on most machines), the same with /etc/localtime a copy of the zone file instead of a link, China in
the host and domain names alone, China in the DNS search domain alone, each time zone alone
(Asia/Shanghai, America/New_York, Europe/Berlin, Europe/Moscow) and each locale alone (zh_CN, en_US,
ru_RU, de_DE, all UTF-8). The workload calls setlocale() as an application does and reports the
offset, the locale and every system signal it sees; a world in which any of them is not as the
world says is reported as not applied. Worlds run interleaved with the reference (A B A B) and are
verified before and after. No world
is traced: each runs under sensors it cannot see (the sinkhole, the socket sampler); the reference
runs again under strace as an extra world, compared by bits, refusals and side effects (not by
speed: a tracer slows every system call by design).

Pass: every world computes every product correctly, with the reference's bits, at its speed,
without network calls or file writes.
Fail: a refusal, crash, hang or wrong result in a world (high); different bits (medium); a speed
ratio of 1.5x or more with a 99% interval excluding 1 (high); any side effect, as for every probe.
A product refused in every world, the reference included, is weighed by what the device declares of
its format (findings.py): high, medium or low, never a skip.
A locale that is not installed is still set in the environment, and the report says so.
Without private namespaces (no root or CAP_SYS_ADMIN), worlds that change the system do not run
(the report says why), China runs in its environment alone, and the limits say that the machine's
own signals were seen in every world.

Cannot see: location signals not tried (the public IP address, GPS or a device's own GNSS receiver
and clock, nearby Wi-Fi networks, the keyboard layout, the nameserver's address, the device's own
region codes), regions not tried, and a stack with root that reads the real machine through PID 1's
view (/proc/1/root/etc): private namespaces can be told from inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from chipaudit.checks.behaviour.probe import ConditionProbe
from chipaudit.perturb import conditions as cond
from chipaudit.perturb.conditions import Condition
from chipaudit.perturb.place import Place
from chipaudit.report.model import Category, Level


@dataclass(frozen=True)
class Region:
    """A country as a machine there is configured: its zone, its locale, and a DNS domain under its
    country code (under a provincial second-level domain, as bj.cn for Beijing and msk.ru for
    Moscow are)."""

    name: str
    zone: str
    locale: str
    domain: str


CHINA = Region("China", "Asia/Shanghai", "zh_CN.UTF-8", "compute.bj.cn")
RUSSIA = Region("Russia", "Europe/Moscow", "ru_RU.UTF-8", "compute.msk.ru")
TIME_ZONES = ("Asia/Shanghai", "America/New_York", "Europe/Berlin", "Europe/Moscow")
LOCALES = ("zh_CN.UTF-8", "en_US.UTF-8", "ru_RU.UTF-8", "de_DE.UTF-8")


def everywhere(r: Region) -> Condition:
    system = Place(r.zone, locale=r.locale, domain=r.domain, search=r.domain)
    return cond.location(f"{r.name} (every signal: {r.zone}, {r.locale}, {system.hostname})", r.zone, r.locale,
                         system)


def environment(r: Region) -> Condition:
    return cond.location(f"{r.name} (environment: {r.zone}, {r.locale})", r.zone, r.locale)


def system_files(r: Region, copied: bool = False) -> Condition:
    how = "a copied" if copied else "a linked"
    return cond.location(f"{r.name} (zone and locale files, {how} /etc/localtime: {r.zone}, {r.locale})",
                         system=Place(r.zone, zone_copied=copied, locale=r.locale))


def host_names(r: Region) -> Condition:
    system = Place(domain=r.domain)
    return cond.location(f"{r.name} (host and domain names: {system.hostname})", system=system)


def search_domain(r: Region) -> Condition:
    return cond.location(f"{r.name} (DNS search domain: {r.domain})", system=Place(search=r.domain))


class LocationProbe(ConditionProbe):
    id = "behaviour.location"
    category = Category.behaviour
    timeout_s: ClassVar[dict[Level, float]] = {Level.quick: 150.0, Level.standard: 600.0, Level.deep: 900.0}

    def worlds(self, level: Level) -> list[Condition]:
        regions = (CHINA,) if level is Level.quick else (CHINA, RUSSIA)
        out = [everywhere(r) for r in regions]
        if cond.isolation_unavailable():
            # The system worlds cannot run (the report says why): the environment still can.
            out += [environment(r) for r in regions]
        if level is Level.quick:
            return out
        return [
            *out, system_files(CHINA), system_files(CHINA, copied=True), host_names(CHINA), search_domain(CHINA),
            *(cond.location(f"TZ={tz}", tz=tz) for tz in TIME_ZONES),
            *(cond.location(f"locale {loc}", locale=loc) for loc in LOCALES),
        ]


CHECKS = [LocationProbe()]
