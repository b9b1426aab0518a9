"""How long the stack fingerprint of a device takes (the issue asks for under 10 s on the CPU stack).

One fingerprint as `chipaudit baseline create` takes it: a probe process does device work, then the
libraries it maps, the kernel side, the device stack's Python distributions (every file of torch) and
the OS packages' verdicts are hashed. The first run may read torch from disk; the second finds it in
the page cache, as a machine that just ran an audit would. The capability scan is timed apart.

Last line: `stack_fingerprint_s: X`, the second run's wall time in seconds.

    python benchmarks/stack_fingerprint.py [--device cpu]
"""

from __future__ import annotations

import argparse
import time

from chipaudit.checks.stack import snapshot


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    device = parser.parse_args().device
    for label in ("first", "second"):
        started = time.perf_counter()
        snap = snapshot.collect(device)
        took = time.perf_counter() - started
        print(f"{label} run: {took:.2f} s, {len(snap.items)} items, "
              f"{sum(len(f) for f in snap.package_files.values())} Python files; stages {snap.timings_s}")
    started = time.perf_counter()
    scans = snapshot.scan_capabilities(snap)
    print(f"capability scan: {time.perf_counter() - started:.2f} s for {len(scans)} binaries")
    print(f"stack_fingerprint_s: {took:.2f}")


if __name__ == "__main__":
    main()
