"""A new user's path, defaults on both sides: `craft build-cache` with only paths, then stock
`lerobot-train --policy.type=craft` with only the base and the cache. For act and diffusion
(subprocesses): the run trains, anchors features and actions, and starts at L_ret = 0.
ACT's case is tests/policies/test_lerobot_train.py: its world is built with `craft build-cache`
defaults and every run there trains with the cache's defaults (step-1 L_ret = 0 is checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from craft_plugin.cache.manifest import load_manifest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("family", ["diffusion"])  # act: the `world` of tests/policies/test_lerobot_train.py
def test_build_cache_then_lerobot_train_with_defaults(family, tmp_path):
    from support.tiny_classic import make_tiny
    from support.tiny_dataset import make_dataset_for, save_policy

    policy, pre, post = make_tiny(family, seed=0)
    make_dataset_for(policy, tmp_path / "data", episodes=2, frames=6)
    save_policy(policy, pre, post, tmp_path / "base")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}

    build = subprocess.run(
        [str(BIN / "craft"), "build-cache", f"--policy.path={tmp_path / 'base'}", f"--dataset.root={tmp_path / 'data'}",
         "--dataset.repo_id=local/tiny", f"--output-dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    assert "--num-anchors not given: every frame of the dataset is an anchor (12 anchors)" in build.stdout
    m = load_manifest(tmp_path / "cache")
    assert m.num_anchors == 12 and m.anchor_targets == ["features", "actions"]

    train = subprocess.run(
        [str(BIN / "lerobot-train"), "--discover_packages_path=craft_plugin", "--policy.type=craft",
         f"--policy.base_path={tmp_path / 'base'}", f"--policy.craft.anchor_cache_dir={tmp_path / 'cache'}",
         "--policy.push_to_hub=false", "--policy.device=cpu", "--dataset.repo_id=local/tiny",
         f"--dataset.root={tmp_path / 'data'}", f"--output_dir={tmp_path / 'run'}", "--steps=2", "--batch_size=4",
         "--log_freq=1", "--save_freq=2", "--num_workers=0", "--wandb.enable=false", "--seed=1"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    log = train.stdout + train.stderr
    assert train.returncode == 0, log[-3000:]
    assert "anchoring features and actions" in log
    rows = [json.loads(line) for line in (tmp_path / "run" / "craft_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert abs(rows[0]["L_ret"]) < 1e-5 and abs(rows[0]["L_ret_actions"]) < 1e-5
    assert rows[-1]["L_ret"] > 0
    assert (tmp_path / "run" / "checkpoints" / "000002" / "pretrained_model" / "craft_state.json").is_file()


def test_draws_per_anchor_gives_each_frame_several_stored_draws(tmp_path):
    """`--draws-per-anchor 2`: two rows per frame, same frame, different noise and timestep."""
    import torch

    from craft_plugin.cache import AnchorCache
    from craft_plugin.cache.builder import BuildOptions, build_cache
    from support.tiny_classic import make_tiny
    from support.tiny_dataset import make_dataset_for, save_policy

    policy, pre, post = make_tiny("diffusion", seed=0)
    make_dataset_for(policy, tmp_path / "data", episodes=1, frames=8)
    save_policy(policy, pre, post, tmp_path / "base")
    summary = build_cache(
        BuildOptions(
            policy_path=str(tmp_path / "base"), output_dir=str(tmp_path / "cache"), dataset_root=str(tmp_path / "data"),
            dataset_repo_id="local/tiny", num_anchors=3, draws_per_anchor=2, shard_size=4,
        ),
        progress=False,
    )  # fmt: skip
    assert summary.anchors == 6 and not summary.every_frame
    cache = AnchorCache(tmp_path / "cache")
    rows = cache.rows(list(range(6)))
    frames = rows["index"].tolist()
    assert frames[0::2] == frames[1::2] and len(set(frames)) == 3
    noise = rows.draw["noise"]
    assert all((noise[2 * i] - noise[2 * i + 1]).abs().max() > 0.1 for i in range(3))
    assert not torch.equal(rows.action_target[0], rows.action_target[1])
