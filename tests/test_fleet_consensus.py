"""Fleet consensus, the judgement: per model and product, the majority's digest where the model's devices
are deterministic, sampled blocks within the error bound where they are not (fleet/consensus.py). The
real thing, a planted difference on a local Ray cluster, is in test_fleet_local.py."""

from __future__ import annotations

import os
from typing import Any

from chipaudit.checks import PLUGIN_ENV
from chipaudit.fleet.cluster import AUTH_ENV, audit_env
from chipaudit.fleet.consensus import MODULE, compare

BOUND = [1e-3] * 4


def device(first: str, second: str | None = None, values: list[float] | None = None, **extra: Any) -> dict[str, Any]:
    product = {"digests": [first, second or first], "block": {"values": values or [1.0] * 4, "bound": BOUND},
               "seeded_ratio": 0.1, "secret_ratio": 0.1, **extra}
    return {"declared_deterministic": False, "products": {"fp32": product}}


def test_a_device_unlike_its_deterministic_models_majority_is_the_one_flagged() -> None:
    got = compare([("n/0", device("aa")), ("n/1", device("aa")), ("n/2", device("bb")), ("n/3", device("aa"))])
    (row,) = got["products"]
    assert row["deterministic"] and row["majority_size"] == 3 and "4 of 4" in row["established"]
    assert [d["device"] for d in got["deviants"]] == ["n/2"]


def test_a_device_that_cannot_repeat_itself_among_repeatable_peers_is_flagged() -> None:
    got = compare([("n/0", device("aa")), ("n/1", device("aa", "cc")), ("n/2", device("aa"))])
    assert got["products"][0]["deterministic"] and [d["device"] for d in got["deviants"]] == ["n/1"]


def test_a_device_without_the_product_its_majority_computed_is_flagged() -> None:
    refused = {"declared_deterministic": False, "products": {"fp32": {"refused": "RuntimeError: disabled"}}}
    got = compare([("n/0", device("aa")), ("n/1", device("aa")), ("n/2", refused)])
    assert [d["device"] for d in got["deviants"]] == ["n/2"] and "disabled" in got["deviants"][0]["why"][0]


def test_where_repeats_differ_blocks_are_compared_within_twice_the_bound() -> None:
    near = [1.0 + 5e-4, 1.0, 1.0, 1.0]  # within twice the bound of the median: honest
    far = [1.0, 1.0, 1.0 + 5e-3, 1.0]
    got = compare([("n/0", device("a1", "a2")), ("n/1", device("b1", "b2", near)), ("n/2", device("c1", "c2")),
                   ("n/3", device("d1", "d2", far))])
    (row,) = got["products"]
    assert not row["deterministic"] and "compared on sampled blocks" in row["established"]
    assert [d["device"] for d in got["deviants"]] == ["n/3"]
    outside = compare([("n/0", device("a1", "a2")), ("n/1", device("b1", "b2", seeded_ratio=3.0)),
                       ("n/2", device("c1", "c2"))])
    assert [d["device"] for d in outside["deviants"]] == ["n/1"]


def test_two_devices_are_compared_but_never_judged() -> None:
    got = compare([("n/0", device("aa")), ("n/1", device("bb"))])
    assert got["deviants"] == [] and got["products"][0]["judged"].startswith("not judged")


def test_an_audit_gets_the_consensus_check_and_never_the_clusters_token(monkeypatch) -> None:
    monkeypatch.setenv(AUTH_ENV[1], "secret")
    monkeypatch.setenv(PLUGIN_ENV, "site.checks")
    env = audit_env({"CHIPAUDIT_FLEET_SLOT": "1"})
    assert AUTH_ENV[1] not in env and env["CHIPAUDIT_FLEET_SLOT"] == "1"
    assert env[PLUGIN_ENV] == f"site.checks,{MODULE}" and os.environ[AUTH_ENV[1]] == "secret"
