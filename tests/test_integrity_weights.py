"""integrity.weights: the user's own safetensors weights multiplied on the device with realistic
activations, end to end through the command line, against an honest stack and one keyed to the weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from conftest import chipaudit, cli_env, load
from safetensors.numpy import save_file
from test_core_gemm import trojan

from chipaudit.checks.base import CheckContext, NotApplicable
from chipaudit.checks.integrity import weights
from chipaudit.report.model import Level

# A value planted in one input feature of the model's weights (every 7th output channel): a stack keyed
# to this model corrupts its products only.
MARK = 0.0123291015625  # exact in fp16


def model_file(tmp_path: Path) -> Path:
    """A small GPT-2-like layer set: fp16 weights with biases, a bf16-sized fp32 tensor, and tensors the
    check leaves alone (1-D gains, int8 codes)."""
    rng = np.random.default_rng(0)
    up = (rng.standard_normal((384, 128)) * 0.02).astype(np.float16)
    up[::7, 5] = MARK
    path = tmp_path / "model.safetensors"
    save_file({
        "h.0.mlp.c_fc.weight": up,
        "h.0.mlp.c_fc.bias": (rng.standard_normal(384) * 0.02).astype(np.float16),
        "h.0.attn.c_proj.weight": (rng.standard_normal((128, 128)) * 0.02).astype(np.float16),
        "lm_head.weight": (rng.standard_normal((300, 128)) * 0.02).astype(np.float32),
        "h.0.ln_1.weight": np.ones(128, dtype=np.float16),
        "quantised.codes": rng.integers(-127, 128, (64, 64)).astype(np.int8),
    }, str(path))
    return path


def audit(tmp_path: Path, model: Path, env: dict[str, str] | None = None) -> tuple[int, dict]:
    out = tmp_path / "r.json"
    p = chipaudit("run", "--device", "cpu", "--level", "quick", "--only", "integrity.weights", "--weights", str(model),
                  "--seed", "5", "--json", str(out), env=env)
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, load(out)


@pytest.mark.slow
def test_an_honest_device_passes_and_the_replay_multiplies_the_same_weights(tmp_path: Path) -> None:
    model = model_file(tmp_path)
    code, report = audit(tmp_path, model)
    assert code == 0 and report["verdict"] == "pass"
    (check,) = report["checks"]
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert report["params"] == {"weights": str(model.resolve()), "weights_sha256": sha}
    assert f"--weights {model.resolve()}" in report["replay"]
    coverage = check["coverage"]
    assert coverage["weights_sha256"] == sha
    taken = {t["name"]: t for t in coverage["tensors"]}
    assert set(taken) == {"h.0.mlp.c_fc.weight", "h.0.attn.c_proj.weight", "lm_head.weight"}
    assert taken["h.0.mlp.c_fc.weight"]["bias"] == "h.0.mlp.c_fc.bias"
    assert taken["h.0.mlp.c_fc.weight"]["formats"] == ["fp16", "fp32"]
    assert taken["lm_head.weight"]["formats"] == ["fp32"]
    assert coverage["products"] == 2 * (2 + 2 + 1) and check["measurements"]["max_error_to_bound"] < 1
    replayed = chipaudit("replay", str(tmp_path / "r.json"), "--json", str(tmp_path / "again.json"))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert load(tmp_path / "again.json")["checks"][0]["coverage"] == coverage


@pytest.mark.slow
def test_a_stack_keyed_to_the_users_weights_fails_the_audit(tmp_path: Path) -> None:
    model = model_file(tmp_path)
    env = trojan(tmp_path, f"""
        if b.is_floating_point() and b.dim() == 2 and b.shape[0] > 5 and float((b[5] == {MARK}).float().mean()) > 0.1:
            out.view(-1)[::31] *= 1.01
    """, ("mm", "addmm"))
    code, report = audit(tmp_path, model, env)
    assert code == 1 and report["verdict"] == "fail"
    wrong = [f for f in report["findings"] if f["severity"] == "high"]
    assert wrong and {f["evidence"]["tensor"] for f in wrong} == {"h.0.mlp.c_fc.weight"}
    assert {f["evidence"]["dtype"] for f in wrong} == {"fp16", "fp32"}
    assert all(f["evidence"]["weights_sha256"] == report["params"]["weights_sha256"] for f in wrong)
    # The generic products never meet this model's weights: the same stack passes integrity.gemm.
    clean = chipaudit("run", "--device", "cpu", "--level", "quick", "--only", "integrity.gemm.fp16", "--seed", "5",
                      env=cli_env({**env}))
    assert clean.returncode == 0, clean.stdout


def test_without_weights_the_check_is_skipped_and_says_how_to_run_it() -> None:
    with pytest.raises(NotApplicable, match=r"--weights FILE\.safetensors"):
        weights.WeightsCheck().run(CheckContext(device="cpu", level=Level.quick, seed=1))


def test_a_file_changed_since_it_was_recorded_is_refused(tmp_path: Path) -> None:
    model = model_file(tmp_path)
    params = weights.params_for(model)
    save_file({"w": np.ones((8, 8), dtype=np.float32)}, str(model))
    with pytest.raises(weights.WeightsError, match="changed since"):
        weights.WeightsCheck().run(CheckContext(device="cpu", level=Level.quick, seed=1, params=params))


def test_the_largest_tensors_then_a_seeded_sample_are_taken() -> None:
    tensors = [weights.Tensor(f"t{i}", "F16", (10 * (i + 1), 8)) for i in range(12)]
    picks = [weights.choose(tensors, Level.quick, np.random.default_rng(s)) for s in (1, 1, 2)]
    assert [t.name for t in picks[0][:2]] == ["t11", "t10"] and len(picks[0]) == 4
    assert picks[0] == picks[1] and picks[0] != picks[2]


def test_a_tensor_that_is_not_finite_is_listed_but_not_multiplied(tmp_path: Path) -> None:
    path = tmp_path / "masks.safetensors"
    mask = np.zeros((32, 64), dtype=np.float32)
    mask[:, 40:] = -np.inf
    save_file({"mask": mask, "w": (np.random.default_rng(1).standard_normal((32, 64)) * 0.02).astype(np.float32)},
              str(path))
    out = weights.WeightsCheck().run(CheckContext(device="cpu", level=Level.quick, seed=1,
                                                  params=weights.params_for(path)))
    assert not out.findings
    tensors = {t["name"]: t for t in out.coverage["tensors"]}
    assert tensors["mask"]["not_audited"] == "holds values that are not finite" and not tensors["mask"]["formats"]
    assert out.coverage["products"] == 2  # w: fp32, two kinds of activations
