"""Write an anchor cache straight from a policy and a preprocessed batch (no dataset)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from craft_plugin.cache import AnchorCache, CacheWriter
from craft_plugin.cache.builder import encode_inputs
from craft_plugin.taps import make_tap
from support.synthetic_cache import make_manifest


def cache_from_policy(
    policy: Any, batch: dict[str, Any], directory: Path, *, layers=(-2, -1), pooling=None, shard_size: int = 4
) -> AnchorCache:
    """The teacher (``policy`` in eval mode) over ``batch``; features and inputs into a cache."""
    was_training = policy.training
    policy.eval()
    with make_tap(policy) as tap, torch.no_grad():
        pooling = list(pooling or tap.default_pooling)
        feats = tap.features(batch, list(layers), pooling)
        abs_layers = tap.resolve_layers(list(layers))
        n_total = tap.num_layers
    policy.train(was_training)
    stored, spec = encode_inputs(batch)
    m = make_manifest(num_anchors=feats.shape[0], layers=abs_layers)
    m.teacher.policy_type = policy.config.type
    m.feature_shape, m.input_keys, m.pooling = list(feats.shape[1:]), spec, pooling
    m.layers_requested, m.num_layers_total, m.shard_size = list(layers), n_total, shard_size
    w = CacheWriter(directory, m)
    for k, rows in w.pending():
        w.add_shard(k, {"features": feats[rows], "index": torch.tensor(rows), **{f"input.{key}": t[rows] for key, t in stored.items()}})
    w.finalize()
    return AnchorCache(directory)
