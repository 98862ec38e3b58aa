"""Stock `lerobot-train` runs of the `craft` wrapper around tiny VLA bases (smolvla, pi0_fast).

The bases are real LeRobot policies built from small configs with random weights and saved as
checkpoints; the anchor caches come from `build_cache` on those checkpoints. smolvla runs in
`hidden` mode with its VLM trainable (`train_expert_only=false`), pi0_fast in `token_ce` mode.
pi0_fast can only be re-built from a tiny checkpoint while the tiny-architecture patch is active,
so its subprocess gets `tests/policies/tiny_paligemma_site` (a `sitecustomize`) on `PYTHONPATH`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from craft_plugin.cache.builder import BuildOptions, build_cache
from support.train_log import parse_steps as _steps

BIN = Path(sys.executable).parent
TESTS = Path(__file__).resolve().parents[1]
FIELDS = ("L_ret", "lambda", "epsilon", "dot", "cos", "conflict", "proj_frac")


def _train(data: Path, out: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(BIN / "lerobot-train"), "--policy.push_to_hub=false", "--policy.device=cpu", "--dataset.repo_id=local/tiny",
        f"--dataset.root={data}", f"--output_dir={out}", "--steps=3", "--batch_size=2", "--log_freq=1",
        "--save_freq=3", "--num_workers=0", "--wandb.enable=false", "--seed=1", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=300)


def _check_run(res: subprocess.CompletedProcess[str], out: Path, mode: str) -> list[dict[str, float]]:
    assert res.returncode == 0, res.stderr[-3000:]
    log = res.stdout + res.stderr
    assert f"CRaFT: enabled=True | mode={mode}" in log
    steps = _steps(log)
    assert [int(s["step"]) for s in steps] == [1, 2, 3]
    for s in steps:
        assert all(f in s for f in FIELDS), s
        assert s["loss"] == s["L_task"]
    rows = [json.loads(line) for line in (out / "craft_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(all(f in r for f in FIELDS) for r in rows)
    assert (out / "checkpoints" / "000003" / "pretrained_model" / "craft_state.json").is_file()
    return rows


def test_smolvla_base_hidden_mode(tmp_path):
    from support import tiny_smolvla
    from support.tiny_dataset import make_dataset_for, save_policy

    vlm = tiny_smolvla.build_tiny_vlm_folder(tmp_path / "vlm")
    policy, pre, post = tiny_smolvla.make_tiny_smolvla(seed=0, vlm_folder=vlm)
    make_dataset_for(policy, tmp_path / "data", episodes=2, frames=8, tasks=("pick up the cube", "push"))
    save_policy(policy, pre, post, tmp_path / "smolvla")
    build_cache(
        BuildOptions(
            policy_path=str(tmp_path / "smolvla"), output_dir=str(tmp_path / "cache"), dataset_root=str(tmp_path / "data"),
            dataset_repo_id="local/tiny", num_anchors=6, batch_size=3, shard_size=6,
        ),
        progress=False,
    )  # fmt: skip
    out = tmp_path / "run"
    res = _train(
        tmp_path / "data", out, {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
        "--discover_packages_path=craft_plugin", "--policy.type=craft", f"--policy.base_path={tmp_path / 'smolvla'}",
        f"--policy.craft.anchor_cache_dir={tmp_path / 'cache'}", "--policy.craft.anchor_batch_size=2",
        "--policy.craft.lambda_lr=0.5",
    )  # fmt: skip
    rows = _check_run(res, out, "hidden")
    assert abs(rows[0]["L_ret"]) < 1e-5, "step 1 from the teacher's own weights: L_ret = 0"
    assert rows[-1]["L_ret"] > 1e-6, "the VLM is trainable: its features drift after two updates"
    base_cfg = json.loads((out / "checkpoints" / "000003" / "pretrained_model" / "base" / "config.json").read_text())
    assert base_cfg["type"] == "smolvla" and base_cfg["train_expert_only"] is False


@pytest.fixture()
def pi0_fast_env(tmp_path):
    from support import tiny_vla

    home = str(tiny_vla.hf_home())
    return {
        "HF_HUB_OFFLINE": "1", "HF_HOME": home, "CRAFT_TINY_HF_HOME": home, "CRAFT_TINY_PALIGEMMA": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).with_name("tiny_paligemma_site")), str(TESTS)]),
    }  # fmt: skip


def test_pi0_fast_base_token_ce_mode(tmp_path, pi0_fast_env):
    from support import tiny_vla
    from support.tiny_dataset import make_dataset, save_policy

    make_dataset(
        tmp_path / "data", episodes=2, frames=8, camera=tiny_vla.CAMERA_KEY,
        image_shape=(3, tiny_vla.IMAGE_SIZE, tiny_vla.IMAGE_SIZE), state_dim=tiny_vla.STATE_DIM,
        action_dim=tiny_vla.ACTION_DIM, tasks=("pick up the cube", "push"),
    )  # fmt: skip
    with tiny_vla.tiny_paligemma_architecture():
        policy, pre, post = tiny_vla.make_tiny_vla("pi0_fast", seed=0)
        save_policy(policy, pre, post, tmp_path / "pi0_fast")
        build_cache(
            BuildOptions(
                policy_path=str(tmp_path / "pi0_fast"), output_dir=str(tmp_path / "cache"),
                dataset_root=str(tmp_path / "data"), dataset_repo_id="local/tiny", num_anchors=6, batch_size=3,
                shard_size=6,
            ),
            progress=False,
        )  # fmt: skip
    out = tmp_path / "run"
    res = _train(
        tmp_path / "data", out, pi0_fast_env,
        "--discover_packages_path=craft_plugin", "--policy.type=craft", f"--policy.base_path={tmp_path / 'pi0_fast'}",
        f"--policy.craft.anchor_cache_dir={tmp_path / 'cache'}", "--policy.craft.anchor_batch_size=2",
        "--policy.craft.retention_mode=token_ce",
    )  # fmt: skip
    rows = _check_run(res, out, "token_ce")
    # token_ce: L_ret is the base's own cross-entropy on cached anchor samples — positive, finite
    assert all(0 < r["L_ret"] < 100 for r in rows)
    base_cfg = json.loads((out / "checkpoints" / "000003" / "pretrained_model" / "base" / "config.json").read_text())
    assert base_cfg["type"] == "pi0_fast"
