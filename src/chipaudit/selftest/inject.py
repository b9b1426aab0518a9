"""Start a process on a simulated faulty device: install the fault, then run the given module.

usage: python -m chipaudit.selftest.inject SPEC_JSON -- PYTHON (-m MODULE | SCRIPT) [ARGS...]

The audit's watchdog starts its workers as PREFIX + [python, SCRIPT] (a stage's, process/neutral.py); with
this module as the prefix (selftest.faults.worker_wrapper), the worker runs in this very process after
the fault is installed, inheriting its file descriptors, so it sees the faulty kernels from its first
import.
"""

from __future__ import annotations

import json
import os
import runpy
import sys

from chipaudit.selftest.faults import from_spec


def main(argv: list[str]) -> None:
    if len(argv) < 4 or argv[1] != "--":
        sys.exit("usage: python -m chipaudit.selftest.inject SPEC_JSON -- PYTHON (-m MODULE | SCRIPT) [ARGS...]")
    from_spec(json.loads(argv[0])).install()
    command = argv[3:]
    if command[0] == "-m":
        sys.argv = command[1:]
        runpy.run_module(command[1], run_name="__main__", alter_sys=True)
        return
    sys.argv = command
    sys.path.insert(0, os.path.dirname(os.path.abspath(command[0])))
    runpy.run_path(command[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
