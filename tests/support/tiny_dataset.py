"""Tiny LeRobot datasets written locally with `LeRobotDataset.create` (no Hub), and saved
tiny policy checkpoints (`pretrained_model` folders) for the cache builder and CLI tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from support.tiny_classic import ACTION_DIM, CAMERA, IMAGE_SHAPE, STATE_DIM


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


def make_dataset_for(policy: Any, root: Path, **kwargs: Any) -> Any:
    """:func:`make_dataset` with the camera, image shape, state and action sizes of ``policy``'s config."""
    feats = policy.config.input_features
    camera = next(k for k in feats if k.startswith("observation.images"))
    return make_dataset(
        root, camera=camera, image_shape=tuple(feats[camera].shape), state_dim=feats["observation.state"].shape[0],
        action_dim=policy.config.output_features["action"].shape[0], **kwargs,
    )  # fmt: skip
