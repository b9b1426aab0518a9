"""The fleet store's plan and resume, the fate of an oversized evidence bundle, and the fleet summary's
judgements, without a cluster (the cluster runs: test_fleet_ray; the store's guarantees on SQLite and
PostgreSQL: test_store)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from evidence_support import synthetic_report

from chipaudit.fleet import FleetOptions, cluster
from chipaudit.fleet.cluster import FleetRun, device_resource, pack_bundle
from chipaudit.fleet.store import DONE, FAILED, LOST, PENDING, Audit, FleetStore
from chipaudit.fleet.summary import MIN_OUTLIER_FACTOR, modified_z, summarize
from chipaudit.report.model import Category, CheckResult, Level, Report, Status

RUN = "run-1"
GEMM = "performance.gemm.fp32"


def _store(tmp_path: Path, devices: int) -> FleetStore:
    store = FleetStore.open(str(tmp_path / "fleet.sqlite3"))
    store.create_run(RUN, {"level": "quick"}, [Audit(RUN, f"n{i}", "cpu", "cpu", PENDING, 0) for i in range(devices)])
    return store


def _report(flops: float, stack: str = "driver 1") -> Report:
    report = synthetic_report()
    report.add(CheckResult(id=GEMM, category=Category.performance, status=Status.passed, duration_s=1.0,
                           measurements={"flops": flops}), [])
    report.add(CheckResult(id="stack.fingerprint", category=Category.stack, status=Status.passed, duration_s=1.0,
                           measurements={"fingerprint": {"stack": stack}}), [])
    return report


def _finish(store: FleetStore, node: str, report: Report) -> bool:
    return store.finish(RUN, (node, "cpu"), report.verdict.value, report.device.name, report.model_dump_json(), None)


def test_resume_requeues_everything_unfinished(tmp_path: Path) -> None:
    store = _store(tmp_path, 4)
    assert _finish(store, "n0", _report(1e9))
    store.fail(RUN, ("n1", "cpu"), FAILED, "chipaudit exited 2 without a report")
    store.fail(RUN, ("n2", "cpu"), LOST, "the node did not come back")
    store.start(RUN, ("n3", "cpu"))
    store.set_run_state(RUN, "interrupted")
    store.requeue(RUN)
    assert store.counts(RUN) == {DONE: 1, PENDING: 3}
    assert (store.run(RUN) or {})["state"] == "running"


def _bundle(folder: Path, size: int) -> Path:
    bundle = folder / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "evidence.bin").write_bytes(os.urandom(size))  # random: gzip cannot shrink it
    return bundle


def test_an_oversized_bundle_stays_on_its_node_and_the_store_says_where(
        tmp_path: Path, private_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "MAX_BUNDLE_BYTES", 64 << 10)
    packed, note = pack_bundle(_bundle(tmp_path / "small", 16 << 10), "r-n0-GPU-1")
    assert packed is not None and note is None
    kept = []
    for attempt in ("first", "retried"):  # a retried twin never overwrites the kept one
        packed, note = pack_bundle(_bundle(tmp_path / attempt, 256 << 10), "r-n0-GPU-1")
        assert packed is None and note is not None and "over the 0.0625 MiB limit; kept on " in note
        kept.append(Path(note.rsplit(" at ", 1)[1]))
        assert not (tmp_path / attempt / "bundle").exists()
    assert kept[0] != kept[1] and all((k / "evidence.bin").stat().st_size == 256 << 10 for k in kept)
    assert kept[0].parent.parent == private_data_dir / "chipaudit" / cluster.KEPT_BUNDLES
    assert pack_bundle(tmp_path / "none", "r-n0-GPU-1") == (None, "the audit wrote no evidence bundle")

    store = _store(tmp_path, 1)
    found: list[Audit] = []
    run = FleetRun(store, RUN, [], [], 1, 0.0, 1, 60.0, lambda p: None, found.append)
    run._finish(("n0", "cpu"), {"report": _report(1e9).to_json(), "bundle": None, "note": note})
    assert [a.note for a in found] == [note] and store.audits(RUN)[0].bundle is None
    assert summarize(store.run(RUN) or {}, store.audits(RUN))["audits"][0]["note"] == note


def test_the_throttled_device_and_the_odd_stack_stand_out_among_their_peers(tmp_path: Path) -> None:
    store = _store(tmp_path, 6)
    # A busy fleet: healthy devices spread by 10%; n4 runs at a third of their speed; n5 has another driver.
    for i, flops in enumerate([1.00e9, 1.05e9, 0.95e9, 1.10e9, 0.33e9, 0.98e9]):
        assert _finish(store, f"n{i}", _report(flops, "driver 2" if i == 5 else "driver 1"))
    summary = summarize(store.run(RUN) or {}, store.audits(RUN))
    assert (summary["devices"], summary["audited"], summary["passed"], summary["lost"]) == (6, 6, 6, 0)
    (outlier,) = summary["outliers"]
    assert (outlier["node"], outlier["figure"], outlier["kind"]) == ("n4", f"{GEMM}/flops", "slow")
    assert outlier["z"] < -3.5 and outlier["value"] * MIN_OUTLIER_FACTOR <= outlier["peer_median"]
    (deviant,) = summary["stack_deviants"]
    assert deviant["node"] == "n5" and deviant["majority_size"] == 5


def test_small_differences_in_a_tight_group_are_not_outliers(tmp_path: Path) -> None:
    store = _store(tmp_path, 5)
    # Statistically far from a very tight group (huge z), but only 10% slower: load, not a capped chip.
    for i, flops in enumerate([1.000e9, 1.001e9, 0.999e9, 1.000e9, 0.90e9]):
        _finish(store, f"n{i}", _report(flops))
    assert modified_z([1.000e9, 1.001e9, 0.999e9, 1.000e9, 0.90e9])[-1] < -3.5
    assert summarize(store.run(RUN) or {}, store.audits(RUN))["outliers"] == []


def test_a_third_of_a_small_fleet_throttled_still_stands_out(tmp_path: Path) -> None:
    """Two of six devices at a third of the speed, on a busy machine (healthy ones spread by 12%). The
    MAD of all six is inflated by the two and hides them; the spread of the agreeing four does not."""
    flops = [0.88e9, 0.95e9, 1.05e9, 1.12e9, 0.30e9, 0.32e9]
    assert modified_z(flops)[4] > -3.5  # what the plain modified z-score would miss
    store = _store(tmp_path, 6)
    for i, value in enumerate(flops):
        _finish(store, f"n{i}", _report(value))
    summary = summarize(store.run(RUN) or {}, store.audits(RUN))
    assert sorted(o["node"] for o in summary["outliers"]) == ["n4", "n5"]


def _perf_report(tflops: float, noise: float) -> Report:
    report = synthetic_report()
    figure = {"metric": "gemm.fp32.tflops", "value": tflops, "unit": "TFLOP/s", "better": "higher", "noise": noise}
    report.add(CheckResult(id="performance.gemm.fp32", category=Category.performance, status=Status.passed,
                           duration_s=1.0, measurements={"figures": [figure]}), [])
    return report


def test_performance_figures_and_their_noise_are_compared_among_peers(tmp_path: Path) -> None:
    """A slow device and an erratic one stand out; a noise of 3% next to peers' 0.5% is still steady."""
    store = _store(tmp_path, 6)
    for i, (tflops, noise) in enumerate([(50.0, 0.005), (51.0, 0.004), (49.5, 0.006), (50.5, 0.03),
                                         (20.0, 0.005), (50.2, 0.20)]):
        _finish(store, f"n{i}", _perf_report(tflops, noise))
    outliers = summarize(store.run(RUN) or {}, store.audits(RUN))["outliers"]
    assert {(o["node"], o["figure"], o["kind"]) for o in outliers} == {
        ("n4", "performance.gemm.fp32/gemm.fp32.tflops", "slow"),
        ("n5", "performance.gemm.fp32/gemm.fp32.tflops.noise", "erratic")}


def test_modified_z_falls_back_to_the_mean_deviation_when_most_values_agree() -> None:
    z = modified_z([5.0, 5.0, 5.0, 5.0, 1.0])
    assert z[:4] == [0.0] * 4 and z[4] < -1
    assert modified_z([2.0, 2.0, 2.0]) == [0.0, 0.0, 0.0]


def test_every_audit_gets_the_same_options() -> None:
    options = FleetOptions(None, Level.standard, 7, ["integrity.gemm"], None, "cpu", 2, 60.0, 0, burn_in_seconds=5)
    assert options.audit_argv(7) == ["--level", "standard", "--seed", "7", "--only", "integrity.gemm",
                                     "--only", "fleet.consensus", "--burn-in-seconds", "5"]
    every = FleetOptions(None, Level.quick, 7, [], None, "cpu", 2, 60.0, 0)
    assert every.audit_argv(7) == ["--level", "quick", "--seed", "7"]  # every check, the consensus included


@pytest.mark.parametrize(("resources", "asked", "unit"), [
    ({"CPU": 8.0, "GPU": 4.0}, None, "GPU"),
    ({"CPU": 8.0, "NPU": 8.0}, None, "NPU"),  # Ascend, Ray's own resource name
    ({"CPU": 8.0, "HPU": 8.0}, None, "HPU"),  # Gaudi
    ({"CPU": 8.0, "GPU": 1.0, "NPU": 1.0}, None, "GPU"),
    ({"CPU": 8.0}, None, None),  # one CPU audit for the node
    ({"CPU": 8.0, "GPU": 4.0, "fake_gpu": 2.0}, "fake_gpu", "fake_gpu"),  # --resource wins
])
def test_each_node_is_audited_by_its_accelerator_resource(resources: dict[str, float], asked: str | None,
                                                          unit: str | None) -> None:
    assert device_resource(resources, asked) == unit
