"""The watcher's worker: one long-lived child process that runs its bursts, so that the device is
initialised once, and a burst that hangs or crashes in a driver call costs that worker, never the
watcher, which starts a fresh one (runner/watch/loop.py).

Protocol (process/child.py): the first message is the job (device, scratch folder); each later
message is one burst (seed and parameters), answered with start and result messages as an audit
worker's checks are (runner/worker.py), so that the sensors around it attribute what it does to the
burst that was running. A message may name another check of the registry instead (a fleet's consensus
products, fleet/consensus.py), run the same way on the same initialised device.
"""

from __future__ import annotations

import sys
import tempfile
import time
from typing import Any

from chipaudit.checks import by_id
from chipaudit.checks.base import Check
from chipaudit.process.child import SCRATCH, Channel, child_main
from chipaudit.runner.watch.burst import BURST_ID, LEVEL, BurstCheck
from chipaudit.runner.worker import run_check


def serve(job: dict[str, Any], channel: Channel) -> None:
    if job.get(SCRATCH):
        tempfile.tempdir = job[SCRATCH]
    checks: dict[str, Check] = {BURST_ID: BurstCheck()}
    channel.send({"type": "ready", "time": time.time()})
    for burst in channel:
        check_id = str(burst.get("check", BURST_ID))
        if check_id not in checks:
            checks.update(by_id())
        channel.send({"type": "start", "check": check_id, "time": time.time()})
        result, findings = run_check(checks[check_id], check_id, int(burst["seed"]), job["device"], LEVEL,
                                     burst["params"], lambda done, total, note, expect_s: None)
        channel.send({"type": "result", "check": check_id, "time": time.time(),
                      "result": result.model_dump(mode="json"),
                      "findings": [f.model_dump(mode="json") for f in findings]})


if __name__ == "__main__":
    sys.exit(child_main(serve))
