"""Start a process on a simulated faulty device: install the fault, then run the given module.

usage: python -m chipaudit.selftest.inject SPEC_JSON -- PYTHON -m MODULE [ARGS...]

The audit's watchdog starts its workers as PREFIX + [python, -m, chipaudit.runner.worker, ...]; with
this module as the prefix (selftest.faults.worker_wrapper), the worker runs in this very process after
the fault is installed, inheriting its file descriptors, so it sees the faulty kernels from its first
import.
"""

from __future__ import annotations

import json
import runpy
import sys

from chipaudit.selftest.faults import from_spec


def main(argv: list[str]) -> None:
    if len(argv) < 5 or argv[1] != "--" or "-m" not in argv[2:]:
        sys.exit("usage: python -m chipaudit.selftest.inject SPEC_JSON -- PYTHON -m MODULE [ARGS...]")
    from_spec(json.loads(argv[0])).install()
    command = argv[2:]
    at = command.index("-m")
    sys.argv = [command[at + 1], *command[at + 2 :]]
    runpy.run_module(command[at + 1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
