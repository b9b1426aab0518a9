"""The eBPF sensor on real processes: a beacon that hides from strace, sent from a network namespace
of its own over every socket family, is seen and attributed to that namespace; the same program in
the tool's own namespace is never logged."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chipaudit.sensors import ebpf, ebpf_program, strace
from chipaudit.sensors.events import FILE, NETWORK, PROCESS, Event
from chipaudit.sensors.watch import Watch

# A device stack that knows audits: it does nothing while a tracer is attached or while its parent
# looks like one, and otherwise reports home over every socket family it can reach.
HIDER = r"""
import ctypes, fcntl, os, socket, struct, sys
status = open("/proc/self/status").read()
parent = open(f"/proc/{os.getppid()}/cmdline", "rb").read()
if int(status.split("TracerPid:")[1].split()[0]) != 0 or b"strace" in parent:
    sys.exit(0)
listener, note, abstract = sys.argv[1], sys.argv[2], sys.argv[3]
print("ready", flush=True)  # inside its namespace now
sys.stdin.readline()  # the caller has looked at which one it is
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # loopback up, as any machine has it
    flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]
    fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"beacon", ("127.0.0.1", 9999))
server = socket.socket(socket.AF_INET6)
server.bind(("::1", 0))
server.listen()
tcp = socket.socket(socket.AF_INET6)
tcp.connect(("::1", server.getsockname()[1]))
tcp.send(b"beacon")
print(server.getsockname()[1], flush=True)
path = socket.socket(socket.AF_UNIX)
path.connect(listener)  # a process in the host's namespace: a path reaches across namespaces
path.send(b"beacon")
try:
    socket.socket(socket.AF_UNIX).connect("\0" + abstract)
except OSError:
    pass
netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
netlink.sendto(struct.pack("=LHHLLBxxx", 20, 18, 0x301, 1, 0, 0), (0, 0))  # RTM_GETLINK dump
packet = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
packet.bind(("lo", 0))
packet.send(b"\0" * 12 + b"\x08\x00" + b"beacon")
inherited = socket.socket(fileno=int(sys.argv[5])) if len(sys.argv) > 5 else None
if inherited is not None:
    os.write(inherited.fileno(), b"beacon")  # write(2) on a socket made outside: no send call at all
with open(note, "w") as f:
    f.write("home")
libc = ctypes.CDLL(None, use_errno=True)
if sys.argv[4] == "move" and libc.unshare(0x40000000) == 0:  # CLONE_NEWNET: a namespace no one handed to the sensor
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"beacon", ("127.0.0.1", 9998))
    except OSError:
        pass
"""


def require_started(status: ebpf.SensorStatus) -> None:
    """Skip where bpftrace cannot run (not installed, no tracefs, not root); where it can, a program
    it refuses (one past the BPF stack, say) is a failure, not a skip."""
    if status.ran:
        return
    if shutil.which("bpftrace") is None or ebpf_program.tracepoints() is None or os.geteuid() != 0:
        pytest.skip(f"bpftrace cannot run here: {status.detail}")
    pytest.fail(f"bpftrace can run here, but not the sensor's program: {status.detail}")


@pytest.fixture(scope="module")
def tracer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ebpf.SyscallTracer]:
    t = ebpf.SyscallTracer()
    require_started(t.start(tmp_path_factory.mktemp("ebpf") / "trace.json"))
    yield t
    t.stop()


def _hide(tmp_path: Path, own_namespace: bool, extra: tuple[str, ...] = ("stay",),
          pass_fds: tuple[int, ...] = ()) -> tuple[int, int, str]:
    """Run the hider (in a new network namespace or in the tool's; "move" to move on to a namespace of
    its own making, then a socket descriptor to write to); its pid, namespace and stdout."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "listener.sock"))
    listener.listen()
    prefix = ["unshare", "--net", "--"] if own_namespace else []
    argv = [*prefix, sys.executable, "-I", "-c", HIDER, str(tmp_path / "listener.sock"), str(tmp_path / "note"),
            f"chipaudit-ebpf-{os.getpid()}", *extra]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, pass_fds=pass_fds)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        netns = os.stat(f"/proc/{proc.pid}/ns/net").st_ino
        out, _ = proc.communicate("go\n", timeout=60)
    finally:
        listener.close()
    assert proc.returncode == 0
    return proc.pid, netns, out


def test_a_beacon_hidden_from_strace_is_seen_on_every_socket_family(
        tracer: ebpf.SyscallTracer, tmp_path: Path) -> None:
    outside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # made in the tool's namespace
    outside.connect(("127.0.0.1", 9997))
    pid, netns, out = _hide(tmp_path, own_namespace=True, extra=("move", str(outside.fileno())),
                            pass_fds=(outside.fileno(),))
    outside.close()
    assert netns != tracer.toolns
    events = tracer.events({netns})
    mine = {(e.action, e.target) for e in events if e.pid == pid}
    port = out.split()[0]
    assert ("sendto", "AF_INET 127.0.0.1:9999") in mine
    assert ("connect", f"AF_INET6 [::1]:{port}") in mine
    assert ("connect", f"AF_UNIX {tmp_path / 'listener.sock'}") in mine
    assert ("connect", f"AF_UNIX @chipaudit-ebpf-{os.getpid()}") in mine
    assert ("socket", "AF_NETLINK") in mine
    assert ("sendto", "AF_NETLINK") in mine
    assert ("socket", "AF_PACKET") in mine
    # write(2) on a socket handed in from outside: only the socket layer sees it, with its peer.
    assert ("send", "AF_INET 127.0.0.1:9997") in mine
    assert ("openat", str(tmp_path / "note")) in {(e.action, e.target) for e in events if e.kind == FILE}
    # The namespace it moved into is followed, and the move itself is an event.
    assert ("sendto", "AF_INET 127.0.0.1:9998") in mine
    assert any(e.kind == PROCESS and e.action == "unshare" for e in events)
    refused = [e for e in events if e.target.startswith("AF_UNIX @")]
    assert refused and refused[0].failed == "ECONNREFUSED"
    assert all(e.sensor == "ebpf" and e.time > 0 for e in events)
    assert tracer.status().ran


def test_the_same_program_in_the_tools_namespace_is_never_logged(
        tracer: ebpf.SyscallTracer, tmp_path: Path) -> None:
    pid, netns, _ = _hide(tmp_path, own_namespace=False)
    assert netns == tracer.toolns
    assert pid not in {r.pid for r in tracer.records()}


def test_a_watched_process_that_kills_the_tracer_leaves_the_watching_marked_stopped(tmp_path: Path) -> None:
    t = ebpf.SyscallTracer()
    require_started(t.start(tmp_path / "trace.json"))
    try:
        assert t.proc is not None and t.status().ran
        subprocess.run(["unshare", "--net", "--", "kill", "-9", str(t.proc.pid)], check=True, timeout=30)
        t.proc.wait(timeout=30)
        status = t.status()
        assert not status.ran and status.detail.startswith("stopped early")
    finally:
        t.stop()


def test_a_watch_closed_while_its_tracer_attaches_ends_the_attach(tmp_path: Path) -> None:
    """The CLI starts the watch before it checks its input: bad input closes it within a moment,
    not after the seconds bpftrace takes to compile, and leaves no bpftrace behind."""
    if shutil.which("bpftrace") is None:
        pytest.skip("bpftrace is not installed")
    watch = Watch(tmp_path / "watch")
    pending = watch._pending
    watch.close()
    assert not watch.statuses()[-1].ran
    assert watch.statuses()[-1].detail == f"not run: {ebpf.ABORTED}"
    assert pending.proc is None or pending.proc.wait(timeout=30) is not None


def test_the_hider_is_quiet_under_strace(tmp_path: Path) -> None:
    """The premise: strace alone misses this class (the hider exits before doing anything)."""
    base, status = strace.probe()
    if base is None:
        pytest.skip(status.detail)
    out = tmp_path / "trace"
    subprocess.run([*strace.prefix(base, out, {}), sys.executable, "-I", "-c", HIDER, "x", "y", "z", "stay"],
                   check=True, timeout=60, stdin=subprocess.DEVNULL)
    events, _ = strace.parse(out)
    assert not [e for e in events if e.kind == NETWORK]


def test_without_privilege_the_status_gives_bpftraces_own_words(tmp_path: Path) -> None:
    """Root without capabilities, as in a confined container: the kernel refuses, and says so."""
    code = ("import sys; from pathlib import Path; from chipaudit.sensors.ebpf import SyscallTracer; "
            "s = SyscallTracer().start(Path(sys.argv[1])); print(s.ran, s.detail)")
    env = {**os.environ, "PYTHONPATH": str(Path(ebpf.__file__).parents[2])}
    run = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-c", code,
                          str(tmp_path / "trace.json")], capture_output=True, text=True, timeout=120, env=env)
    if not ebpf.shutil.which("bpftrace"):
        assert run.stdout.startswith("False not run: bpftrace is not installed")
        return
    assert run.stdout.startswith("False not run: bpftrace: ERROR"), run.stdout + run.stderr
    assert "RLIMIT_MEMLOCK" not in run.stdout


def test_without_bpftrace_the_status_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    status = ebpf.SyscallTracer().start(tmp_path / "trace.json")
    assert not status.ran and "bpftrace is not installed" in status.detail


def test_addresses_are_written_as_strace_writes_them() -> None:
    inet = b"\x02\x00\x27\x0f\x7f\x00\x00\x01" + bytes(8)
    inet6 = b"\x0a\x00\x1f\x90" + bytes(4) + socket.inet_pton(socket.AF_INET6, "2001:db8::1") + bytes(4)
    assert ebpf.sockaddr(inet) == ("AF_INET", "127.0.0.1:9999")
    assert ebpf.sockaddr(inet6) == ("AF_INET6", "[2001:db8::1]:8080")
    assert ebpf.sockaddr(b"\x01\x00/run/x\x00junk") == ("AF_UNIX", "/run/x")
    assert ebpf.sockaddr(b"\x01\x00\x00name") == ("AF_UNIX", "@name")
    assert ebpf.sockaddr(b"\x01\x00") == ("AF_UNIX", "(unnamed)")
    assert ebpf.sockaddr(b"\x10\x00" + bytes(10)) == ("AF_NETLINK", "")
    assert ebpf.family_name(17) == "AF_PACKET"
    assert ebpf.family_name(250) == "AF_250"


def test_a_path_with_any_character_survives_the_log() -> None:
    line = "F|5|7|42|\\x70\\x79|openat|3|577|-100|/tmp/a|b\nc"
    record = ebpf._record(line)
    assert record is not None and record.fields[2] == "/tmp/a|b\nc"
    event = ebpf._event(record, 0.0)
    assert isinstance(event, Event) and event.target == "/tmp/a|b\nc" and event.pid == 42
