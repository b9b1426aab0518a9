"""A refusal is a finding, never a skip: what every check does when the device raises or hangs
instead of computing.

A device without a format and a device with the format switched off (a policy pushed to it, a kill
switch) both raise; only the device's declarations tell them apart (devices/capability.py). So a
refusal of a whole format or operator is judged by what the device declared of it: high when the
device declares it, medium when only its torch backend implements it, low when nothing says either
way. A check may skip work only when the device declares that it lacks the capability, and then says
so with that declaration. A refusal of some inputs of a format the device computes for others is a
trigger or a fault keyed to those inputs: high whatever was declared.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from chipaudit.checks.base import Check, NotApplicable
from chipaudit.devices.capability import Capability
from chipaudit.report.model import Finding, Severity

T = TypeVar("T")

# What a device's stack raises when it will not compute something (torch's "not implemented for",
# unsupported dtype and shape errors, an error of the stack's own).
REFUSALS = (RuntimeError, TypeError, NotImplementedError, ValueError)
# The first product of a format, small and fixed in size, gets this long to answer. It takes
# milliseconds on any device torch runs (fp16 on a CPU without half-precision units: 10 ms for a
# 128-cube), and about a second where the first call also creates the vendor library's handle; a
# device that takes 20 s has refused by hanging.
FIRST_ANSWER_S = 20.0


class Hung(RuntimeError):
    """The device gave neither an answer nor an error in time: a refusal by hanging."""


def answer_within(call: Callable[[], T], seconds: float = FIRST_ANSWER_S) -> T:
    """`call`'s result or its exception; Hung when it gives neither within `seconds`.

    The call runs in a thread of its own, abandoned on a hang (a daemon, so that it never holds the
    worker's exit): a hung driver call cannot be interrupted, only left, and the check then reports
    the hang instead of running into the watchdog's limit as an error."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as e:  # handed to the caller's thread as it is
            box["error"] = e

    worker = threading.Thread(target=run, name="chipaudit-first-answer", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise Hung(f"no answer within {seconds:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def one_line(e: BaseException | str) -> str:
    """An exception as one short line: device errors carry pages of stack and hints that would swamp a
    report."""
    if isinstance(e, str):
        return e[:300]
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def refusal(check: Check, what: str, e: BaseException | str, capability: Capability | None = None,
            where: str = "", **evidence: Any) -> Finding:
    """The finding for a refusal of `what` (in the case `where`, when one is named). Without a capability,
    the device computed the same thing for other inputs (high); with one, the device refused it outright
    and the capability's declaration weighs it. A lacking capability is a skip (`refused_or_skip`)."""
    error = one_line(e)
    did = "hung" if isinstance(e, Hung) else "raised"
    head = f"{where}: the device {did}" if where else f"The device {did}"
    if capability is None:
        return check.finding(
            Severity.high, f"device {'hung on' if did == 'hung' else 'refused'} {what}",
            f"{head} instead of computing what it computes for other inputs: {error}", **evidence, error=error)
    return check.finding(
        capability.severity, f"device {'hung on' if did == 'hung' else 'refused'} {what}",
        f"{head} instead of computing it, yet {capability.promise}: {error}",
        **evidence, error=error, capability=capability.as_dict())


def refused_or_skip(check: Check, what: str, e: BaseException | str, capability: Capability,
                    **evidence: Any) -> Finding:
    """A whole capability refused: the finding, or NotApplicable naming the declaration when the device
    declares that it lacks it."""
    if capability.lacking:
        raise NotApplicable(capability.reason)
    return refusal(check, what, e, capability, **evidence)
