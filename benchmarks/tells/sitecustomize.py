"""benchmarks/world_tells.py's recorder: what a device process can see of the world it was started in.

Python imports `sitecustomize` at start-up from the first folder on its path that holds one, so with
this folder first on PYTHONPATH it reaches every Python process of an audit that keeps the variable,
whatever wrappers, namespaces and shims started it. It does nothing unless WORLD_TELLS_DIR names a
folder. A process becomes a device process when it imports torch: the record is taken then (stage
"import"), again at its first matrix product (stage "product", which also says what code asked for
it), and in a child forked after the import (stage "fork"). The record is raw: what the process
reads, where it reads it; benchmarks/world_tells.py judges it against its references.

Quiet on purpose: no network, no threads, no output, every error swallowed, nothing written but one
JSON file per process in WORLD_TELLS_DIR (replaced atomically at each stage). The dispatcher kernel
that notices the first product is removed again by that product, so later products run natively.
"""

import contextlib
import json
import os
import sys
import time

DIR = os.environ.get("WORLD_TELLS_DIR")
# The tool's name, searched case-insensitively wherever the process can read it.
NAME = "chipaudit"
NAMESPACES = ("net", "mnt", "uts", "ipc", "pid", "cgroup", "user", "time")
# System-call timing: os.getppid() in batches, at most this many calls and this long in all; the
# fastest batch's time per call is kept, so that a busy host's preemptions do not count.
CALLS, BATCH, BUDGET_S = 20000, 2000, 0.5
# Frames of the first product's stack kept (innermost first, torch's and this file's left out).
FRAMES = 24
# Walking ppid links ends at pid 0; a cycle or a very deep tree ends it here.
MAX_DEPTH = 64

_state = {"token": None, "stages": {}, "lib": None}


def _read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except Exception:
        return None


def _link(path):
    try:
        return os.readlink(path)
    except Exception:
        return None


def _named(text):
    return text is not None and NAME in text.lower()


def _stat(pid):
    """(ppid, start time in clock ticks since boot) from /proc/<pid>/stat, or None."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[19])


def _process(pid):
    stat = _stat(pid)
    cmdline = _read(f"/proc/{pid}/cmdline", "rb")
    return {
        "pid": pid, "ppid": stat[0] if stat else None, "start": stat[1] if stat else None,
        "cmdline": cmdline.decode(errors="replace").split("\0")[:-1] if cmdline else None,
        "comm": (_read(f"/proc/{pid}/comm") or "").strip() or None,
        "ns": {ns: _link(f"/proc/{pid}/ns/{ns}") for ns in NAMESPACES},
    }


def _ancestors():
    out, pid = [], os.getppid()
    while pid > 0 and len(out) < MAX_DEPTH:
        info = _process(pid)
        out.append(info)
        if info["ppid"] is None:
            break
        pid = info["ppid"]
    return out


def _environ_file():
    raw = _read("/proc/self/environ", "rb") or b""
    pairs = [item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item]
    return {k: v for k, _, v in pairs}


def _etc_mounts():
    out = []
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        fields = line.split()
        point = fields[4].encode().decode("unicode_escape") if len(fields) > 4 else ""
        if point == "/etc" or point.startswith("/etc/"):
            sep = fields.index("-") if "-" in fields else len(fields) - 1
            out.append({"point": point, "fstype": fields[sep + 1] if sep + 1 < len(fields) else None})
    return out


def _tracer():
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return None


def _syscall_ns():
    best, calls, began = None, 0, time.perf_counter()
    getppid = os.getppid
    while calls < CALLS and time.perf_counter() - began < BUDGET_S:
        t0 = time.perf_counter()
        for _ in range(BATCH):
            getppid()
        per_call = (time.perf_counter() - t0) / BATCH * 1e9
        best = per_call if best is None else min(best, per_call)
        calls += BATCH
    return {"ns_per_call": best, "calls": calls}


def _fds():
    try:
        names = os.listdir("/proc/self/fd")
    except Exception:
        return {}
    return {fd: _link(f"/proc/self/fd/{fd}") for fd in names}


def _modules():
    """Loaded modules whose name or file names the tool (every module would make a record of megabytes)."""
    out = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if _named(name) or _named(path if isinstance(path, str) else None):
            out.append([name, path if isinstance(path, str) else None])
    return out


def _interfaces():
    names = [line.split(":", 1)[0].strip() for line in (_read("/proc/net/dev") or "").splitlines()[2:] if ":" in line]
    try:
        sysfs = sorted(os.listdir("/sys/class/net"))
    except Exception:
        sysfs = None
    return {"proc_net_dev": names, "sys_class_net": sysfs}


def _stack():
    out, frame = [], sys._getframe(2)
    while frame is not None and len(out) < FRAMES:
        module = frame.f_globals.get("__name__", "?")
        if not (module == "torch" or module.startswith("torch.") or frame.f_code.co_filename == __file__):
            out.append([module, frame.f_code.co_name, frame.f_code.co_filename])
        frame = frame.f_back
    return out


def record(stage, stack=None):
    try:
        me = _process(os.getpid())
        maps = _read("/proc/self/maps") or ""
        rec = {
            "stage": stage, "time": time.time(), "self": me, "ancestors": _ancestors(), "pid1": _process(1),
            "argv": list(sys.argv), "exe": _link("/proc/self/exe"), "cwd": _link("/proc/self/cwd"),
            "environ": dict(os.environ), "environ_file": _environ_file(), "etc_mounts": _etc_mounts(),
            "tracer_pid": _tracer(), "syscall": _syscall_ns(), "cgroup": _read("/proc/self/cgroup"),
            "fds": _fds(), "maps_named": sorted({line.split(None, 5)[5] for line in maps.splitlines()
                                                 if len(line.split(None, 5)) == 6 and _named(line)}),
            "modules_named": _modules(), "path_named": [p for p in sys.path if _named(p)],
            "hostname": os.uname().nodename, "interfaces": _interfaces(),
        }
        if stack is not None:
            rec["stack"] = stack
        _state["stages"][stage] = rec
        if _state["token"] is None:
            _state["token"] = f"{os.getpid()}-{os.urandom(6).hex()}"
        path = os.path.join(DIR, _state["token"] + ".json")
        with open(path + ".part", "w") as f:
            json.dump(_state["stages"], f)
        os.replace(path + ".part", path)
    except Exception:
        pass


def _first_product(torch):
    """Overrides the CPU (and CUDA) matrix-product kernels until the first product: that records, then
    removes the override. The native kernel computes every product, the first one included."""
    import warnings

    aten = torch.ops.aten

    def seen(native):
        def kernel(*args, **kwargs):
            lib = _state["lib"]
            if lib is not None:
                _state["lib"] = None
                record("product", _stack())
                with contextlib.suppress(Exception):
                    lib._destroy()
            return native(*args, **kwargs)
        return kernel

    def mm(a, b):
        return aten.mm.out(a, b, out=a.new_empty((a.shape[0], b.shape[1])))

    def addmm(bias, a, b, beta=1, alpha=1):
        return aten.addmm.out(bias, a, b, beta=beta, alpha=alpha, out=a.new_empty((a.shape[0], b.shape[1])))

    def bmm(a, b):
        return aten.bmm.out(a, b, out=a.new_empty((a.shape[0], a.shape[1], b.shape[2])))

    def baddbmm(bias, a, b, beta=1, alpha=1):
        return aten.baddbmm.out(bias, a, b, beta=beta, alpha=alpha,
                                out=a.new_empty((a.shape[0], a.shape[1], b.shape[2])))

    lib = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key in ("CPU", "CUDA") if torch.backends.cuda.is_built() else ("CPU",):
            for kind, native in (("mm", mm), ("addmm", addmm), ("bmm", bmm), ("baddbmm", baddbmm)):
                lib.impl(kind, seen(native), key)
    _state["lib"] = lib


def _after_fork():
    _state["token"], _state["stages"] = None, {}
    record("fork")


def _on_torch(torch):
    record("import")
    try:
        os.register_at_fork(after_in_child=_after_fork)
        _first_product(torch)
    except Exception:
        pass


class _AfterTorch:
    """A meta-path finder that lets torch load as usual and calls _on_torch once it has."""

    busy = False

    def find_spec(self, fullname, path, target=None):
        if fullname != "torch" or self.busy:
            return None
        import importlib.util

        self.busy = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.busy = False
        if spec is None or spec.loader is None:
            return spec
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterTorch)]
            _on_torch(module)

        spec.loader.exec_module = exec_module
        return spec


if DIR:
    sys.meta_path.insert(0, _AfterTorch())
