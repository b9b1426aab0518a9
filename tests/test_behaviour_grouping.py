"""Sensor findings are grouped by cause: a reader gets one finding per thing to look at, with every
instance in its evidence, and the severities (hence the verdict and exit code) stay those of the
instances."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from behaviour_support import install, run

from chipaudit.checks.behaviour.allowlist import Allowlist
from chipaudit.checks.behaviour.findings import MAX_INSTANCES, sensor_findings
from chipaudit.checks.behaviour.sidechannel import SideChannelProbe
from chipaudit.report.model import Finding, Severity
from chipaudit.sensors.events import FILE, NETWORK, Event, Observation


def found(observations: dict[str, Observation], allow: Allowlist | None = None) -> list[Finding]:
    return sensor_findings(SideChannelProbe(), observations, allow or Allowlist())


def writes(folder: str, n: int, pid: int = 7) -> list[Event]:
    return [Event("strace", FILE, "openat", f"{folder}/blob-{i:03d}", pid, 1000.0 + i) for i in range(n)]


def test_145_files_in_one_hidden_folder_are_one_finding_listing_them() -> None:
    out = found({"reference": Observation(writes("/var/tmp/.cache-x", 145))})
    assert len(out) == 1
    f = out[0]
    assert f.severity is Severity.high
    assert "/var/tmp/.cache-x/*" in f.title and "145 instances" in f.detail
    assert f.evidence["target"] == "/var/tmp/.cache-x/blob-000"  # the first instance leads
    assert f.evidence["instance_count"] == 145
    assert f.evidence["instances"] == [f"/var/tmp/.cache-x/blob-{i:03d}" for i in range(MAX_INSTANCES)]


def test_two_folders_are_two_findings() -> None:
    out = found({"reference": Observation(writes("/var/tmp/.a", 5) + writes("/home/u/.b", 3))})
    assert sorted((f.evidence["cause"], f.evidence["instance_count"]) for f in out) == [
        ("/home/u/.b/*", 3), ("/var/tmp/.a/*", 5)]


def test_one_file_keeps_its_own_name_in_the_title() -> None:
    (f,) = found({"reference": Observation(writes("/var/tmp", 1))})
    assert f.title.endswith("/var/tmp/blob-000 (openat)") and f.evidence["instance_count"] == 1


def test_the_drivers_socket_from_several_processes_is_one_info_finding() -> None:
    def uvm(pid: int) -> Event:
        return Event("sockets", NETWORK, "open socket", f"AF_UNIX @cuda-uvmfd-4026531836-{pid}@", pid,
                     family="AF_UNIX")
    out = found({"reference": Observation([uvm(101), uvm(102)]), "clock +2 years": Observation([uvm(203)]),
                 "sealed": Observation([uvm(304)])})
    assert len(out) == 1
    f = out[0]
    assert f.severity is Severity.info and f.evidence["instance_count"] == 4
    assert f.evidence["cause"] == "AF_UNIX @cuda-uvmfd-*" and "@cuda-uvmfd-*" in f.title
    assert f.evidence["pids"] == [101, 102, 203, 304]
    assert f.evidence["worlds"] == ["clock +2 years", "reference", "sealed"]


def test_unlisted_sockets_group_by_their_name_with_numbers_masked() -> None:
    events = [Event("sockets", NETWORK, "open socket", f"AF_UNIX @vendor-ipc-{pid}", pid, family="AF_UNIX")
              for pid in (5, 6)]
    (f,) = found({"reference": Observation(events)})
    assert f.severity is Severity.high and f.evidence["cause"] == "AF_UNIX @vendor-ipc-*"


def test_a_host_reached_on_several_ports_is_one_finding_and_hosts_stay_apart() -> None:
    events = [Event("strace", NETWORK, "connect", t, family="AF_INET")
              for t in ("AF_INET 203.0.113.9:443", "AF_INET 203.0.113.9:80", "AF_INET 198.51.100.1:443")]
    out = {f.evidence["cause"]: f for f in found({"reference": Observation(events)})}
    assert set(out) == {"AF_INET 203.0.113.9:*", "AF_INET 198.51.100.1:*"}
    assert all(f.severity is Severity.critical for f in out.values())
    assert out["AF_INET 203.0.113.9:*"].evidence["instance_count"] == 2


def test_grouping_never_folds_a_worse_instance_into_a_milder_one() -> None:
    """An operator's allow-list may admit part of a folder: the rest is still high, on its own."""
    allow = Allowlist()
    allow.file_writes.append("/var/tmp/.mixed/ok-*")
    events = [Event("strace", FILE, "openat", p) for p in
              ("/var/tmp/.mixed/ok-1", "/var/tmp/.mixed/ok-2", "/var/tmp/.mixed/bad-1", "/var/tmp/.mixed/bad-2")]
    out = {f.severity: f for f in found({"reference": Observation(events)}, allow)}
    assert set(out) == {Severity.info, Severity.high}
    assert out[Severity.info].evidence["cause"] == "/var/tmp/.mixed/ok-*"
    assert out[Severity.high].evidence["instances"] == ["/var/tmp/.mixed/bad-1", "/var/tmp/.mixed/bad-2"]


def test_allowed_cache_writes_group_under_their_allowlist_entry_across_subfolders() -> None:
    home = os.path.expanduser("~/.nv/ComputeCache")
    events = [Event("strace", FILE, "openat", p) for p in (f"{home}/index", f"{home}/0/1/abc", f"{home}/2/3/def")]
    (f,) = found({"reference": Observation(events)})
    assert f.severity is Severity.info and f.evidence["cause"] == "~/.nv/ComputeCache/*"


def test_grouping_keeps_every_severity_the_instances_had() -> None:
    """The verdict and exit code follow from the severities present; grouping must keep them all."""
    from chipaudit.checks.behaviour.findings import _groups, _judge

    events = [*writes("/var/tmp/.h", 30), *writes(os.path.expanduser("~/.triton/cache"), 4),
              Event("strace", NETWORK, "connect", "AF_INET 203.0.113.9:443", family="AF_INET"),
              Event("strace", NETWORK, "connect", "AF_INET 127.0.0.1:80", family="AF_INET"),
              Event("strace", NETWORK, "socket", "AF_NETLINK", family="AF_NETLINK"),
              *(Event("sockets", NETWORK, "open socket", f"AF_UNIX @cuda-uvmfd-1-{p}@", p, family="AF_UNIX")
                for p in range(8))]
    observations = {"reference": Observation(events)}
    per_target = {_judge(g, Allowlist())[0] for g in _groups(observations)}
    grouped = found(observations)
    assert {f.severity for f in grouped} == per_target
    assert sum(f.evidence["instance_count"] for f in grouped) == len(_groups(observations))


HIDDEN_FOLDER = """\
if not STATE["fired"]:
    STATE["fired"] = True
    hidden = os.path.join(os.environ["LEAK_DIR"], ".device-cache")
    os.makedirs(hidden, exist_ok=True)
    for i in range(145):
        with open(os.path.join(hidden, f"chunk-{i:03d}"), "w") as f:
            f.write(str(out.shape))"""


@pytest.mark.slow
def test_a_workload_writing_145_files_into_a_hidden_folder_gives_one_finding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: real workload processes under strace and the socket sampler."""
    install(tmp_path, monkeypatch, "return True", HIDDEN_FOLDER)
    monkeypatch.setenv("LEAK_DIR", str(tmp_path))
    outcome = run("behaviour.sidechannel")
    hidden = str(tmp_path / ".device-cache")
    files = [f for f in outcome.findings if f.evidence.get("event") == FILE and hidden in f.evidence["target"]]
    assert len(files) == 1, [f.title for f in files]
    (f,) = files
    assert f.severity is Severity.high and f.evidence["cause"] == f"{hidden}/*"
    assert f.evidence["instance_count"] == 146  # the folder and its 145 files
    assert len(f.evidence["instances"]) == MAX_INSTANCES


def test_packets_on_the_wire_stay_apart_from_system_calls_to_the_same_host() -> None:
    events = [Event("strace", NETWORK, "connect", "AF_INET 203.0.113.9:443", family="AF_INET"),
              Event("capture", NETWORK, "packet", "AF_INET 203.0.113.9:53", family="AF_INET")]
    out = found({"sealed": Observation(events)})
    assert sorted(f.title.split(" ")[0] for f in out) == ["packets", "the"]


def test_a_socket_sampled_before_its_address_folds_into_the_same_process_s_beacon() -> None:
    """The sampler saw the beacon's socket while no table listed it yet; the same process's connection with a
    destination is the one finding. Another process's unreadable socket stays a finding of its own."""
    beacon = Event("ebpf", NETWORK, "connect", "AF_INET 198.51.100.7:443", 7, 1.0, family="AF_INET")
    early = Event("sockets", NETWORK, "open socket", "socket [4242] (address not readable)", 7, 0.5)
    (f,) = found({"reference": Observation([early, beacon])})
    assert f.evidence["target"] == "AF_INET 198.51.100.7:443" and f.severity is Severity.critical
    stranger = Event("sockets", NETWORK, "open socket", "socket [77] (address not readable)", 8, 0.5)
    out = found({"reference": Observation([beacon, stranger])})
    assert sorted(f.evidence["cause"] for f in out)[-1] == "socket (address not readable)" and len(out) == 2
