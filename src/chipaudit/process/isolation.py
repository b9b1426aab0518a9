"""The private world of one device process: a container, as a runtime makes one, made by `unshare`
and finished by the shim (process/world.py), which then becomes the container's shell (PID 1) and
runs the process, as `docker run IMAGE sh -c COMMAND` does.

A device stack that wants to pass audits looks for what an audit's process shows and a real job does
not: namespaces unlike its ancestors' or PID 1's, mounts on /etc, interfaces no machine has. So every
world is one of the two things a production job runs in, a container: PID, mount, network, UTS, IPC
and cgroup namespaces together, a fresh /proc and /sys, an overlay root, and on /etc only the
runtime's hostname, hosts and resolv.conf. Inside, the process's parent is a shell, as for a job
started from a shell on a host, and that shell is PID 1, with which the process shares every
namespace, as in a container; no other ancestor is in sight. An `Isolation` says what differs
between worlds: whether the network namespace is wired (the sinkhole, perturb/sinkhole.py, does it
from outside), the files of its /etc (as links or as copies: the machine's own unless the world's
place changes them), its host and domain names, and the folders it shares with the tool. Nothing
here changes the host: the root's upper layer is a tmpfs in a private mount namespace, the names live
in a private UTS namespace.

Cannot hide: that the process runs in a PID namespace (as in every container), and the tc mirror on
its loopback when the sinkhole wires it (perturb/sinkhole.py).
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


KIND = "container"
# What a device process can still see in its container, in the report's words.
VISIBLE = (
    "Device processes run in a container (a PID namespace, an overlay root) under a shell that is its PID 1, as "
    "production jobs in containers do: a device stack that misbehaves only on bare hosts, or only as a "
    "container's PID 1, is not shown that kind of world.",
    "A device process on the sinkhole can list its loopback's queueing disciplines (tc qdisc show dev lo) and "
    "find the mirror that captures its loopback traffic, and one that knows the real network's addresses can "
    "tell the sinkhole's apart.",
    "Device processes run this tool's modules under a neutral package name drawn per audit; a stack that knows "
    "the tool's module layout (sub-package and module names) can still recognise it.",
)
# The machine's own files that a runtime mounts on /etc, for worlds whose place does not change them.
MACHINE_ETC = tuple(EtcFile(name, copy_of=f"/etc/{name}") for name in world.RUNTIME_ETC)


@dataclass(frozen=True)
class Isolation:
    network: bool = True
    etc: tuple[EtcFile, ...] = ()
    hostname: str | None = None
    domainname: str | None = None
    shares: tuple[Path, ...] = ()  # folders the tool and the process both write


def write_etc(files: tuple[EtcFile, ...], folder: Path) -> None:
    """The world's /etc files (`folder`/upper), which the shim copies into the root's upper layer."""
    upper = folder / "upper"
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
    for part in ("rw", "root"):
        (folder / part).mkdir(exist_ok=True)
    flags = ["--mount", "--propagation", "private", "--uts", "--ipc", "--cgroup", "--pid", "--fork", "--kill-child",
             *(["--net"] if iso.network else [])]
    write_etc(iso.etc or tuple(f for f in MACHINE_ETC if f.copy_of and os.path.exists(f.copy_of)), folder / "etc")
    shares = (arg for share in iso.shares for arg in ("--share", str(share)))
    shim = [sys.executable, "-I", world.__file__, "--root", str(folder), *shares,
            *(["--hostname", iso.hostname] if iso.hostname is not None else []),
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
    # unshare stays as the PID namespace's parent outside it; the shim executes the process in its place.
    return Wrapper(prefix, files=files, stays=True, started=started, setenv="--setenv", shell=True)
