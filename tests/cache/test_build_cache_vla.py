"""`build_cache` end to end with a VLA teacher (tiny pi05 and smolvla saved as checkpoints):
the preprocessor tokenizes the dataset's task strings, images are stored as uint8, and the
student recomputes the cached features from the stored inputs."""

from __future__ import annotations

import torch

from craft_plugin.cache import AnchorCache
from craft_plugin.cache.builder import BuildOptions, build_cache
from craft_plugin.taps import make_tap
from support.policy_cache import preprocessed_rows


def _check_invariant(policy, pre, out):
    """Raw frames stored (uint8 images, task strings by index); the student's preprocessor
    tokenizes them again and recomputes the cached features and action targets."""
    cache = AnchorCache(out)
    spec = cache.manifest.input_keys
    images = [k for k in spec if k.startswith("observation.images") and spec[k]["dtype"].startswith("float")]
    assert images and all(spec[k]["encoding"] == "uint8/255" for k in images)
    assert not [k for k in spec if "tokens" in k], "raw frames, not the teacher's tokenized batch"
    assert sorted(cache.manifest.tasks) == ["pick up the cube", "push"]
    batch, inputs = preprocessed_rows(cache, pre)
    with make_tap(policy.eval()) as tap, torch.no_grad():
        feats = tap.features(inputs, cache.manifest.layers_requested, cache.pooling)
        actions = tap.action_output(inputs, batch.draw)
    torch.testing.assert_close(feats, batch.features, atol=1e-5, rtol=0)
    torch.testing.assert_close(actions, batch.action_target, atol=1e-5, rtol=0)
    return cache


def test_pi05_teacher(tmp_path):
    from support import tiny_vla
    from support.tiny_dataset import make_dataset, save_policy

    make_dataset(
        tmp_path / "data", episodes=2, frames=6, camera=tiny_vla.CAMERA_KEY,
        image_shape=(3, tiny_vla.IMAGE_SIZE, tiny_vla.IMAGE_SIZE), state_dim=tiny_vla.STATE_DIM,
        action_dim=tiny_vla.ACTION_DIM, tasks=("pick up the cube", "push"),
    )  # fmt: skip
    with tiny_vla.tiny_paligemma_architecture():
        policy, pre, post = tiny_vla.make_tiny_vla("pi05", seed=0)
        save_policy(policy, pre, post, tmp_path / "pi05")
        summary = build_cache(
            BuildOptions(
                policy_path=str(tmp_path / "pi05"), output_dir=str(tmp_path / "cache"),
                dataset_root=str(tmp_path / "data"), dataset_repo_id="local/tiny", num_anchors=6, batch_size=3,
                shard_size=4,
            ),
            progress=False,
        )  # fmt: skip
    assert summary.state == "built" and summary.feature_shape[:2] == [2, 2]
    cache = _check_invariant(policy, pre, tmp_path / "cache")
    assert cache.manifest.teacher.policy_type == "pi05" and cache.pooling == ["mean_image_tokens", "last_token"]


def test_smolvla_teacher(tmp_path):
    from support import tiny_smolvla
    from support.tiny_dataset import make_dataset_for, save_policy

    vlm = tiny_smolvla.build_tiny_vlm_folder(tmp_path / "vlm")  # outlives the test's policy: the checkpoint names it
    policy, pre, post = tiny_smolvla.make_tiny_smolvla(seed=0, vlm_folder=vlm)
    make_dataset_for(policy, tmp_path / "data", episodes=2, frames=6, tasks=("pick up the cube", "push"))
    save_policy(policy, pre, post, tmp_path / "smolvla")
    summary = build_cache(
        BuildOptions(
            policy_path=str(tmp_path / "smolvla"), output_dir=str(tmp_path / "cache"),
            dataset_root=str(tmp_path / "data"), dataset_repo_id="local/tiny", num_anchors=6, batch_size=3, shard_size=4,
        ),
        progress=False,
    )  # fmt: skip
    assert summary.state == "built"
    _check_invariant(policy, pre, tmp_path / "cache")
