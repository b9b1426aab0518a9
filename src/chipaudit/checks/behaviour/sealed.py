"""behaviour.sealed: does the device need the network, or act differently without it?

Threat: a remote kill switch or an entitlement check: a device that refuses, slows down or changes
its answers when it cannot reach its vendor (or, the other way round, misbehaves only when it can).

Method: the same seeded, host-verified workload runs in the reference world (online: a network
namespace of its own with an ordinary address and default routes to the tool's sinkhole, where
every destination is answered and every packet captured) and in a sealed one (offline: the same
namespace with no address or route, as an unplugged machine; its loopback traffic still reaches
the sinkhole's capture through a tc mirror). Neither is traced; the socket sampler watches both from
outside. The reference runs again under strace as an extra world, compared by bits, refusals and side
effects (not speed: a tracer slows every system call). The untraced worlds run interleaved (A B A B)
with the tool timing every request; then all are verified again. The tool reads the
sealed workload's routes from outside: a sealed world that still had a route is not applied.

Pass: every world computes every product correctly, with the same bits, at the same speed, and the
workload sends nothing and writes nothing.
Fail: a refusal, crash, hang or wrong result in one world (high); bits that differ between worlds
(medium); a speed ratio of 1.5x or more with a 99% interval excluding 1 (high); any packet or
network call (critical off the machine, high to loopback) or file write (high).
A product refused in every world, the reference included, is weighed by what the device declares of
its format (findings.py): high, medium or low, never a skip.
Not run (skipped, with the reason): where no network namespace can be made (not root, no
CAP_SYS_ADMIN, no unshare). Without the sinkhole (no ip, tc, nsenter or tcpdump, or no
CAP_NET_RAW) the sealed world is loopback only and uncaptured, and the report says so; without
strace the traced world is not run, and the report says so.

Cannot see: a device that caches an entitlement for longer than the probe lasts; a network reached
by the device itself rather than the host; a trigger on conditions other than the network.
"""

from __future__ import annotations

from typing import ClassVar

from chipaudit.checks.behaviour.probe import ConditionProbe
from chipaudit.perturb import conditions as cond
from chipaudit.perturb.conditions import Condition
from chipaudit.report.model import Category, Level


class SealedProbe(ConditionProbe):
    id = "behaviour.sealed"
    category = Category.behaviour
    timeout_s: ClassVar[dict[Level, float]] = {Level.quick: 150.0, Level.standard: 400.0, Level.deep: 900.0}

    def worlds(self, level: Level) -> list[Condition]:
        return [cond.sealed()]


CHECKS = [SealedProbe()]
