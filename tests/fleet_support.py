"""Simulated faulty devices for the fleet tests, installed by a sitecustomize in the processes of a
node or a slot."""

from __future__ import annotations

import textwrap

# A sitecustomize that runs `body` in every Python process once it has imported torch (and in no other:
# Ray's own processes never import it, and importing torch in each would cost a loaded 2-core host
# seconds per process). `slot()` in `body` is the fleet slot the process's audit holds: its environment
# says so in the audit's own process, the handshake's settings in a device process (whose environment
# holds none of the tool's variables, process/child.py).
AFTER_TORCH = '''
import importlib.abc, importlib.util, os, sys


def slot():
    value = os.environ.get("CHIPAUDIT_FLEET_SLOT")
    for name, module in list(sys.modules.items()):
        if value is None and name.endswith(".process.child") and getattr(module, "_handshake", None):
            value = module._handshake.get("settings", {{}}).get("CHIPAUDIT_FLEET_SLOT")
    return value


class _AfterTorch(importlib.abc.MetaPathFinder):
    busy = False

    def find_spec(self, name, path, target=None):
        if name != "torch" or self.busy:
            return None
        self.busy = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.busy = False
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
{body}

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _AfterTorch())
'''


def after_torch(body: str) -> str:
    """The sitecustomize's text, `body` indented into the hook."""
    return AFTER_TORCH.format(body=textwrap.indent(textwrap.dedent(body).strip(), " " * 12))
