"""Small Meta-World datasets shared by the demo tests (built once per session, 32x32 images)."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from pathlib import Path

import pytest

from craft_plugin.demo.metaworld_data import RenderOptions

RENDER = RenderOptions(image_size=32, max_steps=120, steps_after_success=4)


@pytest.fixture(scope="session")
def render() -> RenderOptions:
    return RENDER


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo-cache")


@pytest.fixture(scope="session")
def push_sets(demo_cache: Path):
    from craft_plugin.demo.metaworld_data import task_datasets

    return task_datasets("push-v3", 2, 1, demo_cache, render=RENDER, progress=False)


@pytest.fixture(scope="session")
def reach_sets(demo_cache: Path):
    from craft_plugin.demo.metaworld_data import task_datasets

    return task_datasets("reach-v3", 2, 1, demo_cache, render=RENDER, progress=False)


def _policy_features(dataset) -> tuple[dict, dict]:
    from lerobot.configs.types import FeatureType, PolicyFeature

    from craft_plugin.demo.metaworld_data import CAMERA_KEY

    meta = dataset.load().meta
    h, w, c = meta.features[CAMERA_KEY]["shape"]
    inputs = {
        CAMERA_KEY: PolicyFeature(type=FeatureType.VISUAL, shape=(c, h, w)),
        "observation.state": PolicyFeature(type=FeatureType.STATE, shape=tuple(meta.features["observation.state"]["shape"])),
    }
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(4,))}
    return inputs, outputs


def _save(policy, pre, post, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(directory)
    pre.save_pretrained(directory)
    post.save_pretrained(directory)
    return directory


def _tiny_act(dataset):
    """A tiny random-weight ACT (dim 32, chunk 5, ResNet-18 from scratch) on ``dataset``'s
    features, with its normalization statistics: ``(policy, preprocessor, postprocessor)``."""
    import torch
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    inputs, outputs = _policy_features(dataset)
    config = ACTConfig(
        input_features=inputs,
        output_features=outputs,
        device="cpu",
        chunk_size=5,
        n_action_steps=5,
        pretrained_backbone_weights=None,
        dim_model=32,
        n_heads=4,
        dim_feedforward=64,
        n_encoder_layers=1,
        n_decoder_layers=1,
        use_vae=False,
        push_to_hub=False,
    )
    torch.manual_seed(0)
    policy = get_policy_class("act")(config)
    pre, post = make_pre_post_processors(config, dataset_stats=dataset.load().meta.stats)
    return policy, pre, post


@pytest.fixture(scope="session")
def act_checkpoint(tmp_path_factory: pytest.TempPathFactory, push_sets) -> Path:
    """A tiny random-weight ACT saved as a ``pretrained_model`` folder, with the push training
    set's normalization statistics."""
    return _save(*_tiny_act(push_sets[0]), tmp_path_factory.mktemp("act") / "pretrained_model")


#: A constant action (hand xyz velocity, gripper) that takes Meta-World reach-v3's hand through
#: the goals of episode seeds 7 and 8 (found by a search over seeds; the straight line from the
#: hand's start passes within reach of both goals): success at step 26 and 24.
REACH_LINE_ACTION = (-0.048, 1.0, -0.33, 0.0)
REACH_LINE_SEEDS = (7, 8)


@pytest.fixture(scope="session")
def reach_line() -> dict:
    """:data:`REACH_LINE_ACTION` and :data:`REACH_LINE_SEEDS` (tests cannot import this conftest)."""
    return {"action": REACH_LINE_ACTION, "seeds": REACH_LINE_SEEDS}


@pytest.fixture(scope="session")
def constant_act_checkpoint(tmp_path_factory: pytest.TempPathFactory, reach_sets) -> Path:
    """A tiny ACT whose action head is zeroed, its bias set so that the un-normalized action is
    always :data:`REACH_LINE_ACTION`: a real LeRobot checkpoint whose actions do not depend on
    the image or the state (so the lean and the stock evaluator must take the same steps)."""
    import torch

    policy, pre, post = _tiny_act(reach_sets[0])
    zero = post(torch.zeros(1, 4))[0]
    scale = post(torch.ones(1, 4))[0] - zero
    with torch.no_grad():
        policy.model.action_head.weight.zero_()
        policy.model.action_head.bias.copy_((torch.tensor(REACH_LINE_ACTION) - zero) / scale)
    return _save(policy, pre, post, tmp_path_factory.mktemp("act-const") / "pretrained_model")


@pytest.fixture(scope="session")
def craft_checkpoint(tmp_path_factory: pytest.TempPathFactory, act_checkpoint: Path) -> Path:
    """A ``craft``-type checkpoint wrapping the tiny ACT (CRaFT off: no anchor cache needed)."""
    import craft_plugin.policies  # noqa: F401
    from lerobot.policies.factory import make_pre_post_processors

    from craft_plugin.config import CraftConfig
    from craft_plugin.policies.craft.configuration_craft import CRaFTConfig
    from craft_plugin.policies.craft.modeling_craft import CRaFTPolicy

    cfg = CRaFTConfig(base_path=str(act_checkpoint), craft=CraftConfig(enabled=False), device="cpu", push_to_hub=False)
    policy = CRaFTPolicy(cfg)
    pre, post = make_pre_post_processors(cfg.base_config, pretrained_path=str(act_checkpoint))
    return _save(policy, pre, post, tmp_path_factory.mktemp("craft") / "pretrained_model")


@pytest.fixture(scope="session")
def smolvla_checkpoint(tmp_path_factory: pytest.TempPathFactory, push_sets) -> Path:
    """A tiny random-weight SmolVLA (tests/support/tiny_smolvla.py) on the demo's features."""
    from lerobot.policies.factory import make_pre_post_processors
    from support.tiny_smolvla import build_tiny_vlm_folder, make_tiny_smolvla

    root = tmp_path_factory.mktemp("smolvla")
    inputs, outputs = _policy_features(push_sets[0])
    vlm = build_tiny_vlm_folder(root / "vlm")
    policy, _, _ = make_tiny_smolvla(seed=0, vlm_folder=vlm, input_features=inputs, output_features=outputs)
    pre, post = make_pre_post_processors(policy.config, dataset_stats=push_sets[0].load().meta.stats)
    return _save(policy, pre, post, root / "pretrained_model")
