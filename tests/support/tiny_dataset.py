"""Tiny LeRobot datasets written locally with `LeRobotDataset.create` (no Hub), and saved
tiny policy checkpoints (`pretrained_model` folders) for the cache builder and CLI tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from craft_plugin.demo.tiny_world import make_dataset, save_policy

__all__ = ["make_dataset", "make_dataset_for", "save_policy"]


def make_dataset_for(policy: Any, root: Path, **kwargs: Any) -> Any:
    """:func:`make_dataset` with the camera, image shape, state and action sizes of ``policy``'s config."""
    feats = policy.config.input_features
    camera = next(k for k in feats if k.startswith("observation.images"))
    return make_dataset(
        root, camera=camera, image_shape=tuple(feats[camera].shape), state_dim=feats["observation.state"].shape[0],
        action_dim=policy.config.output_features["action"].shape[0], **kwargs,
    )  # fmt: skip
