"""The private world of one device process: namespaces of its own, made by `unshare` and finished by
the shim (process/world.py), which then executes the process in its own place.

An `Isolation` says what the process gets: a network namespace (always, where one can be made: the
sinkhole, perturb/sinkhole.py, wires it from outside), and for a changed location also a private
/etc (an overlay whose files the world names, as links or as copies) and private host and domain
names. Nothing here changes the host: the overlay lives in a private mount namespace, the names in
a private UTS namespace.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chipaudit.process import world
from chipaudit.process.child import Wrapper

# How long the tool waits for the shim to open its end of the release FIFO (it has then entered
# its namespaces): unshare and an isolated Python start in well under a second.
SHIM_OPEN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class EtcFile:
    """One file of the private /etc, by its path under /etc: a symbolic link to `link`, a copy of
    the file `copy_of`, or `text`."""

    path: str
    text: str | None = None
    link: str | None = None
    copy_of: str | None = None


@dataclass(frozen=True)
class Isolation:
    network: bool = True
    etc: tuple[EtcFile, ...] = ()
    hostname: str | None = None
    domainname: str | None = None

    @property
    def uts(self) -> bool:
        return self.hostname is not None or self.domainname is not None


def write_etc(files: tuple[EtcFile, ...], folder: Path) -> None:
    """The overlay's upper layer (and its empty work folder) for `files`."""
    upper = folder / "upper"
    (folder / "work").mkdir(parents=True, exist_ok=True)
    for f in files:
        target = upper / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        if f.link is not None:
            target.symlink_to(f.link)
        elif f.copy_of is not None:
            shutil.copyfile(f.copy_of, target)
        else:
            target.write_text(f.text or "")
        if f.link is None:
            target.chmod(0o644)


def _release(fifo: Path, pid: int, configure: Callable[[int], None]) -> None:
    """Wait for the shim of `pid` to open the FIFO (it is then inside its namespaces), let
    `configure` finish the world from outside, then tell the shim to go on. A failure tells the shim
    to stop, and propagates."""
    deadline = time.monotonic() + SHIM_OPEN_TIMEOUT_S
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
            if time.monotonic() > deadline:
                raise RuntimeError(f"the world shim did not start within {SHIM_OPEN_TIMEOUT_S:.0f} s") from e
            time.sleep(0.005)
    try:
        try:
            configure(pid)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.write(fd, f"stop: {e}\n".encode())
            raise
        os.write(fd, world.GO)
    finally:
        os.close(fd)


def wrapper(iso: Isolation, folder: Path, configure: Callable[[int], None] | None = None) -> Wrapper:
    """The layer that puts a child into `iso`'s namespaces. `folder` (private to this child) holds
    the overlay's layers and the release FIFO; `configure(pid)`, when given, finishes the world from
    outside (the sinkhole's wiring) while the shim waits."""
    folder.mkdir(parents=True, exist_ok=True)
    flags = ["--net"] if iso.network else []
    shim = [sys.executable, "-I", world.__file__]
    if iso.etc:
        write_etc(iso.etc, folder / "etc")
        flags += ["--mount", "--propagation", "private"]
        shim += ["--etc", str(folder / "etc")]
    if iso.uts:
        flags.append("--uts")
        shim += [*(["--hostname", iso.hostname] if iso.hostname is not None else []),
                 *(["--domainname", iso.domainname] if iso.domainname is not None else [])]
    started = None
    files: tuple[Path, ...] = ()
    if configure is not None:
        fifo = folder / "release"
        with contextlib.suppress(FileNotFoundError):
            fifo.unlink()
        os.mkfifo(fifo, 0o600)
        shim += ["--release", str(fifo)]
        files = (fifo,)
        started = lambda pid: _release(fifo, pid, configure)  # noqa: E731
    prefix = (str(shutil.which("unshare") or "unshare"), *flags, "--", *shim, "--")
    return Wrapper(prefix, files=files, stays=False, started=started)
