"""What every command shares: the app, the console, one-line errors, and the checks every command
makes before it starts work, so that a bad path or option costs seconds, not an hour of audit.

Exit codes (report.model.EXIT_CODES): 0 pass, 1 the device (or bundle, or comparison) failed, 2 bad
input, 3 inconclusive. Exit 1 is a statement about the device, so nothing else may produce it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from chipaudit.errors import InputError, one_line
from chipaudit.report.model import EXIT_CODES, Verdict

app = typer.Typer(
    name="chipaudit",
    help=(
        "Audit an AI accelerator by what it does: check every computation against an independent host "
        "oracle, and report a verdict others can reproduce.\n\n"
        "Start with:  chipaudit run --level quick\n\n"
        "Exit codes: 0 pass, 1 fail, 2 usage or input error, 3 inconclusive (also: an internal error, "
        "whose traceback is kept in a log file named on stderr)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False, emoji=False)
INCONCLUSIVE = EXIT_CODES[Verdict.inconclusive]
FAIL = EXIT_CODES[Verdict.fail]

DeviceOption = Annotated[str, typer.Option(help="PyTorch device: auto, cpu, cuda:0, npu:0, mps, xpu, ...")]
PassphraseEnv = Annotated[str | None, typer.Option(
    "--passphrase-env", metavar="NAME", help="Read the key's passphrase from environment variable NAME "
    "(never from the command line, where other users could see it).")]


class UsageError(InputError):
    """Bad input from the user: reported as one line, exit 2."""


def fail(message: str) -> None:
    """One line on stderr, never wrapped, never a traceback, never a password."""
    print(f"chipaudit: {one_line(message)}", file=sys.stderr, flush=True)


def say(text: str) -> None:
    """Plain text: no markup, no highlighting, no wrapping of long paths and key ids."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def stop(code: int, message: str | None = None) -> NoReturn:
    if message:
        fail(message)
    raise typer.Exit(code)


@contextmanager
def usage_errors(*kinds: type[Exception], prefix: str = "") -> Iterator[None]:
    """Turn a lower layer's own 'bad input' exceptions into exit 2 with their one-line message."""
    try:
        yield
    except kinds as e:
        raise UsageError(f"{prefix}{e}") from None


class Kind(Enum):
    file = "file"  # written whole, atomically: a temporary file beside it, then a rename
    folder = "folder"  # files are written into it; it must exist
    new_folder = "new folder"  # created, or an existing empty folder filled (a bundle)
    prefix = "prefix"  # PREFIX.key and PREFIX.pub beside each other


def check_outputs(*outputs: tuple[Path | str | None, str, Kind]) -> None:
    """Exit 2 before any work when an output cannot be written: a folder where a file belongs, a missing
    parent, or a place this process cannot write (a read-only mount, an immutable file: tried, not
    guessed from permission bits, which say nothing for root)."""
    for path, option, kind in outputs:
        if path is None or (isinstance(path, str) and "://" in path):
            continue
        path = Path(path)
        where = f"{option} {path}"
        if kind is Kind.folder:
            if not path.is_dir():
                raise UsageError(f"{where}: not a folder")
            _try_write(path, where)
            continue
        if kind is Kind.new_folder and path.exists():
            if not path.is_dir() or any(path.iterdir()):
                raise UsageError(f"{where}: exists and is not an empty folder")
            _try_write(path, where)
            continue
        if path.is_dir():
            raise UsageError(f"{where}: is a folder; give the path of a file to write"
                             + (f", such as {path / 'auditor'}" if kind is Kind.prefix else ""))
        if not path.parent.is_dir():
            raise UsageError(f"{where}: the folder {path.parent} does not exist")
        _try_write(path.parent, where)
        if not _opens_for_writing(path):
            raise UsageError(f"{where}: cannot be written (read-only or immutable file)")


def _try_write(folder: Path, where: str) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".chipaudit-probe-", dir=folder)
    except OSError as e:
        raise UsageError(f"{where}: cannot write in {folder}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(name)


def _opens_for_writing(path: Path) -> bool:
    if not path.is_file():
        return True
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
    except OSError:
        return False
    return True


def existing(path: Path, option: str, folder: bool = False) -> Path:
    if not path.exists():
        raise UsageError(f"{option} {path}: no such file or folder")
    if folder and not path.is_dir():
        raise UsageError(f"{option} {path}: not a folder (a bundle is the folder chipaudit run --bundle wrote)")
    return path


def resolve_device(spec: str, option: str = "--device") -> str:
    from chipaudit.devices.torchdev import DeviceError, resolve

    with usage_errors(DeviceError, prefix=f"{option} {spec}: "):
        return resolve(spec)


def ready_to_audit(only: list[str] | None, params: dict[str, object] | None = None) -> None:
    """What would otherwise fail inside every worker, checked once up front: the registry (a plugin
    that collides or is missing), the checks asked for, and the behaviour allow-list."""
    from chipaudit.checks import select
    from chipaudit.checks.behaviour import allowlist

    if only and not select(only):
        raise UsageError(f"--only {' '.join(only)}: no check has that id or prefix (see 'chipaudit checks')")
    path = allowlist.source(params or {})
    if path:
        allowlist.read(path)


def baseline_params(path: Path | None, device: str) -> dict[str, str]:
    from chipaudit.checks.stack.baseline import BaselineError
    from chipaudit.checks.stack.commands import load_checked

    if path is None:
        return {}
    with usage_errors(BaselineError):
        load_checked(path, device)
    return {"baseline": str(path.resolve())}
