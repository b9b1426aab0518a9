"""What the exit-code contract needs from every layer: a way to say "your input is wrong" (exit 2)
without each layer knowing about the command line, and a place where an unexpected failure leaves
its traceback so that the one line a user sees can stay one line.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import traceback
from datetime import datetime, timezone
from pathlib import Path

from chipaudit.paths import data_dir

# user:password@ in a URL, also after a Path has collapsed its '//' into '/'.
_SECRET_IN_URL = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*:/+[^:/@\s]*:)[^@\s/]+@")


class InputError(ValueError):
    """Bad input from the user (an option, a file, an environment variable): one line, exit 2."""


class Unavailable(Exception):
    """Something outside the user's input and outside chipaudit stopped the command (a store that
    cannot be reached or read): one line, exit 3, no traceback, because there is nothing in chipaudit
    to debug."""


def one_line(message: object) -> str:
    """Errors from libraries (a database driver, a parser) span lines and may quote a URL with its
    password; what a user sees and what CI logs keep must be neither."""
    return _SECRET_IN_URL.sub(r"\1***@", " ".join(str(message).split()))


def crash_log(exc: BaseException) -> Path:
    """Write the traceback beside the history database, where the user's other chipaudit data lives;
    the temporary folder stands in when that one cannot be written (it may be the very I/O failure)."""
    folders = [Path(tempfile.gettempdir())]
    with contextlib.suppress(RuntimeError):  # Path.home() without a home to name
        folders.insert(0, data_dir())
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = _SECRET_IN_URL.sub(r"\1***@", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    for folder in folders:
        path = folder / f"chipaudit-error-{stamp}-{os.getpid()}.log"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError:
            continue
        return path
    return Path(os.devnull)
