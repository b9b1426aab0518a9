"""benchmarks/world_tells.py's rules on real processes: its two references must show no tell (else
the rules would blame what production shows too), and a process in a network namespace of its own,
with the tool's name in its command line, must show both tells."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "world_tells.py"

pytestmark = pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None,
                                reason="needs unshare and ip (util-linux, iproute2)")


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("world_tells", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["world_tells"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> Iterator[tuple[ModuleType, Path, dict[str, str], Any, Any]]:
    wt = _load()
    folder = Path(tempfile.mkdtemp(prefix="world-tells-test-", dir="/dev"))
    try:
        env = wt.launch_env(folder / "unused")
        plain = wt.record_one(wt.plain_command(), folder / "plain", env)
        yield wt, folder, env, plain, wt.make_reference(plain, env)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_references_show_no_tell(bench: tuple[ModuleType, Path, dict[str, str], Any, Any]) -> None:
    wt, folder, env, plain, ref = bench
    container = wt.record_one(wt.container_command(), folder / "container", env)
    assert set(plain) == {"import", "product"}  # both moments were recorded
    assert container["import"]["self"]["ns"]["net"] != plain["import"]["self"]["ns"]["net"]
    assert wt.judge(plain, ref, env).tells == {}
    assert wt.judge(container, ref, env).tells == {}


def test_own_network_namespace_and_name_are_tells(bench: tuple[ModuleType, Path, dict[str, str], Any, Any]) -> None:
    wt, folder, env, _plain, ref = bench
    argv = ["unshare", "--net", "--", sys.executable, "-c", wt.PROBE, "--run-by", "ChipAudit"]
    judged = wt.judge(wt.record_one(argv, folder / "told", env), ref, env)
    assert set(judged.tells) == {"namespaces", "name"}, judged.tells
    assert any(e.startswith("net: ") for e in judged.tells["namespaces"])
    assert any(e.startswith("command line: ") and "ChipAudit" in e for e in judged.tells["name"])


def test_a_device_process_started_as_the_audit_starts_one_shows_no_tell(
        bench: tuple[ModuleType, Path, dict[str, str], Any, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The stack probe (a tool module that computes on the device), started through the harness in the
    audit's world, with the tool's settings in the environment it would inherit."""
    from chipaudit.devices.probe import READY
    from chipaudit.process.child import Child
    from chipaudit.sensors.watch import Watch

    wt, folder, env, plain, _ref = bench
    out = folder / "audit"
    settings = {"WORLD_TELLS_DIR": str(out), "CHIPAUDIT_BEHAVIOUR_ALLOWLIST": str(tmp_path / "allow.json")}
    for key, value in {**env, **settings}.items():
        monkeypatch.setenv(key, value)
    out.mkdir()
    with Watch(tmp_path / "watch", syscalls=False) as watch, \
            Child((sys.executable, "-m", "chipaudit.devices.probe"), [watch.wrapper("probe")]) as child:
        assert child.send({"device": "cpu"})
        answer = child.receive(120)
        assert answer is not None and answer["status"] == READY, child.last_line(400)
        assert answer["pid"] == 2  # the child of its container's shell, PID 1
    records = wt.read_records(out)
    assert len(records) == 1 and set(records[0]) >= {"import", "product"}
    # Judged against the environment it was started from, less the tool's setting: had that reached the
    # process, it would be a tell.
    launched = {k: v for k, v in os.environ.items() if not k.startswith("CHIPAUDIT_")}
    judged = wt.judge(records[0], wt.make_reference(plain, launched), launched)
    assert judged.tells == {}, judged.tells
