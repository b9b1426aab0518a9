"""One way to run a child process that does device work, for every part of the tool that needs one.

Device work never runs in the tool's own process: a driver call that hangs or crashes the
interpreter must take down only a child, and a child must be watchable and perturbable as a whole
(a network namespace, a tracer, a shifted clock) without the tool itself being perturbed. The
audit's workers, the behaviour probes' workloads and the stack probe therefore all start here, in a
process group of their own (so that one kill ends every wrapper and descendant that stayed in it),
under `Wrapper`s applied from the outside in, and all speak the same protocol: JSON objects, one a
line, from the tool on the child's stdin, and back on a descriptor the child inherits (named on the
first line, the handshake), so that whatever a vendor library prints on stdout or stderr cannot be
mistaken for a message; that output goes to a log whose last line explains a child that died.

A child that runs one of this package's modules is started from a stage (process/neutral.py): its
command line is the interpreter and a neutral script, and the handshake names the module, so that
nothing a device stack can read in the process names the tool.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from chipaudit.process import neutral

# How long `Child.innermost` waits for each layer to start what it wraps: a shell forks in milliseconds.
INNERMOST_WAIT_S = 10.0
# Importing torch and initialising a device driver can take a while on a cold machine.
STARTUP_TIMEOUT_S = 180.0
# The job's key naming the tool's scratch folder for a device process: its temporary files go there
# (runner/watched.py), so that the sensors around it can tell the tool's own writes from the device stack's.
SCRATCH = "scratch"
# Bytes per read from the result pipe: its default capacity on Linux (pipe(7)).
READ_CHUNK = 1 << 16


@dataclass(frozen=True)
class Wrapper:
    """One layer around a child: the command it runs the child under (`prefix`, ending where the
    child's own command begins, e.g. `unshare --net --` or `strace -o FILE --`), changes to the
    environment the whole chain starts with (None removes a variable; a layer that must perturb the
    child alone, such as strace's -E, carries them in its prefix instead), and the files it writes,
    which are the tool's own (a sensor reads them back; a sampler must not count them).

    `stays` says whether the layer remains a process above the child (strace and a container's
    unshare do; a layer that executes the child in its own place, such as the self-test's fault
    injector, does not). `started` is called with the started
    process's pid, before the tool talks to the child: a layer that must be finished from outside
    (a namespace whose network the tool wires) does it there, while its shim waits."""

    prefix: tuple[str, ...] = ()
    env: Mapping[str, str | None] = field(default_factory=dict)
    files: tuple[Path, ...] = ()
    stays: bool = True
    started: Callable[[int], None] | None = None
    # The option with which the layer sets the environment of what it executes (`--setenv K=V`, or
    # `--setenv K` to remove one), placed before the prefix's last argument: the layers inside it then
    # change the child's environment alone, not this layer's own (a preloaded library that would load
    # into the layer's processes too, such as libfaketime, with state named after their pids).
    setenv: str = ""
    # Whether the layer runs the command from a shell that stays as its parent (process/world.py).
    shell: bool = False


def staged(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """The command that runs `argv` and the module the handshake names: a module of this package
    (`PYTHON -m chipaudit.x`, by either of its names) runs from the stage; anything else as it is."""
    if len(argv) >= 3 and argv[1] == "-m" and argv[2].split(".")[0] in (neutral.TOOL, neutral.root()):
        stage = neutral.stage()
        return [*stage.command(), *argv[3:]], stage.module(argv[2])
    return list(argv), None


def command(argv: Sequence[str], wrappers: Sequence[Wrapper]) -> list[str]:
    """`argv` inside every wrapper, the first wrapper outermost."""
    return [*(arg for w in _carried(wrappers) for arg in w.prefix), *argv]


def _carried(wrappers: Sequence[Wrapper]) -> list[Wrapper]:
    """The wrappers, with the environment changes of those inside the first layer that sets its
    command's environment (`Wrapper.setenv`) moved into that layer's prefix; the tool's settings
    (SETTINGS_PREFIX) stay where they are, for `Child` to hand over in the handshake."""
    at = next((i for i, w in enumerate(wrappers) if w.setenv and w.prefix), None)
    if at is None:
        return list(wrappers)
    outer, inner = wrappers[at], wrappers[at + 1:]
    changes = {k: v for w in inner for k, v in w.env.items() if not k.startswith(SETTINGS_PREFIX)}
    options = [a for k, v in changes.items() for a in (outer.setenv, k if v is None else f"{k}={v}")]
    carrier = replace(outer, prefix=(*outer.prefix[:-1], *options, outer.prefix[-1]))
    return [*wrappers[:at], carrier,
            *(replace(w, env={k: v for k, v in w.env.items() if k.startswith(SETTINGS_PREFIX)}) for w in inner)]


# The tool's own variables (check modules, the allow-list): a device process gets them in its
# handshake, never in its environment, where a device stack would read that it is audited.
SETTINGS_PREFIX = "CHIPAUDIT_"


def environment(wrappers: Sequence[Wrapper], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (this process's environment) with every wrapper's changes, the innermost last (those a
    layer sets for its command, `Wrapper.setenv`, excepted: they reach the command alone)."""
    env = dict(os.environ if base is None else base)
    for w in _carried(wrappers):
        for key, value in w.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
    return env


class Child:
    """The tool's side of one child: started at once, talked to, stopped with its whole group.

    `receive` returns None both on a timeout and at the end of the channel; `eof` tells them apart.
    Without a `log` the child's output goes to a temporary file that `close` deletes."""

    def __init__(self, argv: Sequence[str], wrappers: Sequence[Wrapper] = (), log: Path | None = None,
                 cwd: Path | None = None) -> None:
        self.wrappers = tuple(wrappers)
        self.eof = False
        self._buffer = b""
        self._own_log = log is None
        if log is None:
            handle, name = tempfile.mkstemp(suffix=".log")
            os.close(handle)
            log = Path(name)
        self.log = log
        self._fd, write_fd = os.pipe()
        argv, module = staged(argv)
        env = environment(self.wrappers)
        settings = {k: env.pop(k) for k in list(env) if k.startswith(SETTINGS_PREFIX)}
        try:
            with open(log, "wb") as out:
                self.proc = subprocess.Popen(
                    command(argv, self.wrappers), stdin=subprocess.PIPE, stdout=out,
                    stderr=out, pass_fds=(write_fd,), env=env, cwd=cwd,
                    start_new_session=True)
            self.send({"result_fd": write_fd, "settings": settings, **({"module": module} if module else {})})
        except BaseException:
            self._release()
            raise
        finally:
            os.close(write_fd)
        try:
            for w in self.wrappers:
                if w.started is not None:
                    w.started(self.proc.pid)
        except BaseException:
            self.stop()
            self._release()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def wrapped(self) -> bool:
        """Whether the process started is a wrapper rather than the child's own command."""
        return any(w.prefix and w.stays for w in self.wrappers)

    def innermost(self, wait_s: float = INNERMOST_WAIT_S) -> int:
        """The pid of the child's own command (`chain`'s last)."""
        return self.chain(wait_s)[-1]

    def chain(self, wait_s: float = INNERMOST_WAIT_S) -> list[int]:
        """The processes from the one started to the child's own command: below each wrapper that
        stays above it (a PID namespace's unshare and the shell it runs the command from, a tracer),
        its one child, waiting up to `wait_s` for each to start it. Asked once the wrappers' `started`
        hooks ran."""
        pid = self.proc.pid
        out = [pid]
        deadline = time.monotonic() + wait_s
        for _ in range(sum(w.stays + w.shell for w in self.wrappers if w.prefix)):
            while True:
                try:
                    with open(f"/proc/{pid}/task/{pid}/children") as f:
                        children = f.read().split()
                except OSError:
                    return out
                if children or time.monotonic() > deadline or not self.running:
                    break
                time.sleep(0.01)
            if len(children) != 1:
                return out
            pid = int(children[0])
            out.append(pid)
        return out

    @property
    def files(self) -> list[Path]:
        """The tool's own files around this child: its log and what its wrappers write."""
        return [self.log, *(f for w in self.wrappers for f in w.files)]

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def send(self, message: Mapping[str, Any]) -> bool:
        """One message on the child's stdin; False when the child no longer reads it."""
        if self.proc.stdin is None or self.proc.stdin.closed:
            return False
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            return False
        return True

    def close_input(self) -> None:
        """End the child's stdin: the end of its job, or the signal to let go."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next message, waiting at most `timeout` seconds for its whole line; None on a timeout
        or at the end of the channel (then `eof`)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if self.eof or self._fd < 0 or left <= 0 or not select.select([self._fd], [], [], left)[0]:
                return None
            chunk = os.read(self._fd, READ_CHUNK)
            if not chunk:
                self.eof = True
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def wait(self, timeout: float | None) -> int | None:
        """The exit status, waiting at most `timeout` seconds (None: until it exits); None while it runs."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.proc.wait(timeout=timeout)
        return None

    def stop(self, grace_s: float = 0.0, wait_s: float | None = None) -> int | None:
        """Let the child exit by itself for `grace_s`, then kill its whole process group (wrappers and
        what stayed in the group included) and wait up to `wait_s` (None: until it is gone; 0: not
        at all, for a caller that waits for several later). The exit status, None while it runs."""
        if grace_s:
            self.wait(grace_s)
        if self.proc.returncode is None:  # not yet reaped: the group id cannot belong to anyone else
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                with contextlib.suppress(OSError):
                    self.proc.kill()
        return self.wait(wait_s) if wait_s != 0 else self.proc.poll()

    def last_line(self, limit: int) -> str:
        """The last line of the child's output within its last `limit` bytes: why it died, usually."""
        try:
            with open(self.log, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - limit))
                text = f.read().decode(errors="replace").strip()
        except OSError:
            return ""
        return text.splitlines()[-1] if text else ""

    def close(self) -> None:
        """Release the channel and the temporary log (the process itself is `stop`'s)."""
        self.close_input()
        self._release()

    def _release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._own_log:
            with contextlib.suppress(OSError):
                self.log.unlink()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        """Ctrl-C and errors included: never leave a child running on the device."""
        self.stop()
        self.close()


class Channel:
    """The child's side: messages to the tool on the inherited descriptor, the tool's on stdin."""

    def __init__(self, result_fd: int, requests: IO[str] | None = None) -> None:
        self._out = os.fdopen(result_fd, "w", buffering=1)
        self._in = sys.stdin if requests is None else requests

    def send(self, message: Mapping[str, Any]) -> None:
        self._out.write(json.dumps(message) + "\n")
        self._out.flush()

    def receive(self) -> dict[str, Any] | None:
        """The tool's next message; None once it has closed the child's stdin."""
        line = self._in.readline()
        return json.loads(line) if line.strip() else None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while (message := self.receive()) is not None:
            yield message

    def close(self) -> None:
        self._out.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_handshake: dict[str, Any] | None = None


def accept() -> dict[str, Any]:
    """The handshake, the first line `Child` writes: the result descriptor, and the module to run
    when the child starts from a stage (process/launch.py reads it before the module runs)."""
    global _handshake
    if _handshake is None:
        _handshake = json.loads(sys.stdin.readline() or "{}")
    return _handshake


def setting(name: str) -> str | None:
    """One of the tool's settings (SETTINGS_PREFIX): from the environment in the tool's own process,
    from the handshake in a device process."""
    if name in os.environ:
        return os.environ[name]
    return (_handshake or {}).get("settings", {}).get(name)


def child_main(handler: Callable[[dict[str, Any], Channel], None]) -> int:
    """A child's whole main: open the channel the handshake names and hand the tool's next message,
    the child's job, to `handler` with the channel."""
    with Channel(int(accept()["result_fd"])) as channel:
        job = channel.receive()
        if job is not None:
            handler(job, channel)
    return 0
