"""Write an anchor cache straight from a policy, its preprocessor and a raw batch (no dataset)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from craft_plugin.cache import AnchorCache, CacheWriter
from craft_plugin.cache.builder import anchor_rows, describe_actions, encode_inputs
from craft_plugin.taps import make_tap
from support.synthetic_cache import make_manifest


def cache_from_policy(
    policy: Any,
    preprocessor: Any,
    raw: dict[str, Any],
    directory: Path,
    *,
    layers=(-2, -1),
    pooling=None,
    shard_size: int = 4,
    actions: bool = True,
    seed: int = 0,
) -> AnchorCache:
    """The teacher (``policy`` in eval mode) over ``raw`` (a collated dataset-like batch, seen
    through ``preprocessor``), written as a cache the way ``craft build-cache`` writes one."""
    was_training = policy.training
    policy.eval()
    n = len(next(v for v in raw.values() if isinstance(v, torch.Tensor)))
    with make_tap(policy) as tap, torch.no_grad():
        pooling = list(pooling or tap.default_pooling)
        rows = anchor_rows(
            tap, preprocessor, raw, layers=list(layers), pooling=pooling, seed=seed, rows=list(range(n)), actions=actions
        )
        abs_layers = tap.resolve_layers(list(layers))
        n_total = tap.num_layers
        info = describe_actions(tap, preprocessor, rows) if actions else {}
    policy.train(was_training)
    _, spec = encode_inputs(raw)
    m = make_manifest(num_anchors=n, layers=abs_layers)
    m.teacher.policy_type = policy.config.type
    m.feature_shape, m.input_keys, m.pooling = list(rows["features"].shape[1:]), spec, pooling
    m.layers_requested, m.num_layers_total, m.shard_size = list(layers), n_total, shard_size
    m.anchor_targets = ["features", "actions"] if actions else ["features"]
    m.retention_modes = ["hidden", "token_ce"] if "action" in spec else ["hidden"]
    if isinstance(raw.get("task"), list):
        m.tasks = sorted(set(raw["task"]))
        rows["task_index"] = torch.tensor([m.tasks.index(t) for t in raw["task"]], dtype=torch.int64)
    for key, value in info.items():
        setattr(m, key, value)
    w = CacheWriter(directory, m)
    for k, idx in w.pending():
        w.add_shard(k, {name: t[idx] for name, t in rows.items()} | {"index": torch.tensor(idx)})
    w.finalize()
    return AnchorCache(directory)


def preprocessed_rows(cache: AnchorCache, preprocessor: Any, rows: list[int] | None = None) -> tuple[Any, dict[str, Any]]:
    """``(anchor batch, its raw frames through preprocessor)`` for ``rows`` (default: all)."""
    from craft_plugin.cache.inputs import raw_batch

    batch = cache.rows(list(range(len(cache))) if rows is None else rows)
    m = cache.manifest
    return batch, preprocessor(raw_batch(batch.inputs, m.input_keys, batch.task_index, m.tasks))


def teacher_preprocessor(policy_dir: Any) -> Any:
    """The preprocessor saved with a LeRobot checkpoint folder."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors

    cfg = PreTrainedConfig.from_pretrained(str(policy_dir))
    return make_pre_post_processors(cfg, pretrained_path=str(policy_dir))[0]
