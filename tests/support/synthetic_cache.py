"""Synthetic cache manifests and shard contents (no LeRobot) for the cache tests."""

from __future__ import annotations

import torch

from craft_plugin.cache import DatasetInfo, Manifest, TeacherInfo
from craft_plugin.cache.manifest import utc_now

N, SHARD, SHAPE = 10, 4, [2, 2, 3]


def make_manifest(num_anchors: int = N, seed: int = 0, layers=(4, 5)) -> Manifest:
    return Manifest(
        created_at=utc_now(),
        updated_at=utc_now(),
        versions={"craft_plugin": "test", "lerobot": "test", "torch": torch.__version__},
        teacher=TeacherInfo(path="/teacher", policy_type="act", config_sha256="c" * 64, weights_sha256="w" * 64),
        dataset=DatasetInfo(
            repo_id="local/x", root="/data", info_sha256="i" * 64, num_frames=100,
            anchor_indices=list(range(0, 2 * num_anchors, 2)), seed=seed,
        ),
        layers=list(layers),
        layers_requested=[-2, -1],
        num_layers_total=6,
        pooling=["mean_image_tokens", "cls_token"],
        feature_shape=SHAPE,
        dtype="float32",
        retention_modes=["hidden", "token_ce"],
        stores_inputs=True,
        input_keys={"observation.image": {"dtype": "uint8", "shape": [3, 2, 2]}, "action": {"dtype": "float32", "shape": [4]}},
        num_anchors=num_anchors,
        shard_size=SHARD,
    )


def make_rows(rows: list[int]) -> dict[str, torch.Tensor]:
    """Deterministic content for anchor rows (what a teacher would compute)."""
    r = torch.tensor(rows, dtype=torch.float32)
    return {
        "features": r.reshape(-1, 1, 1, 1) + torch.arange(12, dtype=torch.float32).reshape(1, *SHAPE) / 10,
        "index": torch.tensor(rows, dtype=torch.int64) * 2,
        "input.observation.image": (r.reshape(-1, 1, 1, 1) + torch.zeros(1, 3, 2, 2)).to(torch.uint8),
        "input.action": r.reshape(-1, 1).repeat(1, 4),
    }
