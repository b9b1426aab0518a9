"""Where chipaudit keeps a user's data (the history, crash logs, kept fleet bundles): on the ground
floor, because the error handler that every layer may reach needs it as much as the store does."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def data_dir() -> Path:
    """The per-user data folder: $XDG_DATA_HOME wherever it is set, else the platform's own."""
    if os.environ.get("XDG_DATA_HOME"):
        return Path(os.environ["XDG_DATA_HOME"]) / "chipaudit"
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "chipaudit"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "chipaudit"
    return Path.home() / ".local" / "share" / "chipaudit"
