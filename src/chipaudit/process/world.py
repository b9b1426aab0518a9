"""Runs inside the namespaces `unshare` made for one device process, before it: finishes the
process's private world, then executes the process in its own place, so that nothing of the tool
stays between the process and its parent.

- Loopback up, as on any machine (a new network namespace starts with it down).
- `--etc DIR`: an overlay over /etc whose upper layer is DIR/upper (made by process/isolation.py:
  the world's /etc/localtime, /etc/timezone, locale files, hostname, resolv.conf), in the private
  mount namespace, so that the host's /etc never changes.
- `--hostname`, `--domainname`: the private UTS namespace's names.
- `--release FIFO`: wait until the tool, outside, has finished what only it can do (wire the
  network namespace to its sinkhole) and says "go".

This file is run by path with `python -I` (isolated: no PYTHONPATH, no user site) and uses the
standard library only, so that nothing the device process's environment injects runs here.
Any step that fails ends the shim with its reason on stderr and exit status `FAILED`: a world that
was not made must never run as if it had been.

usage: python -I world.py [--etc DIR] [--hostname NAME] [--domainname NAME] [--release FIFO] -- COMMAND...
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import os
import select
import socket
import struct
import sys
import time

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1  # linux/sockios.h, linux/if.h
FAILED = 125  # what env(1) and unshare(1) return when they cannot run the command
RELEASE_TIMEOUT_S = 60.0
GO = b"go\n"


class WorldError(Exception):
    pass


def loopback_up() -> None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            request = struct.pack("16sH14x", b"lo", 0)
            flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
    except OSError as e:
        raise WorldError(f"loopback stays down: {e}") from e


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def overlay_etc(folder: str) -> None:
    upper, work = os.path.join(folder, "upper"), os.path.join(folder, "work")
    options = f"lowerdir=/etc,upperdir={upper},workdir={work}".encode()
    if _libc().mount(b"overlay", b"/etc", b"overlay", 0, options) != 0:
        code = ctypes.get_errno()
        raise WorldError(f"cannot overlay /etc: {os.strerror(code)} (a private mount namespace and overlayfs "
                         "are needed)")


def set_names(hostname: str | None, domainname: str | None) -> None:
    try:
        if hostname is not None:
            socket.sethostname(hostname)
    except OSError as e:
        raise WorldError(f"cannot set the host name: {e}") from e
    if domainname is not None:
        name = domainname.encode()
        if _libc().setdomainname(name, len(name)) != 0:
            raise WorldError(f"cannot set the domain name: {os.strerror(ctypes.get_errno())}")


def wait_release(fifo: str) -> None:
    """Block until the tool writes GO to the FIFO (opening it tells the tool that this process has
    entered its namespaces); anything else, or silence, is a failure."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        deadline, got = time.monotonic() + RELEASE_TIMEOUT_S, b""
        while not got.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise WorldError(f"the tool did not release the world within {RELEASE_TIMEOUT_S:.0f} s")
            try:
                chunk = os.read(fd, 64)
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    continue
                raise
            if not chunk:  # ready but empty: the writer closed (Linux reports no hang-up before a writer)
                break
            got += chunk
        if got != GO:
            raise WorldError(f"the tool did not release the world: {got.decode(errors='replace').strip()}")
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="world.py")
    parser.add_argument("--etc")
    parser.add_argument("--hostname")
    parser.add_argument("--domainname")
    parser.add_argument("--release")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        loopback_up()
        if args.etc:
            overlay_etc(args.etc)
        set_names(args.hostname, args.domainname)
        if args.release:
            wait_release(args.release)
        os.execvp(command[0], command)
    except (WorldError, OSError) as e:
        print(f"world: {e}", file=sys.stderr, flush=True)
    return FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
