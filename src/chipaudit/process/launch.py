"""The entry of every device process started from a stage (process/neutral.py): read which module to
run from the first line of input, settle the host's BLAS, and run the module as `__main__`.

The host's BLAS (NumPy's OpenBLAS: the oracle, the burn-in's host control) keeps its threads spinning
for 2^28 cycles, about 0.1 s, after each call, by default. On a CPU device those are the device's
cores: a product of torch's right after a host check ran at half speed (38 ms against 13 ms at
1024^3 on a 2-core host, measured). 2^4 cycles, OpenBLAS's least, hands the cores back at once. The
setting is read once, when NumPy loads OpenBLAS, so it is made in this process's environment for
that moment only: a variable that a user's job lacks would tell a device stack it is audited.

A process the tool limits to a number of threads (THREADS, in the handshake's settings: the resident
job) gets them the same way: OPENBLAS_NUM_THREADS and OMP_NUM_THREADS while NumPy loads, then
torch.set_num_threads once they are gone, so that a stack loaded with torch finds no variable that a
user's job lacks (benchmarks/world_tells.py records the environment at that moment).
"""

from __future__ import annotations

import os
import runpy
import sys

from chipaudit.process import child

HOST_BLAS = {"OPENBLAS_THREAD_TIMEOUT": "4", "GOTO_THREAD_TIMEOUT": "4"}
THREADS = child.SETTINGS_PREFIX + "THREADS"


def main() -> None:
    handshake = child.accept()
    threads = child.setting(THREADS)
    settled = {**HOST_BLAS, **({"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads} if threads else {})}
    before = {key: os.environ.get(key) for key in settled}
    os.environ.update(settled)
    try:
        import numpy  # noqa: F401  (loads OpenBLAS with the setting)
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if threads:
        import torch  # after the variables are gone: a stack loaded with torch reads its environment then

        torch.set_num_threads(int(threads))
    sys.argv = sys.argv[:1]
    runpy.run_module(str(handshake["module"]), run_name="__main__", alter_sys=False)
