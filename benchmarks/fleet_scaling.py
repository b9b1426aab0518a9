"""Fleet scaling on a local Ray cluster: N small audits with 1, 2 and 4 audits in flight at once.

The cluster is one Ray node in a network namespace of its own (loopback only), with N units of a custom
resource standing in for N devices. The same small audit is first timed alone, straight from the CLI;
the scheduling overhead per audit is then (fleet wall time with one audit in flight - N x the lone
audit's time) / N: what Ray, the store and the driver add to each audit. Throughput is audits per
second at each size; on a 2-core machine it stops growing at 2.

Needs root (unshare) and Ray. Last line: `fleet_overhead_s: X`.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_AUDITS = 8
SIZES = (1, 2, 4)
PORT = 6393
AUDIT = ["--level", "quick", "--only", "integrity.gemm.int8", "--seed", "1"]


def stop_namespace(pid: str) -> None:
    """Kill every process in the namespace: this cluster only (`ray stop` would stop every Ray on the machine)."""
    ours = os.readlink(f"/proc/{pid}/ns/net")
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.name != pid and os.readlink(entry / "ns" / "net") == ours:
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            pass


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="fleet-scaling-"))
    env = {**os.environ, "XDG_DATA_HOME": str(work / "data")}
    env.pop("RAY_ADDRESS", None)
    holder = subprocess.Popen(["unshare", "--net", "--fork", "--kill-child", "sleep", "3600"])
    time.sleep(0.5)
    pid = subprocess.run(["pgrep", "-P", str(holder.pid)], capture_output=True, text=True).stdout.split()[0]

    def ns(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", "-t", pid, "-n", *cmd], env=env, capture_output=True, text=True,
                              check=True)

    try:
        ns("ip", "link", "set", "lo", "up")
        ns("ray", "start", "--head", "--port", str(PORT), "--num-cpus", str(max(SIZES)), "--include-dashboard=false",
           "--temp-dir", str(work / "ray"), "--resources", json.dumps({"slot": N_AUDITS}), "--disable-usage-stats")
        lone = []
        for _ in range(3):
            t0 = time.perf_counter()
            ns(sys.executable, "-m", "chipaudit", "run", "--device", "cpu", *AUDIT, "--json", str(work / "r.json"))
            lone.append(time.perf_counter() - t0)
        single = statistics.median(lone)
        print(f"one audit alone: {single:.2f} s")
        walls = {}
        for k in SIZES:
            t0 = time.perf_counter()
            ns(sys.executable, "-m", "chipaudit", "fleet", "run", "--address", f"127.0.0.1:{PORT}", "--resource",
               "slot", *AUDIT, "--max-parallel", str(k), "--db", str(work / f"fleet-{k}.sqlite3"))
            walls[k] = time.perf_counter() - t0
            print(f"{k} in flight: {N_AUDITS} audits in {walls[k]:.1f} s, {N_AUDITS / walls[k]:.3f} audits/s")
    finally:
        stop_namespace(pid)
        holder.kill()
    print(f"fleet_overhead_s: {(walls[1] - N_AUDITS * single) / N_AUDITS:.2f}")


if __name__ == "__main__":
    main()
