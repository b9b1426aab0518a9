"""behaviour.sidechannel: does the device's stack talk to anyone or write anything while it computes?

Threat: monitoring and tracking: a driver, runtime or firmware helper that reports home (over TCP,
UDP or a local socket, directly or through a detached child process), or leaves data behind in
files, while the device computes.

Method: a seeded, host-verified workload covering every main format (fp32, fp16, bf16, fp64) and the
product kinds of AI models (mm, attention bmm, linear layers of BERT and Llama sizes) runs in its own
process under every sensor that can run here: strace following every thread and child (network
syscalls on any address family and destination, loopback included; opens for writing and file-system
changes; programs started), and a sampler of the process tree's socket table and open files. After
the workload exits the sensors keep watching for a moment; any process of its tree still running
then is reported and ended. The same sensors also watch every other behaviour probe's workloads.

Pass: no event besides the computation, and every product correct.
Fail: each distinct event is a finding with its process, syscall, destination or path and time:
network calls off the machine critical, on it high, a bare socket medium; file writes high (info
when allow-listed as a vendor cache); programs started and lingering processes medium.
The report lists which sensors ran; a sensor that could not run (strace missing, tracing forbidden)
is named with the reason and its coverage is not claimed.

Cannot see: traffic the device sends without the host (its own network port, a BMC); data hidden in
the results themselves below the error bound; an action delayed beyond the watch.
"""

from __future__ import annotations

from typing import ClassVar

from chipaudit.checks.base import Check, CheckContext, Outcome
from chipaudit.checks.behaviour.probe import World, available_worlds, run_worlds, traced_world
from chipaudit.checks.behaviour.tasks import broad_tasks
from chipaudit.perturb import conditions as cond
from chipaudit.report.model import Category, Level


class SideChannelProbe(Check):
    id = "behaviour.sidechannel"
    category = Category.behaviour
    timeout_s: ClassVar[dict[Level, float]] = {Level.quick: 120.0, Level.standard: 300.0, Level.deep: 600.0}

    def run(self, ctx: CheckContext) -> Outcome:
        reference = World("reference", cond.reference(), broad_tasks(ctx))
        traced, skipped = available_worlds([traced_world(reference)])
        return run_worlds(self, ctx, [reference, *traced], skipped=skipped)


CHECKS = [SideChannelProbe()]
