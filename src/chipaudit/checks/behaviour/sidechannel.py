"""behaviour.sidechannel: does the device's stack talk to anyone or write anything while it computes?

Threat: monitoring and tracking: a driver, runtime or firmware helper that reports home (over TCP,
UDP or a local socket, directly or through a detached child process), or leaves data behind in
files, while the device computes.

Method: a seeded, host-verified workload covering every main format (fp32, fp16, bf16, fp64) and the
product paths of AI models (mm; attention by bmm, baddbmm and einsum; broadcast matmul; linear layers
of BERT and Llama sizes) runs in its own process, untraced, under the sensors it cannot see
(sensors/watch.py): a network namespace of its own wired to the tool's sinkhole, which answers every
address and name and captures every packet (its loopback traffic included), and a sampler of the
process tree's socket table and open files.
The same workload runs again under strace, as a world of its own, following every thread and child
(network syscalls on any address family and destination, loopback included; opens for writing and
file-system changes; programs started): a stack that stays quiet while traced is caught by the
untraced sensors, one that behaves differently when traced differs between the two worlds. After
the workloads exit the sensors keep watching for a moment; any process of their trees still running
then is reported and ended. The same sensors also watch every other behaviour probe's workloads.

Pass: no event besides the computation, and every product correct in both worlds, with the same bits.
Fail: each distinct event is a finding with its process, syscall or packet, destination (and first
bytes) or path and time: network calls and packets off the machine critical, on it high, a bare
socket medium; file writes high (info when allow-listed as a vendor cache); programs started and
lingering processes medium; a refusal, crash or wrong result in one world (high), different bits
(medium).
A product refused in every world, the reference included, is weighed by what the device declares of
its format (findings.py): high, medium or low, never a skip.
The report lists which sensors ran; a sensor that could not run (no root for the sinkhole, strace
missing, tracing forbidden) is named with the reason and its coverage is not claimed.
Cannot see: traffic the device sends without the host (its own network port, a BMC); data hidden in
the results themselves below the error bound; an action delayed beyond the watch; in the untraced
world, a file written and closed between two samples (strace sees it in the traced world, an eBPF
tracer where one runs).
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
