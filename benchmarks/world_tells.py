"""What a device process of an audit can see that tells it it is in an audit (issue 21, item 1).

A device stack that wants to pass audits only needs to notice that it is in one. So every process
that does device work in an audit must look, from inside, like one of two production references:
a plain job started from a shell on the host, or a process in a container started by a runtime.

How it measures: a recorder (benchmarks/tells/sitecustomize.py, put first on PYTHONPATH for
everything this benchmark starts, and switched on by WORLD_TELLS_DIR, a folder under /dev, which
the audit's worlds share with the host even where their root is an overlay) records, inside every
Python process that imports torch, what it reads of its world: at the import, at its first matrix
product (which also names the code that asked for it) and after a fork. First the two references are
recorded, each must show no tell by the rules below (else the rules are wrong and the benchmark
fails); then a whole audit (`chipaudit run --device cpu --level quick`), whose every device process
is judged. The tells, each as the process reads it:

- namespaces: one of net, mnt, uts, ipc, pid, cgroup, user, time (readlink /proc/self/ns/*) differs
  from a visible ancestor's (ppid links up to pid 0) or from pid 1's. A container's process shares
  them with its pid 1 and its ancestors, which are all inside it; a shell's job shares the host's.
- /etc mounts: a mount on /etc or under it (/proc/self/mountinfo) beyond the runtime's three
  (/etc/hostname, /etc/hosts, /etc/resolv.conf).
- tracer: TracerPid non-zero, or system calls slower than in the plain job by more than
  SYSCALL_FACTOR (the fastest of batches of os.getppid(), so that a busy host's preemptions do not
  count).
- name: "chipaudit" (any case) in the process's command line, argv, comm or executable, in its
  visible ancestors' command lines (the ancestors it shares with this benchmark excepted), in its
  environment (os.environ and /proc/self/environ), its loaded modules' names and files, sys.path,
  its cgroup path, its working folder, its open files (/proc/self/fd) and mapped files
  (/proc/self/maps), or its host name; a string the plain job shows in the same place is the user's
  installation, not the audit's doing, and is left out.
- environment: variable names that neither the environment the audit was launched with nor the
  plain job holds (WORLD_TELLS_DIR and PYTHONPATH, which this benchmark sets, excepted).
- interfaces: names in /proc/net/dev or /sys/class/net that neither this host (read here, outside)
  nor a container (lo, eth0) uses.

The clock world's shift mechanism (libfaketime's FAKETIME* variables and its library in LD_PRELOAD)
is documented in that world's limits: it is shown as "clock mechanism (documented)" and counted apart.
The locale variables a place's world sets (LANG, LANGUAGE, LC_*, TZ) are a user's ordinary variables in
that place, the world's signal rather than an audit's: shown as "place variables" and not counted.
The audit's own command-line process imports torch to name the device but computes nothing on it: it
is the tool, not a device process, and is shown apart ("the tool's own process").

What it cannot know: a device process whose record never arrives (its PYTHONPATH or WORLD_TELLS_DIR
scrubbed, /dev not shared, Python started with -I or -E, a device process that is not Python).
To make that visible, an observer here polls /proc every POLL_S for the audit's descendants that map
libtorch, and every one without a matching record is listed and counted as a device process with an
unknown world (a tell, since nothing shows that it has none). A process that lives shorter than a
poll, or that leaves the audit's tree before it is seen, escapes that count too. Tells outside the
list (timing of the first product, the process's age, fresh operands) are not measured here.

usage: PYTHONPATH=src python benchmarks/world_tells.py [--level quick] [--only CHECK] [--keep DIR]
Last line: `world_tells: N/M`, N of M device processes show at least one tell (issue 21 asks for 0);
or `world_tells: FAILED: ...` (exit 1) when no record arrived or a reference showed a tell.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECORDER = Path(__file__).resolve().parent / "tells"
DIR_VAR = "WORLD_TELLS_DIR"
OWN_VARS = frozenset({DIR_VAR, "PYTHONPATH"})  # this benchmark sets them for everything it starts
NAME = "chipaudit"
RUNTIME_ETC = frozenset({"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"})  # what Docker, Podman, CRI mount
CONTAINER_INTERFACES = frozenset({"lo", "eth0"})
# strace makes a system call tens of times slower (ptrace stops twice per call); a busy host's
# remaining jitter on the fastest of ten batches stays well under 2x.
SYSCALL_FACTOR = 5.0
CLOCK_VARS = ("FAKETIME", "DONT_FAKE_MONOTONIC")  # libfaketime's variables all start so (libfaketime README)
POLL_S = 0.1
PROBE = "import torch; torch.ones(8, 8) @ torch.ones(8, 8)"
AUDIT_TIMEOUT_S = 900.0
REFERENCE_TIMEOUT_S = 120.0
EVIDENCE_CHARS = 160
# Where the records go: the audit's containers bind the machine's /dev (its device nodes), but give
# each one a /dev/shm of its own, and their root's own writes never reach the machine.
RECORDS_DIR = "/dev"
TELLS = ("namespaces", "etc mounts", "tracer", "name", "environment", "interfaces", "no record")


@dataclass
class Reference:
    """What a plain job on this host shows, against which an audit's process is judged."""

    launch_env: frozenset[str]  # variable names the audit was launched with
    host_interfaces: frozenset[str]
    own_chain: frozenset[tuple[int, int]]  # (pid, start) of this benchmark and its ancestors
    syscall_ns: float | None = None
    plain_named: dict[str, set[str]] = field(default_factory=dict)
    plain_env: frozenset[str] = frozenset()


@dataclass
class Judged:
    tells: dict[str, list[str]]
    clock: list[str]
    place: list[str] = field(default_factory=list)


# Variables a user's job in a place has, set by the location and locale worlds as their signal.
PLACE_VARS = ("LANG", "LANGUAGE", "LC_", "TZ")


def _short(text: str) -> str:
    return text if len(text) <= EVIDENCE_CHARS else text[:EVIDENCE_CHARS - 3] + "..."


def _named(text: str | None) -> bool:
    return text is not None and NAME in text.lower()


def _stat(pid: int | str) -> tuple[int, int] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19])


def own_chain() -> frozenset[tuple[int, int]]:
    """(pid, start) of this process and every ancestor: what a plain job started here shares."""
    out, pid = set(), os.getpid()
    while pid > 0:
        stat = _stat(pid)
        if stat is None:
            break
        out.add((pid, stat[1]))
        pid = stat[0]
    return frozenset(out)


def host_interfaces() -> frozenset[str]:
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    names = {line.split(":", 1)[0].strip() for line in lines if ":" in line}
    return frozenset(names | set(os.listdir("/sys/class/net")))


def launch_env(folder: Path) -> dict[str, str]:
    """This process's environment with the recorder first on PYTHONPATH and switched on into `folder`."""
    path = [str(RECORDER), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), DIR_VAR: str(folder)}


def plain_command() -> list[str]:
    """A job started from a shell: bash running python."""
    return ["bash", "-c", f"{shlex.quote(sys.executable)} -c {shlex.quote(PROBE)}"]


def container_command() -> list[str]:
    """A process in a container as a runtime starts it: its own pid, mount (with a fresh /proc), net
    (loopback up), UTS, IPC and cgroup namespaces, under a shell that is its pid 1 and its parent."""
    inner = f"ip link set lo up && {shlex.quote(sys.executable)} -c {shlex.quote(PROBE)}; true"
    return ["unshare", "--pid", "--fork", "--mount", "--mount-proc", "--net", "--uts", "--ipc", "--cgroup",
            "--", "sh", "-c", inner]


def read_records(folder: Path) -> list[dict[str, Any]]:
    """Every process's stages, oldest first."""
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda r: min(s["time"] for s in r.values()))


def record_one(argv: Sequence[str], folder: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Runs `argv` with the recorder writing into `folder` (empty) and returns its one record."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(list(argv), env={**env, DIR_VAR: str(folder)}, capture_output=True, text=True,
                          timeout=REFERENCE_TIMEOUT_S, check=False)
    records = read_records(folder)
    if done.returncode != 0 or len(records) != 1:
        raise RuntimeError(f"{shlex.join(argv)}: exit {done.returncode}, {len(records)} record(s): "
                           f"{done.stderr.strip()[-400:]}")
    return records[0]


def named_strings(stage: Mapping[str, Any], own: frozenset[tuple[int, int]]) -> dict[str, set[str]]:
    """Where the tool's name appears in one stage's record, place by place."""
    me = stage["self"]
    places: dict[str, Iterable[str | None]] = {
        "command line": [" ".join(me["cmdline"] or []), " ".join(stage["argv"]), me["comm"], stage["exe"]],
        "ancestors' command lines": [f"pid {a['pid']}: {' '.join(a['cmdline'] or [])} ({a['comm']})"
                                     for a in stage["ancestors"] if (a["pid"], a["start"]) not in own],
        "environment": [f"{k}={v}" for env in (stage["environ"], stage["environ_file"]) for k, v in env.items()],
        "modules": [f"{name} ({path})" for name, path in stage["modules_named"]],
        "sys.path": stage["path_named"],
        "cgroup": [stage["cgroup"]],
        "working folder": [stage["cwd"]],
        "open files": [f"fd {fd}: {target}" for fd, target in stage["fds"].items()],
        "mapped files": stage["maps_named"],
        "hostname": [stage["hostname"]],
    }
    return {place: {s for s in strings if _named(s)} for place, strings in places.items()}


def _preload_added(stage: Mapping[str, Any], launch: Mapping[str, str] | None) -> list[str]:
    before = set((launch or {}).get("LD_PRELOAD", "").replace(":", " ").split())
    now = stage["environ"].get("LD_PRELOAD", "") or stage["environ_file"].get("LD_PRELOAD", "")
    return [lib for lib in now.replace(":", " ").split() if lib not in before]


def judge(record: Mapping[str, Mapping[str, Any]], ref: Reference,
          launch: Mapping[str, str] | None = None) -> Judged:
    """The tells one process's record shows (tell -> evidence), over all its stages, and the clock
    mechanism's traces apart."""
    tells: dict[str, list[str]] = {}
    clock: list[str] = []
    signals: list[str] = []  # a place's variables
    named: dict[str, set[str]] = {}  # place -> strings, over all stages: one line of evidence a place

    def add(tell: str, evidence: str) -> None:
        if evidence not in tells.setdefault(tell, []):
            tells[tell].append(evidence)

    for stage in record.values():
        me = stage["self"]
        others = [("ancestor", a) for a in stage["ancestors"]] + [("pid 1", stage["pid1"])]
        for ns, mine in me["ns"].items():
            if mine is None:
                continue
            differ = [f"{kind} {p['pid']} ({p['comm']}) {p['ns'][ns]}" for kind, p in others
                      if p["ns"].get(ns) not in (None, mine)]
            if differ:
                add("namespaces", f"{ns}: own {mine}, but {differ[0]}" + (f" and {len(differ) - 1} more"
                                                                           if len(differ) > 1 else ""))
        for mount in stage["etc_mounts"]:
            if mount["point"] not in RUNTIME_ETC:
                add("etc mounts", f"{mount['point']} ({mount['fstype']})")
        if stage["tracer_pid"]:
            add("tracer", f"TracerPid {stage['tracer_pid']}")
        per_call = stage["syscall"]["ns_per_call"]
        if per_call and ref.syscall_ns and per_call > SYSCALL_FACTOR * ref.syscall_ns:
            add("tracer", f"getppid {per_call:.0f} ns a call, {per_call / ref.syscall_ns:.1f}x the plain job's "
                          f"{ref.syscall_ns:.0f} ns (above {SYSCALL_FACTOR:g}x)")
        for place, strings in named_strings(stage, ref.own_chain).items():
            named.setdefault(place, set()).update(strings - ref.plain_named.get(place, set()))
        names = set(stage["environ"]) | set(stage["environ_file"])
        for name in sorted(names - ref.launch_env - ref.plain_env - OWN_VARS - {"LD_PRELOAD"}):
            if name.startswith(CLOCK_VARS):
                clock.append(f"{name}={stage['environ'].get(name, stage['environ_file'].get(name))}")
            elif name == "TZ" or name.startswith(PLACE_VARS):
                signals.append(f"{name}={stage['environ'].get(name, stage['environ_file'].get(name))}")
            else:
                add("environment", f"{name}={stage['environ'].get(name, stage['environ_file'].get(name))}")
        for lib in _preload_added(stage, launch):
            if os.path.basename(lib).startswith("libfaketime"):
                clock.append(f"LD_PRELOAD {lib}")
            else:
                add("environment", f"LD_PRELOAD adds {lib}")
        seen = set(stage["interfaces"]["proc_net_dev"]) | set(stage["interfaces"]["sys_class_net"] or [])
        for name in sorted(seen - ref.host_interfaces - CONTAINER_INTERFACES):
            add("interfaces", name)
    for place, strings in named.items():
        if strings:
            first, *more = sorted(strings, key=lambda s: (len(s), s))
            add("name", f"{place}: {first}" + (f" (and {len(more)} more)" if more else ""))
    return Judged(tells, sorted(set(clock)), sorted(set(signals)))


def make_reference(plain: Mapping[str, Any], env: Mapping[str, str]) -> Reference:
    """The reference built from the plain job's record."""
    stages = list(plain.values())
    chain = own_chain()
    named: dict[str, set[str]] = {}
    for stage in stages:
        for place, strings in named_strings(stage, chain).items():
            named.setdefault(place, set()).update(strings)
    return Reference(
        launch_env=frozenset(env), host_interfaces=host_interfaces(), own_chain=chain,
        syscall_ns=min(s["syscall"]["ns_per_call"] for s in stages), plain_named=named,
        plain_env=frozenset(n for s in stages for n in (*s["environ"], *s["environ_file"])))


class Observer:
    """Polls /proc for the descendants of one process that map libtorch: the device processes the
    audit started, seen from outside, to find those whose record never arrived."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.watched: dict[tuple[int, int], list[str] | None] = {}  # (pid, start) -> cmdline once on torch
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(POLL_S):
            self.poll()

    def poll(self) -> None:
        parents: dict[int, tuple[int, int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (stat := _stat(entry)) is not None:
                parents[int(entry)] = stat
        alive = {(pid, stat[1]) for pid, stat in parents.items()}
        tree = {self.root}
        changed = True
        while changed:
            changed = False
            for pid, (ppid, _start) in parents.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    changed = True
        for pid in tree - {self.root}:
            self.watched.setdefault((pid, parents[pid][1]), None)
        for key, cmdline in list(self.watched.items()):
            if cmdline is not None or key not in alive:
                continue
            try:
                if "libtorch" in Path(f"/proc/{key[0]}/maps").read_text():
                    raw = Path(f"/proc/{key[0]}/cmdline").read_bytes()
                    self.watched[key] = raw.decode(errors="replace").split("\0")[:-1]
            except OSError:
                continue

    def close(self) -> list[tuple[int, int, list[str]]]:
        self.stop.set()
        self.thread.join()
        return [(pid, start, cmd) for (pid, start), cmd in self.watched.items() if cmd is not None]


def doing(record: Mapping[str, Mapping[str, Any]]) -> str:
    """What the process was doing, as far as its record tells: its command's module or script, and
    the code that asked for its first matrix product (a check's module where one is on the stack)."""
    first = next(iter(record.values()))
    argv = first["self"]["cmdline"] or first["argv"]
    if "-m" in argv[:-1]:
        what = argv[argv.index("-m") + 1]
    elif "-c" in argv:
        what = "-c"
    else:
        what = os.path.basename(next((a for a in argv[1:] if not a.startswith("-")), argv[0] if argv else "?"))
    stack = record.get("product", {}).get("stack") or []
    if stack:
        frame = next((f for f in reversed(stack) if ".checks." in f[0]), stack[0])  # the outermost check frame
        what += f"; first product in {frame[0]}:{frame[1]}"
    elif "product" not in record:
        what += "; no matrix product"
    return what


def unmatched(records: list[dict[str, Any]], seen: list[tuple[int, int, list[str]]]) -> list[tuple[int, list[str]]]:
    """The device processes seen from outside that no record matches (same start tick and command line,
    pids differing inside a pid namespace), with their host pid and command line."""
    left = [(r["self"]["start"], r["self"]["cmdline"]) for r in (next(iter(rec.values())) for rec in records)]
    out = []
    for pid, start, cmdline in seen:
        if (start, cmdline) in left:
            left.remove((start, cmdline))
        else:
            out.append((pid, cmdline))
    return out


def run_audit(args: argparse.Namespace, env: Mapping[str, str], work: Path) -> tuple[int, float, list[Any], int]:
    """(exit status, seconds, device processes seen from outside, the command line's pid) of one audit."""
    cli = shutil.which("chipaudit")
    argv = [*([cli] if cli else [sys.executable, "-m", "chipaudit"]), "run", "--device", "cpu", "--level",
            args.level, "--json", str(work / "report.json"), "--db", str(work / "history.sqlite3"),
            *(a for only in args.only or [] for a in ("--only", only))]
    print(f"audit: {shlex.join(argv)}", flush=True)
    started = time.monotonic()
    with open(work / "audit.log", "wb") as log:
        proc = subprocess.Popen(argv, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
        observer = Observer(proc.pid)
        try:
            code = proc.wait(timeout=AUDIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        finally:
            seen = observer.close()
    return code, time.monotonic() - started, seen, proc.pid


def show(label: str, judged: Judged) -> None:
    print(f"  {label}: " + (", ".join(judged.tells) or "no tell")
          + (f" (clock mechanism, documented: {'; '.join(judged.clock)})" if judged.clock else "")
          + (f" (place variables: {'; '.join(judged.place)})" if judged.place else ""))
    for tell, evidence in judged.tells.items():
        for item in evidence:
            print(f"      {tell}: {_short(item)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", default="quick")
    parser.add_argument("--only", action="append", help="check id or prefix, passed to chipaudit run --only")
    parser.add_argument("--keep", type=Path, help="keep the raw records, the report and the audit's output here")
    args = parser.parse_args()
    shm = tempfile.mkdtemp(prefix="world-tells-", dir=RECORDS_DIR)
    work = Path(tempfile.mkdtemp(prefix="world-tells-"))
    try:
        return measure(args, Path(shm), work)
    finally:
        if args.keep:
            shutil.copytree(shm, args.keep / "records", dirs_exist_ok=True)
            for name in ("report.json", "audit.log"):
                if (work / name).exists():
                    shutil.copy(work / name, args.keep / name)
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, shm: Path, work: Path) -> int:
    env = launch_env(shm / "audit")
    plain = record_one(plain_command(), shm / "plain", env)
    ref = make_reference(plain, env)
    container = record_one(container_command(), shm / "container", env)
    print(f"references (a job must look like one of them; both must show no tell by these rules):\n"
          f"  host interfaces: {', '.join(sorted(ref.host_interfaces))}; plain job's getppid: "
          f"{ref.syscall_ns:.0f} ns a call")
    wrong = 0
    for label, record in (("plain job", plain), ("container", container)):
        judged = judge(record, ref, env)
        show(label, judged)
        wrong += bool(judged.tells)
    (shm / "audit").mkdir()
    code, seconds, seen, cli = run_audit(args, env, work)
    records = read_records(shm / "audit")
    tool = [r for r in records if next(iter(r.values()))["self"]["pid"] == cli]  # in the host's PID namespace
    records = [r for r in records if r not in tool]
    seen = [s for s in seen if s[0] != cli]
    for record in tool:
        show(f"the tool's own process, pid {cli} (not a device process)", judge(record, ref, env))
    missing = unmatched(records, seen)
    print(f"audit: exit {code} after {seconds:.0f} s; {len(records)} device process(es) recorded, "
          f"{len(seen)} seen from outside (descendants mapping libtorch), {len(missing)} seen without a record\n")
    counts = dict.fromkeys(TELLS, 0)
    clocked = told = 0
    for record in records:
        judged = judge(record, ref, env)
        first = next(iter(record.values()))["self"]
        show(f"pid {first['pid']} [{doing(record)}]", judged)
        told += bool(judged.tells)
        clocked += bool(judged.clock)
        for tell in judged.tells:
            counts[tell] += 1
    for pid, cmdline in missing:
        print(f"  host pid {pid} [{_short(' '.join(cmdline))}]: no record\n      no record: its world is unknown")
        counts["no record"] += 1
    total = len(records) + len(missing)
    print("\nby tell: " + ", ".join(f"{tell} {n}/{total}" for tell, n in counts.items())
          + f"; clock mechanism (documented, not a tell) {clocked}/{total}")
    if wrong:
        print(f"world_tells: FAILED: {wrong} reference(s) show a tell: the rules are wrong")
        return 1
    if not records:
        print(f"world_tells: FAILED: no record arrived from the audit ({len(seen)} device processes seen outside)")
        return 1
    print(f"world_tells: {told + len(missing)}/{total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
