"""Fleet audits on Ray: find every accelerator in the cluster, audit each one where it sits, and stream
every result to the store as soon as it exists.

One Ray task per device, pinned to its node (hard node affinity) and holding one unit of the device's
resource (`GPU`, Ray's `NPU` or `HPU`, or a custom resource named with --resource), so that Ray never
puts two audits on one device. CPU-only nodes get one audit each. The task runs the ordinary
`chipaudit run` in a subprocess on that node, so a fleet audit is exactly a local audit.

Retries are the driver's, not Ray's: an audit whose worker or node dies is retried, up to a limit, on the
same device once its node is back; otherwise it is marked `lost` with the reason. Nothing is ever
silently missing: every planned audit ends `done`, `failed` or `lost`.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipaudit.fleet.store import DONE, FAILED, LOST, Audit, FleetStore

# ray.init must answer within this, or the address is reported unreachable (the issue allows 30 s).
CONNECT_TIMEOUT_S = 25.0
# A node label that names a node stably across restarts (`ray start --labels '{"chipaudit-node": "n1"}'`).
NODE_LABEL = "chipaudit-node"
# Largest evidence bundle (packed) streamed back per audit. A bigger one stays on its node, in the data
# folder under KEPT_BUNDLES, and the audit's row in the store notes where (Audit.note).
MAX_BUNDLE_BYTES = 64 << 20
KEPT_BUNDLES = "fleet-bundles"
# The ray.wait poll interval: how quickly progress and dead nodes are noticed.
POLL_S = 0.5
# Ray's own accelerator resources besides GPU (docs.ray.io, "Accelerator Support"), and the torch
# device a task holding one unit sees: Ray sets the vendor's visible-devices variable
# (ASCEND_RT_VISIBLE_DEVICES, HABANA_VISIBLE_MODULES) to the unit it granted, which is then device 0.
VENDOR_RESOURCES = {"NPU": "npu:0", "HPU": "hpu:0"}
# Ray reports usage statistics to its makers unless this is 0 (docs.ray.io, "Usage Stats Collection").
USAGE_STATS_ENV = "RAY_USAGE_STATS_ENABLED"
LOOPBACK = "127.0.0.1"
# Ray's token authentication (docs.ray.io, "Token authentication"): the mode and the token itself.
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")


class FleetProblem(Exception):
    """The cluster cannot be used as asked; the message is one line."""


@dataclass
class Slot:
    """One device of the fleet, as the driver plans it."""

    node: str  # stable node name
    node_id: str  # Ray's id of the node now (changes when a node restarts)
    device_uuid: str
    device: str  # the torch device string inside the task
    resources: dict[str, float] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return self.node, self.device_uuid


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise FleetProblem("fleet audits need Ray: pip install 'chipaudit[fleet]'") from e
    return ray


@contextlib.contextmanager
def session(address: str | None, resource: str | None, device: str) -> Iterator[None]:
    """Join the cluster at `address` ('auto', host:port, ray://...) or, without one, start a Ray instance
    of this machine alone; a started instance is stopped when the block ends, on an error or Ctrl-C too."""
    saved = {k: os.environ.get(k) for k in (USAGE_STATS_ENV, *AUTH_ENV)}
    os.environ[USAGE_STATS_ENV] = "0"  # before Ray starts anything, so that every Ray process inherits it
    try:
        if address:
            _connect(address)
        else:
            _start_local(resource, device)
        yield
    finally:
        with _quiet_stderr():
            _ray().shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _connect(address: str) -> None:
    if address != "auto" and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except (OSError, ValueError) as e:
            raise FleetProblem(f"--address {address}: no Ray cluster answers there ({e})") from e
    _init(f"--address {address}", address=address)


def local_resources(resource: str | None, device: str) -> dict[str, float]:
    """The custom resource whose units are this machine's devices when --resource names one: as many
    units as torch counts devices of --device's type (one CPU). GPUs and Ray's other accelerator
    resources Ray counts by itself."""
    if not resource:
        return {}
    from chipaudit.devices import torchdev

    kind = torchdev.parse(device).type
    if not torchdev.available(kind):
        raise FleetProblem(f"--device {device}: this machine has no {kind} device for a local fleet")
    return {resource: float(torchdev._count(kind))}


def _start_local(resource: str | None, device: str) -> None:
    """A Ray instance of this machine alone, reachable from nowhere else: no dashboard, no usage report,
    and every server bound to loopback.

    Ray turns a node address of 127.0.0.1 into the machine's routable address (services.
    resolve_ip_for_localhost) and then listens there or on every interface; only a node whose address
    is the loopback one listens on loopback alone. So Ray's own lookup of the node address answers
    loopback while the instance starts, and the started node is checked: one that is not on loopback
    is stopped before any work reaches it."""
    # A token of this instance's own, handed to its processes by the environment (Ray's default writes
    # one to ~/.ray/auth_token, which every later `ray start` on this machine would then pick up). Ray
    # reads both when it is first imported, so they are set before, and an imported Ray re-reads them.
    os.environ.update(dict(zip(AUTH_ENV, ("token", secrets.token_hex(32)), strict=True)))
    ray = _ray()
    import ray._private.services as services

    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray older than its token authentication
        pass
    else:
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()

    lookup = services.get_node_ip_address
    services.get_node_ip_address = lambda address=None: LOOPBACK
    try:
        _init("a local Ray instance", address="local", include_dashboard=False, resources=local_resources(
            resource, device), _node_ip_address=LOOPBACK)
    finally:
        services.get_node_ip_address = lookup
    nodes = [n.get("NodeManagerAddress") for n in ray.nodes()]
    if nodes != [LOOPBACK]:
        ray.shutdown()
        raise FleetProblem(f"the local Ray instance came up on {nodes}, not on loopback alone; stopped it")


def _init(what: str, **kw: Any) -> None:
    """ray.init, its failure as one line. Joining a cluster must answer within CONNECT_TIMEOUT_S, so it
    runs on a thread of its own; a local start runs on this thread, since the processes it starts die
    with the thread that started them (Ray sets their parent-death signal, which follows the thread)."""
    ray = _ray()
    outcome: dict[str, BaseException | None] = {}

    def init() -> None:
        try:
            ray.init(log_to_driver=False, logging_level="ERROR", configure_logging=False, **kw)
            outcome["error"] = None
        except BaseException as e:  # handed to the caller's thread below
            outcome["error"] = e

    with _quiet_stderr():  # Ray's own start-up chatter; failures come back as exceptions
        if kw["address"] == "local":
            init()
        else:
            thread = threading.Thread(target=init, daemon=True)
            thread.start()
            thread.join(CONNECT_TIMEOUT_S)
            if thread.is_alive():
                raise FleetProblem(f"{what}: Ray did not answer within {CONNECT_TIMEOUT_S:.0f} s")
    if outcome["error"] is not None:
        message = str(outcome["error"]).strip().splitlines()
        raise FleetProblem(f"{what}: {message[0] if message else outcome['error']!r}")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _node_names(nodes: list[dict[str, Any]]) -> dict[str, str]:
    """Ray node id -> a name that survives restarts: the label, else the host name, made unique."""
    names = {n["NodeID"]: (n.get("Labels") or {}).get(NODE_LABEL) or n.get("NodeManagerHostname") or
             n["NodeManagerAddress"] for n in nodes}
    counts = Counter(names.values())
    return {nid: name if counts[name] == 1 else f"{name}/{nid[:8]}" for nid, name in names.items()}


def alive_nodes() -> dict[str, str]:
    """Stable node name -> current Ray node id, for the nodes alive now."""
    nodes = [n for n in _ray().nodes() if n.get("Alive")]
    return {name: nid for nid, name in _node_names(nodes).items()}


def device_resource(node_resources: dict[str, float], resource: str | None) -> str | None:
    """The resource whose units are a node's devices: the one asked for, else GPU, else the first of
    Ray's other accelerator resources the node has; None for a node without accelerators."""
    if resource:
        return resource
    return next((r for r in ("GPU", *VENDOR_RESOURCES) if node_resources.get(r, 0) >= 1), None)


def discover(resource: str | None, device: str, only: set[str] | None = None) -> list[Slot]:
    """Every device in the cluster (on the nodes named in `only`, when given: asking a node for its GPUs
    waits for all of them to be free). With `resource`, each unit of that custom resource is one device
    (`device` names it inside the task); else GPUs by UUID, else the units of Ray's other accelerator
    resources (VENDOR_RESOURCES), else one CPU audit per node."""
    ray = _ray()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    names = _node_names(nodes)
    slots: list[Slot] = []
    for n in nodes:
        nid, name, res = n["NodeID"], names[n["NodeID"]], n.get("Resources", {})
        if only is not None and name not in only:
            continue
        unit = device_resource(res, resource)
        if unit is None:
            slots.append(Slot(name, nid, "cpu", "cpu", {"CPU": 1}))
        elif unit == "GPU" and not resource:
            uuids = ray.get(_gpu_uuids.options(num_cpus=0, num_gpus=int(res["GPU"]),
                                               scheduling_strategy=_pinned(nid)).remote())
            slots += [Slot(name, nid, uuid, "cuda:0", {"GPU": 1}, {"CUDA_VISIBLE_DEVICES": uuid}) for uuid in uuids]
        else:
            inside = device if resource else VENDOR_RESOURCES[unit]
            slots += [Slot(name, nid, f"{unit}-{i}", inside, {unit: 1}, {"CHIPAUDIT_FLEET_SLOT": str(i)})
                      for i in range(int(res.get(unit, 0)))]
    return slots


def _pinned(node_id: str) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


def _remote(fn: Callable[..., Any]) -> Any:
    """Ray's decorator, applied lazily so that importing this module never needs Ray."""

    class Lazy:
        def options(self, **kw: Any) -> Any:
            return _ray().remote(fn).options(**kw)

    return Lazy()


def _gpu_uuids_impl() -> list[str]:
    import torch

    return [f"GPU-{torch.cuda.get_device_properties(i).uuid}" for i in range(torch.cuda.device_count())]


_gpu_uuids = _remote(_gpu_uuids_impl)


def audit_here(argv: list[str], env: dict[str, str], timeout_s: float, keep_as: str = "audit") -> dict[str, Any]:
    """The Ray task: an ordinary `chipaudit run` on this node; returns its report, its bundle and a note
    when the bundle could not come along (`keep_as` names the folder an oversized one is kept in)."""
    with tempfile.TemporaryDirectory() as tmp:
        report, bundle = Path(tmp) / "report.json", Path(tmp) / "bundle"
        cmd = [sys.executable, "-m", "chipaudit", "run", *argv, "--json", str(report), "--bundle", str(bundle)]
        try:
            p = subprocess.run(cmd, env=audit_env(env), capture_output=True, text=True, timeout=timeout_s)
            code, tail = p.returncode, (p.stderr or p.stdout).strip().splitlines()[-1:]
        except subprocess.TimeoutExpired:
            code, tail = -1, [f"the audit did not finish within {timeout_s:.0f} s"]
        packed, note = pack_bundle(bundle, keep_as)
        return {"exit": code, "report": report.read_text() if report.exists() else None, "bundle": packed,
                "note": note, "message": tail[0] if tail else "", "host": socket.gethostname()}


_audit_here = _remote(audit_here)


def audit_env(slot_env: dict[str, str]) -> dict[str, str]:
    """The audit's environment: the task's, with `device_env`'s changes."""
    from chipaudit.process.child import Wrapper, environment

    return environment([Wrapper(env=device_env(slot_env))])


def device_env(slot_env: dict[str, str]) -> dict[str, str | None]:
    """What the processes that use a device change in this process's environment: the cluster's token
    removed, which the audited stack has no business holding, the fleet's consensus check among the
    checks, and the slot's own variables."""
    from chipaudit.checks import PLUGIN_ENV
    from chipaudit.fleet.consensus import with_this_check

    return {AUTH_ENV[1]: None, PLUGIN_ENV: with_this_check(os.environ.get(PLUGIN_ENV, "")), **slot_env}


def pack_bundle(bundle: Path, keep_as: str) -> tuple[bytes | None, str | None]:
    """The bundle packed to travel to the store, or None and a note saying why not and where it is.

    An oversized bundle is evidence all the same: it is moved out of the task's temporary folder, which
    is deleted, into a folder of its own on this node (never reused, so a retried twin cannot overwrite
    the one the store points at)."""
    if not bundle.is_dir():
        return None, "the audit wrote no evidence bundle"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(bundle, arcname="bundle")
    size = buffer.tell()
    if size <= MAX_BUNDLE_BYTES:
        return buffer.getvalue(), None
    from chipaudit.paths import data_dir

    too_big = f"evidence bundle of {size / 2**20:.1f} MiB packed is over the {MAX_BUNDLE_BYTES / 2**20:g} MiB limit"
    try:
        home = data_dir() / KEPT_BUNDLES
        home.mkdir(parents=True, exist_ok=True)
        kept = Path(tempfile.mkdtemp(prefix=f"{_safe(keep_as)}-", dir=home))
        shutil.move(str(bundle), str(kept / "bundle"))
    except OSError as e:
        return None, f"{too_big}; it could not be kept on {socket.gethostname()} ({e}) and is lost"
    return None, f"{too_big}; kept on {socket.gethostname()} at {kept / 'bundle'}"


def _safe(name: str) -> str:
    """A file name made of the characters every file system accepts."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100]



@dataclass
class Progress:
    counts: Counter[str]
    total: int


class FleetRun:
    """Drive the planned audits of one fleet run to an end, writing each result as it arrives."""

    def __init__(self, store: FleetStore, run_id: str, argv: list[str], slots: list[Slot],
                 max_attempts: int, node_wait_s: float, max_parallel: int, audit_timeout_s: float,
                 on_progress: Callable[[Progress], None], on_result: Callable[[Audit], None]):
        self.store, self.run_id, self.argv = store, run_id, argv
        self.slots = {s.key: s for s in slots}
        self.max_attempts, self.node_wait_s = max_attempts, node_wait_s
        self.max_parallel, self.audit_timeout_s = max_parallel, audit_timeout_s
        self.on_progress, self.on_result = on_progress, on_result

    def execute(self) -> None:
        ray = _ray()
        audits = {a.key: a for a in self.store.audits(self.run_id)}
        attempts = {k: a.attempts for k, a in audits.items()}
        queue = [k for k, a in audits.items() if a.state != DONE]
        waiting: dict[tuple[str, str], tuple[float, str]] = {}  # key -> (deadline, why)
        for key in queue:
            if key not in self.slots:  # its node is not in the cluster now
                waiting[key] = (time.monotonic() + self.node_wait_s, "its node is not in the cluster")
        queue = [k for k in queue if k not in waiting]
        in_flight: dict[Any, tuple[str, str]] = {}
        try:
            while queue or in_flight or waiting:
                while queue and len(in_flight) < self.max_parallel:
                    key = queue.pop(0)
                    in_flight[self._submit(key)] = key
                    attempts[key] += 1
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_S) if in_flight else ([], [])
                for ref in ready:
                    key = in_flight.pop(ref)
                    retry_why = self._collect(ref, key)
                    if retry_why:
                        if attempts[key] < self.max_attempts:
                            waiting[key] = (time.monotonic() + self.node_wait_s, retry_why)
                        else:
                            self._lost(key, f"{retry_why}; gave up after {attempts[key]} attempt(s)")
                if waiting:
                    queue += self._rejoined(waiting)
                if not in_flight and not queue and waiting:
                    time.sleep(POLL_S)
                self._report_progress()
        except BaseException:
            for ref in in_flight:
                ray.cancel(ref, force=True)
            raise

    def _submit(self, key: tuple[str, str]) -> Any:
        slot = self.slots[key]
        self.store.start(self.run_id, key)
        custom = {k: v for k, v in slot.resources.items() if k not in ("CPU", "GPU")}
        return _audit_here.options(
            num_cpus=slot.resources.get("CPU", 0), num_gpus=slot.resources.get("GPU", 0), resources=custom,
            scheduling_strategy=_pinned(slot.node_id), max_retries=0,
        ).remote([*self.argv, "--device", slot.device], slot.env, self.audit_timeout_s,
                 f"{self.run_id}-{slot.node}-{slot.device_uuid}")

    def _collect(self, ref: Any, key: tuple[str, str]) -> str | None:
        """Store the audit's outcome; return why it should be retried, if it should."""
        ray = _ray()
        from ray.exceptions import RayTaskError

        try:
            result = ray.get(ref)
        except RayTaskError as e:  # the task's own code raised: retrying will not help
            self.store.fail(self.run_id, key, FAILED, _last_line(e))
            return None
        except ray.exceptions.RayError as e:  # a worker or node died, or the node is gone
            return f"{type(e).__name__}: {_last_line(e)}"
        if result["report"] is None:
            self.store.fail(self.run_id, key, FAILED,
                            f"chipaudit exited {result['exit']} without a report: {result['message']}")
            return None
        self._finish(key, result)
        return None

    def _finish(self, key: tuple[str, str], result: dict[str, Any]) -> None:
        from chipaudit.report.model import Report

        report = Report.model_validate_json(result["report"])
        if self.store.finish(self.run_id, key, report.verdict.value, report.device.name, result["report"],
                             result["bundle"], result.get("note")):
            self.on_result(self.store.audits(self.run_id, key)[0])

    def _lost(self, key: tuple[str, str], why: str) -> None:
        self.store.fail(self.run_id, key, LOST, why)

    def _rejoined(self, waiting: dict[tuple[str, str], tuple[float, str]]) -> list[tuple[str, str]]:
        """Audits whose node is back (perhaps under a new Ray id); lose those whose wait ran out."""
        alive = alive_nodes()
        back = []
        for key, (deadline, why) in list(waiting.items()):
            node = key[0]
            if node in alive and key in self.slots:
                self.slots[key].node_id = alive[node]
                back.append(key)
                del waiting[key]
            elif time.monotonic() > deadline:
                self._lost(key, f"{why}; the node did not come back within {self.node_wait_s:.0f} s")
                del waiting[key]
        return back

    def _report_progress(self) -> None:
        counts = Counter(self.store.counts(self.run_id))
        self.on_progress(Progress(counts, sum(counts.values())))


def _last_line(e: BaseException) -> str:
    """A Ray error carries the remote traceback: its last line is the exception that ended the task."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(e).__name__
