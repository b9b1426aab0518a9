"""How long does `chipaudit verify` take on a signed bundle of a quick audit?

Runs `chipaudit run --device cpu --level quick --bundle B` once (or reuses --bundle B), signs it with
a fresh key, then times `chipaudit verify B --pubkey KEY` end to end (interpreter start, imports and
verification) REPEATS times. The issue asks for under 1 s.

Last line: `verify_quick_bundle_s: X`, X = the median wall time of the verify command in seconds.

    python benchmarks/verify_bundle.py
    python benchmarks/verify_bundle.py --bundle B      # an existing, unsigned or signed bundle
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPEATS = 7


def chipaudit(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chipaudit")
    argv = [exe, *args] if exe else [sys.executable, "-c", "from chipaudit.cli import main; main()", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="verify a copy of this bundle instead of running an audit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        target = work / "B"
        if args.bundle:
            shutil.copytree(args.bundle, target)
        else:
            run = chipaudit("run", "--device", "cpu", "--level", "quick", "--bundle", str(target),
                            "--db", str(work / "history.sqlite3"))
            if run.returncode not in (0, 1, 3):
                sys.exit(f"the audit failed: {run.stderr.strip()}")
        for step in (("keygen", "--out", str(work / "key")), ("sign", str(target), "--key", str(work / "key.key"))):
            p = chipaudit(*step)
            if p.returncode != 0:
                sys.exit(f"{step[0]} failed: {p.stderr.strip()}")
        times = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            p = chipaudit("verify", str(target), "--pubkey", str(work / "key.pub"))
            times.append(time.perf_counter() - t0)
            if p.returncode != 0:
                sys.exit(f"verify failed: {p.stdout}{p.stderr}")
        files = sum(1 for f in target.rglob("*") if f.is_file())
        print(f"{files} files, {sum(f.stat().st_size for f in target.rglob('*') if f.is_file()):,} bytes; "
              f"verify times: {', '.join(f'{t:.3f}' for t in times)} s")
        print(f"verify_quick_bundle_s: {statistics.median(times):.3f}")


if __name__ == "__main__":
    main()
