"""Runs inside the namespaces `unshare` made for one device process, as their PID 1, before it:
finishes the process's private world, a container as a runtime makes one, then executes a shell in
its own place that runs the process, as a container started as `sh -c COMMAND`: the process's parent
is a shell that is PID 1 and shares every namespace with it, and nothing of the tool stays between
the process and what it can see.

- Loopback up, as on any machine (a new network namespace starts with it down).
- `--root DIR`: a root of its own, as a container runtime makes it: an overlay whose lower layer is
  the machine's root and whose upper layer is a fresh tmpfs (DIR/rw), so that what the process writes
  outside the shared folders never reaches the host; the machine's other mounts bound in (devices,
  the cgroup tree), a fresh /proc of its PID namespace, a fresh /sys of its network namespace and a
  /dev/shm of its own;
  the world's /etc files (DIR/etc/upper: time zone and locale files) in the upper layer, and only
  the runtime's three files mounted on /etc: hostname, hosts, resolv.conf. The process starts in
  the folder it was started from.
- `--share DIR` (repeatable): a folder of the machine's that the tool and the process both use (the
  evidence the process writes), bound at its own path.
- `--hostname`, `--domainname`: the private UTS namespace's names.
- `--setenv K=V`, `--setenv K` (repeatable): the process's environment, set or removed as it is
  executed, so that what the world preloads (libfaketime) loads into the process alone.
- `--release FIFO`: wait until the tool, outside, has finished what only it can do (wire the
  network namespace to its sinkhole) and says "go". The FIFO is opened before the root is made, and
  the root is made before the wait: from the release on, what happens in the namespaces is the
  device process's.

This file is run by path with `python -I` (isolated: no PYTHONPATH, no user site) and uses the
standard library only, so that nothing the device process's environment injects runs here.
Any step that fails ends the shim with its reason on stderr and exit status `FAILED`: a world that
was not made must never run as if it had been.

usage: python -I world.py [--root DIR] [--share DIR]... [--hostname NAME] [--domainname NAME]
                          [--release FIFO] [--setenv K[=V]]... -- COMMAND...
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import os
import select
import shlex
import socket
import struct
import sys
import time

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1  # linux/sockios.h, linux/if.h
# linux/mount.h
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MNT_DETACH = 0x2, 0x4, 0x8, 0x1000, 0x4000, 0x2
# The files a container runtime (Docker, containerd, CRI-O) mounts on /etc; any other mount there is no
# container's.
RUNTIME_ETC = ("hostname", "hosts", "resolv.conf")
# Fresh in every world, never bound from the machine: its PID namespace's /proc and its network
# namespace's /sys (the machine's own would list the machine's interfaces).
FRESH = {"/proc": "proc", "/sys": "sysfs"}
SHM = "/dev/shm"
SHELL = "/bin/sh"
FAILED = 125  # what env(1) and unshare(1) return when they cannot run the command
RELEASE_TIMEOUT_S = 60.0
# asm-generic/unistd.h and x86_64's unistd_64.h: pivot_root has no C library wrapper.
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}.get(os.uname().machine, 155)
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


def _mount(source: str, target: str, fstype: str | None, flags: int = 0, options: str = "") -> None:
    if _libc().mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                     options.encode() or None) != 0:
        code = ctypes.get_errno()
        raise WorldError(f"cannot mount {fstype or source} on {target}: {os.strerror(code)} (a private mount "
                         "namespace, root and overlayfs are needed)")


def _mount_points() -> list[tuple[int, int, str]]:
    """(id, parent id, mount point) of every mount this namespace sees, in mount order."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # octal escapes: \040 for a space
            out.append((int(fields[0]), int(fields[1]), point))
    return out


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _copy_tree(source: str, target: str) -> None:
    """The world's /etc files into the upper layer, links as links."""
    for top, _dirs, files in os.walk(source):
        here = os.path.join(target, os.path.relpath(top, source))
        os.makedirs(here, exist_ok=True)
        for name in files:
            src, dst = os.path.join(top, name), os.path.join(here, name)
            if os.path.islink(src):
                os.symlink(os.readlink(src), dst)
            else:
                with open(src, "rb") as a, open(dst, "wb") as b:
                    b.write(a.read())
                os.chmod(dst, 0o644)


def container_root(folder: str, shares: list[str]) -> None:
    """Make `folder`/root the process's root, as a container runtime would (module docstring), and
    move into it."""
    cwd = os.getcwd()
    mounts = _mount_points()
    rw, new = os.path.join(folder, "rw"), os.path.join(folder, "root")
    _mount("tmpfs", rw, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    upper, work = os.path.join(rw, "upper"), os.path.join(rw, "work")
    os.makedirs(upper)
    os.makedirs(work)
    etc = os.path.join(folder, "etc", "upper")
    runtime = {name for name in RUNTIME_ETC if os.path.lexists(os.path.join(etc, name))}
    if os.path.isdir(etc):
        _copy_tree(etc, os.path.join(upper, "etc"))
    _mount("overlay", new, "overlay", 0, f"lowerdir=/,upperdir={upper},workdir={work}")
    root_id = next(mount_id for mount_id, _, point in mounts if point == "/")
    for _, parent, point in mounts:
        if parent != root_id or point == "/" or _under(point, folder) or point in FRESH:
            continue
        _mount(point, new + point, None, MS_BIND | MS_REC)
    for point, fstype in FRESH.items():
        _mount(fstype, new + point, fstype, MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if os.path.isdir(new + SHM):
        # A container's own POSIX shared memory, as a runtime gives it: what one world's process names
        # there (libfaketime names its state after its pid, 1 in every world) meets no other's.
        _mount("shm", new + SHM, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    cgroups = next((p for _, _, p in mounts if p == "/sys/fs/cgroup"), None)
    if cgroups:
        _mount(cgroups, new + cgroups, None, MS_BIND | MS_REC)
    for share in shares:
        _mount(share, new + share, None, MS_BIND)
    for name in runtime:
        _mount(os.path.join(etc, name), os.path.join(new, "etc", name), None, MS_BIND)
    os.chdir(new)
    libc = _libc()
    if libc.syscall(SYS_PIVOT_ROOT, b".", b".") != 0:
        raise WorldError(f"cannot make the world's root: pivot_root: {os.strerror(ctypes.get_errno())}")
    if libc.umount2(b".", MNT_DETACH) != 0:
        raise WorldError(f"cannot leave the machine's root: {os.strerror(ctypes.get_errno())}")
    try:
        os.chdir(cwd)
    except OSError:
        os.chdir("/")


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


def open_release(fifo: str) -> int:
    """Opening the FIFO tells the tool that this process has entered its namespaces."""
    return os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)


def wait_release(fd: int) -> None:
    """Block until the tool writes GO to the FIFO; anything else, or silence, is a failure."""
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
    parser.add_argument("--root")
    parser.add_argument("--share", action="append", default=[])
    parser.add_argument("--hostname")
    parser.add_argument("--domainname")
    parser.add_argument("--release")
    parser.add_argument("--setenv", action="append", default=[])
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        release = open_release(args.release) if args.release else None
        loopback_up()
        if args.root:
            container_root(args.root, args.share)
        set_names(args.hostname, args.domainname)
        if release is not None:
            wait_release(release)
        env = dict(os.environ)
        for change in args.setenv:
            key, is_set, value = change.partition("=")
            if is_set:
                env[key] = value
            else:
                env.pop(key, None)
        # A job in a container started as `sh -c COMMAND`: the shell is PID 1 and the process's parent,
        # and shares every namespace with it (dash would execute a lone command in its own place).
        os.execve(SHELL, [SHELL, "-c", f"{shlex.join(command)}; exit $?"], env)
    except (WorldError, OSError) as e:
        print(f"world: {e}", file=sys.stderr, flush=True)
    return FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
