"""Runs inside a fresh network namespace (`unshare --net`), before the workload: brings the loopback
interface up, as on any machine that is merely offline, optionally starts a packet capture on the
namespace's interfaces, runs the workload command, then stops the capture.

This file is run by path with `python -I` (isolated: no PYTHONPATH, no user site), and uses the
standard library only, so that nothing the workload's environment injects runs here untraced.

usage: python -I netns.py [--capture PCAP --capture-log LOG --tcpdump EXE] -- COMMAND...
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import time

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1  # linux/sockios.h, linux/if.h
CAPTURE_READY_S = 10.0
CAPTURE_STOP_S = 5.0
CAPTURE_DRAIN_S = 0.2  # for tcpdump to write the last packets before it is stopped
READY_MARK = "listening on"  # what tcpdump prints on stderr once it captures


def loopback_up() -> str:
    """'' when lo is up, else why not."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            request = struct.pack("16sH14x", b"lo", 0)
            flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
    except OSError as e:
        return str(e)
    return ""


def start_capture(tcpdump: str, pcap: str, log: str) -> subprocess.Popen[bytes] | None:
    with open(log, "wb") as err:
        try:
            # --immediate-mode: packets reach the file as they come, not in blocks a stop would lose.
            proc = subprocess.Popen([tcpdump, "-i", "any", "-n", "-U", "--immediate-mode", "-w", pcap],
                                    stdout=subprocess.DEVNULL,
                                    stderr=err, stdin=subprocess.DEVNULL)
        except OSError as e:
            err.write(f"{e}\n".encode())
            return None
    deadline = time.monotonic() + CAPTURE_READY_S
    while time.monotonic() < deadline and proc.poll() is None:
        with open(log, errors="replace") as f:
            if READY_MARK in f.read():
                return proc
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="netns.py")
    parser.add_argument("--capture")
    parser.add_argument("--capture-log")
    parser.add_argument("--tcpdump")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    problem = loopback_up()
    if problem:
        print(f"netns: loopback stays down: {problem}", file=sys.stderr, flush=True)
    capture = None
    if args.capture and args.tcpdump and args.capture_log:
        capture = start_capture(args.tcpdump, args.capture, args.capture_log)
    child = subprocess.Popen(command, close_fds=False)
    signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    code = child.wait()
    if capture is not None:
        time.sleep(CAPTURE_DRAIN_S)
        capture.terminate()
        try:
            capture.wait(timeout=CAPTURE_STOP_S)
        except subprocess.TimeoutExpired:
            capture.kill()
            capture.wait()
    with contextlib.suppress(OSError):
        sys.stdout.flush()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main(sys.argv[1:]))
