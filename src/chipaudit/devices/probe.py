"""The stack probe: a fresh process that does a little representative work on the device and then
waits, so that its parent can read which files the device's computation maps (/proc/<pid>/maps).

The work is fixed (matrix products in the common formats, a convolution, a reduction), so the same
machine maps the same libraries every time: a baseline and a later run see the same set, and a
difference means the stack changed. It also lists the devices torch can see, with their properties.

Protocol (process/child.py): the job names the device, {"device": ...}; one message answers once the
work is done ({"status": "ready", "pid": ...} or {"status": "error", "error": ...}); the process
then waits, its maps intact, until the tool closes its stdin. A vendor plugin's own output on
stdout cannot be mistaken for the answer, which travels on a channel of its own.

In an audit the probe is started by the stack check in its worker, so it runs in the worker's
network namespace and process tree, under the sensors around the worker (runner/watched.py): what
the stack does in it is a finding of that check like anything its worker does.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from chipaudit.process.child import Channel, child_main

READY = "ready"


def work(device: str) -> list[str]:
    """Run the fixed workload; return the operations the device refused (not an error: a device may
    lack a format). The fp32 product must work, or there is no device stack to speak of."""
    import torch

    from chipaudit.devices import torchdev

    a = torch.ones(64, 64, device=device)
    (a @ a).sum().item()
    refused = []
    optional = {
        "fp16 mm": lambda: a.half() @ a.half(),
        "bf16 mm": lambda: a.bfloat16() @ a.bfloat16(),
        "conv2d": lambda: torch.nn.functional.conv2d(a.reshape(1, 1, 64, 64), torch.ones(4, 1, 3, 3, device=device)),
        "softmax": lambda: torch.softmax(a, dim=-1),
    }
    for name, op in optional.items():
        try:
            op().float().sum().item()
        except (RuntimeError, TypeError, NotImplementedError) as e:
            refused.append(f"{name}: {type(e).__name__}")
    torchdev.synchronize(device)
    return refused


def torch_devices() -> dict[str, Any]:
    import torch

    from chipaudit.devices import torchdev

    devices = [torchdev.describe("cpu").model_dump(mode="json")]
    for kind in torchdev.ACCELERATOR_TYPES:
        if not torchdev.available(kind):
            continue
        backend = getattr(torch, kind, None)
        count = int(backend.device_count()) if hasattr(backend, "device_count") else 1
        specs = ["mps"] if kind == "mps" else [f"{kind}:{i}" for i in range(count)]
        devices.extend(torchdev.describe(spec).model_dump(mode="json") for spec in specs)
    return {"version": torch.__version__, "devices": devices}


def serve(job: dict[str, Any], channel: Channel) -> None:
    try:
        refused = work(job["device"])
        message = {"status": READY, "pid": os.getpid(), "refused": refused, "torch": torch_devices()}
    except Exception as e:
        message = {"status": "error", "error": f"{type(e).__name__}: {e}".splitlines()[0][:500]}
    channel.send(message)
    channel.receive()  # until the tool has read the maps and lets go


if __name__ == "__main__":
    sys.exit(child_main(serve))
