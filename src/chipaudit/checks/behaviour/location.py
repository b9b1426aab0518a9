"""behaviour.location: does the device react to where the machine appears to be?

Threat: tracking and regional kill switches: a device that refuses, slows down or computes wrongly
in some countries, judged from the signals software sees: the time zone and the locale.

Method: the same seeded, host-verified workload runs in a neutral reference world (TZ=UTC,
LANG=C.UTF-8, no LC_* or LANGUAGE) and in changed ones: at quick, China (TZ=Asia/Shanghai and the
zh_CN.UTF-8 locale in LANG, LANGUAGE and every LC_* variable); at standard and deep also each time
zone alone (Asia/Shanghai, America/New_York, Europe/Berlin, Europe/Moscow), each locale alone
(zh_CN, en_US, ru_RU, de_DE, all UTF-8) and Russia combined. The workload calls setlocale() as an
application does, and reports the offset and locale it sees; a time zone that did not take effect
is reported as not applied. Worlds run interleaved with the reference (A B A B) and are verified
before and after. No world is traced: each runs under sensors it cannot see (the sinkhole, the
socket sampler); the reference runs again under strace as an extra world, compared like the others.

Pass: every world computes every product correctly, with the reference's bits, at its speed,
without network calls or file writes.
Fail: a refusal, crash, hang or wrong result in a world (high); different bits (medium); a speed
ratio of 1.5x or more with a 99% interval excluding 1 (high); any side effect, as for every probe.
A product refused in every world, the reference included, is weighed by what the device declares of
its format (findings.py): high, medium or low, never a skip.
A locale that is not installed is still set in the environment, and the report says so.

Cannot see: location signals other than time zone and locale (the public IP address, GPS, nearby
networks, /etc/timezone read directly, a keyboard layout), and regions not tried.
"""

from __future__ import annotations

from typing import ClassVar

from chipaudit.checks.behaviour.probe import ConditionProbe
from chipaudit.perturb import conditions as cond
from chipaudit.perturb.conditions import Condition
from chipaudit.report.model import Category, Level

CHINA = ("China", "Asia/Shanghai", "zh_CN.UTF-8")
RUSSIA = ("Russia", "Europe/Moscow", "ru_RU.UTF-8")
TIME_ZONES = ("Asia/Shanghai", "America/New_York", "Europe/Berlin", "Europe/Moscow")
LOCALES = ("zh_CN.UTF-8", "en_US.UTF-8", "ru_RU.UTF-8", "de_DE.UTF-8")


def _region(name: str, tz: str, locale: str) -> Condition:
    return cond.location(f"{name} ({tz}, {locale})", tz, locale)


class LocationProbe(ConditionProbe):
    id = "behaviour.location"
    category = Category.behaviour
    timeout_s: ClassVar[dict[Level, float]] = {Level.quick: 150.0, Level.standard: 500.0, Level.deep: 900.0}

    def worlds(self, level: Level) -> list[Condition]:
        if level is Level.quick:
            return [_region(*CHINA)]
        return [
            _region(*CHINA), _region(*RUSSIA),
            *(cond.location(f"TZ={tz}", tz=tz) for tz in TIME_ZONES),
            *(cond.location(f"locale {loc}", locale=loc) for loc in LOCALES),
        ]


CHECKS = [LocationProbe()]
