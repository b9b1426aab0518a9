"""How long `chipaudit baseline create` takes (the issue asks for under 10 s on the CPU stack).

What is timed is the command itself, run as a user runs it (`python -m chipaudit baseline create
FILE --device D`), so nothing it does is left out: the interpreter starting and importing the CLI,
resolving the device, the inventory process asking the vendor libraries, the probe process doing
device work while the libraries it maps, the kernel side, the device stack's Python distributions
(every file of torch) and the OS packages' verdicts are hashed, the capability scan of every binary,
and writing the baseline file. The first run may read torch from disk; the second finds it in the
page cache, as a machine that just ran an audit would. The stages inside the fingerprint proper come
from the snapshot's own timings; what the command does around them is printed as `outside the
snapshot`.

Last line: `stack_fingerprint_s: X`, the second run's wall time of the whole command, in seconds.

    python benchmarks/stack_fingerprint.py [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def create(path: Path, device: str) -> tuple[float, dict[str, float], int]:
    """One `baseline create`: wall seconds, the snapshot's stage timings, and the items recorded."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "chipaudit", "baseline", "create", str(path), "--device", device,
                           "--force"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"chipaudit baseline create exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    snapshot = json.loads(path.read_text())["snapshot"]
    return took, snapshot.get("timings_s") or {}, len(snapshot.get("items", []))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    device = parser.parse_args().device
    took = 0.0
    with tempfile.TemporaryDirectory(prefix="chipaudit-bench-") as tmp:
        for label in ("first", "second"):
            took, stages, items = create(Path(tmp) / "baseline.json", device)
            inside = stages.get("total", 0.0)
            print(f"{label} run: {took:.2f} s for the whole command, {items} items; snapshot stages {stages}; "
                  f"outside the snapshot (start-up, inventory, capability scan, writing): {took - inside:.2f} s")
    print(f"stack_fingerprint_s: {took:.2f}")


if __name__ == "__main__":
    main()
