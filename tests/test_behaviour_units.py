"""The pieces of the behaviour probes that need no workload: worlds and whether they took effect,
disguised shapes, the allow-list, and throttle explanations from recorded NVML answers (this machine
has no GPU: tests/fixtures/vendor holds a recorded H100)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import pytest

from chipaudit.checks.behaviour import allowlist
from chipaudit.checks.behaviour.disguise import ALIGN, padded, random_data, split
from chipaudit.checks.behaviour.drift import _explanations
from chipaudit.checks.behaviour.workload import Task, TaskSpec
from chipaudit.devices.vendor_reads import ReplayReader
from chipaudit.perturb import conditions
from chipaudit.perturb.place import Place
from chipaudit.sensors.telemetry import Reading, Telemetry

H100 = Path(__file__).parent / "fixtures" / "vendor" / "nvml_h100_sxm5.json"


def hello(**over: object) -> dict[str, object]:
    base: dict[str, object] = {"time": time.time(), "gmtoff": 0, "interfaces": ["lo"], "locale_installed": True,
                               "system": Place().expected()}
    return {**base, **over}


def test_a_shifted_clock_counts_only_when_the_workload_sees_it() -> None:
    now = time.time()
    world = conditions.clock(730, "+2 years")
    assert conditions.applied(world, hello(time=now + 730 * 86400 + 5), now, now + 10)[0] == ""
    reason, notes = conditions.applied(world, hello(time=now + 5), now, now + 10)
    assert "not the shifted date" in reason
    assert any("system call" in n for n in notes) and any("file times" in n for n in notes)  # libfaketime's reach


def test_a_time_zone_counts_only_when_the_offset_moved() -> None:
    world = conditions.location("China", "Asia/Shanghai", "zh_CN.UTF-8")
    assert conditions.applied(world, hello(gmtoff=8 * 3600), 0, 0)[0] == ""
    assert "offset" in conditions.applied(world, hello(gmtoff=0), 0, 0)[0]
    reason, notes = conditions.applied(world, hello(gmtoff=8 * 3600, locale_installed=False), 0, 0)
    assert reason == "" and any("not installed" in n for n in notes)
    assert any("public IP address" in n for n in notes)  # the signals no world changes are named


def test_a_sealed_world_must_have_no_route_off_loopback() -> None:
    assert conditions.applied(conditions.sealed(), hello(routes=[], interfaces=["eth0", "lo"]), 0, 0)[0] == ""
    assert "eth0 0.0.0.0/0" in conditions.applied(conditions.sealed(), hello(routes=["eth0 0.0.0.0/0"]), 0, 0)[0]
    assert "could not read" in conditions.applied(conditions.sealed(), hello(), 0, 0)[0]


def test_worlds_change_the_workload_only_and_start_from_neutral() -> None:
    env = conditions.location("China", "Asia/Shanghai", "zh_CN.UTF-8").workload_env(0)
    assert env["TZ"] == "Asia/Shanghai" and env["LC_ALL"] == env["LC_MESSAGES"] == "zh_CN.UTF-8"
    assert env["LANGUAGE"] == "zh_CN:zh"
    ref = conditions.reference().workload_env(0)
    assert ref["TZ"] is None and ref["LANG"] == "C.UTF-8" and ref["LC_ALL"] is None and ref["LANGUAGE"] is None
    # The reference's zone is UTC as a machine's is, from its /etc/localtime: a TZ variable would be a tell.
    localtime = next(f for f in conditions.reference().isolation().etc if f.path == "localtime")
    assert (localtime.link or localtime.copy_of or "").endswith("UTC")
    if conditions.faketime_library():
        shifted = conditions.clock(10, "+10 days").workload_env(1000.0)
        assert shifted["FAKETIME"] == f"@{1000 + 10 * 86400}" and "libfaketime" in str(shifted["LD_PRELOAD"])


@pytest.mark.parametrize("spec", [TaskSpec("llama", "linear", 4, 16, 4096, 4096),
                                  TaskSpec("resnet", "mm", 1, 3136, 576, 64),
                                  TaskSpec("vit", "bmm", 12, 197, 64, 197)])
def test_disguised_shapes_are_other_shapes_with_the_same_numbers(spec: TaskSpec) -> None:
    for form in (padded(spec), split(spec)):
        shapes = form.shapes
        assert all(s[2] != spec.k and s[3] not in (spec.n, spec.k) for s in shapes), shapes
        assert all(s[2] % ALIGN == spec.k % ALIGN for s in shapes)
        assert 1.0 < form.macs / spec.macs < 1.6  # small dimensions still get a whole aligned block


def test_a_padded_product_computes_the_same_numbers() -> None:
    spec = TaskSpec("small", "linear", 2, 8, 48, 40, seed=4)
    plain, disguised = Task(spec, "cpu"), Task(split(spec), "cpu")
    assert plain.verify()["ok"] and disguised.verify()["ok"]
    a = plain.compute().numpy()
    b = disguised.compute().numpy()
    assert np.array_equal(a, b[..., : spec.n]) and not b[..., spec.n:].any()


def test_the_data_pair_is_the_same_product_with_random_operands() -> None:
    spec = TaskSpec("llama", "linear", 2, 8, 512, 64, dist="llm_outliers", seed=3)
    other = random_data(spec)
    assert other.shapes == spec.shapes and other.dist == "normal" and other.label == "llama, random data"
    real, rand = Task(spec, "cpu"), Task(other, "cpu")
    assert real.verify()["ok"] and rand.verify()["ok"]
    columns = [np.abs(t.ops.a).max(axis=(0, 1)) for t in (real, rand)]
    outliers = [int((c > 10 * np.median(c)).sum()) for c in columns]
    assert outliers[0] >= 1 and outliers[1] == 0  # the model's side has its outlier channels


def test_the_allowlist_extends_from_a_file_and_a_bad_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "allow.json"
    path.write_text(json.dumps({"file_writes": ["/var/cache/vendor/*"], "programs": ["/usr/sbin/ldconfig*"],
                                "local_sockets": ["/run/vendor/*.sock"]}))
    allow = allowlist.load({allowlist.PARAM: str(path)})
    assert allow.file_allowed("/var/cache/vendor/kernels.bin") and allow.program_allowed("/usr/sbin/ldconfig.real")
    assert allow.local_socket_allowed("/run/vendor/ipc.sock") and allow.local_socket_allowed("@cuda-uvmfd-1-2@")
    assert not allow.local_socket_allowed("/run/other.sock")
    assert not allow.file_allowed("/var/tmp/leak") and str(path) in allow.source
    with pytest.raises(allowlist.AllowlistError, match="cannot be read"):
        allowlist.load({allowlist.PARAM: str(tmp_path / "missing.json")})


def recorded(reasons: int, clock_mhz: int) -> ReplayReader:
    """The recorded idle H100, as it would answer under load with the given clock-event reasons."""
    recording = json.loads(H100.read_text())
    device = copy.deepcopy(recording["devices"][0])
    device["nvmlDeviceGetCurrentClocksEventReasons"] = reasons
    device["nvmlDeviceGetClockInfo(NVML_CLOCK_SM)"] = clock_mhz
    recording["devices"] = [device]
    return ReplayReader(recording)


def test_nvml_readings_come_from_the_recorded_device() -> None:
    idle = Telemetry("cuda:0", lambda: [], reader=ReplayReader(json.loads(H100.read_text()))).read()
    assert idle.reasons == ["gpu_idle"] and idle.clock_mhz == 345 and idle.temperature_c is None
    hot = Telemetry("cuda:0", lambda: [], reader=recorded(0x40 | 0x20, 1100)).read()
    assert hot.reasons == ["sw_thermal_slowdown", "hw_thermal_slowdown"]


def test_a_slowdown_is_explained_by_throttle_reasons_clocks_or_other_tenants() -> None:
    cool = Telemetry("cuda:0", lambda: [], reader=recorded(0, 1980))
    hot = Telemetry("cuda:0", lambda: [], reader=recorded(0x40, 990))
    readings = [cool.read(), cool.read(), hot.read(), hot.read()]
    for i, r in enumerate(readings):
        r.t = float(i)
    found = _explanations(readings, (0.0, 1.0), (2.0, 3.0), ratio=2.0)
    assert any("hw_thermal_slowdown" in e for e in found) and any("clock fell 2.00x" in e for e in found)
    busy = [Reading(0.0, foreign_cores=0.1), Reading(1.0, foreign_cores=0.1), Reading(2.0, foreign_cores=1.2),
            Reading(3.0, foreign_cores=1.3)]
    assert any("other processes" in e for e in _explanations(busy, (0.0, 1.0), (2.0, 3.0), ratio=1.8))
    steady = [Reading(float(i), clock_mhz=1980, foreign_cores=0.2) for i in range(4)]
    assert _explanations(steady, (0.0, 1.0), (2.0, 3.0), ratio=1.8) == []
