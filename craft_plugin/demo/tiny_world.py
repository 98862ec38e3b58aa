"""A tiny LeRobot world, offline: a random-weight ACT teacher and a local dataset.

``python examples/make_tiny_world.py FOLDER`` writes one (the README's walk-through uses it), and
the test suite builds its tiny ACT and datasets with the same functions. Everything comes from
LeRobot's own classes and factories: the ACT is ``get_policy_class("act")`` built from a shrunk
config with ``pretrained_backbone_weights=None`` (nothing is downloaded), its processors come
from ``make_pre_post_processors`` with made-up dataset statistics (so normalization runs for
real), and the dataset is written with ``LeRobotDataset.create``.

Features: one camera ``observation.images.top`` (3 x 64 x 64: the smallest size that leaves
ACT's ResNet-18 a 2 x 2 feature map, i.e. several image tokens), ``observation.state`` of dim 4,
``action`` of dim 4.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

__all__ = [
    "ACTION_DIM", "ACT_CHUNK", "CAMERA", "IMAGE_SHAPE", "STATE_DIM", "make_dataset", "make_tiny_act", "save_policy",
    "write_tiny_world",
]  # fmt: skip

CAMERA = "observation.images.top"
IMAGE_SHAPE = (3, 64, 64)
STATE_DIM = 4
ACTION_DIM = 4
ACT_CHUNK = 6  #: ACT's chunk of actions


def policy_features() -> tuple[dict[str, Any], dict[str, Any]]:
    from lerobot.configs.types import FeatureType, PolicyFeature

    inputs = {
        CAMERA: PolicyFeature(type=FeatureType.VISUAL, shape=IMAGE_SHAPE),
        "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,)),
    }
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))}
    return inputs, outputs


def made_up_stats() -> dict[str, dict[str, torch.Tensor]]:
    """Made-up dataset statistics with every key either normalization mode may read."""
    c = IMAGE_SHAPE[0]

    def vec(n: int, lo: float, hi: float, mean: float, std: float) -> dict[str, torch.Tensor]:
        return {
            "min": torch.full((n,), lo),
            "max": torch.full((n,), hi),
            "mean": torch.full((n,), mean),
            "std": torch.full((n,), std),
        }

    image = {
        "min": torch.zeros(c, 1, 1),
        "max": torch.ones(c, 1, 1),
        "mean": torch.tensor([0.485, 0.456, 0.406]).reshape(c, 1, 1),
        "std": torch.tensor([0.229, 0.224, 0.225]).reshape(c, 1, 1),
    }
    return {
        CAMERA: image,
        "observation.state": vec(STATE_DIM, -1.0, 1.0, 0.1, 0.5),
        "action": vec(ACTION_DIM, -1.0, 1.0, -0.1, 0.4),
    }


def build_policy(config: Any, seed: int) -> tuple[Any, Any, Any]:
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    torch.manual_seed(seed)
    policy = get_policy_class(config.type)(config)
    policy.to(config.device)
    preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats=made_up_stats())
    policy.eval()
    return policy, preprocessor, postprocessor


def make_tiny_act(
    seed: int = 0, n_encoder_layers: int = 3, use_vae: bool = True, dropout: float = 0.1
) -> tuple[Any, Any, Any]:
    """A ~11M-parameter ACT (ResNet-18 from scratch, dim 32) in eval mode: (policy, pre, post)."""
    from lerobot.policies.act.configuration_act import ACTConfig

    inputs, outputs = policy_features()
    config = ACTConfig(
        input_features=inputs,
        output_features=outputs,
        device="cpu",
        chunk_size=ACT_CHUNK,
        n_action_steps=ACT_CHUNK,
        pretrained_backbone_weights=None,
        dim_model=32,
        n_heads=4,
        dim_feedforward=64,
        n_encoder_layers=n_encoder_layers,
        n_decoder_layers=1,
        use_vae=use_vae,
        latent_dim=8,
        n_vae_encoder_layers=1,
        dropout=dropout,
        push_to_hub=False,
    )
    return build_policy(config, seed)


def make_dataset(
    root: Path,
    *,
    episodes: int = 2,
    frames: int = 12,
    fps: int = 10,
    use_videos: bool = False,
    seed: int = 0,
    camera: str = CAMERA,
    image_shape: tuple[int, int, int] = IMAGE_SHAPE,
    state_dim: int = STATE_DIM,
    action_dim: int = ACTION_DIM,
    tasks: tuple[str, ...] = ("task 0", "task 1"),
) -> Any:
    """A dataset with one camera (default `observation.images.top`, 64x64), a state and an action;
    episode e has task ``tasks[e % len(tasks)]``."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    c, h, w = image_shape
    features = {
        camera: {"dtype": "video" if use_videos else "image", "shape": (h, w, c), "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (state_dim,), "names": None},
        "action": {"dtype": "float32", "shape": (action_dim,), "names": None},
    }
    ds = LeRobotDataset.create(repo_id="local/tiny", fps=fps, features=features, root=root, use_videos=use_videos)
    rng = np.random.default_rng(seed)
    for e in range(episodes):
        for _ in range(frames):
            ds.add_frame(
                {
                    camera: rng.integers(0, 256, size=(h, w, c), dtype=np.uint8),
                    "observation.state": rng.standard_normal(state_dim).astype(np.float32),
                    "action": rng.uniform(-1, 1, action_dim).astype(np.float32),
                    "task": tasks[e % len(tasks)],
                }
            )
        ds.save_episode()
    ds.finalize()
    return ds


def save_policy(policy: Any, preprocessor: Any, postprocessor: Any, directory: Path) -> Path:
    """Write a LeRobot `pretrained_model`-style folder (config, weights, processors)."""
    directory.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(directory)
    preprocessor.save_pretrained(directory)
    postprocessor.save_pretrained(directory)
    return directory


def write_tiny_world(folder: Path) -> tuple[Path, Path]:
    """A dataset (2 episodes x 12 frames) in ``folder/data`` and the seed-0 tiny ACT teacher in
    ``folder/act``; returns both paths."""
    make_dataset(folder / "data")
    save_policy(*make_tiny_act(seed=0), folder / "act")
    return folder / "data", folder / "act"
